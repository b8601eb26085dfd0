"""`ledger-stream bench --writer-only`: the writer's own CPU per transfer, without Kafka.

The same batch path a worker runs (`Writer._decide_partition`: intake, `decide`, serializing
the state; `Writer._commit`: the state records through `PartitionLog.commit` and the RocksDB
write; the output records), fed with the benchmark's workload in batches and with the legs
each batch sends fed back as the next batch's input, as the legs topic would. The state log
is an append that counts offsets in memory. No broker, no network, no other process: its figure
repeats within a few percent on a machine whose end-to-end figures vary by a quarter, so it
is the one to compare two versions of the writer with. Figures, never pass or fail.
"""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
from aiokafka.structs import ConsumerRecord

from agents.writer import Writer, _Overlay
from ledger_stream.partitioning import partition_of
from ledger_stream.settings import Settings
from ledger_stream.state.log import PartitionLog
from ledger_stream.state.store import PartitionStore
from ledger_stream.workload import Workload, opening

TRANSFERS_PER_BATCH = 2_000
WARM_UP_BATCHES = 10
COMMANDS_PER_RECORD = 500  # as the client batches them


class _Feed:
    """Kafka records for the writer, made up in memory, and what it sends back."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.offsets: Counter[tuple[str, int]] = Counter()
        self.legs: dict[int, list[bytes]] = defaultdict(list)
        self.results: Counter[str] = Counter()

    def record(self, topic: str, partition: int, value: bytes) -> ConsumerRecord[Any, Any]:
        offset = self.offsets[(topic, partition)]
        self.offsets[(topic, partition)] += 1
        timestamp = 1_700_000_000_000 + offset
        return ConsumerRecord(
            topic, partition, offset, timestamp, 0, None, value, None, len(value), -1, []
        )

    def commands(self, commands: list[dict[str, Any]]) -> dict[int, list[ConsumerRecord[Any, Any]]]:
        """Records of `commands` by partition, with the legs sent since the last batch."""
        partitions = self.writer.settings.partitions
        by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for command in commands:
            by_partition[partition_of(command["account"], partitions)].append(command)
        topics = self.writer.topics
        batch: dict[int, list[ConsumerRecord[Any, Any]]] = defaultdict(list)
        for partition, items in by_partition.items():
            for start in range(0, len(items), COMMANDS_PER_RECORD):
                value = orjson.dumps(items[start : start + COMMANDS_PER_RECORD])
                batch[partition].append(self.record(topics.commands, partition, value))
        for partition, legs in self.legs.items():
            batch[partition] += [self.record(topics.legs, partition, leg) for leg in legs]
        self.legs.clear()
        return batch

    async def write(self, batch: dict[int, list[ConsumerRecord[Any, Any]]]) -> None:
        """The writer's batch path for `batch`, its outputs kept for the next one."""
        writer = self.writer
        decided = {n: writer._decide_partition(n, records) for n, records in sorted(batch.items())}
        await writer._commit(decided)
        for pieces in decided.values():
            for piece in pieces:
                for out in piece.outbox.records(writer.topics, writer.settings.partitions):
                    if out.topic == writer.topics.legs and out.value is not None:
                        self.legs[out.partition].append(out.value)
                    elif out.topic == writer.topics.results and out.value is not None:
                        self.results[orjson.loads(out.value)["status"]] += 1

    async def drain(self) -> None:
        """Decide the legs still on their way, so that every transfer is answered."""
        while self.legs:
            await self.write(self.commands([]))


def run_writer_bench(
    accounts: int, partitions: int, cross: float | None, hot: bool, batches: int, seed: int
) -> dict[str, Any]:
    """Open `accounts`, then decide `batches` batches of transfers; the figures."""
    return asyncio.run(_run(accounts, partitions, cross, hot, batches, seed))


async def _run(
    accounts: int, partitions: int, cross: float | None, hot: bool, batches: int, seed: int
) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="ledger-writer-bench-"))
    try:
        writer = Writer(Settings(partitions=partitions, data_dir=str(data_dir)))
        ends: Counter[int] = Counter()

        async def append(partition: int, value: bytes) -> int:
            ends[partition] += 1
            return ends[partition] - 1

        for number in range(partitions):
            store = PartitionStore(data_dir / f"partition-{number}", writer.identity)
            writer.logs[number] = PartitionLog(
                writer.topics.state,
                number,
                store,
                writer.writer_id,
                # Read from only when an append lands elsewhere, which this one never does.
                None,
                append,
                writer.topics.outcomes,
            )
            writer.overlays[number] = _Overlay(store)
            writer.freshness.claimed(number, 0)
        feed = _Feed(writer)
        workload = Workload(
            accounts=accounts, partitions=partitions, cross=cross, hot=hot, seed=seed
        )
        await feed.write(feed.commands([opening(name) for name in workload.names]))
        feed.results.clear()
        transfers = workload.transfers()

        def next_batch() -> dict[int, list[ConsumerRecord[Any, Any]]]:
            chosen = [next(transfers) for _ in range(TRANSFERS_PER_BATCH)]
            return feed.commands([t.command(f"t-{t.number}") for t in chosen])

        gc.freeze()  # as the worker does
        gc.set_threshold(50_000, 20, 50)
        for _ in range(WARM_UP_BATCHES):
            await feed.write(next_batch())
        cpu_s = 0.0
        for _ in range(batches):
            batch = next_batch()  # made outside the clock: the clients' part
            started = time.process_time()
            await feed.write(batch)
            cpu_s += time.process_time() - started
        await feed.drain()
        transfers_done = batches * TRANSFERS_PER_BATCH  # measured; the warm-up's are not
        for store in (log.store for log in writer.logs.values()):
            store.close()
        return {
            "transfers": transfers_done,
            "decided": (WARM_UP_BATCHES + batches) * TRANSFERS_PER_BATCH,
            "answered": dict(feed.results),
            "cpu_s_per_1000": round(cpu_s / transfers_done * 1000, 4),
            "transfers_per_cpu_s": round(transfers_done / cpu_s),
            "options": {
                "accounts": accounts,
                "partitions": partitions,
                "cross": "uniform" if cross is None else cross,
                "hot": hot,
                "batches": batches,
                "transfers_per_batch": TRANSFERS_PER_BATCH,
            },
        }
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def report(figures: dict[str, Any], as_json: bool) -> None:
    print(
        f"writer only: {figures['transfers']:,} transfers, {figures['cpu_s_per_1000']} CPU s "
        f"per 1,000 ({figures['transfers_per_cpu_s']:,} a CPU second); of the "
        f"{figures['decided']:,} decided with the warm-up, answered {figures['answered']}"
    )
    if as_json:
        print(json.dumps(figures))
