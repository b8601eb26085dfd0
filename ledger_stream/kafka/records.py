"""Sending many records with few produce requests: one aiokafka batch per topic partition.

Per-record `send` costs more than the ledger's whole decision for that record, so outputs
are grouped by topic partition and handed to aiokafka as ready-made batches.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata

Headers = list[tuple[str, bytes]]


class OutRecord(NamedTuple):
    """One record to send (a tuple: batches make hundreds of thousands of them)."""

    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    headers: Headers | None = None


async def send_records(
    producer: AIOKafkaProducer,
    records: Iterable[OutRecord],
    on_first_ack: Callable[[], None] | None = None,
) -> dict[tuple[str, int], int]:
    """Send `records` (in order within each topic partition) and wait for every ack;
    `on_first_ack` is called once the first batch is acked and others may not be.

    Returns the offset of the last record written to each (topic, partition).
    """
    groups: dict[tuple[str, int], list[OutRecord]] = defaultdict(list)
    for record in records:
        groups[(record.topic, record.partition)].append(record)
    pending: list[tuple[tuple[str, int], int, asyncio.Future[RecordMetadata]]] = []
    for (topic, partition), group in groups.items():
        batch = producer.create_batch()
        count = 0
        for record in group:
            appended = batch.append(
                key=record.key, value=record.value, timestamp=None, headers=record.headers or []
            )
            if appended is None:  # batch full: send it and start the next one
                future = await producer.send_batch(batch, topic, partition=partition)
                pending.append(((topic, partition), count, future))
                batch, count = producer.create_batch(), 0
                appended = batch.append(
                    key=record.key,
                    value=record.value,
                    timestamp=None,
                    headers=record.headers or [],
                )
                if appended is None:
                    raise ValueError(
                        f"a record for {topic} is larger than the producer's max_batch_size"
                    )
            count += 1
        future = await producer.send_batch(batch, topic, partition=partition)
        pending.append(((topic, partition), count, future))
    if on_first_ack is not None and pending:
        await asyncio.wait(
            [future for _, _, future in pending], return_when=asyncio.FIRST_COMPLETED
        )
        on_first_ack()
    metadata = await asyncio.gather(*(future for _, _, future in pending))
    last: dict[tuple[str, int], int] = {}
    for (tp, count, _), meta in zip(pending, metadata, strict=True):
        last[tp] = max(last.get(tp, -1), meta.offset + count - 1)
    return last
