"""`ledger-stream bench --writer-only`: the writer's own CPU per transfer, without Kafka.

The same batch path a worker runs (intake, `decide`, serializing the state, the state record
as it is encoded for the log, the RocksDB write, the output records), fed with the
benchmark's workload in batches and with the legs each batch sends fed back as the next
batch's input, as the legs topic would. No broker, no network, no other process: its figure
repeats within a few percent on a machine whose end-to-end figures vary by a quarter, so it
is the one to compare two versions of the writer with. Figures, never pass or fail.
"""

from __future__ import annotations

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
from ledger_stream.money import AMOUNT_MAX
from ledger_stream.partitioning import partition_of
from ledger_stream.settings import Settings
from ledger_stream.state.log import encode
from ledger_stream.state.store import PartitionStore, Position, digest
from ledger_stream.workload import Workload

TRANSFERS_PER_BATCH = 2_000
WARM_UP_BATCHES = 10
COMMANDS_PER_RECORD = 500  # as the client batches them


class _Log:
    """What the batch path needs of a `PartitionLog`: its store."""

    def __init__(self, store: PartitionStore) -> None:
        self.store = store


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

    def write(self, batch: dict[int, list[ConsumerRecord[Any, Any]]]) -> None:
        """The writer's batch path for `batch`, its outputs kept for the next one."""
        writer = self.writer
        for number, records in sorted(batch.items()):
            store = writer.logs[number].store
            position = store.position
            for piece in writer._decide_partition(number, records):
                if piece.changes.accounts or piece.changes.outcomes:
                    value = encode("commit", position.next_offset, writer.writer_id, piece.changes)
                    position = Position(position.next_offset + 1, digest(value))
                    store.apply(piece.changes, position)
                for out in piece.outbox.records(writer.topics, writer.settings.partitions):
                    if out.topic == writer.topics.legs and out.value is not None:
                        self.legs[out.partition].append(out.value)
                    elif out.topic == writer.topics.results and out.value is not None:
                        self.results[orjson.loads(out.value)["status"]] += 1


def run_writer_bench(
    accounts: int, partitions: int, cross: float | None, hot: bool, batches: int, seed: int
) -> dict[str, Any]:
    """Open `accounts`, then decide `batches` batches of transfers; the figures."""
    data_dir = Path(tempfile.mkdtemp(prefix="ledger-writer-bench-"))
    try:
        writer = Writer(Settings(partitions=partitions, data_dir=str(data_dir)))
        for number in range(partitions):
            store = PartitionStore(data_dir / f"partition-{number}", writer.identity)
            writer.logs[number] = _Log(store)  # type: ignore[assignment]
            writer.overlays[number] = _Overlay(store)
        feed = _Feed(writer)
        workload = Workload(
            accounts=accounts, partitions=partitions, cross=cross, hot=hot, seed=seed
        )
        feed.write(feed.commands([_opening(name) for name in workload.names]))
        feed.results.clear()
        transfers = workload.transfers()

        def next_batch() -> dict[int, list[ConsumerRecord[Any, Any]]]:
            chosen = [next(transfers) for _ in range(TRANSFERS_PER_BATCH)]
            return feed.commands(
                [_transfer(t.number, t.source, t.destination, t.amount) for t in chosen]
            )

        gc.freeze()  # as the worker does
        gc.set_threshold(50_000, 20, 50)
        for _ in range(WARM_UP_BATCHES):
            feed.write(next_batch())
        cpu_s = 0.0
        for _ in range(batches):
            batch = next_batch()  # made outside the clock: the clients' part
            started = time.process_time()
            feed.write(batch)
            cpu_s += time.process_time() - started
        while feed.legs:  # the last batch's legs, so every transfer is answered
            feed.write(feed.commands([]))
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


def _opening(name: str) -> dict[str, Any]:
    return {
        "type": "open_account",
        "command_id": f"open-{name}",
        "account": name,
        "currency": "USD",
        "overdraft_limit": AMOUNT_MAX,  # no transfer is refused
    }


def _transfer(number: int, source: str, destination: str, amount: int) -> dict[str, Any]:
    return {
        "type": "transfer",
        "command_id": f"t-{number}",
        "account": source,
        "destination": destination,
        "amount": amount,
        "currency": "USD",
    }
