"""`ledger-stream demo`: a whole ledger at work, and the proof that its books balance.

Starts what it needs (embedded broker, workers), opens and funds accounts, publishes
transfers through LedgerClient (same- and cross-partition, some invalid, some repeated),
walks through the rules (limits, holds, invoice payments, reversals), then reads the journal
back, checks it against what the results said, and audits the ledger (`ledger-stream
audit`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ledger_stream.audit import audit
from ledger_stream.client import LedgerClient
from ledger_stream.codes import Code
from ledger_stream.core import TRANSIT, WORLD
from ledger_stream.journal import Books, fold, read_journal
from ledger_stream.kafka.security import connection_options
from ledger_stream.local import RunDirectory, start_local_ledger
from ledger_stream.messages import Result
from ledger_stream.money import format_amount
from ledger_stream.partitioning import name_on
from ledger_stream.settings import Settings
from ledger_stream.topics import TopicNames

OPENING_BALANCE = 100_000  # minor units: 1,000.00 per account
IN_FLIGHT_MAX = 5_000  # transfers awaiting their result at once (LedgerClient bounds it)
SETTLE_ATTEMPTS_MAX = 20


@dataclass
class Tally:
    """What the demo sent and what came back: the balances the results promise."""

    currency_of: dict[str, str]
    codes: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    expected: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    transfers_accepted: int = 0

    def record(
        self, result: Result, move: tuple[str, str, int] | None, *, funding: bool = False
    ) -> None:
        if not funding:
            self.codes[result.code or "accepted"] += 1
        if result.duplicate:
            self.duplicates += 1
            return
        if result.status == "accepted" and move is not None:
            source, destination, amount = move
            self.expected[source] -= amount
            self.expected[destination] += amount
            if not funding:
                self.transfers_accepted += 1

    def mismatched(self, books: Books) -> list[str]:
        """Customer accounts whose balance in the journal is not what the results said."""
        return [
            account
            for account, amount in self.expected.items()
            if not account.startswith("@")
            and books.balance(account, self.currency_of[account]) != amount
        ]


def run_demo(args: argparse.Namespace) -> int:
    say = _printer(args.json)
    with contextlib.ExitStack() as stack:
        run = stack.enter_context(RunDirectory("ledger-demo-"))
        workdir = run.path
        ledger = start_local_ledger(
            stack,
            workdir,
            name="demo",
            bootstrap=args.bootstrap,
            partitions=args.partitions,
            workers=args.workers,
            say=say,
        )
        report = asyncio.run(_drive(args, ledger.settings, ledger.workers[0].url, say))
        run.failed = not report["invariants_ok"]
    if args.json:
        print(json.dumps(report))
    return 0 if report["invariants_ok"] else 1


async def _drive(
    args: argparse.Namespace, settings: Settings, http_url: str, say: Callable[[str], None]
) -> dict[str, Any]:
    rng = random.Random(args.seed)
    accounts = [f"acct-{i:05d}" for i in range(args.accounts)]
    euro = set(accounts[:: max(1, args.accounts // 10)][: max(1, args.accounts // 20)])
    tally = Tally({a: "EUR" if a in euro else "USD" for a in accounts})
    async with LedgerClient(
        settings.bootstrap_servers,
        topic_prefix=settings.topic_prefix,
        security=connection_options(settings),
        timeout_s=120,
        in_flight_max=IN_FLIGHT_MAX,
        fetch_wait_ms=settings.fetch_wait_ms,
        http_url=http_url,
    ) as client:
        say(f"opening and funding {len(accounts)} accounts (waiting for the workers to join)")
        started = time.monotonic()
        await asyncio.gather(*(client.open_account(a, tally.currency_of[a]) for a in accounts))
        funded = await asyncio.gather(
            *(client.deposit(a, OPENING_BALANCE, tally.currency_of[a]) for a in accounts)
        )
        for account, result in zip(accounts, funded, strict=True):
            tally.record(result, (WORLD, account, OPENING_BALANCE), funding=True)
        say(f"  ready in {time.monotonic() - started:.1f} s")
        dead_letters = await _send_bad_input(client)
        plan = list(_plan_transfers(rng, accounts, euro, args.transfers))
        say(f"publishing {len(plan)} transfers")
        started = time.monotonic()
        await _run_transfers(client, plan, tally, say)
        elapsed = time.monotonic() - started
        rules_ok = await _walk_through_rules(client, settings.partitions, tally, say)
        books = await _settled_books(settings, tally)
        say(f"reading {len(accounts)} balances over HTTP ({http_url}/v1/accounts/<id>)")
        read_ok = await _read_models_match(client, books, tally)
    say("auditing the ledger (ledger-stream audit)")
    audited = await audit(settings)
    for failure in audited.failures:
        say(f"  {failure.line()}")
    report = _report(
        args, settings, tally, books, elapsed, dead_letters, audited.ok, rules_ok, read_ok, say
    )
    report["audit"] = audited.as_dict()
    return report


def _plan_transfers(
    rng: random.Random, accounts: list[str], euro: set[str], count: int
) -> list[tuple[str, dict[str, Any], tuple[str, str, int] | None]]:
    """(command_id, transfer fields, money it moves if accepted) for each transfer to send."""
    usd = [a for a in accounts if a not in euro]
    plan: list[tuple[str, dict[str, Any], tuple[str, str, int] | None]] = []
    for number in range(count):
        roll = rng.random()
        source, destination = rng.sample(usd, 2)
        amount = rng.randint(1, 5_000)
        if roll < 0.02:
            amount = OPENING_BALANCE * 50  # insufficient_funds
        elif roll < 0.04:
            destination = f"ghost-{number}"  # account_not_found (often cross-partition)
        elif roll < 0.06 and euro:
            destination = rng.choice(sorted(euro))  # currency_mismatch
        elif roll < 0.07:
            destination = source  # accounts_must_be_different
        elif roll < 0.08:
            amount = 0  # invalid_amount
        elif roll < 0.10 and plan:
            plan.append(rng.choice(plan))  # the same command again: a duplicate
            continue
        elif roll < 0.11 and plan:
            command_id, fields, _ = rng.choice(plan)
            plan.append((command_id, {**fields, "amount": fields["amount"] + 1}, None))
            continue
        fields = {"source": source, "destination": destination, "amount": amount}
        plan.append((f"tr-{number}", fields, (source, destination, amount)))
    return plan


async def _run_transfers(
    client: LedgerClient,
    plan: list[tuple[str, dict[str, Any], tuple[str, str, int] | None]],
    tally: Tally,
    say: Callable[[str], None],
) -> None:
    done = 0

    async def one(command_id: str, fields: dict[str, Any], move: Any) -> None:
        nonlocal done
        result = await client.transfer(
            fields["source"], fields["destination"], fields["amount"], "USD", command_id=command_id
        )
        tally.record(result, move)
        done += 1

    tasks = [asyncio.create_task(one(*item)) for item in plan]
    started = time.monotonic()
    progress = asyncio.create_task(_progress(lambda: done, len(plan), started, say))
    try:
        await asyncio.gather(*tasks)
    finally:
        progress.cancel()
    say(f"  {done}/{len(plan)} decided")


async def _walk_through_rules(
    client: LedgerClient, partitions: int, tally: Tally, say: Callable[[str], None]
) -> bool:
    """Limits, holds, invoice payments, reversals and aliases on three accounts of one
    partition, each step's answer checked against what the README says it must be."""
    payer, shop, other = (name_on(0, f"rules-{role}", partitions) for role in "psx")
    # One partition: the transfers of the main run are counted by their journal events.
    for account in (payer, shop, other):
        tally.currency_of[account] = "USD"
    say("walking through the rules (limits, holds, invoice payments, reversals, aliases)")
    limits = {"daily_count_max": {"withdrawal": 2}, "transaction_amount_max": 50_000}
    await client.open_account(payer, "USD", limits=limits)
    await client.open_account(shop, "USD")
    await client.open_account(other, "USD")
    funded = await client.deposit(payer, 50_000, "USD")
    tally.record(funded, (WORLD, payer, 50_000), funding=True)
    steps: list[tuple[str, Result, Code | None]] = []

    async def step(
        what: str, result: Result, expected: Code | None, move: tuple[str, str, int] | None
    ) -> Result:
        tally.record(result, move, funding=True)
        if result.type == "transfer" and result.status == "accepted":
            tally.transfers_accepted += 1  # its journal event is counted with the main run's
        steps.append((what, result, expected))
        return result

    await step("withdraw 1.00", await client.withdraw(payer, 100, "USD"), None, (payer, WORLD, 100))
    await step(
        "withdraw 1.00, the second of two a day",
        await client.withdraw(payer, 100, "USD"),
        None,
        (payer, WORLD, 100),
    )
    await step(
        "withdraw 1.00, a third",
        await client.withdraw(payer, 100, "USD"),
        Code.LIMIT_EXCEEDED,
        None,
    )
    await step(
        "deposit 500.01, over the transaction maximum",
        await client.deposit(payer, 50_001, "USD"),
        Code.LIMIT_EXCEEDED,
        None,
    )
    hold = await step(
        "hold 300.00 for the shop", await client.hold(payer, shop, 30_000, "USD"), None, None
    )
    await step(
        "post 120.00 of it (180.00 released)",
        await client.post_hold(payer, hold.command_id, amount=12_000),
        None,
        (payer, shop, 12_000),
    )
    await step(
        "post it again",
        await client.post_hold(payer, hold.command_id),
        Code.HOLD_ALREADY_POSTED,
        None,
    )
    voided = await step("hold 50.00", await client.hold(payer, other, 5_000, "USD"), None, None)
    await step("void it", await client.void_hold(payer, voided.command_id), None, None)
    await step(
        "post the voided hold",
        await client.post_hold(payer, voided.command_id),
        Code.HOLD_VOIDED,
        None,
    )
    paid = await step(
        "pay invoice INV-1 (80.00) through the ledger",
        await client.pay_invoice(payer, shop, "INV-1", 8_000, "USD"),
        None,
        (payer, shop, 8_000),
    )
    await step(
        "pay INV-1 again, another command id",
        await client.pay_invoice(payer, shop, "INV-1", 8_000, "USD"),
        Code.INVOICE_ALREADY_PAID,
        None,
    )
    await step(
        "pay invoice INV-2 (25.00) by card: a hold",
        await client.pay_invoice(payer, shop, "INV-2", 2_500, "USD", channel="card"),
        None,
        None,
    )
    await step(
        "the gateway confirms INV-2",
        await client.confirm_payment(payer, "INV-2"),
        None,
        (payer, shop, 2_500),
    )
    await step(
        "reverse the payment of INV-1 (by the shop)",
        await client.reverse(shop, paid.command_id),
        None,
        (shop, payer, 8_000),
    )
    await step(
        "reverse it again", await client.reverse(shop, paid.command_id), Code.ALREADY_REVERSED, None
    )
    email = "alias:shop@example.com"
    await step(
        f"register {email} for the shop", await client.register_alias(email, shop), None, None
    )
    await step(
        f"register {email} again, for another account",
        await client.register_alias(email, other),
        Code.ALIAS_TAKEN,
        None,
    )
    await step(
        f"pay 10.00 to {email}",
        await client.transfer(payer, email, 1_000, "USD"),
        None,
        (payer, shop, 1_000),
    )
    await step(
        "pay 10.00 to alias:nobody@example.com",
        await client.transfer(payer, "alias:nobody@example.com", 1_000, "USD"),
        Code.ALIAS_NOT_FOUND,
        None,
    )
    ok = True
    for what, result, expected in steps:
        right = result.code == expected and (result.status == "accepted") == (expected is None)
        ok = ok and right
        answer = result.status + (f" ({result.code})" if result.code else "")
        say(f"  [{'ok' if right else 'FAILED'}] {what}: {answer}")
    return ok


async def _progress(
    done: Callable[[], int], total: int, started: float, say: Callable[[str], None]
) -> None:
    while True:
        await asyncio.sleep(2)
        elapsed = time.monotonic() - started
        say(f"  {done()}/{total} decided ({done() / elapsed:,.0f} transfers/s)")


async def _send_bad_input(client: LedgerClient) -> int:
    """Two records the writer cannot read: they go to the dead-letter topic."""
    client.send_raw("acct-00000", b"{this is not json")
    client.send_raw("acct-00000", b'{"type": "teleport", "command_id": "bad-1", "account": "x"}')
    await client.flush()
    return 2


async def _settled_books(settings: Settings, tally: Tally) -> Books:
    """The journal's fold, once every accepted money movement shows in it."""
    topic = TopicNames.from_settings(settings).journal
    books = Books()
    for _ in range(SETTLE_ATTEMPTS_MAX):
        security = connection_options(settings)
        books = fold(await read_journal(settings.bootstrap_servers, topic, security=security))
        if not tally.mismatched(books):
            break
        await asyncio.sleep(0.5)
    return books


async def _read_models_match(client: LedgerClient, books: Books, tally: Tally) -> bool:
    """Every account's posted balance, read from the read models over HTTP (the balance as
    of a time after every event: folded from the journal, not the writer's state), is the
    journal's fold."""
    later = int(time.time() * 1000) + 86_400_000
    for account, currency in tally.currency_of.items():
        read = await client.balance(account, as_of=later)
        if read["posted"] != books.balance(account, currency):
            return False
    return True


def _report(
    args: argparse.Namespace,
    settings: Settings,
    tally: Tally,
    books: Books,
    elapsed: float,
    dead_letters: int,
    audit_ok: bool,
    rules_ok: bool,
    read_ok: bool,
    say: Callable[[str], None],
) -> dict[str, Any]:
    negative = [a for a, c in tally.currency_of.items() if books.balance(a, c) < 0]
    totals = books.totals()
    transit = {c: books.balance(TRANSIT, c) for c in totals}
    transfer_events = books.kinds["transfer"] + books.kinds["transfer_credit"]
    checks = {
        "every_event_balances": not books.unbalanced,
        "total_is_zero": all(amount == 0 for amount in totals.values()),
        "transit_is_zero": all(amount == 0 for amount in transit.values()),
        "balances_match_results": not tally.mismatched(books),
        "no_account_overdrawn": not negative,
        "each_accepted_transfer_posted_once": transfer_events == tally.transfers_accepted,
        "audit_clean": audit_ok,
        "rules_as_documented": rules_ok,
        "read_models_match_the_books": read_ok,
    }
    transfers_sent = sum(tally.codes.values())
    rate = transfers_sent / elapsed if elapsed else 0.0
    say("")
    say(
        f"transfers: {transfers_sent} in {elapsed:.1f} s = {rate:,.0f} transfers/s "
        f"({settings.partitions} partitions, {args.workers} worker(s))"
    )
    for code, count in sorted(tally.codes.items(), key=lambda item: -item[1]):
        say(f"  {code:32} {count:>8}")
    say(f"  {'(of which duplicates)':32} {tally.duplicates:>8}")
    say(f"dead letters: {dead_letters}")
    say("trial balance (journal fold, credits - debits):")
    for currency, total in sorted(totals.items()):
        world = books.balance(WORLD, currency)
        customers = total - world - transit[currency]
        say(
            f"  {currency}: customers {format_amount(customers, currency):>14}  "
            f"@world {format_amount(world, currency):>14}  "
            f"@transit {format_amount(transit[currency], currency):>8}  "
            f"total {format_amount(total, currency)}"
        )
    for name, ok in checks.items():
        say(f"  [{'ok' if ok else 'FAILED'}] {name.replace('_', ' ')}")
    invariants_ok = all(checks.values())
    say("the books balance" if invariants_ok else "INVARIANT FAILED")
    return {
        "transfers": transfers_sent,
        "elapsed_s": round(elapsed, 3),
        "transfers_per_s": round(rate, 1),
        "accepted": tally.codes["accepted"],
        "rejected": {c: n for c, n in tally.codes.items() if c != "accepted"},
        "duplicates": tally.duplicates,
        "dead_letters": dead_letters,
        "journal_events": books.events,
        "trial_balance": {
            c: {"total": totals[c], "@world": books.balance(WORLD, c), "@transit": transit[c]}
            for c in totals
        },
        "checks": checks,
        "invariants_ok": invariants_ok,
    }


def _printer(quiet_json: bool) -> Callable[[str], None]:
    def say(line: str) -> None:
        print(line, file=sys.stderr if quiet_json else sys.stdout, flush=True)

    return say
