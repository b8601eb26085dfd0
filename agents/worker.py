"""Running a ledger worker: create the topics, then run the writer, the read side (the
projector folding the journal, and the notifier delivering webhooks when configured) and
the HTTP API until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Coroutine
from typing import Any

from aiohttp import web
from aiokafka.errors import KafkaError

from agents import openapi
from agents.api import Api
from agents.notifier import Notifier
from agents.projector import Projector
from agents.routing import Owners
from agents.views import create_web_app
from agents.writer import EXIT_BROKER_GONE, EXIT_BUG, Writer, stop_worker
from ledger_stream.client import LedgerClient
from ledger_stream.errors import BrokerUnavailable
from ledger_stream.logs import fold_repeats
from ledger_stream.settings import Settings
from ledger_stream.topics import ensure_topics

logger = logging.getLogger(__name__)

# How long a command sent through the HTTP API may take before its waiting task gives up
# (the POST itself answers 202 after `http_wait_s`).
HTTP_COMMAND_TIMEOUT_S = 120.0


def run_worker(settings: Settings) -> None:
    """Blocks until the worker is told to stop; a fatal error exits the process."""
    fold_repeats(logging.getLogger())
    asyncio.run(_serve(settings))


async def _serve(settings: Settings) -> None:
    await ensure_topics(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    writer = Writer(settings)
    projector = Projector(settings, lambda: list(writer.logs), writer.freshness)
    client = LedgerClient(
        settings.bootstrap_servers,
        topic_prefix=settings.topic_prefix,
        timeout_s=HTTP_COMMAND_TIMEOUT_S,
        fetch_wait_ms=settings.fetch_wait_ms,
        connect_attempts_max=settings.connect_attempts_max,
    )
    api = Api(writer, projector, client)
    runner: web.AppRunner | None = None
    background: list[asyncio.Task[None]] = []
    try:
        if settings.web_enabled:
            app = create_web_app(writer)
            api.routes(app)
            openapi.routes(app, partitions=settings.partitions)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, settings.web_host, settings.web_port).start()
            host, port = runner.addresses[0][:2]
            own_url = settings.web_advertised_url or f"http://{host}:{port}"
            api.owners = Owners(settings, own_url)
            writer.client_id = api.owners.client_id
            await client.start()
            logger.info("HTTP on %s (API under /v1, docs at /v1/docs)", own_url)
        background.append(_watched(projector.run(stopping), "the read models' projector"))
        if settings.webhooks:
            background.append(_watched(Notifier(settings).run(stopping), "the notifier"))
        await writer.run(stopping)
    finally:
        stopping.set()
        await asyncio.gather(*background, return_exceptions=True)
        if runner is not None:
            await client.stop()
            await runner.cleanup()
        if api.owners is not None:
            await api.owners.close()
    logger.info("worker stopped")


def _watched(work: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
    """Run `work` beside the writer; if it fails, the worker stops (a supervisor restarts
    it) rather than go on without it."""

    def done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            logger.error("%s failed", what, exc_info=error)
            gone = isinstance(error, (KafkaError, BrokerUnavailable))
            stop_worker(EXIT_BROKER_GONE if gone else EXIT_BUG, f"{what} failed: {error}")

    task = asyncio.create_task(work)
    task.add_done_callback(done)
    return task
