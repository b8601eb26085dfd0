"""What a producer service sees from LedgerClient when something is wrong."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from ledger_stream.client import LedgerClient
from ledger_stream.errors import BrokerUnavailable, ConfigurationError, ResultTimeout
from ledger_stream.kafka.broker import EmbeddedBroker, free_port
from ledger_stream.kafka.reading import reader, true_ends
from ledger_stream.partitioning import partition_of
from ledger_stream.settings import Settings


async def test_client_gives_up_on_an_unreachable_broker_after_its_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    with pytest.raises(BrokerUnavailable, match=f"no Kafka broker answered at {bootstrap}"):
        async with LedgerClient(bootstrap, connect_attempts_max=2):
            pass
    assert "retrying in 0.5 s (attempt 1 of 2)" in caplog.text


async def test_client_names_the_missing_topic_and_the_prefix_setting(
    broker: EmbeddedBroker,
) -> None:
    with pytest.raises(ConfigurationError, match="LEDGER_TOPIC_PREFIX"):
        async with LedgerClient(broker.bootstrap, topic_prefix="no-such-ledger."):
            pass


async def test_without_a_worker_a_command_times_out_with_advice(ledger: Settings) -> None:
    async with LedgerClient(
        ledger.bootstrap_servers, topic_prefix=ledger.topic_prefix, timeout_s=1
    ) as client:
        with pytest.raises(ResultTimeout, match="Re-submitting the same command is safe"):
            await client.open_account("alice", "USD", command_id="lonely")


async def test_client_refuses_a_float_amount_before_sending(ledger: Settings) -> None:
    async with LedgerClient(ledger.bootstrap_servers, topic_prefix=ledger.topic_prefix) as client:
        with pytest.raises(ValueError, match="not float"):
            await client.deposit("alice", 12.5, "USD")  # type: ignore[arg-type]


async def test_flush_waits_for_batches_already_on_their_way(ledger: Settings) -> None:
    async with LedgerClient(
        ledger.bootstrap_servers, topic_prefix=ledger.topic_prefix, batch_size_max=2
    ) as client:
        for number in range(3):  # a full batch of two goes at once, the third waits
            client.send_raw("alice", b'{"n": %d}' % number)
        await client.flush()
        partition = partition_of("alice", ledger.partitions)
        commands = TopicPartition(f"{ledger.topic_prefix}commands", partition)
        consumer = reader(ledger.bootstrap_servers)
        await consumer.start()
        try:
            ends = await true_ends(consumer, [commands])
        finally:
            await consumer.stop()
        assert ends[commands] == 2
