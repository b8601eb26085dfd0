"""Limits, holds, invoice payments, reversals and aliases end to end: commands through
`LedgerClient` (or, where the record time matters, records stamped by the test) to one real
worker on the embedded broker, answers read back from the results, receipts and journal
topics.

The last tests replay the module's commands, with their record times, into a fresh ledger
from offset 0 and expect the same decisions, and audit the books.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from worker_harness import Workers, alias_on, http_account, journal, polled

from ledger_stream.audit import audit
from ledger_stream.client import LedgerClient
from ledger_stream.codes import Code
from ledger_stream.journal import fold
from ledger_stream.kafka.reading import read_topic
from ledger_stream.local import WorkerProcess
from ledger_stream.messages import JournalEvent, Receipt, Result, from_json
from ledger_stream.partitioning import name_on, partition_of
from ledger_stream.settings import Settings
from ledger_stream.topics import TopicNames

DAY_MS = 86_400_000
# The expiry timer looks often, so that a hold of one second expires within the test.
EXPIRY_ENV = {"LEDGER_EXPIRY_INTERVAL_S": "0.2"}


@pytest.fixture(scope="module")
def worker(module_workers: Workers) -> WorkerProcess:
    return module_workers.start_ready(env=EXPIRY_ENV)


async def opened(client: LedgerClient, *accounts: str, funds: int = 10_000, **kw: Any) -> None:
    results = await asyncio.gather(*(client.open_account(a, "USD", **kw) for a in accounts))
    assert [r.status for r in results] == ["accepted"] * len(accounts), results
    if funds:
        deposits = await asyncio.gather(*(client.deposit(a, funds, "USD") for a in accounts))
        assert [r.status for r in deposits] == ["accepted"] * len(accounts), deposits


async def http_state(worker: WorkerProcess, account: str) -> dict[str, Any]:
    state = await http_account(worker, account)
    assert state is not None, f"the worker does not know account {account!r}"
    return state


def rejected_with(result: Result, code: Code) -> None:
    assert (result.status, result.code) == ("rejected", code), result


class Stamped:
    """Commands sent with record times the test chooses, answered on the client's partition."""

    def __init__(self, settings: Settings, client: LedgerClient) -> None:
        self.settings, self.client = settings, client
        self.results: dict[str, dict[str, Any]] = {}
        client.watch_results(lambda result: self.results.__setitem__(result["command_id"], result))

    async def send(self, timestamp_ms: int, **command: Any) -> dict[str, Any]:
        command.setdefault("command_id", uuid.uuid4().hex)
        command["reply_partition"] = self.client.reply_partition
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.bootstrap_servers)
        await producer.start()
        try:
            await producer.send_and_wait(
                TopicNames.from_settings(self.settings).commands,
                orjson.dumps(command),
                key=command["account"].encode(),
                partition=partition_of(command["account"], self.settings.partitions),
                timestamp_ms=timestamp_ms,
            )
        finally:
            await producer.stop()
        while command["command_id"] not in self.results:
            await asyncio.sleep(0.05)
        return self.results[command["command_id"]]


async def expiry_of(hold_id: str, settings: Settings, workers: Workers) -> None:
    """Wait until the worker's timer has expired the hold (its `hold_expired` event)."""

    def expired(events: list[JournalEvent]) -> bool:
        return any(e.kind == "hold_expired" and e.hold_id == hold_id for e in events)

    await polled(lambda: journal(settings), expired, workers, f"the expiry of {hold_id}")


async def receipts(settings: Settings) -> list[Receipt]:
    found = []
    async for records in read_topic(
        settings.bootstrap_servers, TopicNames.from_settings(settings).receipts
    ):
        found += [from_json(r.value, Receipt) for r in records if r.value is not None]
    return found


# --- limits ----------------------------------------------------------------------------------


async def test_limits_pass_at_the_boundary_and_refuse_one_past_it(
    client: LedgerClient, on: Callable[[int, str], str]
) -> None:
    alice = on(0, "alice")
    limits = {
        "transaction_amount_max": 500,
        "daily_amount_max": {"withdrawal": 700},
        "daily_count_max": {"deposit": 2},
    }
    await opened(client, alice, funds=0, limits=limits)
    rejected_with(await client.deposit(alice, 501, "USD"), Code.LIMIT_EXCEEDED)
    assert (await client.deposit(alice, 500, "USD")).status == "accepted"  # exactly at it
    assert (await client.deposit(alice, 500, "USD")).status == "accepted"  # second of two
    third = await client.deposit(alice, 1, "USD")
    rejected_with(third, Code.LIMIT_EXCEEDED)
    assert third.limit is not None
    assert (third.limit.limit, third.limit.value, third.limit.used) == (
        "daily_count_max.deposit",
        2,
        2,
    )
    assert (await client.withdraw(alice, 400, "USD")).status == "accepted"
    over = await client.withdraw(alice, 301, "USD")  # 400 + 301 > 700
    rejected_with(over, Code.LIMIT_EXCEEDED)
    assert over.limit is not None and (over.limit.used, over.limit.requested) == (400, 301)
    assert (await client.withdraw(alice, 300, "USD")).status == "accepted"  # 700 exactly
    # set_limits is journaled and takes effect at once.
    changed = await client.set_limits(alice, limits={"daily_amount_max": {"withdrawal": 800}})
    assert changed.status == "accepted"
    assert (await client.withdraw(alice, 100, "USD")).status == "accepted"


async def test_the_day_is_the_record_times_utc_day(
    client: LedgerClient, module_ledger: Settings, on: Callable[[int, str], str]
) -> None:
    bob = on(1, "bob")
    await opened(client, bob, funds=5_000, limits={"daily_count_max": {"withdrawal": 1}})
    stamped = Stamped(module_ledger, client)
    # Days to come: the account counted today's deposit already.
    day = (int(time.time() * 1000) // DAY_MS + 10) * DAY_MS
    w = {"type": "withdraw", "account": bob, "amount": 10, "currency": "USD"}
    assert (await stamped.send(day + DAY_MS - 1, **w))["status"] == "accepted"
    refused = await stamped.send(day + DAY_MS - 1, **w)
    assert refused["code"] == Code.LIMIT_EXCEEDED
    assert (await stamped.send(day + DAY_MS, **w))["status"] == "accepted"  # the next day
    # A record stamped back in the first day counts toward the later day the account is in.
    late = await stamped.send(day + 5, **w)
    assert late["code"] == Code.LIMIT_EXCEEDED


# --- holds ---------------------------------------------------------------------------------


@pytest.mark.parametrize("crossing", [False, True], ids=["same partition", "across partitions"])
async def test_a_hold_posted_in_part_moves_that_part_and_releases_the_rest(
    client: LedgerClient, worker: WorkerProcess, on: Callable[[int, str], str], crossing: bool
) -> None:
    payer, payee = on(0, "payer"), on(1 if crossing else 0, "payee")
    await opened(client, payer, payee, funds=1_000)
    hold = await client.hold(payer, payee, 600, "USD")
    assert hold.status == "accepted"
    state = await http_state(worker, payer)
    assert (state["balance"], state["available"]) == (1_000, 400)
    rejected_with(await client.withdraw(payer, 401, "USD"), Code.INSUFFICIENT_FUNDS)
    rejected_with(
        await client.post_hold(payer, hold.command_id, amount=601), Code.AMOUNT_EXCEEDS_HOLD
    )
    posted = await client.post_hold(payer, hold.command_id, amount=250)
    assert (posted.status, posted.amount) == ("accepted", 250)
    rejected_with(await client.post_hold(payer, hold.command_id), Code.HOLD_ALREADY_POSTED)
    rejected_with(await client.void_hold(payer, hold.command_id), Code.HOLD_ALREADY_POSTED)
    state = await http_state(worker, payer)
    assert (state["balance"], state["available"], state["debits_pending"]) == (750, 750, 0)
    assert (await http_state(worker, payee))["balance"] == 1_250


async def test_a_voided_hold_releases_everything_and_cannot_be_posted(
    client: LedgerClient, worker: WorkerProcess, on: Callable[[int, str], str]
) -> None:
    payer, payee = on(2, "payer"), on(3, "payee")
    await opened(client, payer, payee, funds=1_000)
    hold = await client.hold(payer, payee, 1_000, "USD")
    assert (await client.void_hold(payer, hold.command_id)).status == "accepted"
    rejected_with(await client.post_hold(payer, hold.command_id), Code.HOLD_VOIDED)
    state = await http_state(worker, payer)
    assert (state["balance"], state["available"]) == (1_000, 1_000)


async def test_a_hold_expires_by_the_timer_and_a_late_post_is_refused(
    client: LedgerClient,
    worker: WorkerProcess,
    module_ledger: Settings,
    module_workers: Workers,
    on: Callable[[int, str], str],
) -> None:
    payer, payee = on(1, "payer"), on(2, "payee")
    await opened(client, payer, payee, funds=1_000)
    hold = await client.hold(payer, payee, 300, "USD", timeout_s=1)
    rejected_with(await client.post_hold(payer, "no-such-hold"), Code.HOLD_NOT_FOUND)
    await expiry_of(hold.command_id, module_ledger, module_workers)
    rejected_with(await client.post_hold(payer, hold.command_id), Code.HOLD_EXPIRED)
    assert (await http_state(worker, payer))["available"] == 1_000


# --- invoices ------------------------------------------------------------------------------


async def test_an_invoice_paid_twice_moves_money_once(
    client: LedgerClient,
    worker: WorkerProcess,
    module_ledger: Settings,
    module_workers: Workers,
    on: Callable[[int, str], str],
) -> None:
    payer, shop = on(0, "payer"), on(3, "shop")
    await opened(client, payer, shop, funds=1_000)
    paid = await client.pay_invoice(payer, shop, "inv-1", 400, "USD", command_id=f"{payer}-p1")
    assert paid.status == "accepted"
    again = await client.pay_invoice(payer, shop, "inv-1", 400, "USD", command_id=f"{payer}-p1")
    assert (again.status, again.duplicate) == ("accepted", True)
    rejected_with(
        await client.pay_invoice(payer, shop, "inv-1", 400, "USD"), Code.INVOICE_ALREADY_PAID
    )
    assert (await http_state(worker, payer))["balance"] == 600
    assert (await http_state(worker, shop))["balance"] == 1_400

    def receipt_of(found: list[Receipt]) -> bool:
        return any(r.payment_id == f"{payer}-p1" for r in found)

    found = await polled(lambda: receipts(module_ledger), receipt_of, module_workers, "receipt")
    receipt = next(r for r in found if r.payment_id == f"{payer}-p1")
    assert (receipt.invoice_id, receipt.payer, receipt.payee, receipt.amount) == (
        "inv-1",
        payer,
        shop,
        400,
    )
    assert receipt.entry_ids == [f"{payer}-p1:0", f"{payer}-p1:1"]  # across partitions


async def test_a_gateway_payment_waits_for_its_confirmation(
    client: LedgerClient, worker: WorkerProcess, on: Callable[[int, str], str]
) -> None:
    payer, shop = on(2, "payer"), on(2, "shop")
    await opened(client, payer, shop, funds=1_000)
    pending = await client.pay_invoice(payer, shop, "inv-9", 300, "USD", channel="card")
    assert pending.status == "accepted"
    rejected_with(
        await client.pay_invoice(payer, shop, "inv-9", 300, "USD"), Code.INVOICE_PAYMENT_PENDING
    )
    assert (await http_state(worker, payer))["available"] == 700
    assert (await client.confirm_payment(payer, "inv-9")).status == "accepted"
    rejected_with(await client.confirm_payment(payer, "inv-9"), Code.INVOICE_ALREADY_PAID)
    rejected_with(await client.fail_payment(payer, "inv-9"), Code.INVOICE_ALREADY_PAID)
    assert (await http_state(worker, shop))["balance"] == 1_300


async def test_a_confirmation_after_the_deadline_is_refused_and_the_invoice_is_open_again(
    client: LedgerClient,
    worker: WorkerProcess,
    module_ledger: Settings,
    module_workers: Workers,
    on: Callable[[int, str], str],
) -> None:
    payer, shop = on(3, "payer"), on(0, "shop")
    await opened(client, payer, shop, funds=1_000)
    waiting = await client.pay_invoice(
        payer, shop, "inv-5", 300, "USD", channel="bank", timeout_s=1
    )
    await expiry_of(waiting.command_id, module_ledger, module_workers)
    rejected_with(await client.confirm_payment(payer, "inv-5"), Code.HOLD_EXPIRED)
    assert (await http_state(worker, shop))["balance"] == 1_000
    again = await client.pay_invoice(payer, shop, "inv-5", 300, "USD")
    assert again.status == "accepted"
    assert (await http_state(worker, payer))["balance"] == 700


# --- reversals -----------------------------------------------------------------------------


async def test_reversals_post_the_opposite_once_and_never_of_a_reversal(
    client: LedgerClient, worker: WorkerProcess, on: Callable[[int, str], str]
) -> None:
    alice, bob = on(0, "alice"), on(1, "bob")
    await opened(client, alice, bob, funds=1_000)
    sent = await client.transfer(alice, bob, 300, "USD")
    rejected_with(await client.reverse(alice, sent.command_id), Code.ORIGINAL_NOT_FOUND)
    reversal = await client.reverse(bob, sent.command_id)  # by the destination
    assert (reversal.status, reversal.amount) == ("accepted", 300)
    rejected_with(await client.reverse(bob, sent.command_id), Code.ALREADY_REVERSED)
    rejected_with(await client.reverse(alice, reversal.command_id), Code.REVERSAL_OF_REVERSAL)
    assert (await http_state(worker, alice))["balance"] == 1_000
    assert (await http_state(worker, bob))["balance"] == 1_000
    spent = await client.withdraw(bob, 1_000, "USD")
    deposit = await client.deposit(alice, 50, "USD", metadata={"why": "refund"})
    assert deposit.metadata == {"why": "refund"}
    assert spent.status == "accepted"
    dep = await client.deposit(bob, 10, "USD")
    assert (await client.withdraw(bob, 10, "USD")).status == "accepted"
    floor = await client.reverse(bob, dep.command_id)
    rejected_with(floor, Code.INSUFFICIENT_FUNDS)
    assert floor.reason is not None and dep.command_id in floor.reason


# --- aliases -------------------------------------------------------------------------------


async def test_an_alias_is_registered_once_and_the_audit_stays_clean(
    client: LedgerClient, module_ledger: Settings, on: Callable[[int, str], str]
) -> None:
    bob, eve = on(0, "bob"), on(1, "eve")
    await opened(client, bob, eve, funds=0, low_balance=500)
    alias = "alias:bob@example.com"
    first = await client.register_alias(alias, bob)
    assert (first.status, first.account, first.destination) == ("accepted", alias, bob)
    rejected_with(await client.register_alias(alias, eve), Code.ALIAS_TAKEN)
    rejected_with(await client.register_alias(alias, bob), Code.ALIAS_TAKEN)
    again = await client.register_alias(alias, bob, command_id=first.command_id)
    assert (again.status, again.duplicate) == ("accepted", True)
    rejected_with(await client.open_account(alias, "USD"), Code.ACCOUNT_RESERVED)
    assert (await client.set_limits(bob, low_balance=100)).status == "accepted"

    events = await journal(module_ledger)
    registered = [e for e in events if e.kind == "alias_registered" and e.account == alias]
    assert [(e.command_id, e.target, e.postings) for e in registered] == [
        (first.command_id, bob, [])
    ]
    thresholds = [
        (e.kind, e.low_balance)
        for e in events
        if e.account == bob and e.kind in ("account_opened", "limits_set")
    ]
    assert thresholds == [("account_opened", 500), ("limits_set", 100)]
    report = await audit(module_ledger)
    assert report.ok, report.text()


# --- the module's books --------------------------------------------------------------------


async def test_the_books_balance_and_the_audit_is_clean(
    module_ledger: Settings, worker: WorkerProcess
) -> None:
    books = fold(await journal(module_ledger))
    assert books.unbalanced == [] and all(t == 0 for t in books.totals().values())
    report = await audit(module_ledger)
    assert report.ok, report.text()
    assert report.currencies["USD"]["@transit"] == 0


async def test_commands_produced_to_kafka_name_accounts_by_alias(
    client: LedgerClient,
    module_ledger: Settings,
    worker: WorkerProcess,
    on: Callable[[int, str], str],
) -> None:
    """Records produced by hand, keyed by their `account` as any producer keys them, naming
    aliases where accounts go: each alias's writer puts the account in its place and the
    account's writer decides the command, at the record time it was produced with."""
    n = module_ledger.partitions
    payer, payee = on(0, "payer"), on(1, "payee")
    await opened(client, payer, payee, funds=1_000)
    test = uuid.uuid4().hex[:8]
    # Each alias on the other account's partition, so that every command travels.
    payer_mail, payee_mail = alias_on(1, f"payer-{test}", n), alias_on(0, f"payee-{test}", n)
    for alias, account in ((payer_mail, payer), (payee_mail, payee)):
        assert (await client.register_alias(alias, account)).status == "accepted"
    stamped = Stamped(module_ledger, client)
    later = (int(time.time() * 1000) // DAY_MS + 3) * DAY_MS + 17
    usd = {"currency": "USD"}
    to_alias = {"type": "transfer", "account": payer, "destination": payee_mail, "amount": 40}
    paid = await stamped.send(later, command_id=f"pay-{test}", **to_alias, **usd)
    assert (paid["status"], paid["account"], paid["destination"]) == ("accepted", payer, payee)
    between = {"type": "transfer", "account": payee_mail, "destination": payer_mail}
    back = await stamped.send(later, command_id=f"back-{test}", **between, amount=15, **usd)
    assert (back["status"], back["account"], back["destination"]) == ("accepted", payee, payer)
    deposit = await stamped.send(later, type="deposit", account=payer_mail, amount=7, **usd)
    assert (deposit["status"], deposit["account"]) == ("accepted", payer)
    # The repeat, through the alias or by the account, is the same command.
    for again in (to_alias, {**to_alias, "destination": payee}):
        stamped.results.pop(f"pay-{test}")
        repeat = await stamped.send(later, command_id=f"pay-{test}", **again, **usd)
        assert (repeat["status"], repeat.get("duplicate")) == ("accepted", True), repeat
    nobody = f"alias:nobody-{test}@example.com"
    refused = await stamped.send(later, type="deposit", account=nobody, amount=7, **usd)
    assert (refused["code"], refused["reason"]) == (
        Code.ALIAS_NOT_FOUND,
        f"no account is registered under {nobody!r}",
    )
    to_nobody = {**to_alias, "destination": nobody}
    assert (await stamped.send(later, **to_nobody, **usd))["code"] == Code.ALIAS_NOT_FOUND

    assert (await http_state(worker, payer))["credits_posted"] == 1_000 + 15 + 7
    assert (await http_state(worker, payee))["credits_posted"] == 1_000 + 40
    events = await journal(module_ledger)
    ids = {f"pay-{test}", f"back-{test}", deposit["command_id"]}
    # The command's own event (`:0`) has its record time; a credit leg's, the leg's.
    decided = [e for e in events if e.command_id in ids and e.entry_id.endswith(":0")]
    assert [e.timestamp_ms for e in decided] == [later] * 3, decided
    assert {e.account for e in decided} == {payer, payee}


# --- replaying ------------------------------------------------------------------------------


def script(a: str, b: str) -> list[tuple[int, dict[str, Any]]]:
    """Commands of two accounts of one partition, with their record times: every rule that
    depends on time (days, deadlines) and on what was decided before (limits, holds,
    invoices, reversals)."""
    t = 20_000 * DAY_MS
    usd = {"currency": "USD"}
    pay = {"type": "pay_invoice", "account": a, "destination": b, **usd}
    steps: list[tuple[int, dict[str, Any]]] = [
        (
            t,
            {
                "type": "open_account",
                "account": a,
                **usd,
                "limits": {"transaction_amount_max": 1_000, "daily_count_max": {"withdrawal": 2}},
            },
        ),
        (t, {"type": "open_account", "account": b, **usd}),
        (t, {"type": "deposit", "account": a, "amount": 1_000, **usd}),
        (t, {"type": "deposit", "account": a, "amount": 1_001, **usd}),
        (t + 1, {"type": "deposit", "account": a, "amount": 900, "command_id": "dep", **usd}),
        *[(t + 2, {"type": "withdraw", "account": a, "amount": 10, **usd}) for _ in range(3)],
        (t + DAY_MS, {"type": "withdraw", "account": a, "amount": 10, **usd}),
        # Stamped back in the first day: counted in the later one (two a day).
        (t + 3, {"type": "withdraw", "account": a, "amount": 10, **usd}),
        (t + 4, {"type": "withdraw", "account": a, "amount": 10, **usd}),
        (
            t + DAY_MS,
            {
                "type": "hold",
                "account": a,
                "destination": b,
                "amount": 500,
                "timeout_s": 60,
                "command_id": "h1",
                **usd,
            },
        ),
        (t + DAY_MS + 1_000, {"type": "post_hold", "account": a, "hold_id": "h1", "amount": 200}),
        (t + DAY_MS + 2_000, {"type": "post_hold", "account": a, "hold_id": "h1"}),
        (
            t + DAY_MS,
            {
                "type": "hold",
                "account": a,
                "destination": b,
                "amount": 300,
                "timeout_s": 10,
                "command_id": "h2",
                **usd,
            },
        ),
        (t + DAY_MS + 5_000, {"type": "expire_hold", "account": a, "hold_id": "h2"}),
        (t + DAY_MS + 20_000, {"type": "post_hold", "account": a, "hold_id": "h2"}),
        (t + DAY_MS + 20_000, {"type": "expire_hold", "account": a, "hold_id": "h2"}),
        (t + DAY_MS, {**pay, "amount": 100, "invoice_id": "i1"}),
        (t + DAY_MS, {**pay, "amount": 100, "invoice_id": "i1"}),  # another command id
        (
            t + DAY_MS,
            {
                **pay,
                "amount": 50,
                "invoice_id": "i2",
                "channel": "card",
                "timeout_s": 30,
            },
        ),
        (t + DAY_MS + 40_000, {"type": "confirm_payment", "account": a, "invoice_id": "i2"}),
        (t + DAY_MS + 40_000, {"type": "reverse", "account": a, "target": "dep"}),
        (t + DAY_MS + 40_000, {"type": "reverse", "account": a, "target": "dep"}),
    ]
    for number, (_, command) in enumerate(steps):
        command.setdefault("command_id", f"s{number}")
    return steps


async def answers(settings: Settings, ids: set[str], workers: Workers) -> dict[str, Result]:
    """The first answer to each of `ids` on the results topic, once all are there."""
    topic = TopicNames.from_settings(settings).results

    async def read() -> dict[str, Result]:
        found: dict[str, Result] = {}
        async for records in read_topic(settings.bootstrap_servers, topic):
            for record in records:
                result = from_json(record.value, Result)
                found.setdefault(result.command_id, result)
        return found

    return await polled(read, lambda found: ids <= set(found), workers, "every answer")


async def test_a_replay_from_offset_0_makes_the_same_decisions(
    make_ledger: Callable[[], Settings], tmp_path: Path
) -> None:
    """The same records (keys, values, record times) in two fresh ledgers, each decided
    from offset 0 by a fresh worker, get the same answers, whatever the workers' clocks."""
    decided = []
    ids: list[str] = []
    for run in ("first", "replay"):
        settings = await asyncio.to_thread(make_ledger)
        a = name_on(1, "a", settings.partitions)
        b = name_on(1, "b", settings.partitions)
        steps = script(a, b)
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
        await producer.start()
        try:
            for timestamp, command in steps:
                await producer.send_and_wait(
                    TopicNames.from_settings(settings).commands,
                    orjson.dumps(command),
                    key=a.encode(),
                    partition=1,
                    timestamp_ms=timestamp,
                )
        finally:
            await producer.stop()
        workers = Workers(settings, tmp_path / run)
        try:
            await asyncio.to_thread(workers.start_ready)
            ids = [command["command_id"] for _, command in steps]
            found = await answers(settings, set(ids), workers)
            decided.append([found[command_id] for command_id in ids])
        finally:
            workers.stop_all()
    first, replay = decided

    def decision(result: Result) -> tuple[Any, ...]:
        return (result.status, result.code, result.amount, result.limit, result.reason)

    assert [decision(r) for r in first] == [decision(r) for r in replay]
    assert [r.code for r in first] == [
        None, None, None, Code.LIMIT_EXCEEDED, None,
        None, None, Code.LIMIT_EXCEEDED,
        None, None, Code.LIMIT_EXCEEDED,
        None, None, Code.HOLD_ALREADY_POSTED,
        None, Code.HOLD_NOT_EXPIRED, Code.HOLD_EXPIRED, None,
        None, Code.INVOICE_ALREADY_PAID, None, Code.HOLD_EXPIRED,
        None, Code.ALREADY_REVERSED,
    ]  # fmt: skip
