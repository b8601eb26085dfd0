"""The ledger end to end on the embedded broker: one real worker, commands through
`LedgerClient`, balances read back over the worker's HTTP view and from the journal's fold.

Account names are chosen with `partition_of`, so each test knows whether its transfer
crosses partitions (two legs through `@transit`) or stays on one (a single journal event).
The tests share one worker and one ledger, and the last one checks the books of the whole
module; only the poison-amount test has a ledger and worker of its own, since the bug it
shows stops its worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from worker_harness import Workers, http_account, journal

from ledger_stream.client import LedgerClient
from ledger_stream.journal import Books, fold
from ledger_stream.local import WorkerProcess
from ledger_stream.messages import JournalEvent, Result, from_json
from ledger_stream.partitioning import name_on, partition_of
from ledger_stream.settings import Settings
from ledger_stream.topics import TopicNames

CLIENT_TIMEOUT_S = 60.0  # the first command waits for the worker's group join
READ_TIMEOUT_S = 30.0
TRANSIT = "@transit"

T = TypeVar("T")


# --- helpers -------------------------------------------------------------------------------


async def http_balance(worker: WorkerProcess, account: str) -> int:
    state = await http_account(worker, account)
    assert state is not None, f"the worker does not know account {account!r}"
    return int(state["balance"])


async def journal_until(
    settings: Settings, done: Callable[[list[JournalEvent]], bool]
) -> list[JournalEvent]:
    """The journal once `done(events)` holds (outputs of a batch are sent concurrently, so a
    result can arrive a moment before the journal event it answers); the last read if never.
    """
    deadline = time.monotonic() + READ_TIMEOUT_S
    while True:
        events = await journal(settings)
        if done(events) or time.monotonic() > deadline:
            return events
        await asyncio.sleep(0.2)


def events_of(events: list[JournalEvent], command_id: str) -> list[JournalEvent]:
    return sorted((e for e in events if e.command_id == command_id), key=lambda e: e.entry_id)


async def read_partition_until(
    settings: Settings, topic: str, partition: int, done: Callable[[list[ConsumerRecord]], bool]
) -> list[ConsumerRecord]:
    """Records of one partition from its beginning, read until `done(records)` or a timeout."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + READ_TIMEOUT_S
        while not done(records) and time.monotonic() < deadline:
            batches = await consumer.getmany(tp, timeout_ms=500)
            records.extend(batches.get(tp, []))
        return records
    finally:
        await consumer.stop()


async def record_at(settings: Settings, topic: str, partition: int, offset: int) -> bytes | None:
    """The value of the record at `offset` (None if it cannot be read)."""
    records = await read_partition_until(
        settings, topic, partition, lambda rs: any(r.offset >= offset for r in rs)
    )
    return next((r.value for r in records if r.offset == offset), None)


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker(module_workers: Workers) -> WorkerProcess:
    """The module's one worker (stopped by pid by `module_workers` when the module ends)."""
    return module_workers.start_ready()


async def accepted(*commands: Awaitable[Result]) -> list[Result]:
    """Submit commands together (in this order, one round trip) and expect each accepted."""
    results = await asyncio.gather(*commands)
    assert [r.status for r in results] == ["accepted"] * len(results), results
    return list(results)


@contextlib.asynccontextmanager
async def another_client(
    settings: Settings, other_than: LedgerClient
) -> AsyncIterator[LedgerClient]:
    """A second client whose reply partition differs from `other_than`'s (a retry from
    another process instance reads its answers elsewhere)."""
    for _ in range(50):
        ledger_client = LedgerClient(
            settings.bootstrap_servers,
            topic_prefix=settings.topic_prefix,
            timeout_s=CLIENT_TIMEOUT_S,
        )
        await ledger_client.start()
        if ledger_client.reply_partition != other_than.reply_partition:
            break
        await ledger_client.stop()
    else:
        raise AssertionError("no client with another reply partition in 50 tries")
    try:
        yield ledger_client
    finally:
        await ledger_client.stop()


# --- transfers -----------------------------------------------------------------------------


async def test_cross_partition_transfer_lands_on_both_accounts(
    client: LedgerClient,
    worker: WorkerProcess,
    module_ledger: Settings,
    on: Callable[[int, str], str],
) -> None:
    source, destination = on(0, "src"), on(1, "dst")
    await accepted(
        client.open_account(source, "USD"),
        client.deposit(source, 10_000, "USD"),
        client.open_account(destination, "USD"),
    )

    result = await client.transfer(source, destination, 2_500, "USD")

    assert (result.status, result.code, result.duplicate) == ("accepted", None, False)
    assert await http_balance(worker, source) == 7_500
    assert await http_balance(worker, destination) == 2_500
    events = await journal_until(
        module_ledger, lambda es: len(events_of(es, result.command_id)) >= 2
    )
    legs = events_of(events, result.command_id)
    assert [e.kind for e in legs] == ["transfer_debit", "transfer_credit"]
    assert [e.entry_id for e in legs] == [f"{result.command_id}:0", f"{result.command_id}:1"]
    books = fold(events)
    assert books.balance(source, "USD") == 7_500
    assert books.balance(destination, "USD") == 2_500
    assert books.balance(TRANSIT, "USD") == 0
    assert books.unbalanced == []


async def test_same_partition_transfer_is_one_journal_event(
    client: LedgerClient,
    worker: WorkerProcess,
    module_ledger: Settings,
    on: Callable[[int, str], str],
) -> None:
    source, destination = on(2, "src"), on(2, "dst")
    await accepted(
        client.open_account(source, "EUR"),
        client.deposit(source, 900, "EUR"),
        client.open_account(destination, "EUR"),
    )

    result = await client.transfer(source, destination, "3.00", "EUR")

    assert (result.status, result.code) == ("accepted", None)
    events = await journal_until(module_ledger, lambda es: bool(events_of(es, result.command_id)))
    moved = events_of(events, result.command_id)
    assert len(moved) == 1, moved
    event = moved[0]
    assert (event.kind, event.entry_id, event.currency) == (
        "transfer",
        f"{result.command_id}:0",
        "EUR",
    )
    assert {(p.account, p.debit, p.credit) for p in event.postings} == {
        (source, 300, 0),
        (destination, 0, 300),
    }
    books = fold(events)
    assert (books.balance(source, "EUR"), books.balance(destination, "EUR")) == (600, 300)
    assert await http_balance(worker, source) == 600
    assert await http_balance(worker, destination) == 300


async def test_insufficient_funds_moves_nothing(
    client: LedgerClient,
    worker: WorkerProcess,
    module_ledger: Settings,
    on: Callable[[int, str], str],
) -> None:
    source, far, near = on(3, "src"), on(0, "far"), on(3, "near")
    await accepted(
        client.open_account(source, "USD"),
        client.deposit(source, 100, "USD"),
        client.open_account(far, "USD"),
        client.open_account(near, "USD"),
    )

    attempts = await asyncio.gather(
        client.transfer(source, far, 101, "USD"),
        client.transfer(source, near, 101, "USD"),
        client.withdraw(source, 101, "USD"),
    )

    assert [(r.status, r.code) for r in attempts] == [("rejected", "insufficient_funds")] * 3
    assert [await http_balance(worker, a) for a in (source, far, near)] == [100, 0, 0]
    events = await journal(module_ledger)
    rejected_ids = {r.command_id for r in attempts}
    assert [e for e in events if e.command_id in rejected_ids] == []
    books = fold(events)
    assert [books.balance(a, "USD") for a in (source, far, near)] == [100, 0, 0]


# --- idempotency ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "retried_by"),
    [
        ("deposit", "same_client"),
        ("same_partition_transfer", "same_client"),
        ("cross_partition_transfer", "same_client"),
        ("cross_partition_transfer", "another_client"),
    ],
)
async def test_duplicate_command_is_decided_once(
    kind: str,
    retried_by: str,
    client: LedgerClient,
    worker: WorkerProcess,
    module_ledger: Settings,
    on: Callable[[int, str], str],
) -> None:
    source = on(1, "src")
    destination = on(1 if kind == "same_partition_transfer" else 2, "dst")
    await accepted(
        client.open_account(source, "USD"),
        client.deposit(source, 1_000, "USD"),
        client.open_account(destination, "USD"),
    )
    command_id = f"dup-{uuid.uuid4().hex}"

    async def once(by: LedgerClient) -> Result:
        if kind == "deposit":
            return await by.deposit(source, 250, "USD", command_id=command_id)
        return await by.transfer(source, destination, 250, "USD", command_id=command_id)

    first = await once(client)
    if retried_by == "another_client":
        async with another_client(module_ledger, client) as other:
            second = await once(other)
    else:
        second = await once(client)

    assert (first.status, first.code, first.duplicate) == ("accepted", None, False)
    assert (second.command_id, second.status, second.code) == (command_id, "accepted", None)
    assert second.duplicate is True
    expected = (1_250, 0) if kind == "deposit" else (750, 250)
    balances = (await http_balance(worker, source), await http_balance(worker, destination))
    assert balances == expected
    entries = 2 if kind == "cross_partition_transfer" else 1
    events = await journal_until(
        module_ledger, lambda es: len(events_of(es, command_id)) >= entries
    )
    assert len({e.entry_id for e in events_of(events, command_id)}) == entries
    books = fold(events)
    assert (books.balance(source, "USD"), books.balance(destination, "USD")) == expected
    assert books.balance(TRANSIT, "USD") == 0


async def test_same_id_with_another_amount_is_a_conflict_and_moves_nothing(
    client: LedgerClient,
    worker: WorkerProcess,
    module_ledger: Settings,
    on: Callable[[int, str], str],
) -> None:
    account = on(0, "acct")
    command_id = f"conflict-{uuid.uuid4().hex}"
    await accepted(
        client.open_account(account, "USD"),
        client.deposit(account, 100, "USD", command_id=command_id),
    )

    second = await client.deposit(account, 200, "USD", command_id=command_id)

    assert (second.status, second.code, second.duplicate) == (
        "rejected",
        "exists_with_different_payload",
        False,
    )
    assert await http_balance(worker, account) == 100
    events = await journal_until(module_ledger, lambda es: bool(events_of(es, command_id)))
    moved = [(e.kind, e.postings[-1].credit) for e in events_of(events, command_id)]
    assert moved == [("deposit", 100)]


# --- a refused destination -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("destination_state", "code"),
    [
        ("unknown", "account_not_found"),
        ("closed", "account_closed"),
        ("other_currency", "currency_mismatch"),
    ],
)
async def test_cross_partition_transfer_refused_by_destination_comes_back(
    destination_state: str,
    code: str,
    client: LedgerClient,
    worker: WorkerProcess,
    module_ledger: Settings,
    on: Callable[[int, str], str],
) -> None:
    source, destination = on(2, "src"), on(3, "dst")
    setup = [client.open_account(source, "USD"), client.deposit(source, 5_000, "USD")]
    if destination_state == "closed":
        setup += [client.open_account(destination, "USD"), client.close_account(destination)]
    elif destination_state == "other_currency":
        setup += [client.open_account(destination, "EUR")]
    await accepted(*setup)

    result = await client.transfer(source, destination, 1_200, "USD")

    assert (result.status, result.code) == ("rejected", code)
    assert await http_balance(worker, source) == 5_000
    if destination_state == "unknown":
        assert await http_account(worker, destination) is None
    else:
        assert await http_balance(worker, destination) == 0
    events = await journal_until(
        module_ledger, lambda es: len(events_of(es, result.command_id)) >= 2
    )
    assert [e.kind for e in events_of(events, result.command_id)] == [
        "transfer_debit",
        "transfer_refund",
    ]
    books = fold(events)
    assert books.balance(source, "USD") == 5_000
    assert books.balance(destination, "USD") == 0
    assert books.balance(TRANSIT, "USD") == 0

    async with another_client(module_ledger, client) as other:
        again = await other.transfer(
            source, destination, 1_200, "USD", command_id=result.command_id
        )

    assert (again.status, again.code, again.duplicate) == ("rejected", code, True)
    assert await http_balance(worker, source) == 5_000


async def test_account_with_a_transfer_in_transit_cannot_be_closed_into_holding_money(
    client: LedgerClient,
    worker: WorkerProcess,
    module_ledger: Settings,
    on: Callable[[int, str], str],
) -> None:
    source, nobody = on(0, "src"), on(1, "nobody")
    await accepted(client.open_account(source, "USD"), client.deposit(source, 500, "USD"))

    # One batch of the source's writer: the transfer's debit leaves the balance at zero until
    # the destination's writer refuses it and the refund comes back.
    transfer, close = await asyncio.gather(
        client.transfer(source, nobody, 500, "USD"), client.close_account(source)
    )

    assert (transfer.status, transfer.code) == ("rejected", "account_not_found")
    # The close is refused while the refund may still come back; never money on a closed
    # account, where no withdrawal or transfer can reach it.
    assert (close.status, close.code) == ("rejected", "transfer_in_transit")
    state = await http_account(worker, source)
    assert state is not None
    assert (state["status"], state["balance"], state["debits_in_transit"]) == ("open", 500, 0)
    emptied = await client.withdraw(source, 500, "USD")
    assert emptied.status == "accepted"
    assert (await client.close_account(source)).status == "accepted"


# --- bad input -----------------------------------------------------------------------------


async def test_bad_input_goes_to_dead_letters_and_processing_goes_on(
    client: LedgerClient,
    worker: WorkerProcess,
    module_ledger: Settings,
    on: Callable[[int, str], str],
) -> None:
    topics = TopicNames.from_settings(module_ledger)
    account, elsewhere = on(1, "acct"), on(2, "elsewhere")
    await accepted(client.open_account(account, "USD"))
    marker = uuid.uuid4().hex
    malformed = b'{"type": "deposit", "command_id": "bad-' + marker.encode() + b'", "amount": '
    wrong_schema_id, misrouted_id = f"wrong-schema-{marker}", f"misrouted-{marker}"
    wrong_schema = json.dumps(
        {
            "type": "teleport",
            "command_id": wrong_schema_id,
            "account": account,
            "amount": 5,
            "currency": "USD",
            "reply_partition": client.reply_partition,
        }
    ).encode()
    # A valid command keyed by another account: it lands on a partition that does not own it.
    misrouted = json.dumps(
        {
            "type": "deposit",
            "command_id": misrouted_id,
            "account": account,
            "amount": 5,
            "currency": "USD",
            "reply_partition": client.reply_partition,
        }
    ).encode()
    sent = [(account, malformed), (account, wrong_schema), (elsewhere, misrouted)]
    for key, value in sent:
        client.send_raw(key, value)
        await client.flush()  # one record each: queued together they would be one JSON array

    wanted = {wrong_schema_id.encode(), misrouted_id.encode()}
    replies = await read_partition_until(
        module_ledger,
        topics.results,
        client.reply_partition,
        lambda rs: wanted <= {r.key for r in rs},
    )
    answers = {r.key.decode(): from_json(r.value, Result) for r in replies if r.key in wanted}
    assert {k: (a.status, a.code) for k, a in answers.items()} == {
        wrong_schema_id: ("rejected", "invalid_command"),
        misrouted_id: ("rejected", "wrong_partition"),
    }

    letters = await read_partition_until(
        module_ledger,
        topics.deadletter,
        0,
        lambda rs: {v for _, v in sent} <= {r.value for r in rs},
    )
    for key, original in sent:
        found = [r for r in letters if r.value == original]
        assert len(found) == 1, f"dead letters for {original!r}: {found}"
        letter = found[0]
        headers = dict(letter.headers)
        partition = partition_of(key, module_ledger.partitions)
        assert letter.key == key.encode()
        assert headers["source_topic"] == topics.commands.encode()
        assert int(headers["source_partition"]) == partition
        assert headers["error"].strip(), headers
        offset = int(headers["source_offset"])
        assert await record_at(module_ledger, topics.commands, partition, offset) == original

    later = await client.deposit(account, 700, "USD")

    assert later.status == "accepted"
    assert await http_balance(worker, account) == 700


# --- a poison amount (own worker: the bug stops it) ---------------------------------------


async def answer_or_exit(answer: Awaitable[T], worker: WorkerProcess) -> T:
    """`answer`'s value, or an AssertionError with the log as soon as the worker exits."""
    task = asyncio.ensure_future(answer)
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    while not task.done() and worker.alive() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    if not task.done():
        task.cancel()
        code = None if worker.process is None else worker.process.poll()
        raise AssertionError(f"no answer; worker exit code {code}; log:\n{worker.log_tail(20)}")
    return task.result()


async def test_amount_past_64_bits_is_refused_and_the_worker_goes_on(
    ledger: Settings, workers: Workers
) -> None:
    worker = workers.start_ready()
    topics = TopicNames.from_settings(ledger)
    account = name_on(0, "huge", ledger.partitions)
    async with LedgerClient(
        ledger.bootstrap_servers, topic_prefix=ledger.topic_prefix, timeout_s=CLIENT_TIMEOUT_S
    ) as client:
        await accepted(client.open_account(account, "USD"))
        command_id = f"huge-{uuid.uuid4().hex}"
        # Any producer may write this; the decimal string "18446744073709551616" is the same.
        client.send_raw(
            account,
            json.dumps(
                {
                    "type": "deposit",
                    "command_id": command_id,
                    "account": account,
                    "amount": 2**64,
                    "currency": "USD",
                    "reply_partition": client.reply_partition,
                }
            ).encode(),
        )
        await client.flush()

        replies = await answer_or_exit(
            read_partition_until(
                ledger,
                topics.results,
                client.reply_partition,
                lambda rs: any(r.key == command_id.encode() for r in rs),
            ),
            worker,
        )
        answers = [from_json(r.value, Result) for r in replies]
        huge = next(a for a in answers if a.command_id == command_id)
        assert huge.status == "rejected"
        assert huge.code in {"amount_too_large", "invalid_amount"}
        later = await answer_or_exit(client.deposit(account, 1, "USD"), worker)
        assert later.status == "accepted"
        assert await http_balance(worker, account) == 1


# --- the whole module ----------------------------------------------------------------------


async def test_books_balance_at_the_end_of_the_module(
    worker: WorkerProcess, module_ledger: Settings
) -> None:
    events = await journal(module_ledger)
    books: Books = fold(events)

    assert books.unbalanced == []
    assert all(total == 0 for total in books.totals().values()), books.totals()
    assert all(books.balance(TRANSIT, c) == 0 for c in books.totals()), dict(books.balances)
    opened_accounts = {(e.account, e.currency) for e in events if e.kind == "account_opened"}
    for account, currency in sorted(opened_accounts):
        assert await http_balance(worker, account) == books.balance(account, currency), account
