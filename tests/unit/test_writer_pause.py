"""A nearly idle writer on the embedded broker pauses its partitions while it writes a batch
(`agents.writer.pause_while_writing`), so its next fetch is sent after the legs it sends
itself; under load, and on Apache Kafka, it never does. The consumer is aiokafka's own, not
started: pausing is its local state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.writer import NEARLY_IDLE_RECORDS_MAX, pause_while_writing

COMMANDS = TopicPartition("commands", 3)
LEGS = TopicPartition("legs", 3)


@pytest.fixture
async def consumer() -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")
    consumer.assign([COMMANDS, LEGS])
    yield consumer
    await consumer.stop()


def batch_of(records: int) -> dict[TopicPartition, list[Any]]:
    return {COMMANDS: [object()] * records}


async def test_a_nearly_idle_writer_pauses_every_partition_while_it_writes(
    consumer: AIOKafkaConsumer,
) -> None:
    with pause_while_writing(consumer, batch_of(NEARLY_IDLE_RECORDS_MAX), embedded=True):
        assert consumer.paused() == {COMMANDS, LEGS}  # the legs' too, though none came
    assert consumer.paused() == set()


async def test_partitions_are_resumed_when_the_batch_fails_or_one_was_revoked(
    consumer: AIOKafkaConsumer,
) -> None:
    with (
        pytest.raises(RuntimeError),
        pause_while_writing(consumer, batch_of(1), embedded=True),
    ):
        raise RuntimeError("the batch")
    assert consumer.paused() == set()
    with pause_while_writing(consumer, batch_of(1), embedded=True):
        consumer.assign([COMMANDS])  # a rebalance took LEGS meanwhile
        consumer.pause(COMMANDS)
    assert consumer.paused() == set()


@pytest.mark.parametrize(("records", "embedded"), [(NEARLY_IDLE_RECORDS_MAX + 1, True), (1, False)])
async def test_under_load_or_on_apache_kafka_the_writer_goes_on_fetching(
    consumer: AIOKafkaConsumer, records: int, embedded: bool
) -> None:
    with pause_while_writing(consumer, batch_of(records), embedded):
        assert consumer.paused() == set()
