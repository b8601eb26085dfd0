"""Notifications end to end: commands through `LedgerClient` to one worker on the embedded
broker, whose read side folds the journal (and the rejections on the results topic) into
notifications, and whose notifier delivers them to a real local webhook.

The webhook checks the signature of every request and answers the first two attempts of each
notification 500, so every notification here arrives through the notifier's retries. One
partition's notifications are delivered in order, so once a later notification of a
partition arrived, the earlier ones have too: that is how a test knows a notification that
should not come has not come.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import pytest
from aiohttp import web
from worker_harness import Workers

from agents.expiry import expire_command_id
from agents.projector import SEQ_HEADER
from ledger_stream.client import LedgerClient
from ledger_stream.codes import Code
from ledger_stream.journal import read_journal
from ledger_stream.kafka.reading import read_topic
from ledger_stream.local import WorkerProcess
from ledger_stream.messages import Result, as_dict, from_json
from ledger_stream.notify import NOTIFICATION_ID_HEADER, SIGNATURE_HEADER, Notification, verify
from ledger_stream.partitioning import partition_of
from ledger_stream.settings import Settings
from ledger_stream.topics import TopicNames

SECRET = "whsec-notifications-e2e"
FAILURES = 2  # attempts of each notification the webhook answers 500 before taking it
SIGNATURE_TOLERANCE_S = 300
WAIT_S = 120.0  # a generous bound on every wait; nothing is asserted about durations
POLL_S = 0.1
SERVER_START_TIMEOUT_S = 30.0

# (type, account, command_id): what a test waits for.
Key = tuple[str, str, str | None]


class Taken(NamedTuple):
    notification: Notification
    body: bytes
    attempt: int  # the attempt of its id the webhook took (answered 200)


class Webhook:
    """A receiver: checks every request's signature and headers, counts the attempts of each
    notification id, answers the first `FAILURES` of them 500 and takes the rest (200).

    It serves from a thread with an event loop of its own, so it outlives each test's loop
    and serves the module's worker throughout; `lock` guards what the tests read."""

    def __init__(self) -> None:
        self.url = ""
        self.lock = threading.Lock()
        self.attempts: Counter[str] = Counter()
        self.taken: list[Taken] = []
        self.refused: list[str] = []  # requests that failed a check

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        notification_id = request.headers.get(NOTIFICATION_ID_HEADER, "")
        problem = _problem(request, body, notification_id)
        with self.lock:
            if problem is not None:
                self.refused.append(f"{notification_id}: {problem}")
                return web.Response(status=400, text=problem)
            self.attempts[notification_id] += 1
            attempt = self.attempts[notification_id]
            if attempt <= FAILURES:
                return web.Response(status=500, text="failing on purpose")
            self.taken.append(Taken(from_json(body, Notification), body, attempt))
        return web.Response(status=200)

    def notifications(self) -> list[Notification]:
        """Every notification taken, in the order taken (a repeat included)."""
        with self.lock:
            return [taken.notification for taken in self.taken]

    def bodies(self) -> dict[str, bytes]:
        """The body of each notification taken, by id."""
        with self.lock:
            return {taken.notification.id: taken.body for taken in self.taken}


def _problem(request: web.Request, body: bytes, notification_id: str) -> str | None:
    """What is wrong with a delivery, None when nothing is."""
    signature = request.headers.get(SIGNATURE_HEADER, "")
    if not verify(SECRET.encode(), signature, body, SIGNATURE_TOLERANCE_S, time.time()):
        return f"bad signature {signature!r}"
    if request.content_type != "application/json":
        return f"content type {request.content_type}"
    if from_json(body, Notification).id != notification_id:
        return "the id header is not the body's id"
    return None


@contextmanager
def serving(webhook: Webhook) -> Iterator[str]:
    """The webhook on a free port of 127.0.0.1, in a thread of its own; yields its URL."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="webhook", daemon=True)
    thread.start()

    async def start() -> tuple[web.AppRunner, int]:
        app = web.Application()
        app.router.add_post("/hooks/ledger", webhook.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner, runner.addresses[0][1]

    try:
        runner, port = asyncio.run_coroutine_threadsafe(start(), loop).result(
            SERVER_START_TIMEOUT_S
        )
        try:
            yield f"http://127.0.0.1:{port}/hooks/ledger"
        finally:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(SERVER_START_TIMEOUT_S)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(SERVER_START_TIMEOUT_S)
        loop.close()


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    receiver = Webhook()
    with serving(receiver) as url:
        receiver.url = url
        yield receiver


@pytest.fixture(scope="module")
def worker(webhook: Webhook, module_workers: Workers) -> WorkerProcess:
    """One worker delivering to `webhook` (set up first, so stopped after the worker)."""
    return module_workers.start_ready(
        env={
            "LEDGER_WEBHOOK_URLS": webhook.url,
            "LEDGER_WEBHOOK_SECRET": SECRET,
            "LEDGER_WEBHOOK_BACKOFF_S": "0.01",
            "LEDGER_WEBHOOK_BACKOFF_MAX_S": "0.05",
            # The expiry timer looks often, so that a hold of one second expires in the test.
            "LEDGER_EXPIRY_INTERVAL_S": "0.2",
        }
    )


async def opened(client: LedgerClient, *accounts: str, funds: int = 1_000, **kw: Any) -> None:
    for account in accounts:
        assert (await client.open_account(account, "USD", **kw)).status == "accepted"
        if funds:
            assert (await client.deposit(account, funds, "USD")).status == "accepted"


def accepted(result: Result) -> str:
    assert result.status == "accepted", result
    return result.command_id


def key(note: Notification) -> Key:
    return (note.type, note.account, note.command_id)


async def notified(webhook: Webhook, workers: Workers, wanted: set[Key]) -> dict[Key, Notification]:
    """The first notification of each key the webhook took, once every key of `wanted` is
    there (up to WAIT_S; fails at once when the worker is gone)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        found: dict[Key, Notification] = {}
        for note in webhook.notifications():
            found.setdefault(key(note), note)
        if wanted <= set(found):
            return found
        if not workers.any_alive():
            raise AssertionError(f"no worker alive while waiting for {wanted - set(found)}")
        if time.monotonic() > deadline:
            pytest.fail(
                f"waited {WAIT_S} s for notifications {sorted(wanted - set(found), key=str)}; "
                f"the webhook took {sorted(found, key=str)}\n{workers.logs()}"
            )
        await asyncio.sleep(POLL_S)


def of(webhook: Webhook, *accounts: str) -> list[Notification]:
    """The notifications taken about `accounts`, each id once, in the order taken."""
    seen: dict[str, Notification] = {}
    for note in webhook.notifications():
        if note.account in accounts:
            seen.setdefault(note.id, note)
    return list(seen.values())


async def on_topic(settings: Settings) -> list[tuple[int, bytes, bytes, dict[str, bytes]]]:
    """Every record of the notifications topic: (partition, key, value, headers)."""
    topic = TopicNames.from_settings(settings).notifications
    return [
        (record.partition, record.key, record.value, dict(record.headers))
        async for records in read_topic(settings.bootstrap_servers, topic)
        for record in records
    ]


async def assert_on_topic(settings: Settings, notes: list[Notification], webhook: Webhook) -> None:
    """Each of `notes` is on the notifications topic once, keyed by its account on its
    account's partition, byte for byte the body the webhook took, with the journal seq of
    the event that brought it in its `seq` header (how a worker taking the partition over
    knows what was published already), none for a rejection's."""
    bodies = webhook.bodies()
    records = await on_topic(settings)
    journal_topic = TopicNames.from_settings(settings).journal
    events = await read_journal(settings.bootstrap_servers, journal_topic)
    journal = {event.entry_id: event.seq for event in events}
    for note in notes:
        found = [r for r in records if from_json(r[2], Notification).id == note.id]
        assert len(found) == 1, (note.id, found)
        partition, record_key, value, headers = found[0]
        assert record_key == note.account.encode()
        assert partition == partition_of(note.account, settings.partitions)
        assert value == bodies[note.id]
        if note.type == "limit_reached":  # from a rejection: no journal event, no seq
            assert SEQ_HEADER not in headers, note.id
        else:
            assert note.entry_id is not None, note.id
            assert headers.get(SEQ_HEADER) == str(journal[note.entry_id]).encode(), note.id


def details(note: Notification) -> dict[str, Any]:
    return note.details or {}


# --- money moved ------------------------------------------------------------------------------


async def test_a_deposit_and_transfers_notify_each_side_with_amount_counterparty_and_balance(
    client: LedgerClient,
    webhook: Webhook,
    module_workers: Workers,
    module_ledger: Settings,
    on: Callable[[int, str], str],
) -> None:
    alice, bob, carol = on(0, "alice"), on(0, "bob"), on(1, "carol")
    await opened(client, alice, bob, carol, funds=0)
    deposit = accepted(await client.deposit(alice, 1_000, "USD"))
    local = accepted(await client.transfer(alice, bob, 300, "USD"))
    across = accepted(await client.transfer(alice, carol, 200, "USD"))  # another partition

    # (type, account, command, entry, amount, balance after, counterparty, journal kind)
    expected = [
        ("money_received", alice, deposit, f"{deposit}:0", 1_000, 1_000, None, "deposit"),
        ("money_sent", alice, local, f"{local}:0", 300, 700, bob, "transfer"),
        ("money_received", bob, local, f"{local}:0", 300, 300, alice, "transfer"),
        ("money_sent", alice, across, f"{across}:0", 200, 500, carol, "transfer_debit"),
        ("money_received", carol, across, f"{across}:1", 200, 200, alice, "transfer_credit"),
    ]
    found = await notified(webhook, module_workers, {row[:3] for row in expected})
    for kind, account, command, entry, amount, balance, counterparty, journal_kind in expected:
        note = found[(kind, account, command)]
        assert (note.entry_id, note.amount, note.balance, note.currency) == (
            entry,
            amount,
            balance,
            "USD",
        ), note
        assert details(note).get("counterparty") == counterparty, note
        assert details(note)["kind"] == journal_kind, note
    # Opening an account moves no money: these are every notification of the three.
    notes = of(webhook, alice, bob, carol)
    assert sorted(key(n) for n in notes) == sorted(row[:3] for row in expected)
    await assert_on_topic(module_ledger, notes, webhook)


# --- low balance ------------------------------------------------------------------------------


async def test_low_balance_is_notified_once_as_the_balance_crosses_below_the_threshold(
    client: LedgerClient,
    webhook: Webhook,
    module_workers: Workers,
    module_ledger: Settings,
    on: Callable[[int, str], str],
) -> None:
    dora, shop = on(2, "dora"), on(2, "shop")
    await opened(client, dora, funds=1_000, low_balance=500)
    await opened(client, shop, funds=0)
    above = accepted(await client.withdraw(dora, 400, "USD"))  # 600: still above
    crossing = accepted(await client.transfer(dora, shop, 200, "USD"))  # 400: below
    lower = accepted(await client.withdraw(dora, 100, "USD"))  # 300: below already
    lowest = accepted(await client.withdraw(dora, 50, "USD"))  # 250: below already

    await notified(
        webhook,
        module_workers,
        {("low_balance", dora, crossing), ("money_sent", dora, lowest)},
    )
    lows = [n for n in of(webhook, dora, shop) if n.type == "low_balance"]
    assert [(n.account, n.command_id, n.entry_id, n.balance, n.amount) for n in lows] == [
        (dora, crossing, f"{crossing}:0", 400, None)
    ]
    assert lows[0].details == {"threshold": 500}
    sent = [n.command_id for n in of(webhook, dora) if n.type == "money_sent"]
    assert sent == [above, crossing, lower, lowest]
    await assert_on_topic(module_ledger, lows, webhook)


# --- holds ------------------------------------------------------------------------------------


async def test_a_hold_that_expires_notifies_its_source_with_the_amount_released(
    client: LedgerClient,
    webhook: Webhook,
    module_workers: Workers,
    module_ledger: Settings,
    on: Callable[[int, str], str],
) -> None:
    payer, payee = on(1, "payer"), on(1, "payee")  # one partition: the expiry touches both
    await opened(client, payer, payee)
    hold = accepted(await client.hold(payer, payee, 300, "USD", timeout_s=1))
    expiry = expire_command_id(hold)

    found = await notified(webhook, module_workers, {("hold_expired", payer, expiry)})
    note = found[("hold_expired", payer, expiry)]
    assert (note.entry_id, note.amount, note.balance, note.currency) == (
        f"{expiry}:0",
        300,
        1_000,
        "USD",
    )
    assert note.details == {"hold_id": hold}
    # The payee's pending credit was released by the same event: no notification for it.
    marker = accepted(await client.deposit(payee, 1, "USD"))
    await notified(webhook, module_workers, {("money_received", payee, marker)})
    assert [n.type for n in of(webhook, payee)] == ["money_received", "money_received"]
    assert [n.type for n in of(webhook, payer)] == ["money_received", "hold_expired"]
    await assert_on_topic(module_ledger, [note], webhook)


# --- invoices ---------------------------------------------------------------------------------


async def test_an_invoice_paid_on_the_ledger_or_by_card_notifies_invoice_paid_once_paid(
    client: LedgerClient,
    webhook: Webhook,
    module_workers: Workers,
    module_ledger: Settings,
    on: Callable[[int, str], str],
) -> None:
    payer, shop = on(0, "payer"), on(0, "shop")
    await opened(client, payer, shop)
    ledger = accepted(await client.pay_invoice(payer, shop, "inv-ledger", 400, "USD"))
    card = accepted(await client.pay_invoice(payer, shop, "inv-card", 250, "USD", channel="card"))
    confirmed = accepted(await client.confirm_payment(payer, "inv-card"))
    declined = accepted(
        await client.pay_invoice(payer, shop, "inv-declined", 100, "USD", channel="card")
    )
    accepted(await client.fail_payment(payer, "inv-declined"))
    marker = accepted(await client.deposit(payer, 1, "USD"))

    found = await notified(
        webhook,
        module_workers,
        {
            ("invoice_paid", shop, ledger),
            ("invoice_paid", shop, confirmed),
            ("money_received", payer, marker),
        },
    )
    # (command, entry, amount, the shop's balance after, invoice)
    expected = [
        (ledger, f"{ledger}:0", 400, 1_400, "inv-ledger"),
        (confirmed, f"{confirmed}:0", 250, 1_650, "inv-card"),
    ]
    for command, entry, amount, balance, invoice in expected:
        note = found[("invoice_paid", shop, command)]
        assert (note.entry_id, note.amount, note.balance, note.currency) == (
            entry,
            amount,
            balance,
            "USD",
        ), note
        assert note.details == {"invoice_id": invoice, "payer": payer}, note
    # Nothing when the card payment's hold was placed, nor for the declined one.
    paid = [n for n in of(webhook, payer, shop) if n.type == "invoice_paid"]
    assert [n.command_id for n in paid] == [ledger, confirmed]
    assert card not in {n.command_id for n in of(webhook, payer, shop)}
    assert declined not in {n.command_id for n in of(webhook, payer, shop)}
    received = [n.command_id for n in of(webhook, shop) if n.type == "money_received"]
    assert received[1:] == [ledger, confirmed]  # after the shop's own deposit
    await assert_on_topic(module_ledger, paid, webhook)


async def test_an_invoice_payment_the_payees_partition_refuses_is_not_notified_as_paid(
    client: LedgerClient,
    webhook: Webhook,
    module_workers: Workers,
    on: Callable[[int, str], str],
) -> None:
    payer, nobody, shop = on(1, "payer"), on(2, "nobody"), on(2, "shop")  # nobody: never opened
    await opened(client, payer, shop)
    refused = await client.pay_invoice(payer, nobody, "inv-refused", 300, "USD")
    assert (refused.status, refused.code) == ("rejected", Code.ACCOUNT_NOT_FOUND), refused

    # The money went to @transit and came back (the refund's entry is <command>:2).
    found = await notified(
        webhook,
        module_workers,
        {
            ("money_sent", payer, refused.command_id),
            ("money_received", payer, refused.command_id),
        },
    )
    assert found[("money_received", payer, refused.command_id)].entry_id == (
        f"{refused.command_id}:2"
    )
    assert [n.type for n in of(webhook, payer) if n.type == "invoice_paid"] == []
    # Paid across partitions, the payee hears of it when the money lands (the credit, `:1`).
    paid = accepted(await client.pay_invoice(payer, shop, "inv-landed", 200, "USD"))
    wanted = ("invoice_paid", shop, paid)
    note = (await notified(webhook, module_workers, {wanted}))[wanted]
    assert (note.entry_id, note.amount, note.balance) == (f"{paid}:1", 200, 1_200), note
    assert note.details == {"invoice_id": "inv-landed", "payer": payer}
    assert [n.command_id for n in of(webhook, payer, nobody, shop) if n.type == "invoice_paid"] == [
        paid
    ]


# --- limits -----------------------------------------------------------------------------------


async def test_a_withdrawal_over_the_daily_limit_notifies_limit_reached_with_the_limit(
    client: LedgerClient,
    webhook: Webhook,
    module_workers: Workers,
    module_ledger: Settings,
    on: Callable[[int, str], str],
) -> None:
    saver = on(3, "saver")
    await opened(client, saver, limits={"daily_amount_max": {"withdrawal": 500}})
    accepted(await client.withdraw(saver, 400, "USD"))
    over = await client.withdraw(saver, 200, "USD")
    assert (over.status, over.code) == ("rejected", Code.LIMIT_EXCEEDED), over
    assert over.limit is not None

    wanted = ("limit_reached", saver, over.command_id)
    note = (await notified(webhook, module_workers, {wanted}))[wanted]
    assert (note.id, note.entry_id) == (f"{over.command_id}:limit_reached", None)
    assert note.details == {"limit": as_dict(over.limit)}
    assert note.details["limit"] == {
        "limit": "daily_amount_max.withdrawal",
        "value": 500,
        "used": 400,
        "requested": 200,
    }
    # A repeat of the refused command is answered as a duplicate, and notifies nothing more:
    # the next refusal's notification comes after where the repeat's would have (one reply
    # partition, one account: one order).
    again = await client.withdraw(saver, 200, "USD", command_id=over.command_id)
    assert (again.code, again.duplicate) == (Code.LIMIT_EXCEEDED, True), again
    later = await client.withdraw(saver, 101, "USD")
    assert later.code == Code.LIMIT_EXCEEDED, later
    await notified(webhook, module_workers, {("limit_reached", saver, later.command_id)})
    limited = [n.command_id for n in of(webhook, saver) if n.type == "limit_reached"]
    assert limited == [over.command_id, later.command_id]
    await assert_on_topic(module_ledger, [note], webhook)


async def test_limit_reached_names_the_amount_refused(
    client: LedgerClient,
    webhook: Webhook,
    module_workers: Workers,
    on: Callable[[int, str], str],
) -> None:
    spender = on(2, "spender")
    await opened(client, spender, funds=300, limits={"transaction_amount_max": 300})
    over = await client.withdraw(spender, 301, "USD")
    assert (over.status, over.code) == ("rejected", Code.LIMIT_EXCEEDED), over

    wanted = ("limit_reached", spender, over.command_id)
    note = (await notified(webhook, module_workers, {wanted}))[wanted]
    # A refusal names no currency (results carry none): the account's is known to the reader.
    assert (note.amount, note.currency) == (301, ""), note


# --- every delivery ---------------------------------------------------------------------------


async def test_every_delivery_was_signed_taken_after_two_failures_with_an_id_of_its_own(
    client: LedgerClient,
    webhook: Webhook,
    module_workers: Workers,
    module_ledger: Settings,
    on: Callable[[int, str], str],
) -> None:
    """Over every notification of the module (this test's deposit at least)."""
    last = on(0, "last")
    await opened(client, last, funds=0)
    deposit = accepted(await client.deposit(last, 5, "USD"))
    await notified(webhook, module_workers, {("money_received", last, deposit)})

    with webhook.lock:
        taken = list(webhook.taken)
        refused = list(webhook.refused)
    assert refused == []
    first: dict[str, Taken] = {}
    for one in taken:
        first.setdefault(one.notification.id, one)
    # The webhook took each one at the third attempt: two 500s, then 200.
    assert {i: t.attempt for i, t in first.items()} == {i: FAILURES + 1 for i in first}
    # The id names what caused it: <entry_id>:<type>:<account>, <command_id>:limit_reached;
    # so one id per (type, account, journal entry), and one (type, account, entry) per id.
    for i, t in first.items():
        note = t.notification
        if note.type == "limit_reached":
            assert (i, note.entry_id) == (f"{note.command_id}:limit_reached", None)
        else:
            assert i == f"{note.entry_id}:{note.type}:{note.account}"
    cause = {
        i: (t.notification.type, t.notification.account, t.notification.entry_id or i)
        for i, t in first.items()
    }
    assert len(set(cause.values())) == len(cause)
    for one in taken:  # a notification delivered again is the same, byte for byte
        assert one.body == first[one.notification.id].body

    records = await on_topic(module_ledger)
    on_the_topic = Counter(from_json(value, Notification).id for _, _, value, _ in records)
    assert set(first) <= set(on_the_topic)
    assert [i for i, count in on_the_topic.items() if count > 1] == []
