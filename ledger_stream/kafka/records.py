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
    timestamp_ms: int | None = None  # None: the producer's clock


async def send_records(
    producer: AIOKafkaProducer,
    records: Iterable[OutRecord],
    on_first_ack: Callable[[], None] | None = None,
) -> dict[str, int]:
    """Send `records` (in order within each topic partition) and wait for every ack;
    `on_first_ack` is called once the first batch is acked and others may not be. Returns
    the bytes of keys and values sent, by topic.
    """
    groups: dict[tuple[str, int], list[OutRecord]] = defaultdict(list)
    for record in records:
        groups[(record.topic, record.partition)].append(record)
    pending: list[asyncio.Future[RecordMetadata]] = []
    sizes: dict[str, int] = defaultdict(int)
    for (topic, partition), group in groups.items():
        batch = producer.create_batch()
        for record in group:
            sizes[topic] += len(record.key or b"") + len(record.value or b"")
            fields = {
                "key": record.key,
                "value": record.value,
                "headers": record.headers or [],
                "timestamp": record.timestamp_ms,
            }
            if batch.append(**fields) is None:  # full: send it, start anew
                pending.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                if batch.append(**fields) is None:
                    raise ValueError(
                        f"a record for {topic} is larger than the producer's max_batch_size"
                    )
        pending.append(await producer.send_batch(batch, topic, partition=partition))
    if on_first_ack is not None and pending:
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        on_first_ack()
    await asyncio.gather(*pending)
    return sizes
