"""Reading topic partitions from a position to their true end.

The end is the high watermark of a Fetch response, never ListOffsets alone: the embedded
broker (Tansu) answers ListOffsets(latest) with the base offset of the last record batch + 1,
so a reader that trusted it would stop short of the last records of a batch. The end is
taken once, when the read starts; records written after that are not waited for.

A reader may be shared (the writer's state logs share one): each read assigns the reader
the partitions it reads, so reads of one reader take turns.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

logger = logging.getLogger(__name__)

POLL_MS = 200
RECORDS_PER_POLL_MAX = 10_000

Record: TypeAlias = "ConsumerRecord[bytes, bytes]"

_turns: weakref.WeakKeyDictionary[AIOKafkaConsumer, asyncio.Lock] = weakref.WeakKeyDictionary()


def _turn(consumer: AIOKafkaConsumer) -> asyncio.Lock:
    """The lock that makes the reads of one reader take turns."""
    return _turns.setdefault(consumer, asyncio.Lock())


def reader(bootstrap_servers: str, **options: Any) -> AIOKafkaConsumer:
    """A consumer without a group, for reading partitions it is assigned; `options` go to
    AIOKafkaConsumer (a secured cluster's `connection_options` among them)."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        **options,
    )


async def true_ends(
    consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition]
) -> dict[TopicPartition, int]:
    """The end offset (last offset + 1) of each partition, from a Fetch's high watermark.

    `consumer` must be started; it is assigned `partitions` (its other assignments end).
    """
    if not partitions:
        return {}
    async with _turn(consumer):
        return await _true_ends(consumer, partitions)


async def _true_ends(
    consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition]
) -> dict[TopicPartition, int]:
    listed = await consumer.end_offsets(list(partitions))
    consumer.assign(list(partitions))
    ends: dict[TopicPartition, int] = {}
    for tp in partitions:
        # One record before what ListOffsets says, so the Fetch answers with data and a
        # high watermark even where the listed end is short.
        consumer.seek(tp, max(0, listed[tp] - 1))
    pending = set(partitions)
    while pending:
        await consumer.getmany(*pending, timeout_ms=POLL_MS, max_records=1)
        for tp in list(pending):
            highwater = consumer.highwater(tp)
            if highwater is not None:
                ends[tp] = max(highwater, listed[tp])
                pending.discard(tp)
    return ends


async def read_range(
    consumer: AIOKafkaConsumer,
    starts: Mapping[TopicPartition, int],
    ends: Mapping[TopicPartition, int],
) -> AsyncGenerator[list[Record], None]:
    """Yield the records of each partition from `starts` up to (not including) `ends`, a
    list at a time, in offset order within each partition. `consumer` must be started."""
    pending = {tp for tp in starts if starts[tp] < ends[tp]}
    if not pending:
        return
    async with _turn(consumer):
        consumer.assign(list(pending))
        for tp in pending:
            consumer.seek(tp, starts[tp])
        while pending:
            batches = await consumer.getmany(
                *pending, timeout_ms=POLL_MS, max_records=RECORDS_PER_POLL_MAX
            )
            for tp, records in batches.items():
                wanted = [r for r in records if r.offset < ends[tp]]
                if wanted:
                    yield wanted
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)


async def read_topic(
    bootstrap_servers: str,
    topic: str,
    partitions: Sequence[int] | None = None,
    security: Mapping[str, Any] | None = None,
) -> AsyncGenerator[list[Record], None]:
    """Every record of `topic` (or of the given partitions) from the log start to the true
    end as it is when the read starts, a list at a time. `security`: the connection options
    of a secured cluster (`ledger_stream.kafka.security.connection_options`)."""
    consumer = reader(bootstrap_servers, **(security or {}))
    await consumer.start()
    try:
        await consumer.topics()
        numbers = partitions
        if numbers is None:
            numbers = sorted(consumer.partitions_for_topic(topic) or ())
        tps = [TopicPartition(topic, p) for p in numbers]
        ends = await true_ends(consumer, tps)
        starts = await consumer.beginning_offsets(tps)
        async for records in read_range(consumer, starts, ends):
            yield records
    finally:
        await consumer.stop()
