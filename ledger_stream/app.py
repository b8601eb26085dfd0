"""Builds the Faust application of a ledger worker from `Settings` (agents live in agents/)."""

from __future__ import annotations

import faust

from ledger_stream.settings import Settings


def create_app(settings: Settings) -> faust.App:
    """A Faust app on the project's transport (`ledger-kafka://`, see kafka/transport.py)."""
    brokers = [
        f"ledger-kafka://{server.strip()}" for server in settings.bootstrap_servers.split(",")
    ]
    app = faust.App(
        settings.app_id,
        broker=brokers,
        store="rocksdb://",
        datadir=str(settings.data_dir),
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=max(4096, settings.batch_size_max * 2),
        web_enabled=settings.web_enabled,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
    )
    from agents import writer

    writer.install(app, settings)
    return app
