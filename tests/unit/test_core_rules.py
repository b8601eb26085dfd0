"""Tables of `decide` for the rules beyond plain transfers: limits, holds, invoice payments,
reversals, aliases, and metadata on journal events.

The ledger here is two partitions, each a `fake_store.PartitionStore`: accounts whose name
starts with "z" are on partition 1, every other account on partition 0. A command goes to the
partition of its account; the legs a decision sends are carried to the partition of their
account (`Leg.account`) until none is left, unless a step says to keep them in flight. Every
decision's journal events are checked to balance as they are made.

The README's sections "Limits", "Holds (two-phase transfers)", "Invoice payments",
"Reversals", "Aliases" and "Rejection codes, in precedence order" are the specification.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pytest
from fake_store import PartitionStore
from test_core import REJECTED

from ledger_stream.codes import PRECEDENCE, Code
from ledger_stream.core import DAY_MS, Decision, Rules
from ledger_stream.messages import (
    COMMAND_ADAPTER,
    AccountState,
    Command,
    Hold,
    JournalEvent,
    Leg,
    LimitBreach,
    Limits,
    Posting,
    Receipt,
    Result,
    Reverse,
    replaced,
    routed_by,
)

T0 = 10 * DAY_MS + 3_600_000  # 01:00 UTC on day 10
DAY9 = 9 * DAY_MS + 1_000  # the day before, for setting accounts up
DAY11 = 11 * DAY_MS  # the first millisecond of the next UTC day


# Commands, built as a client sends them (through the command adapter).


def command(kind: str, command_id: str, account: str, **fields: Any) -> Command:
    body = {"type": kind, "command_id": command_id, "account": account, **fields}
    return COMMAND_ADAPTER.validate_python(body)


def open_(
    cid: str, account: str, limits: dict[str, Any] | None = None, overdraft_limit: int = 0
) -> Command:
    fields: dict[str, Any] = {"currency": "USD", "overdraft_limit": overdraft_limit}
    if limits is not None:
        fields["limits"] = limits
    return command("open_account", cid, account, **fields)


def set_limits(cid: str, account: str, **fields: Any) -> Command:
    return command("set_limits", cid, account, **fields)


def dep(cid: str, account: str, amount: int, currency: str = "USD") -> Command:
    return command("deposit", cid, account, amount=amount, currency=currency)


def wd(cid: str, account: str, amount: int, currency: str = "USD") -> Command:
    return command("withdraw", cid, account, amount=amount, currency=currency)


def xfer(cid: str, account: str, destination: str, amount: int) -> Command:
    return command("transfer", cid, account, destination=destination, amount=amount, currency="USD")


def close(cid: str, account: str) -> Command:
    return command("close_account", cid, account)


def hold(
    cid: str, account: str, destination: str, amount: int, timeout_s: int | None = None
) -> Command:
    fields: dict[str, Any] = {"destination": destination, "amount": amount, "currency": "USD"}
    if timeout_s is not None:
        fields["timeout_s"] = timeout_s
    return command("hold", cid, account, **fields)


def post(cid: str, account: str, hold_id: str, amount: int | None = None) -> Command:
    fields: dict[str, Any] = {"hold_id": hold_id}
    if amount is not None:
        fields["amount"] = amount
    return command("post_hold", cid, account, **fields)


def void(cid: str, account: str, hold_id: str) -> Command:
    return command("void_hold", cid, account, hold_id=hold_id)


def expire(account: str, hold_id: str, cid: str | None = None) -> Command:
    return command("expire_hold", cid or f"expire:{hold_id}", account, hold_id=hold_id)


def pay(
    cid: str,
    account: str,
    invoice_id: str,
    destination: str,
    amount: int,
    channel: str = "ledger",
    timeout_s: int | None = None,
) -> Command:
    fields: dict[str, Any] = {
        "invoice_id": invoice_id,
        "destination": destination,
        "amount": amount,
        "currency": "USD",
        "channel": channel,
    }
    if timeout_s is not None:
        fields["timeout_s"] = timeout_s
    return command("pay_invoice", cid, account, **fields)


def confirm(cid: str, account: str, invoice_id: str) -> Command:
    return command("confirm_payment", cid, account, invoice_id=invoice_id)


def fail(cid: str, account: str, invoice_id: str) -> Command:
    return command("fail_payment", cid, account, invoice_id=invoice_id)


def rev(cid: str, account: str, target: str) -> Command:
    return command("reverse", cid, account, target=target)


def alias(cid: str, name: str, target: str) -> Command:
    return command("register_alias", cid, name, target=target)


# The ledger: two partitions, legs carried between them.


def usd(**fields: int) -> AccountState:
    return AccountState(currency="USD", **fields)  # type: ignore[arg-type]


def partition_of(account: str) -> int:
    """Accounts starting with z (and aliases whose name does) on partition 1."""
    return 1 if account.removeprefix("alias:").startswith("z") else 0


SEED: tuple[dict[str, AccountState], dict[str, AccountState]] = (
    {
        "alice": usd(credits_posted=1_000),
        "bob": usd(),
        "amy": usd(credits_posted=100),
        "dora": usd(overdraft_limit=100),
        "carol": AccountState(currency="USD", status="closed"),
    },
    {"zed": usd(credits_posted=1_000), "zoe": usd()},
)


def balanced(postings: Sequence[Posting]) -> bool:
    return sum(p.debit for p in postings) == sum(p.credit for p in postings)


def assert_balanced(decision: Decision) -> None:
    """Each journal event balances: its postings, and its pending and released separately."""
    for event in decision.journal:
        for part in ("postings", "pending", "released"):
            postings = getattr(event, part) or []
            assert balanced(postings), f"{event.entry_id}: {part} do not balance"
            assert all(p.debit >= 0 and p.credit >= 0 for p in postings), event.entry_id


@dataclass
class Sent:
    """One command and every decision it caused (its own, then the legs it set off)."""

    command: Command
    decisions: list[Decision]

    @property
    def first(self) -> Decision:
        return self.decisions[0]

    @property
    def results(self) -> list[Result]:
        cid = self.command.command_id
        return [r.result for d in self.decisions for r in d.results if r.result.command_id == cid]

    @property
    def result(self) -> Result:
        (result,) = self.results
        return result

    @property
    def journal(self) -> list[JournalEvent]:
        return [event for d in self.decisions for event in d.journal]

    @property
    def receipts(self) -> list[Receipt]:
        return [receipt for d in self.decisions for receipt in d.receipts]


class Ledger:
    def __init__(self, rules: Rules | None = None) -> None:
        self.partitions = [
            PartitionStore(
                is_local=lambda name, p=p: partition_of(name) == p,  # type: ignore[misc]
                accounts=dict(SEED[p]),
                rules=rules or Rules(),
            )
            for p in (0, 1)
        ]
        self.in_flight: list[Leg | Command] = []  # legs, and commands sent on
        self.decisions: list[Decision] = []

    def store(self, account: str) -> PartitionStore:
        return self.partitions[partition_of(account)]

    def account(self, name: str) -> AccountState:
        return self.store(name).accounts[name]

    def accounts(self) -> dict[str, AccountState]:
        return {**self.partitions[0].accounts, **self.partitions[1].accounts}

    def hold(self, account: str, hold_id: str) -> Hold:
        found = self.store(account).outcomes[f"cmd:{hold_id}"].hold
        assert found is not None
        return found

    def final(self, account: str, command_id: str) -> Result | None:
        """The answer the command's own partition keeps for it."""
        return self.store(account).outcomes[f"cmd:{command_id}"].result

    def _run(self, store: PartitionStore, messages: Sequence[Command | Leg], ts: int) -> Decision:
        decision = store.run(messages, timestamp_ms=ts)
        assert_balanced(decision)
        self.decisions.append(decision)
        self.in_flight.extend(decision.legs)
        self.in_flight.extend(forward.message for forward in decision.forwards)
        return decision

    def send(self, message: Command, ts: int = T0, deliver: bool = True) -> Sent:
        decisions = [self._run(self.store(message.account), [message], ts)]
        if deliver:
            decisions += self.deliver(ts)
        return Sent(message, decisions)

    def step(self, ts: int = T0) -> list[Decision]:
        """Carry the legs (and commands) in flight to their partitions, once."""
        legs, self.in_flight = self.in_flight, []
        decisions = []
        for p, store in enumerate(self.partitions):
            mine = [leg for leg in legs if partition_of(_key(leg)) == p]
            if mine:
                decisions.append(self._run(store, mine, ts))
        return decisions

    def deliver(self, ts: int = T0) -> list[Decision]:
        """Carry the legs in flight, and the legs those send, until none is left."""
        decisions = []
        while self.in_flight:
            decisions += self.step(ts)
        return decisions

    def events(self) -> list[JournalEvent]:
        """Every journal event sent, once per entry id."""
        return list({e.entry_id: e for d in self.decisions for e in d.journal}.values())

    def fold(self, part: str = "postings") -> dict[str, int]:
        """Credits minus debits per account over one part of every event sent."""
        balances: dict[str, int] = defaultdict(int)
        for event in self.events():
            for p in getattr(event, part) or []:
                balances[p.account] += p.credit - p.debit
        return dict(balances)


def _key(message: Leg | Command) -> str:
    return message.account if isinstance(message, Leg) else routed_by(message)


# Steps of a scenario: a command, its record time, and what it must be answered.

ACCEPTED = "accepted"
IN_FLIGHT = "in flight"  # no answer yet: its legs are kept in flight


class Step(NamedTuple):
    command: Command
    ts: int = T0
    expect: str = ACCEPTED


def ok(message: Command, ts: int = T0) -> Step:
    return Step(message, ts)


def no(message: Command, code: str, ts: int = T0) -> Step:
    return Step(message, ts, code)


def flying(message: Command, ts: int = T0) -> Step:
    return Step(message, ts, IN_FLIGHT)


def play(ledger: Ledger, steps: Sequence[Step]) -> None:
    for step in steps:
        sent = ledger.send(step.command, step.ts, deliver=step.expect != IN_FLIGHT)
        if step.expect == IN_FLIGHT:
            assert sent.results == [], step
        elif step.expect == ACCEPTED:
            assert [(r.status, r.code) for r in sent.results] == [("accepted", None)], step
        else:
            assert [(r.status, r.code) for r in sent.results] == [("rejected", step.expect)], step


# Rows: a scenario, then one command and its answer.


@dataclass(frozen=True)
class Row:
    case: str
    setup: tuple[Step, ...]
    command: Command
    code: str | None = None  # None: accepted
    ts: int = T0
    limit: tuple[str, int, int, int] | None = None  # (limit, value, used, requested)
    reason: str | None = None  # words the reason must hold (else: the code's own reason)
    amount: int | None = None  # an accepted result's amount
    duplicate: bool = False
    rules: Rules = field(default_factory=Rules)


def params(rows: Sequence[Row]) -> list[Any]:
    """The rows as pytest parameters."""
    return [pytest.param(row, id=row.case) for row in rows]


def money_view(accounts: dict[str, AccountState]) -> dict[str, tuple[int, ...]]:
    """What an account holds and reserves, without its posted totals."""
    return {
        name: (a.balance, a.debits_pending, a.credits_pending, a.debits_in_transit)
        for name, a in accounts.items()
    }


def check_row(row: Row) -> Ledger:
    ledger = Ledger(row.rules)
    play(ledger, row.setup)
    before = ledger.accounts()
    sent = ledger.send(row.command, row.ts, deliver=False)
    moved_here = ledger.accounts()
    sent.decisions += ledger.deliver(row.ts)  # this command's legs, and any left in flight
    result = sent.result
    assert (result.command_id, result.type) == (row.command.command_id, row.command.type)
    if row.code is None:
        assert (result.status, result.code, result.duplicate) == ("accepted", None, row.duplicate)
        assert result.limit is None
        if row.amount is not None:
            assert result.amount == row.amount
        if row.duplicate:
            assert (sent.first.accounts, sent.first.outcomes) == ({}, {})
            assert moved_here == before
        return ledger
    assert (result.status, result.code, result.duplicate) == ("rejected", row.code, False)
    if row.reason is None and row.limit is not None:  # the reason names the limit
        assert result.reason is not None and result.reason.startswith(f"{row.limit[0]} is ")
    elif row.reason is None:
        assert result.reason == Code(row.code).reason
    else:
        assert result.reason is not None and row.reason in result.reason, result.reason
    assert result.limit == (LimitBreach(*row.limit) if row.limit else None)
    if sent.first.results:  # refused where it was sent: nothing moves, nothing is counted
        assert (sent.first.journal, sent.first.legs, sent.first.accounts) == ([], [], {})
        assert sent.first.receipts == []
        assert moved_here == before
    else:  # refused by the other side's writer: the money came back
        assert money_view(ledger.accounts()) == money_view(before)
    return ledger


# Limits.

ACTIONS = ("deposit", "withdrawal", "transfer_out")


def act(action: str, cid: str, amount: int, account: str = "lim") -> Command:
    if action == "deposit":
        return dep(cid, account, amount)
    if action == "withdrawal":
        return wd(cid, account, amount)
    return xfer(cid, account, "bob", amount)


def limited(limits: dict[str, Any], funds: int = 900) -> tuple[Step, ...]:
    """Account "lim" opened with `limits` on the day before, funded by a transfer in (which
    counts toward none of its limits)."""
    return (
        ok(open_("o-lim", "lim", limits), DAY9),
        ok(xfer("fund", "alice", "lim", funds), DAY9),
    )


def per_action_rows(a: str) -> list[Row]:
    amount_max = {"daily_amount_max": {a: 100}}
    count_max = {"daily_count_max": {a: 2}}
    one_a_day = {"daily_count_max": {a: 1}}
    other_refusal = (
        no(dep("bad", "lim", 10, "EUR"), "currency_mismatch")
        if a == "deposit"
        else no(act(a, "bad", 5_000), "insufficient_funds")
    )
    return [
        Row(
            f"{a}: exactly the daily amount passes",
            (*limited(amount_max), ok(act(a, "u1", 60))),
            act(a, "x", 40),
            amount=40,
        ),
        Row(
            f"{a}: one unit past the daily amount",
            (*limited(amount_max), ok(act(a, "u1", 60))),
            act(a, "x", 41),
            "limit_exceeded",
            limit=(f"daily_amount_max.{a}", 100, 60, 41),
            reason=f"daily_amount_max.{a} is 100",
        ),
        Row(
            f"{a}: exactly the daily count passes",
            (*limited(count_max), ok(act(a, "u1", 1))),
            act(a, "x", 1),
        ),
        Row(
            f"{a}: one command past the daily count",
            (*limited(count_max), ok(act(a, "u1", 1)), ok(act(a, "u2", 1))),
            act(a, "x", 1),
            "limit_exceeded",
            limit=(f"daily_count_max.{a}", 2, 2, 1),
        ),
        Row(
            f"{a}: exactly the transaction maximum passes",
            limited({"transaction_amount_max": 50}),
            act(a, "x", 50),
        ),
        Row(
            f"{a}: one unit past the transaction maximum",
            limited({"transaction_amount_max": 50}),
            act(a, "x", 51),
            "limit_exceeded",
            limit=("transaction_amount_max", 50, 0, 51),
        ),
        Row(
            f"{a}: a command refused by a limit adds nothing to the day's amount",
            (*limited(amount_max), ok(act(a, "u1", 60)), no(act(a, "u2", 41), "limit_exceeded")),
            act(a, "x", 40),
        ),
        Row(
            f"{a}: a command refused by a limit adds nothing to the day's count",
            (
                *limited({"daily_count_max": {a: 1}, "transaction_amount_max": 50}),
                no(act(a, "u1", 51), "limit_exceeded"),
            ),
            act(a, "x", 1),
        ),
        Row(
            f"{a}: a command refused for another reason counts toward nothing",
            (*limited(one_a_day), other_refusal),
            act(a, "x", 1),
        ),
        Row(
            f"{a}: the last millisecond of the day still counts toward it",
            (*limited(one_a_day), ok(act(a, "u1", 1))),
            act(a, "x", 1),
            "limit_exceeded",
            ts=DAY11 - 1,
            limit=(f"daily_count_max.{a}", 1, 1, 1),
        ),
        Row(
            f"{a}: a new UTC day resets the count",
            (*limited(one_a_day), ok(act(a, "u1", 1))),
            act(a, "x", 1),
            ts=DAY11,
        ),
        Row(
            f"{a}: a new UTC day resets the amount",
            (*limited(amount_max), ok(act(a, "u1", 100))),
            act(a, "x", 100),
            ts=DAY11,
        ),
        Row(
            f"{a}: a record stamped before the counted day counts toward that day (count)",
            (*limited(one_a_day), ok(act(a, "u1", 1), DAY11 + 5)),
            act(a, "x", 1),
            "limit_exceeded",
            ts=DAY11 - 5,
            limit=(f"daily_count_max.{a}", 1, 1, 1),
        ),
        Row(
            f"{a}: a record stamped before the counted day counts toward that day (amount)",
            (*limited(amount_max), ok(act(a, "u1", 60), DAY11 + 5)),
            act(a, "x", 41),
            "limit_exceeded",
            ts=DAY11 - 5,
            limit=(f"daily_amount_max.{a}", 100, 60, 41),
        ),
        Row(
            f"{a}: yesterday's use does not count today",
            (*limited(one_a_day), ok(act(a, "u1", 1), DAY9 + 5)),
            act(a, "x", 1),
        ),
        Row(
            f"{a}: a count of 0 refuses the first command",
            limited({"daily_count_max": {a: 0}}),
            act(a, "x", 1),
            "limit_exceeded",
            limit=(f"daily_count_max.{a}", 0, 0, 1),
        ),
    ]


TRANSFER_OUT_ONCE = {"daily_count_max": {"transfer_out": 1}}

LIMIT_ROWS: list[Row] = [
    *(row for a in ACTIONS for row in per_action_rows(a)),
    Row(
        "the transaction maximum is checked before the daily amount",
        (
            *limited({"transaction_amount_max": 50, "daily_amount_max": {"withdrawal": 10}}),
            ok(wd("u1", "lim", 10)),
        ),
        wd("x", "lim", 51),
        "limit_exceeded",
        limit=("transaction_amount_max", 50, 0, 51),
    ),
    Row(
        "the daily amount is checked before the daily count",
        (
            *limited(
                {"daily_amount_max": {"withdrawal": 10}, "daily_count_max": {"withdrawal": 1}}
            ),
            ok(wd("u1", "lim", 10)),
        ),
        wd("x", "lim", 1),
        "limit_exceeded",
        limit=("daily_amount_max.withdrawal", 10, 10, 1),
    ),
    Row(
        "a limit of one action does not limit another",
        (*limited({"daily_count_max": {"withdrawal": 0, "deposit": 0}}),),
        xfer("x", "lim", "bob", 10),
    ),
    Row(
        "money transferred in does not count as a deposit",
        limited({"daily_count_max": {"deposit": 0}}),
        xfer("x", "alice", "lim", 10),
    ),
    Row(
        "a hold counts as a transfer out when placed",
        (*limited(TRANSFER_OUT_ONCE), ok(hold("h1", "lim", "bob", 10))),
        xfer("x", "lim", "bob", 1),
        "limit_exceeded",
        limit=("daily_count_max.transfer_out", 1, 1, 1),
    ),
    Row(
        "a hold is refused past the transfer-out count",
        (*limited(TRANSFER_OUT_ONCE), ok(xfer("t1", "lim", "bob", 10))),
        hold("x", "lim", "bob", 1),
        "limit_exceeded",
        limit=("daily_count_max.transfer_out", 1, 1, 1),
    ),
    Row(
        "posting a hold is not limited",
        (*limited(TRANSFER_OUT_ONCE), ok(hold("h1", "lim", "bob", 10))),
        post("x", "lim", "h1"),
    ),
    Row(
        "posting and voiding holds count toward nothing",
        (
            *limited({"daily_count_max": {"transfer_out": 2}}),
            ok(hold("h1", "lim", "bob", 10)),
            ok(post("p1", "lim", "h1")),
            ok(hold("h2", "lim", "bob", 10)),
            ok(void("v2", "lim", "h2")),
        ),
        xfer("x", "lim", "bob", 1),
        "limit_exceeded",
        limit=("daily_count_max.transfer_out", 2, 2, 1),
    ),
    Row(
        "an invoice payment through the ledger counts as a transfer out",
        (*limited(TRANSFER_OUT_ONCE), ok(pay("p1", "lim", "inv-1", "bob", 10))),
        xfer("x", "lim", "bob", 1),
        "limit_exceeded",
        limit=("daily_count_max.transfer_out", 1, 1, 1),
    ),
    Row(
        "an invoice payment through another channel counts as a transfer out",
        (*limited(TRANSFER_OUT_ONCE), ok(pay("p1", "lim", "inv-1", "bob", 10, "card"))),
        xfer("x", "lim", "bob", 1),
        "limit_exceeded",
        limit=("daily_count_max.transfer_out", 1, 1, 1),
    ),
    Row(
        "an invoice payment is refused past the transfer-out count",
        (*limited(TRANSFER_OUT_ONCE), ok(xfer("t1", "lim", "bob", 10))),
        pay("x", "lim", "inv-1", "bob", 1, "card"),
        "limit_exceeded",
        limit=("daily_count_max.transfer_out", 1, 1, 1),
    ),
    Row(
        "reversals count toward nothing",
        (
            *limited({"daily_count_max": {"deposit": 1, "withdrawal": 1}}),
            ok(dep("d1", "lim", 10)),
            ok(wd("w1", "lim", 10)),
            ok(rev("r1", "lim", "w1")),
            ok(rev("r2", "lim", "d1")),
        ),
        wd("x", "lim", 1),
        "limit_exceeded",
        limit=("daily_count_max.withdrawal", 1, 1, 1),
    ),
    Row(
        "a transfer refused by its destination's writer counts toward nothing",
        (*limited(TRANSFER_OUT_ONCE), no(xfer("t1", "lim", "zgone", 10), "account_not_found")),
        xfer("x", "lim", "bob", 1),
    ),
    # Precedence around limit_exceeded.
    Row(
        "past a limit and past the balance: limit_exceeded",
        limited({"daily_count_max": {"withdrawal": 0}}),
        wd("x", "lim", 5_000),
        "limit_exceeded",
        limit=("daily_count_max.withdrawal", 0, 0, 1),
    ),
    Row(
        "another currency past a limit: currency_mismatch",
        limited({"daily_count_max": {"withdrawal": 0}}),
        wd("x", "lim", 1, "EUR"),
        "currency_mismatch",
    ),
    Row(
        "a paid invoice past a limit: invoice_already_paid",
        (*limited(TRANSFER_OUT_ONCE), ok(pay("p1", "lim", "inv-1", "bob", 10))),
        pay("x", "lim", "inv-1", "bob", 10),
        "invoice_already_paid",
    ),
    # Default limits and set_limits.
    Row(
        "default limits apply to an account opened without limits",
        (ok(open_("o1", "dan")), ok(xfer("fund", "alice", "dan", 500))),
        wd("x", "dan", 51),
        "limit_exceeded",
        limit=("transaction_amount_max", 50, 0, 51),
        rules=Rules(default_limits=Limits(transaction_amount_max=50)),
    ),
    Row(
        "default limits do not apply to an account opened with its own",
        (ok(open_("o1", "dan", {})), ok(xfer("fund", "alice", "dan", 500))),
        wd("x", "dan", 51),
        rules=Rules(default_limits=Limits(transaction_amount_max=50)),
    ),
    Row(
        "an account with empty limits is counted, so limits set later see the day's use",
        (
            ok(open_("o1", "dan", {})),
            ok(xfer("fund", "alice", "dan", 500)),
            ok(wd("w1", "dan", 10)),
            ok(set_limits("s1", "dan", limits={"daily_count_max": {"withdrawal": 1}})),
        ),
        wd("x", "dan", 10),
        "limit_exceeded",
        limit=("daily_count_max.withdrawal", 1, 1, 1),
    ),
    Row(
        "limits set on an account that had none count from then on",
        (
            ok(wd("w1", "alice", 10)),
            ok(set_limits("s1", "alice", limits={"daily_count_max": {"withdrawal": 1}})),
        ),
        wd("x", "alice", 10),
    ),
    Row(
        "limits set on an account that had none count the commands after them",
        (
            ok(wd("w1", "alice", 10)),
            ok(set_limits("s1", "alice", limits={"daily_count_max": {"withdrawal": 1}})),
            ok(wd("w2", "alice", 10)),
        ),
        wd("x", "alice", 10),
        "limit_exceeded",
        limit=("daily_count_max.withdrawal", 1, 1, 1),
    ),
    Row(
        "set_limits replaces the limits whole",
        (
            *limited({"transaction_amount_max": 50}),
            ok(set_limits("s1", "lim", limits={"daily_count_max": {"withdrawal": 5}})),
        ),
        wd("x", "lim", 60),
    ),
    Row(
        "set_limits with {} removes every limit",
        (
            *limited({"transaction_amount_max": 50, "daily_count_max": {"withdrawal": 0}}),
            ok(set_limits("s1", "lim", limits={})),
        ),
        wd("x", "lim", 60),
    ),
    Row(
        "set_limits without limits keeps them",
        (*limited({"transaction_amount_max": 50}), ok(set_limits("s1", "lim", overdraft_limit=10))),
        wd("x", "lim", 51),
        "limit_exceeded",
        limit=("transaction_amount_max", 50, 0, 51),
    ),
    Row(
        "set_limits raises the overdraft",
        (ok(set_limits("s1", "alice", overdraft_limit=200)),),
        wd("x", "alice", 1_200),
    ),
    Row(
        "set_limits without an overdraft keeps it",
        (ok(set_limits("s1", "dora", limits={})),),
        wd("x", "dora", 100),
    ),
    Row(
        "the overdraft is a floor: one unit past it",
        (ok(set_limits("s1", "alice", overdraft_limit=200)),),
        wd("x", "alice", 1_201),
        "insufficient_funds",
    ),
    Row(
        "set_limits may lower the overdraft to exactly what the account owes",
        (ok(wd("w1", "dora", 60)),),
        set_limits("x", "dora", overdraft_limit=60),
    ),
    Row(
        "set_limits may not lower the overdraft below what the account owes",
        (ok(wd("w1", "dora", 60)),),
        set_limits("x", "dora", overdraft_limit=59),
        "insufficient_funds",
        reason="floor",
    ),
    Row("set_limits of an unknown account", (), set_limits("x", "nobody"), "account_not_found"),
    Row("set_limits of a closed account", (), set_limits("x", "carol"), "account_closed"),
]


@pytest.mark.parametrize("row", params(LIMIT_ROWS))
def test_limits(row: Row) -> None:
    check_row(row)


def test_a_limit_breach_names_the_limit_and_a_refusal_changes_no_usage() -> None:
    ledger = Ledger()
    play(ledger, [*limited({"daily_amount_max": {"withdrawal": 100}}), ok(wd("w1", "lim", 60))])
    lim = ledger.account("lim")
    assert (lim.day, lim.used_amount, lim.used_count) == (10, {"withdrawal": 60}, {"withdrawal": 1})
    sent = ledger.send(wd("x", "lim", 41))
    assert sent.result.limit == LimitBreach("daily_amount_max.withdrawal", 100, 60, 41)
    assert (
        sent.result.reason == "daily_amount_max.withdrawal is 100: used 60 today, this command 41"
    )
    assert ledger.account("lim") == lim
    # The next day starts from nothing; the account's day moves with the first use.
    ledger.send(wd("y", "lim", 100), DAY11 + 1)
    lim = ledger.account("lim")
    assert (lim.day, lim.used_amount, lim.used_count) == (
        11,
        {"withdrawal": 100},
        {"withdrawal": 1},
    )
    # A record stamped on day 10 now counts toward day 11.
    ledger.send(dep("z", "lim", 5), T0)
    lim = ledger.account("lim")
    assert (lim.day, lim.used_amount, lim.used_count) == (
        11,
        {"withdrawal": 100, "deposit": 5},
        {"withdrawal": 1, "deposit": 1},
    )


def test_an_account_without_limits_is_not_counted() -> None:
    ledger = Ledger()
    ledger.send(wd("w1", "alice", 10))
    alice = ledger.account("alice")
    assert (alice.limits, alice.day, alice.used_amount, alice.used_count) == (None, 0, {}, {})


def test_default_limits_are_kept_on_the_account_and_journaled_when_it_opens() -> None:
    default = Limits(transaction_amount_max=50, daily_count_max={"withdrawal": 3})
    ledger = Ledger(Rules(default_limits=default))
    opened = ledger.send(open_("o1", "dan"))
    own = ledger.send(open_("o2", "eve", {"daily_amount_max": {"deposit": 7}}))
    assert ledger.account("dan").limits == default
    assert ledger.account("eve").limits == Limits(daily_amount_max={"deposit": 7})
    assert [(e.kind, e.limits) for e in opened.journal] == [("account_opened", default)]
    assert [e.limits for e in own.journal] == [Limits(daily_amount_max={"deposit": 7})]


def test_set_limits_is_journaled_with_what_is_in_force_after_it() -> None:
    ledger = Ledger()
    play(ledger, limited({"transaction_amount_max": 50}))
    limits = {"daily_amount_max": {"transfer_out": 20}}
    sent = ledger.send(set_limits("s1", "lim", limits=limits, overdraft_limit=30), T0 + 7)
    assert (sent.result.status, sent.result.type) == ("accepted", "set_limits")
    (event,) = sent.journal
    assert (event.entry_id, event.kind, event.account, event.currency, event.timestamp_ms) == (
        "s1:0",
        "limits_set",
        "lim",
        "USD",
        T0 + 7,
    )
    assert (event.postings, event.limits, event.overdraft_limit) == (
        [],
        Limits(daily_amount_max={"transfer_out": 20}),
        30,
    )
    lim = ledger.account("lim")
    assert (lim.limits, lim.overdraft_limit) == (Limits(daily_amount_max={"transfer_out": 20}), 30)
    # Only the overdraft: the limits in force are journaled again, unchanged.
    (event,) = ledger.send(set_limits("s2", "lim", overdraft_limit=0)).journal
    assert (event.limits, event.overdraft_limit) == (lim.limits, 0)
    # Only the limits: the overdraft in force is journaled.
    (event,) = ledger.send(set_limits("s3", "lim", limits={})).journal
    assert (event.limits, event.overdraft_limit) == (Limits(), 0)
    assert ledger.account("lim").limits == Limits()


# Holds. h1: alice holds 300 for bob, deadline 60 s after T0.

H1 = ok(hold("h1", "alice", "bob", 300, timeout_s=60))
DEADLINE = T0 + 60_000
Z1 = ok(hold("h1", "alice", "zed", 300, timeout_s=60))  # the same, for an account elsewhere

HOLD_ROWS: list[Row] = [
    Row("place a hold", (), hold("h1", "alice", "bob", 300), amount=300),
    Row("hold the whole available balance", (), hold("h1", "alice", "bob", 1_000)),
    Row(
        "hold past the available balance",
        (),
        hold("h1", "alice", "bob", 1_001),
        "insufficient_funds",
    ),
    Row(
        "a hold takes from the available balance",
        (H1,),
        hold("h2", "alice", "bob", 701),
        "insufficient_funds",
    ),
    Row(
        "a withdrawal cannot take what is held", (H1,), wd("w1", "alice", 701), "insufficient_funds"
    ),
    Row("a withdrawal can take the rest", (H1,), wd("w1", "alice", 700)),
    Row("hold to itself", (), hold("h1", "alice", "alice", 1), "accounts_must_be_different"),
    Row("hold to a closed account", (), hold("h1", "alice", "carol", 1), "account_closed"),
    Row(
        "hold to an account on another partition, not checked here",
        (),
        hold("h1", "alice", "zgone", 1),
    ),
    Row("post a hold in full", (H1,), post("p1", "alice", "h1"), amount=300),
    Row("post exactly the amount held", (H1,), post("p1", "alice", "h1", 300), amount=300),
    Row("post part of a hold", (H1,), post("p1", "alice", "h1", 120), amount=120),
    Row("post 1 of a hold", (H1,), post("p1", "alice", "h1", 1), amount=1),
    Row("post more than held", (H1,), post("p1", "alice", "h1", 301), "amount_exceeds_hold"),
    Row("post 0", (H1,), post("p1", "alice", "h1", 0), "invalid_amount"),
    Row(
        "post more than held of an unknown hold",
        (H1,),
        post("p1", "alice", "h9", 301),
        "hold_not_found",
    ),
    Row(
        "post more than held at the deadline",
        (H1,),
        post("p1", "alice", "h1", 301),
        "hold_expired",
        ts=DEADLINE,
        reason="deadline",
    ),
    Row("post just before the deadline", (H1,), post("p1", "alice", "h1"), ts=DEADLINE - 1),
    Row(
        "post at the deadline",
        (H1,),
        post("p1", "alice", "h1"),
        "hold_expired",
        ts=DEADLINE,
        reason="deadline",
    ),
    Row(
        "post a hold without deadline a year later",
        (ok(hold("h1", "alice", "bob", 300)),),
        post("p1", "alice", "h1"),
        ts=T0 + 365 * DAY_MS,
    ),
    Row("void a hold", (H1,), void("v1", "alice", "h1"), amount=300),
    Row(
        "void past the deadline, before the timer",
        (H1,),
        void("v1", "alice", "h1"),
        ts=DEADLINE,
    ),
    Row(
        "expire before the deadline",
        (H1,),
        expire("alice", "h1"),
        "hold_not_expired",
        ts=DEADLINE - 1,
    ),
    Row("expire at the deadline", (H1,), expire("alice", "h1"), ts=DEADLINE, amount=300),
    Row("expire after the deadline", (H1,), expire("alice", "h1"), ts=DEADLINE + DAY_MS),
    Row(
        "expire a hold without deadline",
        (ok(hold("h1", "alice", "bob", 300)),),
        expire("alice", "h1"),
        "hold_not_expired",
        ts=T0 + 365 * DAY_MS,
    ),
    # Resolving a resolved hold.
    Row(
        "post a posted hold",
        (H1, ok(post("p1", "alice", "h1"))),
        post("p2", "alice", "h1"),
        "hold_already_posted",
    ),
    Row(
        "post a partly posted hold",
        (H1, ok(post("p1", "alice", "h1", 10))),
        post("p2", "alice", "h1", 10),
        "hold_already_posted",
    ),
    Row(
        "post more than held of a posted hold",
        (H1, ok(post("p1", "alice", "h1"))),
        post("p2", "alice", "h1", 301),
        "hold_already_posted",
    ),
    Row(
        "void a posted hold",
        (H1, ok(post("p1", "alice", "h1"))),
        void("v1", "alice", "h1"),
        "hold_already_posted",
    ),
    Row(
        "expire a posted hold",
        (H1, ok(post("p1", "alice", "h1"))),
        expire("alice", "h1"),
        "hold_already_posted",
        ts=DEADLINE,
    ),
    Row(
        "post a voided hold",
        (H1, ok(void("v1", "alice", "h1"))),
        post("p1", "alice", "h1"),
        "hold_voided",
    ),
    Row(
        "void a voided hold",
        (H1, ok(void("v1", "alice", "h1"))),
        void("v2", "alice", "h1"),
        "hold_voided",
    ),
    Row(
        "expire a voided hold",
        (H1, ok(void("v1", "alice", "h1"))),
        expire("alice", "h1"),
        "hold_voided",
        ts=DEADLINE,
    ),
    Row(
        "post an expired hold",
        (H1, ok(expire("alice", "h1"), DEADLINE)),
        post("p1", "alice", "h1"),
        "hold_expired",
        ts=DEADLINE,
    ),
    Row(
        "void an expired hold",
        (H1, ok(expire("alice", "h1"), DEADLINE)),
        void("v1", "alice", "h1"),
        "hold_expired",
        ts=DEADLINE,
    ),
    Row(
        "expire an expired hold",
        (H1, ok(expire("alice", "h1"), DEADLINE)),
        expire("alice", "h1", cid="expire:again"),
        "hold_expired",
        ts=DEADLINE,
    ),
    Row(
        "post a hold whose post is in flight to another partition",
        (Z1, flying(post("p1", "alice", "h1"))),
        post("p2", "alice", "h1"),
        "hold_already_posted",
    ),
    Row(
        "void a hold posted to another partition",
        (Z1, ok(post("p1", "alice", "h1"))),
        void("v1", "alice", "h1"),
        "hold_already_posted",
    ),
    Row(
        "post a hold that came back from its destination",
        (
            ok(hold("h1", "alice", "zgone", 300)),
            no(post("p1", "alice", "h1"), "account_not_found"),
        ),
        post("p2", "alice", "h1"),
        "hold_already_posted",
    ),
    # Not found.
    Row("post an unknown hold", (H1,), post("p1", "alice", "h9"), "hold_not_found"),
    Row("void an unknown hold", (H1,), void("v1", "alice", "h9"), "hold_not_found"),
    Row("expire an unknown hold", (H1,), expire("alice", "h9"), "hold_not_found", ts=DEADLINE),
    Row("post another account's hold", (H1,), post("p1", "bob", "h1"), "hold_not_found"),
    Row("void another account's hold", (H1,), void("v1", "bob", "h1"), "hold_not_found"),
    Row(
        "expire another account's hold",
        (H1,),
        expire("bob", "h1"),
        "hold_not_found",
        ts=DEADLINE,
    ),
    Row(
        "post a command that is not a hold",
        (ok(dep("d1", "alice", 5)),),
        post("p1", "alice", "d1"),
        "hold_not_found",
    ),
    Row(
        "post a hold that was refused",
        (no(hold("h1", "alice", "bob", 5_000), "insufficient_funds"),),
        post("p1", "alice", "h1"),
        "hold_not_found",
    ),
    Row(
        "post a resolved hold of another account",
        (H1, ok(void("v1", "alice", "h1"))),
        post("p1", "bob", "h1"),
        "hold_not_found",
    ),
    Row("post from a system account", (), post("p1", "@world", "h1"), "account_reserved"),
    # Closing around holds.
    Row(
        "close an account with a hold on it",
        (ok(hold("h1", "dora", "bob", 50)),),
        close("x", "dora"),
        "balance_not_zero",
    ),
    Row(
        "close an account a hold may post to",
        (ok(hold("h1", "dora", "bob", 50)),),
        close("x", "bob"),
        "balance_not_zero",
    ),
    Row(
        "close an account once the hold on it is voided",
        (ok(hold("h1", "dora", "bob", 50)), ok(void("v1", "dora", "h1"))),
        close("x", "dora"),
    ),
    Row(
        "close an account once the hold to it is voided",
        (ok(hold("h1", "dora", "bob", 50)), ok(void("v1", "dora", "h1"))),
        close("x", "bob"),
    ),
    Row(
        "close an account with a hold to another partition on it",
        (ok(hold("h1", "dora", "zed", 50)),),
        close("x", "dora"),
        "balance_not_zero",
    ),
    Row(
        "the same hold id again with another amount",
        (H1,),
        hold("h1", "alice", "bob", 301, timeout_s=60),
        "exists_with_different_payload",
    ),
]


@pytest.mark.parametrize("row", params(HOLD_ROWS))
def test_holds(row: Row) -> None:
    check_row(row)


def pair(debit: str, credit: str, amount: int) -> list[tuple[str, int, int]]:
    return [(debit, amount, 0), (credit, 0, amount)]


def triples(postings: Sequence[Posting] | None) -> list[tuple[str, int, int]]:
    return [(p.account, p.debit, p.credit) for p in postings or []]


# (case, command after H1 (None: H1 itself), record time, alice after, bob after, event kind,
#  postings, pending, released, the hold's status and posted amount after)
HOLD_STATES: list[tuple[Any, ...]] = [
    (
        "placed",
        None,
        T0,
        usd(credits_posted=1_000, debits_pending=300),
        usd(credits_pending=300),
        "hold_placed",
        [],
        pair("alice", "bob", 300),
        [],
        ("pending", 0),
    ),
    (
        "posted in full",
        post("p1", "alice", "h1"),
        T0,
        usd(credits_posted=1_000, debits_posted=300),
        usd(credits_posted=300),
        "hold_posted",
        pair("alice", "bob", 300),
        [],
        pair("alice", "bob", 300),
        ("posted", 300),
    ),
    (
        "posted in part",
        post("p1", "alice", "h1", 120),
        T0,
        usd(credits_posted=1_000, debits_posted=120),
        usd(credits_posted=120),
        "hold_posted",
        pair("alice", "bob", 120),
        [],
        pair("alice", "bob", 300),
        ("posted", 120),
    ),
    (
        "voided",
        void("p1", "alice", "h1"),
        T0,
        usd(credits_posted=1_000),
        usd(),
        "hold_voided",
        [],
        [],
        pair("alice", "bob", 300),
        ("voided", 0),
    ),
    (
        "expired",
        expire("alice", "h1", cid="p1"),
        DEADLINE,
        usd(credits_posted=1_000),
        usd(),
        "hold_expired",
        [],
        [],
        pair("alice", "bob", 300),
        ("expired", 0),
    ),
]


@pytest.mark.parametrize(
    ("case", "resolve", "ts", "alice", "bob", "kind", "postings", "pending", "released", "status"),
    HOLD_STATES,
    ids=[row[0] for row in HOLD_STATES],
)
def test_a_hold_moves_pending_amounts_and_posts_only_what_is_posted(
    case: str,
    resolve: Command | None,
    ts: int,
    alice: AccountState,
    bob: AccountState,
    kind: str,
    postings: list[tuple[str, int, int]],
    pending: list[tuple[str, int, int]],
    released: list[tuple[str, int, int]],
    status: tuple[str, int],
) -> None:
    ledger = Ledger()
    sent = ledger.send(H1.command)
    if resolve is not None:
        sent = ledger.send(resolve, ts)
    assert (ledger.account("alice"), ledger.account("bob")) == (alice, bob)
    (event,) = sent.journal
    cid = sent.command.command_id
    assert (event.entry_id, event.kind, event.hold_id, event.account) == (
        f"{cid}:0",
        kind,
        "h1",
        "alice",
    )
    assert (triples(event.postings), triples(event.pending), triples(event.released)) == (
        postings,
        pending,
        released,
    )
    hold_now = ledger.hold("alice", "h1")
    assert (hold_now.status, hold_now.posted) == status
    assert (hold_now.amount, hold_now.deadline_ms) == (300, DEADLINE)


def test_a_hold_lowers_the_available_balance_not_the_posted_one() -> None:
    ledger = Ledger()
    ledger.send(H1.command)
    alice = ledger.account("alice")
    assert (alice.balance, alice.available, alice.debits_posted) == (1_000, 700, 0)
    bob = ledger.account("bob")
    assert (bob.balance, bob.credits_pending, bob.available) == (0, 300, 0)


def test_a_hold_to_another_partition_posts_through_transit_and_settles() -> None:
    ledger = Ledger()
    placed = ledger.send(Z1.command)
    (event,) = placed.journal
    assert (triples(event.pending), event.postings) == (pair("alice", "@transit", 300), [])
    assert ledger.account("alice") == usd(credits_posted=1_000, debits_pending=300)
    assert ledger.account("zed") == usd(credits_posted=1_000)  # nothing pending there

    posting = ledger.send(post("p1", "alice", "h1", 200), deliver=False)
    assert posting.results == []  # answered once the money has landed
    (event,) = posting.journal
    assert (event.kind, event.hold_id) == ("hold_posted", "h1")
    assert triples(event.released) == pair("alice", "@transit", 300)
    assert triples(event.postings) == pair("alice", "@transit", 200)
    (leg,) = posting.first.legs
    assert (leg.type, leg.transfer_id, leg.source, leg.destination, leg.amount, leg.command) == (
        "credit",
        "p1",
        "alice",
        "zed",
        200,
        "post_hold",
    )
    assert ledger.account("alice") == usd(
        credits_posted=1_000, debits_posted=200, debits_in_transit=200
    )
    assert ledger.hold("alice", "h1").status == "posting"
    assert ledger.final("alice", "p1") is None

    landed = ledger.deliver()
    credit, settle = landed
    assert [(r.result.command_id, r.result.status, r.result.type) for r in credit.results] == [
        ("p1", "accepted", "post_hold")
    ]
    assert [(e.entry_id, triples(e.postings)) for e in credit.journal] == [
        ("p1:1", pair("@transit", "zed", 200))
    ]
    assert [leg.type for leg in credit.legs] == ["settle"]
    assert ledger.account("zed") == usd(credits_posted=1_200)
    assert ledger.account("alice") == usd(credits_posted=1_000, debits_posted=200)
    assert (ledger.hold("alice", "h1").status, ledger.hold("alice", "h1").posted) == ("posted", 200)
    final = ledger.final("alice", "p1")
    assert final is not None and (final.status, final.amount) == ("accepted", 200)
    assert settle.results == []
    fold = ledger.fold()
    assert fold["@transit"] == 0
    assert (fold["alice"], fold["zed"]) == (-200, 200)
    pending, released = ledger.fold("pending"), ledger.fold("released")
    assert {a: pending[a] - released.get(a, 0) for a in pending} == {"alice": 0, "@transit": 0}


def test_a_hold_posted_to_a_refusing_destination_comes_back_and_ends_returned() -> None:
    ledger = Ledger()
    ledger.send(hold("h1", "alice", "zgone", 300))
    sent = ledger.send(post("p1", "alice", "h1", 250))
    assert [(r.status, r.code, r.type) for r in sent.results] == [
        ("rejected", "account_not_found", "post_hold")
    ]
    assert [(e.entry_id, e.kind) for e in sent.journal] == [
        ("p1:0", "hold_posted"),
        ("p1:2", "transfer_refund"),
    ]
    assert ledger.hold("alice", "h1").status == "returned"
    alice = ledger.account("alice")
    assert (alice.balance, alice.debits_pending, alice.debits_in_transit) == (1_000, 0, 0)
    assert alice.available == 1_000
    fold = ledger.fold()
    assert (fold["@transit"], fold["alice"]) == (0, 0)
    pending, released = ledger.fold("pending"), ledger.fold("released")
    assert {a: pending[a] - released.get(a, 0) for a in pending} == {"alice": 0, "@transit": 0}


def test_a_hold_to_another_partition_voided_releases_its_transit_reservation() -> None:
    ledger = Ledger()
    ledger.send(Z1.command)
    sent = ledger.send(void("v1", "alice", "h1"))
    (event,) = sent.journal
    assert (event.kind, triples(event.released), event.postings) == (
        "hold_voided",
        pair("alice", "@transit", 300),
        [],
    )
    assert sent.first.legs == []
    assert ledger.account("alice") == usd(credits_posted=1_000)


# Invoice payments. alice pays bob invoice inv-1.

PAID = ok(pay("p1", "alice", "inv-1", "bob", 250))
CARD = ok(pay("p1", "alice", "inv-1", "bob", 250, "card", timeout_s=60))

INVOICE_ROWS: list[Row] = [
    Row("pay through the ledger", (), PAID.command, amount=250),
    Row(
        "pay past the balance",
        (),
        pay("p1", "alice", "inv-1", "bob", 1_001),
        "insufficient_funds",
    ),
    Row(
        "pay again after a payment refused at the source",
        (no(pay("p0", "alice", "inv-1", "bob", 1_001), "insufficient_funds"),),
        PAID.command,
    ),
    Row("the same payment again is a duplicate", (PAID,), PAID.command, duplicate=True),
    Row(
        "the same payment again with other metadata is a duplicate",
        (PAID,),
        PAID.command.model_copy(update={"metadata": {"retry": "1"}}),
        duplicate=True,
    ),
    Row(
        "the same payment id with another amount",
        (PAID,),
        pay("p1", "alice", "inv-1", "bob", 251),
        "exists_with_different_payload",
    ),
    Row(
        "a paid invoice paid again under another id",
        (PAID,),
        pay("p2", "alice", "inv-1", "bob", 250),
        "invoice_already_paid",
    ),
    Row(
        "a paid invoice paid again through another channel",
        (PAID,),
        pay("p2", "alice", "inv-1", "bob", 250, "card"),
        "invoice_already_paid",
    ),
    Row(
        "another invoice of the same payer",
        (PAID,),
        pay("p2", "alice", "inv-2", "bob", 250),
    ),
    Row(
        "the same invoice id for another payer",
        (PAID,),
        pay("p2", "amy", "inv-1", "bob", 50),
    ),
    Row("pay through a card", (), CARD.command, amount=250),
    Row(
        "pay a card payment's invoice again",
        (CARD,),
        pay("p2", "alice", "inv-1", "bob", 250, "card"),
        "invoice_payment_pending",
    ),
    Row(
        "pay through the ledger while a card payment waits",
        (CARD,),
        pay("p2", "alice", "inv-1", "bob", 250),
        "invoice_payment_pending",
    ),
    Row("confirm a card payment", (CARD,), confirm("c1", "alice", "inv-1"), amount=250),
    Row(
        "confirm just before the deadline",
        (CARD,),
        confirm("c1", "alice", "inv-1"),
        ts=T0 + 59_999,
    ),
    Row(
        "confirm at the deadline",
        (CARD,),
        confirm("c1", "alice", "inv-1"),
        "hold_expired",
        ts=T0 + 60_000,
        reason="deadline",
    ),
    Row(
        "confirm after the payment expired",
        (CARD, ok(expire("alice", "p1"), T0 + 60_000)),
        confirm("c1", "alice", "inv-1"),
        "hold_expired",
        ts=T0 + 60_000,
    ),
    Row(
        "confirm after the default payment timeout",
        (ok(pay("p1", "alice", "inv-1", "bob", 250, "card")),),
        confirm("c1", "alice", "inv-1"),
        "hold_expired",
        ts=T0 + 1_000,
        reason="deadline",
        rules=Rules(payment_timeout_ms=1_000),
    ),
    Row(
        "confirm just inside the default payment timeout",
        (ok(pay("p1", "alice", "inv-1", "bob", 250, "card")),),
        confirm("c1", "alice", "inv-1"),
        ts=T0 + 999,
        rules=Rules(payment_timeout_ms=1_000),
    ),
    Row(
        "confirm a confirmed payment",
        (CARD, ok(confirm("c1", "alice", "inv-1"))),
        confirm("c2", "alice", "inv-1"),
        "invoice_already_paid",
    ),
    Row(
        "fail a confirmed payment",
        (CARD, ok(confirm("c1", "alice", "inv-1"))),
        fail("f1", "alice", "inv-1"),
        "invoice_already_paid",
    ),
    Row(
        "pay an invoice paid by card",
        (CARD, ok(confirm("c1", "alice", "inv-1"))),
        pay("p2", "alice", "inv-1", "bob", 250),
        "invoice_already_paid",
    ),
    Row("fail a card payment", (CARD,), fail("f1", "alice", "inv-1"), amount=250),
    Row(
        "fail a card payment past its deadline",
        (CARD,),
        fail("f1", "alice", "inv-1"),
        ts=T0 + 60_000,
    ),
    Row(
        "pay again after a failed payment",
        (CARD, ok(fail("f1", "alice", "inv-1"))),
        pay("p2", "alice", "inv-1", "bob", 250),
    ),
    Row(
        "pay again after an expired payment",
        (CARD, ok(expire("alice", "p1"), T0 + 60_000)),
        pay("p2", "alice", "inv-1", "bob", 250, "card"),
        ts=T0 + 60_000,
    ),
    Row(
        "confirm the second payment after a failed one",
        (
            CARD,
            ok(fail("f1", "alice", "inv-1")),
            ok(pay("p2", "alice", "inv-1", "bob", 100, "card")),
        ),
        confirm("c1", "alice", "inv-1"),
        amount=100,
    ),
    Row("confirm without a payment", (), confirm("c1", "alice", "inv-1"), "payment_not_found"),
    Row("fail without a payment", (), fail("f1", "alice", "inv-1"), "payment_not_found"),
    Row(
        "confirm another payer's payment",
        (CARD,),
        confirm("c1", "bob", "inv-1"),
        "payment_not_found",
    ),
    Row(
        "confirm a payment refused at the source",
        (no(pay("p1", "alice", "inv-1", "bob", 5_000, "card"), "insufficient_funds"),),
        confirm("c1", "alice", "inv-1"),
        "payment_not_found",
    ),
    Row(
        "confirm an invoice paid through the ledger",
        (PAID,),
        confirm("c1", "alice", "inv-1"),
        "invoice_already_paid",
    ),
    Row(
        "confirm while a payment through the ledger is in flight",
        (flying(pay("p1", "alice", "inv-1", "zed", 250)),),
        confirm("c1", "alice", "inv-1"),
        "payment_not_found",
    ),
    Row(
        "pay while a payment through the ledger is in flight",
        (flying(pay("p1", "alice", "inv-1", "zed", 250)),),
        pay("p2", "alice", "inv-1", "zed", 250),
        "invoice_payment_pending",
    ),
    Row(
        "pay across partitions",
        (),
        pay("p1", "alice", "inv-1", "zed", 250),
        amount=250,
    ),
    Row(
        "pay again once a payment across partitions has landed",
        (ok(pay("p1", "alice", "inv-1", "zed", 250)),),
        pay("p2", "alice", "inv-1", "zed", 250),
        "invoice_already_paid",
    ),
    Row(
        "pay again after the payee's writer refused the payment",
        (no(pay("p1", "alice", "inv-1", "zgone", 250), "account_not_found"),),
        pay("p2", "alice", "inv-1", "zed", 250),
    ),
    Row(
        "confirm a card payment to another partition",
        (ok(pay("p1", "alice", "inv-1", "zed", 250, "card")),),
        confirm("c1", "alice", "inv-1"),
        amount=250,
    ),
    Row(
        "pay again after a card payment to another partition came back",
        (
            ok(pay("p1", "alice", "inv-1", "zgone", 250, "card")),
            no(confirm("c1", "alice", "inv-1"), "account_not_found"),
        ),
        pay("p2", "alice", "inv-1", "zed", 250),
    ),
]


@pytest.mark.parametrize("row", params(INVOICE_ROWS))
def test_invoice_payments(row: Row) -> None:
    check_row(row)


def test_a_payment_through_the_ledger_moves_the_money_once_and_sends_a_receipt() -> None:
    ledger = Ledger()
    sent = ledger.send(PAID.command, T0 + 3)
    assert (sent.result.amount, sent.result.destination) == (250, "bob")
    (event,) = sent.journal
    assert (event.entry_id, event.kind, event.invoice_id) == ("p1:0", "invoice_payment", "inv-1")
    assert triples(event.postings) == pair("alice", "bob", 250)
    assert sent.receipts == [
        Receipt(
            invoice_id="inv-1",
            payer="alice",
            payee="bob",
            amount=250,
            currency="USD",
            payment_id="p1",
            entry_ids=["p1:0"],
            timestamp_ms=T0 + 3,
        )
    ]
    assert (ledger.account("alice").balance, ledger.account("bob").balance) == (750, 250)

    again = ledger.send(PAID.command, T0 + 9)
    assert (again.result.status, again.result.duplicate) == ("accepted", True)
    assert (again.first.accounts, again.first.outcomes) == ({}, {})
    assert all(r.invoice_id == "inv-1" and r.payment_id == "p1" for r in again.receipts)

    other = ledger.send(pay("p2", "alice", "inv-1", "bob", 250))
    assert (other.result.code, other.receipts, other.journal) == ("invoice_already_paid", [], [])
    assert (ledger.account("alice").balance, ledger.account("bob").balance) == (750, 250)


def test_a_card_payment_holds_then_posts_on_confirmation_with_a_receipt() -> None:
    ledger = Ledger()
    placed = ledger.send(CARD.command)
    (event,) = placed.journal
    assert (event.kind, event.hold_id, event.invoice_id) == ("hold_placed", "p1", "inv-1")
    assert triples(event.pending) == pair("alice", "bob", 250)
    assert placed.receipts == []
    assert ledger.account("alice") == usd(credits_posted=1_000, debits_pending=250)
    assert ledger.account("bob") == usd(credits_pending=250)
    hold_now = ledger.hold("alice", "p1")
    assert (hold_now.invoice_id, hold_now.deadline_ms) == ("inv-1", T0 + 60_000)

    confirmed = ledger.send(confirm("c1", "alice", "inv-1"), T0 + 5)
    (event,) = confirmed.journal
    assert (event.entry_id, event.kind, event.hold_id, event.invoice_id) == (
        "c1:0",
        "hold_posted",
        "p1",
        "inv-1",
    )
    assert triples(event.postings) == pair("alice", "bob", 250)
    assert confirmed.receipts == [
        Receipt(
            invoice_id="inv-1",
            payer="alice",
            payee="bob",
            amount=250,
            currency="USD",
            payment_id="p1",
            entry_ids=["p1:0", "c1:0"],
            timestamp_ms=T0 + 5,
        )
    ]
    assert ledger.account("alice") == usd(credits_posted=1_000, debits_posted=250)
    assert ledger.account("bob") == usd(credits_posted=250)
    assert ledger.hold("alice", "p1").status == "posted"


def test_a_failed_card_payment_releases_the_hold_and_leaves_the_invoice_open() -> None:
    ledger = Ledger()
    ledger.send(CARD.command)
    failed = ledger.send(fail("f1", "alice", "inv-1"))
    (event,) = failed.journal
    assert (event.kind, event.hold_id, triples(event.released)) == (
        "hold_voided",
        "p1",
        pair("alice", "bob", 250),
    )
    assert failed.receipts == []
    assert ledger.hold("alice", "p1").status == "voided"
    assert (ledger.account("alice"), ledger.account("bob")) == (usd(credits_posted=1_000), usd())
    paid = ledger.send(pay("p2", "alice", "inv-1", "bob", 250))
    assert [r.payment_id for r in paid.receipts] == ["p2"]


def test_confirming_a_failed_payment_is_refused_and_moves_nothing() -> None:
    # README: payment_not_found for "an invoice without a waiting payment"; the core answers
    # hold_voided (the failed payment's hold). Both refuse it; which one is not settled.
    ledger = Ledger()
    play(ledger, [CARD, ok(fail("f1", "alice", "inv-1"))])
    before = ledger.accounts()
    sent = ledger.send(confirm("c1", "alice", "inv-1"))
    assert sent.result.status == "rejected"
    assert sent.result.code in ("payment_not_found", "hold_voided")
    assert (sent.journal, sent.receipts, ledger.accounts()) == ([], [], before)


def test_a_payment_across_partitions_sends_its_receipt_when_the_settle_leg_comes_back() -> None:
    ledger = Ledger()
    sent = ledger.send(pay("p1", "alice", "inv-1", "zed", 250), deliver=False)
    assert (sent.results, sent.receipts) == ([], [])
    (event,) = sent.journal
    assert (event.kind, event.invoice_id) == ("invoice_payment", "inv-1")
    assert triples(event.postings) == pair("alice", "@transit", 250)
    (credit,) = ledger.step(T0 + 1)
    assert [(r.result.status, r.result.type) for r in credit.results] == [
        ("accepted", "pay_invoice")
    ]
    assert credit.receipts == []  # the receipt comes from the payer's side
    settle = ledger.step(T0 + 2)
    assert ledger.in_flight == []
    assert [r for d in settle for r in d.receipts] == [
        Receipt(
            invoice_id="inv-1",
            payer="alice",
            payee="zed",
            amount=250,
            currency="USD",
            payment_id="p1",
            entry_ids=["p1:0", "p1:1"],
            timestamp_ms=T0 + 2,
        )
    ]
    assert ledger.fold()["@transit"] == 0


def test_a_card_payment_across_partitions_sends_its_receipt_once_confirmed_and_landed() -> None:
    ledger = Ledger()
    ledger.send(pay("p1", "alice", "inv-1", "zed", 250, "card"))
    confirmed = ledger.send(confirm("c1", "alice", "inv-1"), deliver=False)
    assert (confirmed.results, confirmed.receipts) == ([], [])
    landed = ledger.deliver(T0 + 4)
    assert [r for d in landed for r in d.receipts] == [
        Receipt(
            invoice_id="inv-1",
            payer="alice",
            payee="zed",
            amount=250,
            currency="USD",
            payment_id="p1",
            entry_ids=["p1:0", "c1:0", "c1:1"],
            timestamp_ms=T0 + 4,
        )
    ]
    assert ledger.hold("alice", "p1").status == "posted"
    assert (ledger.account("alice").balance, ledger.account("zed").balance) == (750, 1_250)
    again = ledger.send(pay("p2", "alice", "inv-1", "zed", 250))
    assert again.result.code == "invoice_already_paid"


def test_a_payment_refused_by_the_payee_sends_no_receipt() -> None:
    ledger = Ledger()
    sent = ledger.send(pay("p1", "alice", "inv-1", "zgone", 250))
    assert (sent.result.status, sent.result.code, sent.receipts) == (
        "rejected",
        "account_not_found",
        [],
    )
    assert ledger.account("alice").balance == 1_000


# Reversals.

REVERSAL_ROWS: list[Row] = [
    Row("reverse a deposit", (ok(dep("d1", "alice", 100)),), rev("r1", "alice", "d1"), amount=100),
    Row("reverse a withdrawal", (ok(wd("w1", "alice", 100)),), rev("r1", "alice", "w1")),
    Row(
        "reverse a local transfer at its destination",
        (ok(xfer("t1", "alice", "bob", 100)),),
        rev("r1", "bob", "t1"),
        amount=100,
    ),
    Row(
        "reverse a local transfer at its source",
        (ok(xfer("t1", "alice", "bob", 100)),),
        rev("r1", "alice", "t1"),
        "original_not_found",
    ),
    Row(
        "reverse a transfer from another partition at its destination",
        (ok(xfer("t1", "alice", "zed", 100)),),
        rev("r1", "zed", "t1"),
        amount=100,
    ),
    Row(
        "reverse a transfer to another partition at its source",
        (ok(xfer("t1", "alice", "zed", 100)),),
        rev("r1", "alice", "t1"),
        "original_not_found",
    ),
    Row(
        "reverse a transfer still in flight at its destination",
        (flying(xfer("t1", "alice", "zed", 100)),),
        rev("r1", "zed", "t1"),
        "original_not_found",
    ),
    Row(
        "reverse an invoice payment at its payee",
        (PAID,),
        rev("r1", "bob", "p1"),
        amount=250,
    ),
    Row(
        "reverse a partly posted hold at its destination",
        (H1, ok(post("p1", "alice", "h1", 120))),
        rev("r1", "bob", "p1"),
        amount=120,
    ),
    Row(
        "reverse a confirmed card payment at its payee",
        (CARD, ok(confirm("c1", "alice", "inv-1"))),
        rev("r1", "bob", "c1"),
        amount=250,
    ),
    Row(
        "reverse a hold posted to another partition at its destination",
        (Z1, ok(post("p1", "alice", "h1", 200))),
        rev("r1", "zed", "p1"),
        amount=200,
    ),
    Row(
        "reverse a deposit down to exactly the floor",
        (ok(dep("d1", "dora", 50)), ok(wd("w1", "dora", 100))),
        rev("r1", "dora", "d1"),
    ),
    Row(
        "reverse a deposit past the floor",
        (ok(dep("d1", "dora", 50)), ok(wd("w1", "dora", 101))),
        rev("r1", "dora", "d1"),
        "insufficient_funds",
        reason="d1",
    ),
    Row(
        "reverse a transfer the destination has spent",
        (ok(xfer("t1", "alice", "bob", 100)), ok(wd("w1", "bob", 60))),
        rev("r1", "bob", "t1"),
        "insufficient_funds",
        reason="reversing t1",
    ),
    Row(
        "reverse a transfer from another partition the destination has spent",
        (ok(xfer("t1", "alice", "zoe", 100)), ok(wd("w1", "zoe", 1))),
        rev("r1", "zoe", "t1"),
        "insufficient_funds",
        reason="t1",
    ),
    Row(
        "reverse a deposit held against",
        (ok(dep("d1", "amy", 100)), ok(hold("h1", "amy", "bob", 101))),
        rev("r1", "amy", "d1"),
        "insufficient_funds",
        reason="reversing d1 would take amy past its floor",
    ),
    Row(
        "reverse twice",
        (ok(dep("d1", "alice", 100)), ok(rev("r1", "alice", "d1"))),
        rev("r2", "alice", "d1"),
        "already_reversed",
    ),
    Row(
        "reverse twice across partitions",
        (ok(xfer("t1", "alice", "zed", 100)), ok(rev("r1", "zed", "t1"))),
        rev("r2", "zed", "t1"),
        "already_reversed",
    ),
    Row(
        "reverse while a reversal is in flight",
        (ok(xfer("t1", "alice", "zed", 100)), flying(rev("r1", "zed", "t1"))),
        rev("r2", "zed", "t1"),
        "already_reversed",
    ),
    Row(
        "reverse again after the other side refused the reversal",
        (
            ok(xfer("t1", "amy", "zed", 100)),
            ok(close("x1", "amy")),
            no(rev("r1", "zed", "t1"), "account_closed"),
        ),
        rev("r2", "zed", "t1"),
        "account_closed",  # refused by amy's writer again, not already_reversed here
    ),
    Row(
        "reverse a local transfer back to a closed account",
        (ok(xfer("t1", "amy", "bob", 100)), ok(close("x1", "amy"))),
        rev("r1", "bob", "t1"),
        "account_closed",
        reason="amy",
    ),
    Row(
        "reverse a reversal of a deposit",
        (ok(dep("d1", "alice", 100)), ok(rev("r1", "alice", "d1"))),
        rev("r2", "alice", "r1"),
        "reversal_of_reversal",
    ),
    Row(
        "reverse a reversal of a transfer at the account that made it",
        (ok(xfer("t1", "alice", "bob", 100)), ok(rev("r1", "bob", "t1"))),
        rev("r2", "bob", "r1"),
        "reversal_of_reversal",
    ),
    Row(
        "reverse a reversal of a transfer at the account it paid",
        (ok(xfer("t1", "alice", "bob", 100)), ok(rev("r1", "bob", "t1"))),
        rev("r2", "alice", "r1"),
        "reversal_of_reversal",
    ),
    Row(
        "reverse a reversal that crossed partitions, where it landed",
        (ok(xfer("t1", "alice", "zed", 100)), ok(rev("r1", "zed", "t1"))),
        rev("r2", "alice", "r1"),
        "reversal_of_reversal",
    ),
    Row(
        "reverse a rejected deposit",
        (no(dep("d1", "alice", 100, "EUR"), "currency_mismatch"),),
        rev("r1", "alice", "d1"),
        "not_reversible",
    ),
    Row(
        "reverse a rejected withdrawal",
        (no(wd("w1", "alice", 5_000), "insufficient_funds"),),
        rev("r1", "alice", "w1"),
        "not_reversible",
    ),
    Row("reverse a hold", (H1,), rev("r1", "bob", "h1"), "not_reversible"),
    Row(
        "reverse a voided hold",
        (H1, ok(void("v1", "alice", "h1"))),
        rev("r1", "bob", "h1"),
        "not_reversible",
    ),
    Row(
        "reverse a card payment's hold",
        (CARD,),
        rev("r1", "bob", "p1"),
        "not_reversible",
    ),
    Row(
        "reverse an account command",
        (ok(open_("o1", "dan")),),
        rev("r1", "dan", "o1"),
        "not_reversible",
    ),
    Row(
        "reverse an unknown command",
        (ok(dep("d1", "alice", 100)),),
        rev("r1", "alice", "d9"),
        "original_not_found",
    ),
    Row(
        "reverse another account's deposit",
        (ok(dep("d1", "alice", 100)),),
        rev("r1", "bob", "d1"),
        "original_not_found",
    ),
    Row(
        "reverse from an unknown account",
        (ok(dep("d1", "alice", 100)),),
        rev("r1", "nobody", "d1"),
        "account_not_found",
    ),
    Row(
        "reverse from a closed account",
        (),
        rev("r1", "carol", "d1"),
        "account_closed",
    ),
    Row("reverse from a system account", (), rev("r1", "@world", "d1"), "account_reserved"),
]


@pytest.mark.parametrize("row", params(REVERSAL_ROWS))
def test_reversals(row: Row) -> None:
    check_row(row)


# (case, setup, reversal, {entry id: postings} of the reversal, account of its first event)
REVERSAL_POSTINGS: list[tuple[Any, ...]] = [
    (
        "deposit",
        [ok(dep("d1", "alice", 100))],
        rev("r1", "alice", "d1"),
        {"r1:0": pair("alice", "@world", 100)},
    ),
    (
        "withdrawal",
        [ok(wd("w1", "alice", 100))],
        rev("r1", "alice", "w1"),
        {"r1:0": pair("@world", "alice", 100)},
    ),
    (
        "local transfer",
        [ok(xfer("t1", "alice", "bob", 100))],
        rev("r1", "bob", "t1"),
        {"r1:0": pair("bob", "alice", 100)},
    ),
    (
        "transfer across partitions",
        [ok(xfer("t1", "alice", "zed", 100))],
        rev("r1", "zed", "t1"),
        {"r1:0": pair("zed", "@transit", 100), "r1:1": pair("@transit", "alice", 100)},
    ),
    (
        "invoice payment",
        [PAID],
        rev("r1", "bob", "p1"),
        {"r1:0": pair("bob", "alice", 250)},
    ),
    (
        "partly posted hold",
        [H1, ok(post("p1", "alice", "h1", 120))],
        rev("r1", "bob", "p1"),
        {"r1:0": pair("bob", "alice", 120)},
    ),
    (
        "confirmed card payment",
        [CARD, ok(confirm("c1", "alice", "inv-1"))],
        rev("r1", "bob", "c1"),
        {"r1:0": pair("bob", "alice", 250)},
    ),
    (
        "hold posted across partitions",
        [Z1, ok(post("p1", "alice", "h1", 200))],
        rev("r1", "zed", "p1"),
        {"r1:0": pair("zed", "@transit", 200), "r1:1": pair("@transit", "alice", 200)},
    ),
]


@pytest.mark.parametrize(
    ("case", "setup", "reversal", "entries"),
    REVERSAL_POSTINGS,
    ids=[row[0] for row in REVERSAL_POSTINGS],
)
def test_a_reversal_posts_the_opposite_and_every_balance_is_as_before(
    case: str, setup: list[Step], reversal: Command, entries: dict[str, list[Any]]
) -> None:
    assert isinstance(reversal, Reverse)
    ledger = Ledger()
    play(ledger, setup)
    sent = ledger.send(reversal, T0 + 8)
    assert {e.entry_id: triples(e.postings) for e in sent.journal} == entries
    first = sent.journal[0]
    assert (first.kind, first.reverses, first.account, first.timestamp_ms) == (
        "reversal",
        reversal.target,
        reversal.account,
        T0 + 8,
    )
    assert (sent.result.status, sent.result.type) == ("accepted", "reverse")
    seed = {**SEED[0], **SEED[1]}
    assert {n: a.balance for n, a in ledger.accounts().items()} == {
        n: a.balance for n, a in seed.items()
    }
    assert all(a.debits_in_transit == a.debits_pending == 0 for a in ledger.accounts().values())
    assert ledger.fold().get("@transit", 0) == 0
    # Once final, the reversal's claim holds: the target is reversed at most once.
    again = ledger.send(rev("r2", reversal.account, reversal.target))
    assert again.result.code == "already_reversed"


def test_a_reversal_across_partitions_travels_back_as_a_credit_leg() -> None:
    ledger = Ledger()
    ledger.send(xfer("t1", "alice", "zed", 100))
    # zed's partition knows t1 only by the credit leg it took.
    assert "cmd:t1" not in ledger.partitions[1].outcomes
    assert "leg:credit:t1" in ledger.partitions[1].outcomes
    sent = ledger.send(rev("r1", "zed", "t1"), deliver=False)
    assert sent.results == []
    (leg,) = sent.first.legs
    assert (leg.type, leg.transfer_id, leg.source, leg.destination, leg.amount, leg.command) == (
        "credit",
        "r1",
        "zed",
        "alice",
        100,
        "reverse",
    )
    assert ledger.account("zed") == usd(
        credits_posted=1_100, debits_posted=100, debits_in_transit=100
    )
    credit, _settle = ledger.deliver()
    assert [(r.result.command_id, r.result.status, r.result.account) for r in credit.results] == [
        ("r1", "accepted", "zed")
    ]
    assert ledger.account("alice") == usd(credits_posted=1_100, debits_posted=100)
    assert ledger.account("zed").debits_in_transit == 0
    final = ledger.final("zed", "r1")
    assert final is not None and final.status == "accepted"


def test_a_reversal_refused_by_the_other_side_frees_the_original_again() -> None:
    ledger = Ledger()
    play(ledger, [ok(xfer("t1", "amy", "zed", 100)), ok(close("x1", "amy"))])
    refused = ledger.send(rev("r1", "zed", "t1"))
    assert [(r.status, r.code) for r in refused.results] == [("rejected", "account_closed")]
    assert ledger.account("zed").balance == 1_100
    again = ledger.send(rev("r2", "zed", "t1"), deliver=False)
    assert [leg.transfer_id for leg in again.first.legs] == ["r2"]  # not already_reversed


def test_reversals_count_toward_no_limit() -> None:
    ledger = Ledger()
    limits = {"daily_count_max": {"deposit": 1, "withdrawal": 1}}
    play(ledger, [*limited(limits), ok(dep("d1", "lim", 10)), ok(wd("w1", "lim", 10))])
    used = ledger.account("lim").used_amount, ledger.account("lim").used_count
    play(ledger, [ok(rev("r1", "lim", "w1")), ok(rev("r2", "lim", "d1"))])
    assert (ledger.account("lim").used_amount, ledger.account("lim").used_count) == used


# Aliases. BOB: alias:bob@example.com registered for bob (on partition 0, as bob is); ZED:
# alias:zed@example.com for zed (on partition 1).

BOB_MAIL = "alias:bob@example.com"
BOB = ok(alias("a1", BOB_MAIL, "bob"))
ZED_MAIL = "alias:zed@example.com"  # on partition 1, as zed is
ZED = ok(alias("a9", ZED_MAIL, "zed"))

ALIAS_ROWS: list[Row] = [
    Row("register an alias", (), BOB.command),
    Row("an alias for an account on another partition", (), alias("a1", BOB_MAIL, "zed")),
    Row("an alias for an account never opened (not checked)", (), alias("a1", BOB_MAIL, "ghost")),
    Row("a second alias for one account", (BOB,), alias("a2", "alias:robert", "bob")),
    Row("a repeat of the registration", (BOB,), BOB.command, duplicate=True),
    Row(
        "the alias again for the same account, under another command id",
        (BOB,),
        alias("a2", BOB_MAIL, "bob"),
        "alias_taken",
    ),
    Row(
        "the alias again for another account",
        (BOB,),
        alias("a2", BOB_MAIL, "zed"),
        "alias_taken",
    ),
    Row(
        "a refused registration leaves the alias taken",
        (BOB, no(alias("a2", BOB_MAIL, "amy"), "alias_taken")),
        alias("a3", BOB_MAIL, "amy"),
        "alias_taken",
    ),
    Row(
        "the registration's command id with another target",
        (BOB,),
        alias("a1", BOB_MAIL, "zed"),
        "exists_with_different_payload",
    ),
    Row("open an account under an alias", (), open_("o1", BOB_MAIL), "account_reserved"),
    Row(
        "open an account under an alias it was registered as",
        (BOB,),
        open_("o1", BOB_MAIL),
        "account_reserved",
    ),
    Row("deposit to an alias", (BOB,), dep("d1", BOB_MAIL, 5), amount=5),
    Row("withdraw from an alias", (BOB, ok(dep("d1", "bob", 9))), wd("w1", BOB_MAIL, 9), amount=9),
    Row("transfer to an alias", (BOB,), xfer("t1", "alice", BOB_MAIL, 5), amount=5),
    Row(
        "transfer to an alias on another partition (there and back before it is decided)",
        (ZED,),
        xfer("t1", "alice", ZED_MAIL, 5),
        amount=5,
    ),
    Row("transfer from an alias to another partition", (ZED,), xfer("t1", ZED_MAIL, "bob", 5)),
    Row("transfer between two aliases", (BOB, ZED), xfer("t1", ZED_MAIL, BOB_MAIL, 5), amount=5),
    Row(
        "transfer to the alias of the account itself",
        (BOB,),
        xfer("t1", "bob", BOB_MAIL, 5),
        "accounts_must_be_different",
    ),
    Row(
        "transfer to an alias: the account's own checks apply",
        (BOB, ok(xfer("t0", "alice", BOB_MAIL, 5))),
        xfer("t1", "alice", BOB_MAIL, 5_000),
        "insufficient_funds",
    ),
    Row(
        "deposit to an alias never registered",
        (),
        dep("d1", BOB_MAIL, 5),
        "alias_not_found",
        reason=repr(BOB_MAIL),
    ),
    Row(
        "transfer to an alias never registered, on another partition",
        (),
        xfer("t1", "alice", ZED_MAIL, 5),
        "alias_not_found",
        reason=repr(ZED_MAIL),
    ),
    Row(
        "transfer between two aliases, the second never registered",
        (BOB,),
        xfer("t1", BOB_MAIL, ZED_MAIL, 5),
        "alias_not_found",
        reason=repr(ZED_MAIL),
    ),
    Row(
        "an unknown alias is found before the rest of the command is checked",
        (),
        dep("d1", BOB_MAIL, 0),
        "alias_not_found",
        reason=repr(BOB_MAIL),
    ),
    Row(
        "a hold placed and posted through aliases",
        (BOB, ZED, ok(dep("d0", "bob", 5)), ok(hold("h1", BOB_MAIL, ZED_MAIL, 5))),
        post("p1", BOB_MAIL, "h1"),
        amount=5,
    ),
    Row(
        "a refusal for an unknown alias is kept by the alias's writer, not the account's",
        (no(dep("d1", BOB_MAIL, 5), "alias_not_found"), BOB),
        dep("d1", "bob", 5),
        amount=5,
    ),
]


def test_a_command_refused_for_an_unknown_alias_stays_refused_once_it_is_registered() -> None:
    ledger = Ledger()
    play(ledger, [no(dep("d1", BOB_MAIL, 5), "alias_not_found"), BOB])
    again = ledger.send(dep("d1", BOB_MAIL, 5))
    assert (again.result.code, again.result.duplicate) == ("alias_not_found", True)
    assert again.result.reason == "no account is registered under 'alias:bob@example.com'"
    assert ledger.account("bob").credits_posted == 0


def test_a_command_through_an_alias_is_applied_once_and_answered_again_as_itself() -> None:
    ledger = Ledger()
    play(ledger, [BOB, ZED])
    first = ledger.send(xfer("t1", ZED_MAIL, BOB_MAIL, 5))
    again = ledger.send(xfer("t1", ZED_MAIL, BOB_MAIL, 5))
    assert (first.result.account, first.result.destination) == ("zed", "bob")
    assert (first.result.duplicate, again.result.duplicate) == (False, True)
    assert replaced(again.result, duplicate=False) == first.result
    assert (ledger.account("zed").debits_posted, ledger.account("bob").credits_posted) == (5, 5)
    # The same command named by its accounts is the same command; by other ones, another.
    direct = ledger.send(xfer("t1", "zed", "bob", 5))
    assert (direct.result.status, direct.result.duplicate) == ("accepted", True)
    other = ledger.send(xfer("t1", ZED_MAIL, BOB_MAIL, 6))
    assert other.result.code == "exists_with_different_payload"
    # Only the accounts' writers keep outcomes of it; the aliases' writers keep none.
    outcomes = {key for store in ledger.partitions for key in store.outcomes if "t1" in key}
    assert outcomes == {"cmd:t1", "leg:credit:t1"}


@pytest.mark.parametrize("row", params(ALIAS_ROWS))
def test_aliases(row: Row) -> None:
    check_row(row)


def test_a_registered_alias_is_journaled_with_its_target_and_moves_nothing() -> None:
    ledger = Ledger()
    before = ledger.accounts()
    sent = ledger.send(alias("a1", BOB_MAIL, "bob"), T0 + 5)
    result = sent.result
    assert (result.status, result.account, result.destination, result.amount) == (
        "accepted",
        BOB_MAIL,
        "bob",
        None,
    )
    (event,) = sent.journal
    assert (event.entry_id, event.kind, event.account, event.target) == (
        "a1:0",
        "alias_registered",
        BOB_MAIL,
        "bob",
    )
    assert (event.postings, event.currency, event.timestamp_ms) == ([], "", T0 + 5)
    assert ledger.accounts() == before
    # The claim on the alias is the alias itself, final at once.
    claim = ledger.store(BOB_MAIL).outcomes[BOB_MAIL]
    assert (claim.claimed_by, claim.result) == ("a1", result)


def test_a_refused_registration_does_not_change_whom_the_alias_names() -> None:
    ledger = Ledger()
    play(ledger, [BOB])
    claim = ledger.store(BOB_MAIL).outcomes[BOB_MAIL]
    refused = ledger.send(alias("a2", BOB_MAIL, "zed"))
    assert (refused.result.code, refused.result.reason) == (
        "alias_taken",
        "alias is registered to another account",
    )
    assert refused.first.journal == [] and BOB_MAIL not in refused.first.outcomes
    assert ledger.store(BOB_MAIL).outcomes[BOB_MAIL] == claim


# The low-balance threshold: copied onto the events, deciding nothing.


def test_low_balance_lands_on_the_account_opened_and_limits_set_events() -> None:
    ledger = Ledger()
    opened = ledger.send(command("open_account", "o1", "dan", currency="USD", low_balance=500))
    (event,) = opened.journal
    assert (event.kind, event.low_balance) == ("account_opened", 500)
    # Given alone, set_limits keeps the limits and the overdraft and journals them.
    ledger.send(set_limits("s0", "dan", overdraft_limit=40))
    only = ledger.send(set_limits("s1", "dan", low_balance=20))
    assert only.result.status == "accepted"
    (event,) = only.journal
    assert (event.kind, event.low_balance, event.overdraft_limit) == ("limits_set", 20, 40)
    # Left out, it is left out of the event too (the last one given stays in force).
    (event,) = ledger.send(set_limits("s2", "dan", overdraft_limit=0)).journal
    assert event.low_balance is None
    (event,) = ledger.send(open_("o2", "eve")).journal
    assert event.low_balance is None


def test_low_balance_decides_nothing() -> None:
    ledger = Ledger()
    play(ledger, [ok(command("open_account", "o1", "dan", currency="USD", low_balance=500))])
    play(ledger, [ok(dep("d1", "dan", 600)), ok(wd("w1", "dan", 550))])
    assert ledger.account("dan") == usd(credits_posted=600, debits_posted=550)


# Metadata travels into the command's journal event.

META = {"order": "o-42", "by": "checkout"}

# (case, setup, command whose events carry META)
METADATA_CASES: list[tuple[str, list[Step], Command]] = [
    ("open_account", [], open_("o1", "dan", {"transaction_amount_max": 5})),
    ("set_limits", [], set_limits("s1", "alice", limits={}, overdraft_limit=5)),
    ("deposit", [], dep("d1", "alice", 5)),
    ("withdraw", [], wd("w1", "alice", 5)),
    ("transfer", [], xfer("t1", "alice", "bob", 5)),
    ("transfer across partitions", [], xfer("t1", "alice", "zed", 5)),
    ("close_account", [], close("x1", "bob")),
    ("hold", [], H1.command),
    ("post_hold", [H1], post("p1", "alice", "h1", 10)),
    ("post_hold across partitions", [Z1], post("p1", "alice", "h1", 10)),
    ("void_hold", [H1], void("v1", "alice", "h1")),
    ("expire_hold", [H1], expire("alice", "h1")),
    ("pay_invoice", [], PAID.command),
    ("pay_invoice across partitions", [], pay("p1", "alice", "inv-1", "zed", 5)),
    ("pay_invoice by card", [], CARD.command),
    ("confirm_payment", [CARD], confirm("c1", "alice", "inv-1")),
    ("fail_payment", [CARD], fail("f1", "alice", "inv-1")),
    ("reverse", [ok(dep("d1", "alice", 5))], rev("r1", "alice", "d1")),
    ("reverse across partitions", [ok(xfer("t1", "alice", "zed", 5))], rev("r1", "zed", "t1")),
    ("register_alias", [], BOB.command),
]


@pytest.mark.parametrize(
    ("case", "setup", "message"), METADATA_CASES, ids=[row[0] for row in METADATA_CASES]
)
def test_metadata_travels_into_the_commands_journal_event(
    case: str, setup: list[Step], message: Command
) -> None:
    ledger = Ledger()
    play(ledger, setup)
    ts = DEADLINE if message.type == "expire_hold" else T0
    sent = ledger.send(message.model_copy(update={"metadata": META}), ts)
    assert sent.results and all(r.status == "accepted" for r in sent.results)
    own = [e for e in sent.journal if e.entry_id == f"{message.command_id}:0"]
    assert len(own) == 1
    assert (own[0].command_id, own[0].metadata) == (message.command_id, META)
    # Events of other commands carry none of it.
    assert all(e.metadata is None for e in ledger.events() if e.command_id != message.command_id)


# Every rejection code of the core is produced by a row here or in test_core.py.

ALL_ROWS = [*LIMIT_ROWS, *HOLD_ROWS, *INVOICE_ROWS, *REVERSAL_ROWS, *ALIAS_ROWS]


def test_row_cases_are_unique() -> None:
    cases = [row.case for row in ALL_ROWS]
    assert len(cases) == len(set(cases))


def test_every_code_of_the_core_is_produced_by_a_row_here_or_in_test_core() -> None:
    core = {code.value for code in Code if PRECEDENCE[code] > 0}
    here = {row.code for row in ALL_ROWS if row.code is not None}
    there = {code for _, _, code, _ in REJECTED}
    assert here | there == core, {"missing": core - here - there, "not core": here - core}
    # Every code that only the new rules can produce has a row here.
    new_rules = {
        "hold_not_found",
        "payment_not_found",
        "original_not_found",
        "hold_already_posted",
        "hold_voided",
        "hold_expired",
        "invoice_already_paid",
        "invoice_payment_pending",
        "reversal_of_reversal",
        "not_reversible",
        "already_reversed",
        "hold_not_expired",
        "amount_exceeds_hold",
        "limit_exceeded",
        "alias_taken",
    }
    assert new_rules <= here


def test_every_journal_event_of_every_decision_balances() -> None:
    decisions: list[Decision] = []
    for row in ALL_ROWS:
        ledger = Ledger(row.rules)
        for step in [*row.setup, Step(row.command, row.ts)]:
            ledger.send(step.command, step.ts, deliver=step.expect != IN_FLIGHT)
        ledger.deliver()
        decisions += ledger.decisions
        fold = ledger.fold()
        assert sum(fold.values()) == 0, row.case
        assert fold.get("@transit", 0) == 0, row.case
        # The journal explains every change of every customer account.
        seed = {**SEED[0], **SEED[1]}
        for name, account in ledger.accounts().items():
            before = seed[name].balance if name in seed else 0
            assert account.balance - before == fold.get(name, 0), (row.case, name)
    events = [event for d in decisions for event in d.journal]
    for event in events:
        for part in (event.postings, event.pending or [], event.released or []):
            assert balanced(part), event.entry_id
    # Not vacuous: every kind of event, pending and released parts among them.
    kinds = {event.kind for event in events}
    assert kinds >= {
        "limits_set",
        "hold_placed",
        "hold_posted",
        "hold_voided",
        "hold_expired",
        "reversal",
        "invoice_payment",
        "transfer_credit",
        "transfer_refund",
        "alias_registered",
    }
    assert any(event.pending for event in events)
    assert any(event.released and event.postings for event in events)
