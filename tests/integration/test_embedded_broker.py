"""The embedded broker: lifecycle, a real Kafka round trip, and its known differences."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

from ledger_stream.kafka.broker import EmbeddedBroker, free_port, probe_metadata
from ledger_stream.kafka.reading import reader, true_ends


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


def test_session_broker_answers_metadata(broker: EmbeddedBroker) -> None:
    host, port = broker.bootstrap.rsplit(":", 1)
    assert broker.pid is not None and _alive(broker.pid)
    assert probe_metadata(host, int(port)) >= 1


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_context_manager_starts_and_stops_by_pid() -> None:
    with EmbeddedBroker() as own:
        pid = own.pid
        assert pid is not None and _alive(pid)
        host, port = own.bootstrap.rsplit(":", 1)
        assert probe_metadata(host, int(port)) >= 1
    assert own.pid is None
    assert not _alive(pid)
    own.stop()  # idempotent


def test_start_fails_loudly_when_the_port_is_taken() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        embedded = EmbeddedBroker(port=port)
        try:
            with pytest.raises(RuntimeError, match="embedded broker") as info:
                embedded.start(ready_timeout_s=10)
        finally:
            embedded.stop()
    assert "Address in use" in str(info.value)
    assert embedded.pid is None
    # a failed start keeps its log for diagnosis; this one was expected
    assert embedded.log_path is not None
    embedded.log_path.unlink()


async def test_produce_and_consume_round_trip(broker: EmbeddedBroker) -> None:
    topic = f"roundtrip-{uuid.uuid4().hex[:8]}"
    await _create_topic(broker.bootstrap, topic, 2)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    await producer.start()
    try:
        sent = [await producer.send(topic, b"%d" % i, key=b"k%d" % i) for i in range(200)]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen: set[bytes] = set()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while len(seen) < 200 and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                seen.update(r.value for r in records if r.value is not None)
    finally:
        await consumer.stop()
    assert seen == {b"%d" % i for i in range(200)}


async def test_list_offsets_latest_is_at_most_the_fetch_high_watermark(
    broker: EmbeddedBroker,
) -> None:
    """Documents the difference `ledger_stream.kafka.reading.true_ends` works around.

    On Tansu ListOffsets(latest) gives the last batch's base offset + 1; Fetch carries the
    true high watermark. On Apache Kafka both agree. Either way: reported <= true.
    """
    topic = f"listoffsets-{uuid.uuid4().hex[:8]}"
    await _create_topic(broker.bootstrap, topic, 1)
    await _produce_in_batches(broker.bootstrap, topic, 300)

    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        reported = (await consumer.end_offsets([tp]))[tp]
        consumer.assign([tp])
        consumer.seek(tp, 0)
        count = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while count < 300 and loop.time() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500)
            count += len(batch.get(tp, []))
        highwater = consumer.highwater(tp)
    finally:
        await consumer.stop()
    assert count == 300
    assert highwater == 300
    assert 0 < reported <= highwater


async def test_true_ends_reads_past_a_short_list_offsets(broker: EmbeddedBroker) -> None:
    """Batches of many records: ListOffsets may stop at the last batch's base offset + 1,
    `true_ends` must not."""
    topic = f"trueends-{uuid.uuid4().hex[:8]}"
    await _create_topic(broker.bootstrap, topic, 2)
    await _produce_in_batches(broker.bootstrap, topic, 300)
    consumer = reader(broker.bootstrap)
    await consumer.start()
    try:
        ends = await true_ends(consumer, [TopicPartition(topic, 0), TopicPartition(topic, 1)])
    finally:
        await consumer.stop()
    assert ends == {TopicPartition(topic, 0): 300, TopicPartition(topic, 1): 0}


async def _produce_in_batches(bootstrap: str, topic: str, count: int) -> None:
    """`count` records on partition 0, lingering so that they travel in a few batches."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50)
    await producer.start()
    try:
        sent = [await producer.send(topic, b"x", partition=0) for _ in range(count)]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
