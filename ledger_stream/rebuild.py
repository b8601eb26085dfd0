"""`ledger-stream rebuild`: fold the journal again from offset 0 into fresh read models, and
compare them with the live ones.

The live read models of a partition (`<data_dir>/read/partition-<n>`) are read as a RocksDB
secondary, so the worker that writes them goes on meanwhile. The fresh fold stops at the
journal offset the live one had reached, so the two describe the same prefix of the journal
and must be identical, key for key. With `replace`, the fresh fold goes to the journal's end
and takes the live one's place, uncompared (the worker must be stopped: RocksDB refuses a
second writer).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from ledger_stream.errors import LedgerError
from ledger_stream.kafka.reading import read_range, reader, true_ends
from ledger_stream.kafka.security import connection_options
from ledger_stream.messages import JournalEvent, from_json
from ledger_stream.readmodel import ReadFold
from ledger_stream.settings import Settings
from ledger_stream.state.readstore import ReadStore, read_store_path
from ledger_stream.topics import TopicNames

logger = logging.getLogger(__name__)

DIFFERENCES_SHOWN_MAX = 10


@dataclass
class Rebuilt:
    partition: int
    end: int  # journal offset folded up to
    events: int
    keys: int
    compared: bool  # a live store was there to compare with
    differences: list[str] = field(default_factory=list)


async def rebuild(settings: Settings, into: Path | None, replace: bool) -> list[Rebuilt]:
    topics = TopicNames.from_settings(settings)
    identity = f"{topics.journal}/{settings.partitions}"
    parent = into or settings.data_dir
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rebuild-", dir=parent))
    consumer = reader(settings.bootstrap_servers, **connection_options(settings))
    await consumer.start()
    rebuilt = []
    try:
        for number in range(settings.partitions):
            live_path = read_store_path(settings.data_dir, number)
            fresh_path = work / f"partition-{number}"
            fresh = ReadStore(fresh_path, identity)
            if replace:
                _unused(live_path, identity)
            live = None if replace else _live(live_path, work / f"secondary-{number}")
            tp = TopicPartition(topics.journal, number)
            end = (await true_ends(consumer, [tp]))[tp]
            if live is not None:
                end = live.position(topics.journal)
            events = await _fold(consumer, tp, end, fresh, settings)
            report = Rebuilt(number, end, events, sum(1 for _ in fresh.models()), live is not None)
            if live is not None:
                report.differences = _differences(live, fresh)
                live.close()
            fresh.close()
            if replace:
                shutil.rmtree(live_path, ignore_errors=True)
                live_path.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(fresh_path), live_path)
            rebuilt.append(report)
    finally:
        await consumer.stop()
        if into is None:
            shutil.rmtree(work, ignore_errors=True)
    return rebuilt


def _live(path: Path, secondary: Path) -> ReadStore | None:
    """The live read models at `path`, read as they are written; None where there are none."""
    return ReadStore.secondary(path, secondary) if path.exists() else None


def _unused(path: Path, identity: str) -> None:
    """Refuse to replace read models a worker has open (RocksDB lets one process write)."""
    if not path.exists():
        return
    try:
        ReadStore(path, identity).close()
    except Exception as error:
        raise LedgerError(
            f"cannot open {path} to replace it ({error}); stop the worker that owns it first"
        ) from error


async def _fold(
    consumer: AIOKafkaConsumer, tp: TopicPartition, end: int, store: ReadStore, settings: Settings
) -> int:
    events = 0
    async with aclosing(read_range(consumer, {tp: 0}, {tp: end})) as batches:
        async for records in batches:
            fold = ReadFold(store.get, settings.anomaly_rules)
            for record in records:
                if record.value is not None:
                    fold.event(from_json(record.value, JournalEvent))
            events += fold.out.folded
            store.write(fold.out.writes, {tp.topic: records[-1].offset + 1})
    return events


def _differences(live: ReadStore, fresh: ReadStore) -> list[str]:
    ours = dict(live.models())
    theirs = dict(fresh.models())
    found = []
    for key in sorted(ours.keys() | theirs.keys()):
        if ours.get(key) != theirs.get(key):
            found.append(
                f"{key.decode()}: live {_short(ours.get(key))}, rebuilt {_short(theirs.get(key))}"
            )
            if len(found) == DIFFERENCES_SHOWN_MAX:
                break
    return found


def _short(value: bytes | None) -> str:
    if value is None:
        return "absent"
    text = value.decode(errors="replace")
    return text if len(text) <= 120 else text[:117] + "..."
