"""Faust table recovery on the embedded broker, through the ``ledger-kafka://`` transport.

A real worker subprocess (``faust_recovery_app.py``) fills a RocksDB table from batches of
``take_events``; it is stopped by pid and a new worker recovers the table from the
changelog. With the stock ``kafka://`` transport, Tansu's short ListOffsets(latest) makes
recovery stop before the changelog tail (wiped state: keys missing) or refuse to start
(kept state: ConsistencyError, persisted offset above the "highwater"). Run with
``LEDGER_RECOVERY_SCHEME=kafka`` to see the stock transport fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition
from faust.transport import by_url
from faust.types import TP

from ledger_stream.kafka import transport as ledger_transport
from ledger_stream.kafka.broker import EmbeddedBroker
from ledger_stream.kafka.transport import true_end_offsets

APP_SCRIPT = Path(__file__).with_name("faust_recovery_app.py")
SCHEME = os.environ.get("LEDGER_RECOVERY_SCHEME", "ledger-kafka")
PARTITIONS = 2
KEYS = 4000
WAIT_S = 45.0
TRANSPORT_MODULE = {
    "ledger-kafka": "ledger_stream.kafka.transport",
    "kafka": "faust.transport.drivers.aiokafka",
}[SCHEME]

Report = dict[str, Any]


class Worker:
    """One ``faust_recovery_app.py worker`` subprocess, in its own process group."""

    def __init__(self, broker: EmbeddedBroker, app_id: str, data_dir: Path, mode: str) -> None:
        self.data_dir = data_dir
        self.mode = mode
        tag = uuid.uuid4().hex[:6]
        self.report_path = data_dir.parent / f"report-{mode}-{tag}.json"
        self.log_path = data_dir.parent / f"worker-{mode}-{tag}.log"
        self.env = dict(
            os.environ,
            PYTHONUNBUFFERED="1",
            RECOVERY_BROKER=f"{SCHEME}://{broker.bootstrap}",
            RECOVERY_APP_ID=app_id,
            RECOVERY_DATA_DIR=str(data_dir),
            RECOVERY_REPORT=str(self.report_path),
            RECOVERY_PARTITIONS=str(PARTITIONS),
            RECOVERY_MODE=mode,
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(APP_SCRIPT), "worker", "--loglevel", "info"],
                cwd=self.data_dir.parent,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def read_report(self) -> Report | None:
        try:
            data: Report = json.loads(self.report_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return data

    def wait_for(self, what: str, predicate: Callable[[Report], bool]) -> Report:
        assert self.proc is not None
        deadline = time.monotonic() + WAIT_S
        report = None
        while time.monotonic() < deadline:
            code = self.proc.poll()
            assert code is None, (
                f"{self.mode} worker exited with {code} while waiting for {what}; "
                f"last report {report}; log tail:\n{self.log_tail()}"
            )
            report = self.read_report()
            if report is not None and predicate(report):
                return report
            time.sleep(0.2)
        raise AssertionError(
            f"{self.mode} worker: no {what} within {WAIT_S}s; last report {report}; "
            f"log tail:\n{self.log_tail()}"
        )

    def wait_recovered(self) -> Report:
        """The first report after recovery completed, then one tick later (settled)."""
        first = self.wait_for("recovery", lambda r: bool(r["ready"]))
        seen = first["ticks"]
        return self.wait_for("a later report", lambda r: r["ready"] and r["ticks"] > seen)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM by pid, SIGKILL after ``timeout_s``; the exit code (None if never run)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout_s)
        return proc.returncode


@contextmanager
def running(broker: EmbeddedBroker, app_id: str, data_dir: Path, mode: str) -> Iterator[Worker]:
    data_dir.mkdir(parents=True, exist_ok=True)
    worker = Worker(broker, app_id, data_dir, mode)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


async def _create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def _produce(bootstrap: str, topic: str, numbers: range) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    try:
        sent = [await producer.send(topic, b"%d" % i, key=b"k%d" % i) for i in numbers]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def _changelog_ends(
    bootstrap: str, topic: str
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """(ListOffsets latest, true end) per partition of ``topic``."""
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        reported = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return reported, await true_end_offsets(bootstrap, tps)


def _fill_table(broker: EmbeddedBroker, app_id: str, data_dir: Path) -> None:
    """Run a ``write`` worker until every key is in the table and in the changelog."""
    asyncio.run(_create_topic(broker.bootstrap, f"{app_id}-input", PARTITIONS))
    changelog = f"{app_id}-values-changelog"
    with running(broker, app_id, data_dir, "write") as writer:
        started = writer.wait_for("startup", lambda r: bool(r["ready"]))
        assert started["transport"] == TRANSPORT_MODULE
        asyncio.run(_produce(broker.bootstrap, f"{app_id}-input", range(KEYS)))
        report = writer.wait_for("all keys written", lambda r: r["count"] == KEYS)
        assert report["sum"] == KEYS * (KEYS - 1) // 2
        assert report["batches"] < report["events"], "take_events should deliver batches"
        deadline = time.monotonic() + WAIT_S
        while True:
            reported, true = asyncio.run(_changelog_ends(broker.bootstrap, changelog))
            if sum(true.values()) >= KEYS or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert sum(true.values()) == KEYS, f"changelog incomplete: {true}"
        # The changelog must end in a multi-record batch somewhere, or this test would not
        # exercise the short ListOffsets at all.
        assert any(reported[tp] < true[tp] for tp in true), (
            f"every changelog partition ends in a single-record batch ({reported} vs "
            f"{true}): the broker's ListOffsets may now be right, or batching changed"
        )
        code = writer.stop()
    assert code == 0, f"writer did not stop cleanly ({code}):\n{writer.log_tail()}"


def _app_id() -> str:
    return f"recovery-{uuid.uuid4().hex[:8]}"


def test_ledger_kafka_scheme_resolves_to_the_fixed_transport() -> None:
    assert by_url("ledger-kafka://localhost:9092") is ledger_transport.Transport
    assert ledger_transport.Transport.Consumer is ledger_transport.Consumer


async def test_true_end_offsets_reads_past_the_short_list_offsets(
    broker: EmbeddedBroker,
) -> None:
    topic = f"ends-{uuid.uuid4().hex[:8]}"
    empty = f"ends-empty-{uuid.uuid4().hex[:8]}"
    await _create_topic(broker.bootstrap, topic, 2)
    await _create_topic(broker.bootstrap, empty, 1)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=50)
    await producer.start()
    try:
        sent = [await producer.send(topic, b"x", partition=i % 2) for i in range(1000)]
        await asyncio.gather(*sent)
        # partition 1 ends in a single-record batch: ListOffsets is right there.
        await producer.send_and_wait(topic, b"last", partition=1)
    finally:
        await producer.stop()

    # faust's TP and aiokafka's TopicPartition are interchangeable; keys come back as given
    tps = [TP(topic, 0), TP(topic, 1), TP(empty, 0)]
    ends = await true_end_offsets(broker.bootstrap, tps)
    assert ends == {TP(topic, 0): 500, TP(topic, 1): 501, TP(empty, 0): 0}
    assert all(type(tp) is TP for tp in ends)

    # Given what ListOffsets said, it only ever raises it, never lowers it.
    reported = {TP(topic, 0): 1, TP(topic, 1): 501, TP(empty, 0): 0}
    assert await true_end_offsets(broker.bootstrap, tps, reported=reported) == ends
    assert await true_end_offsets(broker.bootstrap, []) == {}


def test_table_recovers_every_key_after_local_state_is_wiped(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    app_id = _app_id()
    data_dir = tmp_path / "data"
    _fill_table(broker, app_id, data_dir)

    shutil.rmtree(data_dir)
    with running(broker, app_id, data_dir, "check") as restarted:
        report = restarted.wait_recovered()
        code = restarted.stop()
    missing = KEYS - report["count"]
    assert missing == 0, f"{missing} of {KEYS} keys missing after recovery ({SCHEME}://)"
    assert report["sum"] == KEYS * (KEYS - 1) // 2
    assert code == 0


def test_table_restarts_with_local_state_kept(broker: EmbeddedBroker, tmp_path: Path) -> None:
    app_id = _app_id()
    data_dir = tmp_path / "data"
    _fill_table(broker, app_id, data_dir)

    more = 500
    with running(broker, app_id, data_dir, "write") as restarted:
        report = restarted.wait_recovered()
        assert report["count"] == KEYS, f"{KEYS - report['count']} keys missing"
        asyncio.run(_produce(broker.bootstrap, f"{app_id}-input", range(KEYS, KEYS + more)))
        report = restarted.wait_for("the new keys", lambda r: r["count"] >= KEYS + more)
        code = restarted.stop()
    assert report["count"] == KEYS + more
    assert report["sum"] == (KEYS + more) * (KEYS + more - 1) // 2
    assert code == 0
