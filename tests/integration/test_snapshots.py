"""Growth: a worker snapshots its partitions' state into the state log and moves the
outcomes past their window (here 0 s, a snapshot after every batch), made compact, to the
outcomes topic. A worker with an empty store restores from the latest snapshot and the
outcomes topic, and a late repeat of a compacted command is still answered with its original
decision and moves nothing.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
from worker_harness import Workers, polled

from ledger_stream.audit import audit
from ledger_stream.client import LedgerClient
from ledger_stream.kafka.broker import EmbeddedBroker
from ledger_stream.kafka.reading import read_topic
from ledger_stream.partitioning import partition_of
from ledger_stream.settings import Settings
from ledger_stream.topics import TopicNames

SNAPSHOT_EVERY_BATCH_ENV = {"LEDGER_SNAPSHOT_BYTES": "1", "LEDGER_OUTCOME_WINDOW_S": "0"}


async def archived_outcomes(settings: Settings, partition: int) -> dict[str, Any]:
    """The compact outcomes in one partition of the outcomes topic, by key."""
    topic = TopicNames.from_settings(settings).outcomes
    found: dict[str, Any] = {}
    async for records in read_topic(settings.bootstrap_servers, topic, [partition]):
        for record in records:
            found[(record.key or b"").decode()] = orjson.loads(record.value or b"")
    return found


async def snapshot_outcome_keys(settings: Settings, partition: int) -> set[str]:
    """The keys of the whole outcomes in the latest valid snapshot of one state partition."""
    topic = TopicNames.from_settings(settings).state
    by_base: dict[int, set[str]] = {}
    async for records in read_topic(settings.bootstrap_servers, topic, [partition]):
        for record in records:
            data = orjson.loads(record.value or b"")
            if data["kind"] == "snapshot" and data["expect"] == record.offset:
                by_base.setdefault(data["base"], set()).update(data.get("outcomes", {}))
    return by_base[max(by_base)]


async def balance(worker: Any, account: str) -> int:
    return int(json.loads(await worker.view(f"/accounts/{account}/"))["balance"])


async def test_a_restore_from_a_snapshot_answers_late_repeats_of_compacted_commands(
    ledger: Settings, workers: Workers, broker: EmbeddedBroker
) -> None:
    assert broker.log_path is not None
    broker_log_from = broker.log_path.stat().st_size
    alice, bob = (
        "alice",
        next(
            f"bob-{i}"
            for i in range(100)
            if partition_of(f"bob-{i}", ledger.partitions)
            != partition_of("alice", ledger.partitions)
        ),
    )
    first = await asyncio.to_thread(workers.start_ready, env=SNAPSHOT_EVERY_BATCH_ENV)
    client = LedgerClient(ledger.bootstrap_servers, topic_prefix=ledger.topic_prefix)
    async with client:
        for account in (alice, bob):
            assert (await client.open_account(account, "USD")).status == "accepted"
        deposit = await client.deposit(alice, 100, "USD", command_id="d1")
        moved = await client.transfer(alice, bob, 30, "USD", command_id="t1")
        assert (deposit.status, moved.status) == ("accepted", "accepted")
        # One more batch on each partition, so each snapshot follows the acknowledgements.
        for account in (alice, bob):
            await client.deposit(account, 1, "USD")
        partition = partition_of(alice, ledger.partitions)
        kept = await polled(
            lambda: archived_outcomes(ledger, partition),
            lambda found: {"cmd:d1", "cmd:t1"} <= found.keys(),
            workers,
            "the deposit and the transfer archived",
        )
        # Snapshots after the first delete the state log before them on a Kafka; the
        # embedded broker is not asked, since a DeleteRecords panics one of its threads.
        assert await asyncio.to_thread(first.stop) == 0
        first_log = first.log_tail(1_000)
        assert "the embedded broker cannot delete records" in first_log, first_log
        with broker.log_path.open("rb") as log:
            log.seek(broker_log_from)
            assert b"panicked" not in log.read()
        assert set(kept["cmd:d1"]) == {"fingerprint", "result", "timestamp_ms"}, kept["cmd:d1"]
        assert set(kept["cmd:t1"]) == {"fingerprint", "result", "timestamp_ms"}, kept["cmd:t1"]
        assert "command_id" not in kept["cmd:t1"]["result"]  # the key says it
        # Once archived, an outcome is no longer copied into the snapshots after.
        assert "cmd:d1" not in await snapshot_outcome_keys(ledger, partition)

        second = await asyncio.to_thread(
            workers.start_ready, workers.root / "empty", env=SNAPSHOT_EVERY_BATCH_ENV
        )
        assert "(a snapshot)" in second.log_tail(200), second.log_tail(200)
        again = await client.deposit(alice, 100, "USD", command_id="d1")
        moved_again = await client.transfer(alice, bob, 30, "USD", command_id="t1")
        assert (again.status, again.duplicate) == ("accepted", True)
        assert (moved_again.status, moved_again.duplicate) == ("accepted", True)
        conflict = await client.deposit(alice, 99, "USD", command_id="d1")
        assert (conflict.status, conflict.code) == ("rejected", "exists_with_different_payload")
        assert (await balance(second, alice), await balance(second, bob)) == (71, 31)
    report = await audit(ledger)
    assert report.ok, report.text()
