"""Producers in other languages put a command where its writer is: librdkafka's murmur2
partitioner (the Java client's) agrees with `partition_of` on the embedded broker."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from ledger_stream.kafka.broker import EmbeddedBroker
from ledger_stream.partitioning import partition_of

ACCOUNTS = ["alice", "bob", "acct-00001", "ünïcode", "x" * 120, *(f"user-{i}" for i in range(200))]


@pytest.mark.parametrize("partitions", [3, 8])
def test_librdkafka_murmur2_puts_each_account_on_partition_of(
    broker: EmbeddedBroker, partitions: int
) -> None:
    topic = f"partitioning-{uuid.uuid4().hex}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "partitioner": "murmur2_random"})
    landed: dict[str, int] = {}
    for account in ACCOUNTS:
        producer.produce(
            topic,
            key=account.encode(),
            value=b"{}",
            on_delivery=lambda error, message, account=account: landed.__setitem__(
                account, -1 if error else message.partition()
            ),
        )
    assert producer.flush(30) == 0
    assert landed == {account: partition_of(account, partitions) for account in ACCOUNTS}
