"""Faust transport ``ledger-kafka://``: aiokafka, with end offsets checked against a Fetch.

Tansu answers ListOffsets(latest) with the base offset of the last record batch + 1, not
the true log end, so Faust's table recovery (which takes its targets from
``consumer.end_offsets``) would stop short of the changelog tail and lose the last
writes. This transport corrects those targets with the high watermark of a real Fetch
(:func:`true_end_offsets`). On Apache Kafka the correction is a no-op: the corrected
value is never below the reported one.

It also leaves the consumer group on shutdown when the group is in generation 0, which
is where Tansu starts counting (Apache Kafka starts at 1): aiokafka leaves only from
generation 1 on, so a restarted worker waited out the stopped member's session first.

Use it with ``broker="ledger-kafka://host:port"``; the scheme is registered in the
``faust.transports`` entry-point group by this package's ``pyproject.toml``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, cast

import aiokafka.consumer.consumer as aiokafka_consumer
from aiokafka import AIOKafkaConsumer
from aiokafka.consumer.group_coordinator import GroupCoordinator as AIOKafkaGroupCoordinator
from aiokafka.errors import KafkaError
from aiokafka.protocol.group import LeaveGroupRequest
from aiokafka.structs import TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, ConsumerT

__all__ = [
    "Consumer",
    "ConsumerThread",
    "Transport",
    "true_end_offsets",
]

logger = logging.getLogger(__name__)

#: Upper bound for one :func:`true_end_offsets` call (connect, list offsets, fetch).
DEFAULT_TIMEOUT_S = 15.0
_POLL_MS = 200


async def true_end_offsets(
    bootstrap: str | Sequence[str],
    partitions: Sequence[TopicPartition],
    *,
    reported: Mapping[TopicPartition, int] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    client_kwargs: Mapping[str, Any] | None = None,
) -> dict[TopicPartition, int]:
    """Return the true end offset (offset of the last record + 1) of each partition.

    ``reported`` are end offsets already obtained from ListOffsets (``end_offsets``); when
    absent they are asked for here. For each non-empty partition one short-lived consumer
    (no group) seeks to ``reported - 1`` and fetches once: the Fetch response's high
    watermark, and the last record returned, give the true end. The result is never below
    the reported value, so on a broker whose ListOffsets is right (Apache Kafka) this
    returns ``reported`` unchanged.

    ``client_kwargs`` go to :class:`aiokafka.AIOKafkaConsumer` (security settings, ...).
    Raises :class:`TimeoutError` if the answer does not come within ``timeout_s``, and
    aiokafka's errors if the broker cannot be reached: a caller that needs the end must
    not proceed on a guess. The keys of the result are the objects passed in
    ``partitions``.
    """
    wanted = list(dict.fromkeys(partitions))
    if not wanted:
        return {}
    # aiokafka wants its own TopicPartition; faust's TP is an equal tuple.
    own = {tp: TopicPartition(tp.topic, tp.partition) for tp in wanted}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="latest",
        client_id="ledger-stream-end-offsets",
        **dict(client_kwargs or {}),
    )
    try:
        return await asyncio.wait_for(_probe(consumer, own, reported), timeout=timeout_s)
    except asyncio.TimeoutError as exc:
        raise TimeoutError(
            f"could not read the end offsets of {len(wanted)} partition(s) "
            f"from {bootstrap!r} within {timeout_s}s"
        ) from exc
    finally:
        await consumer.stop()


async def _probe(
    consumer: AIOKafkaConsumer,
    own: Mapping[TopicPartition, TopicPartition],
    reported: Mapping[TopicPartition, int] | None,
) -> dict[TopicPartition, int]:
    await consumer.start()
    tps = list(own.values())
    ends: dict[TopicPartition, int] = {}
    missing = list(tps)
    if reported is not None:
        for theirs, tp in own.items():
            value = reported.get(theirs)
            if value is not None:
                ends[tp] = value
        missing = [tp for tp in tps if tp not in ends]
    if missing:
        ends.update(await consumer.end_offsets(missing))
    beginnings = await consumer.beginning_offsets(tps)
    probe = [tp for tp in tps if ends[tp] > beginnings[tp]]

    result = dict(ends)
    if probe:
        consumer.assign(probe)
        for tp in probe:
            consumer.seek(tp, ends[tp] - 1)
        pending = set(probe)
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=_POLL_MS)
            for tp, records in batch.items():
                if records:
                    result[tp] = max(result[tp], records[-1].offset + 1)
            for tp in list(pending):
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    result[tp] = max(result[tp], highwater)
                    pending.discard(tp)
        for tp in probe:
            if result[tp] != ends[tp]:
                logger.debug(
                    "end offset of %s-%s corrected: ListOffsets said %d, Fetch says %d",
                    tp.topic,
                    tp.partition,
                    ends[tp],
                    result[tp],
                )
    return {theirs: result[tp] for theirs, tp in own.items()}


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread, with high watermarks checked by a Fetch."""

    end_offsets_timeout_s: ClassVar[float] = DEFAULT_TIMEOUT_S

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        reported = await super()._highwaters(partitions)
        if self.consumer.in_transaction:
            # last stable offsets come from Fetch responses already.
            return reported
        transport = cast(faust_aiokafka.Transport, self.transport)
        conf = self.app.conf
        started = time.monotonic()
        corrected = await true_end_offsets(
            faust_aiokafka.server_list(transport.url, transport.default_port),
            cast(list[TopicPartition], list(reported)),
            reported=cast(Mapping[TopicPartition, int], reported),
            timeout_s=self.end_offsets_timeout_s,
            client_kwargs=faust_aiokafka.credentials_to_aiokafka_auth(
                conf.broker_credentials, conf.ssl_context
            ),
        )
        changed = sum(1 for tp, v in corrected.items() if v != reported[cast(TP, tp)])
        if changed:
            logger.debug(
                "raised %d of %d high watermark(s) to the Fetch high watermark (%.3fs)",
                changed,
                len(corrected),
                time.monotonic() - started,
            )
        return cast(Mapping[TP, int], corrected)


class Consumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer using :class:`ConsumerThread`."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class GroupCoordinator(AIOKafkaGroupCoordinator):
    """aiokafka's group coordinator, leaving the group from generation 0 too."""

    async def _maybe_leave_group(self) -> None:
        if self.generation == 0 and self._group_instance_id is None:
            try:
                await self._send_req(LeaveGroupRequest(self.group_id, self.member_id))
            except KafkaError as error:
                logger.warning("LeaveGroup request failed: %s", error)
            self.reset_generation()
            return
        await super()._maybe_leave_group()


# AIOKafkaConsumer builds its coordinator from this module-level name; every consumer of
# a process that uses this transport leaves its group properly on the embedded broker.
aiokafka_consumer.GroupCoordinator = GroupCoordinator


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport (``ledger-kafka://``) with corrected end offsets."""

    Consumer: ClassVar[type[ConsumerT]] = Consumer
