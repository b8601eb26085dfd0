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


async def test_a_nearly_idle_writer_pauses_every_partition_and_gets_them_back(
    consumer: AIOKafkaConsumer,
) -> None:
    paused = pause_while_writing(consumer, batch_of(NEARLY_IDLE_RECORDS_MAX), embedded=True)
    assert paused == {COMMANDS, LEGS}  # the legs' partition too, though the batch had none
    assert consumer.paused() == {COMMANDS, LEGS}
    consumer.resume(*(paused & consumer.assignment()))
    assert consumer.paused() == set()


@pytest.mark.parametrize(("records", "embedded"), [(NEARLY_IDLE_RECORDS_MAX + 1, True), (1, False)])
async def test_under_load_or_on_apache_kafka_the_writer_goes_on_fetching(
    consumer: AIOKafkaConsumer, records: int, embedded: bool
) -> None:
    assert pause_while_writing(consumer, batch_of(records), embedded) == frozenset()
    assert consumer.paused() == set()
