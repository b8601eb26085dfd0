"""A tiny Faust worker with a RocksDB table, for the table-recovery integration tests.

Run as ``python faust_recovery_app.py worker -l info``; configured by environment:
RECOVERY_BROKER (``ledger-kafka://host:port``), RECOVERY_APP_ID, RECOVERY_DATA_DIR,
RECOVERY_REPORT (JSON file this worker rewrites every tick), RECOVERY_PARTITIONS and
RECOVERY_MODE: ``write`` puts every input record into the table (``key -> value``) from
batches of ``take_events``; ``check`` reads input but writes nothing, so the table holds
only what recovery brought back.
"""

from __future__ import annotations

import json
import os
import weakref
from pathlib import Path
from typing import Any

import faust
from faust.streams import _current_event

BROKER = os.environ["RECOVERY_BROKER"]
APP_ID = os.environ["RECOVERY_APP_ID"]
DATA_DIR = os.environ["RECOVERY_DATA_DIR"]
REPORT = Path(os.environ["RECOVERY_REPORT"])
PARTITIONS = int(os.environ.get("RECOVERY_PARTITIONS", "2"))
MODE = os.environ.get("RECOVERY_MODE", "write")
INPUT_TOPIC = f"{APP_ID}-input"

app = faust.App(
    APP_ID,
    broker=BROKER,
    store="rocksdb://",
    datadir=DATA_DIR,
    topic_partitions=PARTITIONS,
    topic_replication_factor=1,
    web_enabled=False,
    # Tansu admits a joining member only after about the rebalance timeout (30 s by
    # default): keep it short.
    broker_rebalance_timeout=5,
    broker_session_timeout=6,
    broker_heartbeat_interval=1,
    broker_commit_every=500,
    broker_commit_interval=0.5,
    # Bigger changelog batches: the tail of each changelog partition is then a
    # multi-record batch, the case Tansu's ListOffsets gets wrong.
    producer_linger=0.05,
    consumer_auto_offset_reset="earliest",
)

source = app.topic(INPUT_TOPIC, key_type=bytes, value_type=bytes, partitions=PARTITIONS)
values = app.Table(
    "values",
    default=int,
    key_type=str,
    value_type=int,
    partitions=PARTITIONS,
)

_stats: dict[str, int] = {"events": 0, "batches": 0, "written": 0, "ticks": 0}


@app.agent(source)
async def process(stream: Any) -> None:
    async for events in stream.take_events(1000, within=0.3):
        _stats["batches"] += 1
        _stats["events"] += len(events)
        if MODE != "write":
            continue
        for event in events:
            # Tables route a write by the current event's partition, and the agent body
            # does not run in the context that saw the event: set it per event.
            _current_event.set(weakref.ref(event))
            values[event.key.decode()] = int(event.value)
            _stats["written"] += 1


@app.timer(interval=0.25)
async def report() -> None:
    _stats["ticks"] += 1
    recovery = app.tables.recovery
    ready = recovery.completed.is_set() and not app.rebalancing and not recovery.in_recovery
    count = 0
    total = 0
    if ready:
        for _key, value in values.items():
            count += 1
            total += value
    data: dict[str, Any] = {
        "pid": os.getpid(),
        "mode": MODE,
        "ready": ready,
        "count": count,
        "sum": total,
        "transport": type(app.transport).__module__,
        **_stats,
    }
    tmp = REPORT.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(REPORT)


if __name__ == "__main__":
    app.main()
