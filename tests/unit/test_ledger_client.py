"""LedgerClient on a fake producer and a fake results stream: failed sends reach the caller,
timeouts name the command, and retries re-publish the identical command."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

import orjson
import pytest
from aiokafka.errors import KafkaTimeoutError

from ledger_stream.client import LedgerClient
from ledger_stream.core import fingerprint
from ledger_stream.errors import ResultTimeout, SendFailed
from ledger_stream.intake import RECORD_BYTES_MAX
from ledger_stream.messages import COMMAND_ADAPTER, Command, Result, to_json
from ledger_stream.partitioning import partition_of

PARTITIONS = 4
REPLY_PARTITION = 3
ALICE, BOB = "alice", "bob"
assert partition_of(ALICE, PARTITIONS) != partition_of(BOB, PARTITIONS)


class Record(NamedTuple):
    topic: str
    key: bytes
    value: bytes
    partition: int


class FakeProducer:
    """Takes records as AIOKafkaProducer.send does; refuses those for `refused_partitions`."""

    def __init__(self) -> None:
        self.sent: list[Record] = []
        self.refused: list[Record] = []
        self.refused_partitions: set[int] = set()
        self.on_sent: Callable[[Record], None] = lambda record: None
        self.stopped = False
        self.holding = False  # when set, acks wait for `release`
        self.held: list[asyncio.Future[None]] = []

    async def send(
        self, topic: str, value: bytes, *, key: bytes, partition: int
    ) -> asyncio.Future[None]:
        record = Record(topic, key, value, partition)
        delivery: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if partition in self.refused_partitions:
            self.refused.append(record)
            delivery.set_exception(KafkaTimeoutError("no leader acknowledged the record"))
        elif self.holding:
            self.sent.append(record)
            self.held.append(delivery)
        else:
            self.sent.append(record)
            delivery.set_result(None)
            self.on_sent(record)
        return delivery

    def release(self) -> None:
        """Ack the records held so far."""
        self.holding = False
        for delivery, record in zip(self.held, self.sent[-len(self.held) :], strict=True):
            delivery.set_result(None)
            self.on_sent(record)
        self.held.clear()

    async def stop(self) -> None:
        self.stopped = True


class FakeResults:
    """The reply partition: result records the test publishes, read a poll at a time."""

    def __init__(self) -> None:
        self._polls: asyncio.Queue[list[bytes | None]] = asyncio.Queue()

    def publish(self, result: Result) -> None:
        self._polls.put_nowait([to_json(result)])

    def __aiter__(self) -> FakeResults:
        return self

    async def __anext__(self) -> list[bytes | None]:
        return await self._polls.get()


@asynccontextmanager
async def attached(
    producer: FakeProducer, results: FakeResults, **options: Any
) -> AsyncIterator[LedgerClient]:
    client = LedgerClient("fake:9092", **({"linger_ms": 1} | options))
    client.attach(producer, results, partitions=PARTITIONS, reply_partition=REPLY_PARTITION)
    try:
        yield client
    finally:
        await client.stop()


def deposit(command_id: str, account: str = ALICE) -> Command:
    fields = {"command_id": command_id, "account": account, "amount": 100, "currency": "USD"}
    return COMMAND_ADAPTER.validate_python({"type": "deposit", **fields})


def accepted(command: Command, *, duplicate: bool = False) -> Result:
    return Result(
        command_id=command.command_id,
        status="accepted",
        duplicate=duplicate,
        type=command.type,
        account=command.account,
        payload_digest=fingerprint(command),
    )


async def until(condition: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), 1.0)


async def test_a_refused_record_fails_the_submits_of_that_record_and_no_other() -> None:
    producer, results = FakeProducer(), FakeResults()
    producer.refused_partitions.add(partition_of(ALICE, PARTITIONS))
    async with attached(producer, results, timeout_s=5) as client:
        alice_1, alice_2, bob = deposit("a-1"), deposit("a-2"), deposit("b-1", BOB)
        refused = [asyncio.create_task(client.submit(c)) for c in (alice_1, alice_2)]
        waiting = asyncio.create_task(client.submit(bob))
        errors = await asyncio.gather(*refused, return_exceptions=True)

        failures = [error for error in errors if isinstance(error, SendFailed)]
        assert [failure.command_id for failure in failures] == ["a-1", "a-2"]
        first = failures[0]
        assert first.command == alice_1.model_copy(update={"reply_partition": REPLY_PARTITION})
        assert isinstance(first.cause, KafkaTimeoutError)
        assert "command 'a-1'" in str(first)
        assert "may or may not have reached Kafka" in str(first)
        assert "Re-submitting the same command is safe" in str(first)
        assert [command_id for r in producer.refused for command_id in _ids(r)] == ["a-1", "a-2"]

        assert not waiting.done()
        results.publish(accepted(bob))
        assert (await waiting).status == "accepted"


async def test_flush_raises_for_a_refused_record_it_waited_for() -> None:
    producer, results = FakeProducer(), FakeResults()
    producer.refused_partitions.add(partition_of(ALICE, PARTITIONS))
    async with attached(producer, results, timeout_s=5, linger_ms=60_000) as client:
        waiting = asyncio.create_task(client.submit(deposit("a-1")))
        await asyncio.sleep(0)  # the submit queues its record, then waits for the result
        client.send_raw(ALICE, b'{"raw": 1}')
        client.send_raw(BOB, b'{"raw": 2}')

        with pytest.raises(SendFailed, match=r"command 'a-1' and 1 raw record") as flushed:
            await client.flush()
        assert (flushed.value.command_ids, flushed.value.records) == (("a-1",), 2)
        with pytest.raises(SendFailed, match="command 'a-1'"):
            await waiting
        assert [record.value for record in producer.sent] == [b'{"raw": 2}']


async def test_a_raw_record_refused_before_a_flush_is_raised_by_the_next_flush_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    producer, results = FakeProducer(), FakeResults()
    producer.refused_partitions.add(partition_of(ALICE, PARTITIONS))
    async with attached(producer, results, batch_size_max=1) as client:
        client.send_raw(ALICE, b'{"raw": 1}')  # a full batch: on its way at once
        await until(lambda: "sending 1 raw record to Kafka failed" in caplog.text)

        with pytest.raises(SendFailed, match="1 raw record to Kafka failed"):
            await client.flush()
        await client.flush()


async def test_a_timeout_carries_the_command_and_its_id() -> None:
    producer, results = FakeProducer(), FakeResults()
    async with attached(producer, results, timeout_s=0.02) as client:
        with pytest.raises(ResultTimeout, match="Re-submitting the same command is safe") as timed:
            await client.deposit(ALICE, 100, "USD", command_id="lonely")

    assert timed.value.command_id == "lonely"
    assert timed.value.command.command_id == "lonely"
    assert timed.value.command.reply_partition == REPLY_PARTITION
    assert timed.value.attempts == 1


async def test_attempts_max_republishes_the_identical_record_and_returns_the_next_answer() -> None:
    producer, results = FakeProducer(), FakeResults()
    command = deposit("again")

    def answer_the_second(record: Record) -> None:
        if len(producer.sent) == 2:
            results.publish(accepted(command, duplicate=True))

    producer.on_sent = answer_the_second
    async with attached(producer, results, timeout_s=0.05) as client:
        result = await client.submit(command, attempts_max=3)

    assert result == accepted(command, duplicate=True)
    first, second = producer.sent
    assert first == second
    assert COMMAND_ADAPTER.validate_json(first.value) == command.model_copy(
        update={"reply_partition": REPLY_PARTITION}
    )


async def test_spent_attempts_raise_the_last_timeout_after_as_many_publications() -> None:
    producer, results = FakeProducer(), FakeResults()
    async with attached(producer, results, timeout_s=0.02) as client:
        with pytest.raises(ResultTimeout, match="on each of 3 attempts") as timed:
            await client.transfer(ALICE, BOB, 100, "USD", command_id="t-1", attempts_max=3)

    assert (timed.value.command_id, timed.value.attempts) == ("t-1", 3)
    assert len({record.value for record in producer.sent}) == 1
    assert len(producer.sent) == 3


async def test_attempts_max_below_one_is_refused_before_sending() -> None:
    producer, results = FakeProducer(), FakeResults()
    async with attached(producer, results) as client:
        with pytest.raises(ValueError, match="attempts_max must be at least 1"):
            await client.submit(deposit("none"), attempts_max=0)
    assert producer.sent == []


async def test_a_command_goes_at_once_and_those_behind_it_go_as_one_record() -> None:
    producer, results = FakeProducer(), FakeResults()

    def answer_each(record: Record) -> None:
        for command_id in _ids(record):
            results.publish(accepted(deposit(command_id)))

    producer.on_sent = answer_each
    producer.holding = True
    async with attached(producer, results, timeout_s=5, linger_ms=60_000) as client:
        commands = [deposit(f"d-{number}") for number in range(4)]
        answers = asyncio.gather(*(client.submit(command) for command in commands))
        while not producer.sent:  # the first command of an idle partition does not linger
            await asyncio.sleep(0)
        assert [_ids(record) for record in producer.sent] == [["d-0"]]
        producer.release()  # its ack sends what queued up behind it, without the linger
        answered = await answers

    assert [answer.command_id for answer in answered] == ["d-0", "d-1", "d-2", "d-3"]
    assert [_ids(record) for record in producer.sent] == [["d-0"], ["d-1", "d-2", "d-3"]]
    assert {record.key for record in producer.sent} == {ALICE.encode()}
    assert producer.stopped


def _ids(record: Record) -> list[str]:
    """The command ids a command record carries (one command, or an array of them)."""
    value = orjson.loads(record.value)
    return [command["command_id"] for command in (value if isinstance(value, list) else [value])]


async def test_a_batch_is_split_before_its_record_passes_the_size_limit() -> None:
    producer, results = FakeProducer(), FakeResults()
    metadata = {f"k{i}": "v" * 500 for i in range(32)}  # about 17 KiB a command
    async with attached(producer, results, batch_size_max=500) as client:
        for i in range(120):
            command = deposit(f"big-{i}").model_copy(update={"metadata": metadata})
            client.send_raw(ALICE, command.model_dump_json().encode())
        await client.flush()

    sizes = [len(record.value) for record in producer.sent]
    assert len(sizes) >= 2
    assert max(sizes) <= RECORD_BYTES_MAX
    assert sum(record.value.count(b'"command_id"') for record in producer.sent) == 120


async def test_a_command_naming_an_alias_is_answered_by_the_result_of_the_account() -> None:
    """The writer decides it as the command on the account the alias names, so its answer's
    digest is that of the command resolved; an answer for another payload answers nothing."""
    producer, results = FakeProducer(), FakeResults()
    by_alias = deposit("via-alias", account="alias:alice@example.com")
    sent = by_alias.model_copy(update={"reply_partition": REPLY_PARTITION})
    resolved = sent.model_copy(update={"account": ALICE})
    other = resolved.model_copy(update={"amount": 101})

    def answer(record: Record) -> None:
        assert record.key == b"alias:alice@example.com"  # keyed by the alias, as sent
        results.publish(accepted(other))
        results.publish(accepted(resolved))

    producer.on_sent = answer
    async with attached(producer, results) as client:
        result = await client.submit(by_alias)

    assert result == accepted(resolved)
    assert (result.account, result.payload_digest) == (ALICE, fingerprint(resolved))
