"""The read models' fold (`ledger_stream.readmodel`) over journals the real core writes.

Commands run through the core on the two-partition ledger of `test_core_rules` (accounts
whose name starts with "z" on partition 1), then each partition's journal is folded as the
projector folds it: the balances must equal the writers' own, however the events are split
into batches and however often they are re-sent.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import pytest
from test_core_rules import (
    T0,
    Ledger,
    alias,
    command,
    dep,
    hold,
    post,
    rev,
    void,
    wd,
    xfer,
)
from test_core_rules import partition_of as harness_partition

from ledger_stream.anomaly import AnomalyRules, AnomalyState
from ledger_stream.messages import AccountState, Command, JournalEvent, from_json, to_json
from ledger_stream.readmodel import (
    HEAD_KEY,
    AccountView,
    DaySummary,
    HistoryItem,
    ReadFold,
    account_key,
    alias_key,
    anomaly_key,
    day_key,
    history_prefix,
    utc_day,
)

ACCOUNTS = ("amber", "basil", "zara", "zeno")


def open_(cid: str, account: str, **fields: Any) -> Command:
    return command("open_account", cid, account, currency="USD", **fields)


def fresh_ledger() -> Ledger:
    ledger = Ledger()
    for store in ledger.partitions:
        store.accounts.clear()
    return ledger


def journals(ledger: Ledger) -> dict[int, list[JournalEvent]]:
    """Each partition's journal, in chain order, as the writers sent it (repeats included)."""
    found: dict[int, list[JournalEvent]] = {0: [], 1: []}
    for decision in ledger.decisions:
        for event in decision.journal:
            found[harness_partition(event.account)].append(event)
    return found


def folded(
    events: Iterable[JournalEvent], batch: int, rules: AnomalyRules | None = None
) -> dict[str, bytes]:
    """Fold in batches of `batch` events, each batch writing to the store before the next."""
    store: dict[str, bytes] = {}
    events = list(events)
    for start in range(0, len(events), batch):
        fold = ReadFold(store.get, rules)
        for event in events[start : start + batch]:
            fold.event(event)
        store.update(fold.out.writes)
    return store


def random_commands(rng: random.Random, count: int) -> list[Command]:
    made: list[Command] = [open_(f"open-{a}", a) for a in ACCOUNTS]
    made += [dep(f"fund-{a}", a, 5_000) for a in ACCOUNTS]
    holds: list[tuple[str, str]] = []
    for i in range(count):
        a, b = rng.sample(ACCOUNTS, 2)
        amount = rng.randint(1, 900)
        roll = rng.random()
        if roll < 0.35:
            made.append(xfer(f"t{i}", a, b, amount))
        elif roll < 0.5:
            made.append(dep(f"d{i}", a, amount))
        elif roll < 0.6:
            made.append(wd(f"w{i}", a, amount))
        elif roll < 0.75:
            made.append(hold(f"h{i}", a, b, amount))
            holds.append((a, f"h{i}"))
        elif roll < 0.85 and holds:
            source, hold_id = holds.pop(rng.randrange(len(holds)))
            made.append(post(f"p{i}", source, hold_id, rng.choice([None, 1])))
        elif roll < 0.9 and holds:
            source, hold_id = holds.pop(rng.randrange(len(holds)))
            made.append(void(f"v{i}", source, hold_id))
        else:
            target = rng.choice(made)
            made.append(rev(f"r{i}", rng.choice(ACCOUNTS), target.command_id))
    return made


def run(commands: Iterable[Command]) -> Ledger:
    ledger = fresh_ledger()
    for number, message in enumerate(commands):
        ledger.send(message, T0 + number * 1_000)
    return ledger


def view(store: dict[str, bytes], account: str) -> AccountView:
    return from_json(store[account_key(account)], AccountView)


def history(store: dict[str, bytes], account: str) -> list[HistoryItem]:
    prefix = history_prefix(account)
    keys = sorted((k for k in store if k.startswith(prefix)), reverse=True)
    return [from_json(store[k], HistoryItem) for k in keys]


def money(state: AccountState | AccountView) -> tuple[int, ...]:
    return (state.balance, state.debits_pending, state.credits_pending, state.overdraft_limit)


@pytest.mark.parametrize("seed", range(8))
def test_the_read_models_hold_what_the_writers_hold(seed: int) -> None:
    ledger = run(random_commands(random.Random(seed), 120))
    by_partition = journals(ledger)
    for account, state in ledger.accounts().items():
        store = folded(by_partition[harness_partition(account)], batch=7)
        assert money(view(store, account)) == money(state), account
        assert view(store, account).status == state.status


@pytest.mark.parametrize("seed", range(4))
def test_a_fold_is_the_same_in_any_batches_and_with_every_event_sent_twice(seed: int) -> None:
    ledger = run(random_commands(random.Random(seed), 80))
    for events in journals(ledger).values():
        once = folded(events, batch=len(events) or 1, rules=AnomalyRules())
        assert folded(events, batch=1, rules=AnomalyRules()) == once
        assert folded(events, batch=5, rules=AnomalyRules()) == once
        doubled = [event for event in events for _ in (0, 1)]
        assert folded(doubled, batch=3, rules=AnomalyRules()) == once
        fold = ReadFold(once.get, AnomalyRules())
        for event in events:
            fold.event(event)
        assert fold.out.writes == {} and fold.out.skipped == len(events)


def test_history_runs_newest_first_and_each_balance_follows_from_the_last() -> None:
    ledger = run(random_commands(random.Random(42), 150))
    by_partition = journals(ledger)
    for account in ACCOUNTS:
        store = folded(by_partition[harness_partition(account)], batch=10)
        items = history(store, account)
        assert [i.seq for i in items] == sorted((i.seq for i in items), reverse=True)
        balance = pending_debits = 0
        for item in reversed(items):
            balance += item.credit - item.debit
            pending_debits += item.pending_debit
            assert (item.balance, item.pending_debits) == (balance, pending_debits), item
        assert balance == view(store, account).balance
        times = [i.timestamp_ms for i in reversed(items)]
        assert times == sorted(times)


def test_a_day_summary_adds_up_from_its_opening_to_its_closing_balance() -> None:
    commands = [open_("o1", "amber"), open_("o2", "basil"), dep("d0", "amber", 1_000)]
    commands += [xfer(f"t{i}", "amber", "basil", 10 * i) for i in range(1, 6)]
    ledger = fresh_ledger()
    day = 86_400_000
    for number, message in enumerate(commands):
        # Three commands a day: summaries of three days.
        ledger.send(message, T0 + (number // 3) * day + number)
    store = folded(journals(ledger)[0], batch=4)
    days = sorted(k for k in store if k.startswith("d|amber|"))
    assert len(days) == 3
    summaries = [from_json(store[k], DaySummary) for k in days]
    for summary in summaries:
        moved = sum(t.credit - t.debit for t in summary.actions.values())
        assert summary.closing - summary.opening == moved
    assert [s.opening for s in summaries[1:]] == [s.closing for s in summaries[:-1]]
    assert summaries[0].actions["deposit"].credit == 1_000
    assert [s.actions["transfer"].count for s in summaries[1:]] == [3, 2]
    assert store[day_key("amber", utc_day(T0))] == to_json(summaries[0])


def test_low_balance_notifies_once_when_the_balance_crosses_below_the_threshold() -> None:
    commands = [
        open_("o1", "amber", low_balance=500),
        open_("o2", "basil"),
        dep("d1", "amber", 1_000),
        xfer("t1", "amber", "basil", 400),  # 600: still above
        xfer("t2", "amber", "basil", 200),  # 400: below, notify
        xfer("t3", "amber", "basil", 100),  # 300: already below, quiet
        dep("d2", "amber", 1_000),  # 1300: above again
        wd("w1", "amber", 900),  # 400: below again, notify
    ]
    fold = ReadFold(lambda key: None, None)
    for event in journals(run(commands))[0]:
        fold.event(event)
    low = [n for _, n in fold.out.notifications if n.type == "low_balance"]
    assert [(n.command_id, n.balance) for n in low] == [("t2", 400), ("w1", 400)]
    sent = [n for _, n in fold.out.notifications if n.type == "money_sent"]
    received = [n for _, n in fold.out.notifications if n.type == "money_received"]
    assert [n.command_id for n in sent] == ["t1", "t2", "t3", "w1"]
    assert {n.account for n in received} == {"amber", "basil"}
    assert all(
        n.details and n.details.get("counterparty") == "amber"
        for n in received
        if n.account == "basil"
    )
    ids = [n.id for _, n in fold.out.notifications]
    assert len(ids) == len(set(ids))


def test_a_transfer_across_partitions_names_the_other_side_on_both() -> None:
    ledger = run([open_("o1", "amber"), open_("o2", "zara"), dep("d", "amber", 100)])
    ledger.send(xfer("t", "amber", "zara", 60), T0 + 10_000)
    by_partition = journals(ledger)
    amber = history(folded(by_partition[0], batch=2), "amber")[0]
    zara = history(folded(by_partition[1], batch=2), "zara")[0]
    assert (amber.kind, amber.debit, amber.counterparty) == ("transfer_debit", 60, "zara")
    assert (zara.kind, zara.credit, zara.counterparty) == ("transfer_credit", 60, "amber")


def test_an_alias_names_the_account_its_first_registration_named() -> None:
    ledger = run(
        [
            alias("a1", "alias:amber@example.com", "amber"),
            alias("a2", "alias:amber@example.com", "basil"),  # refused: taken
        ]
    )
    store = folded(journals(ledger)[0], batch=1)
    assert store[alias_key("alias:amber@example.com")] == b"amber"
    assert HEAD_KEY in store


def test_money_in_writes_an_empty_anomaly_state_once_and_leaves_one_as_it_was() -> None:
    """Only movements out change what the anomaly rules keep: money in writes an account's
    state only when it has none yet (empty), and otherwise writes nothing."""
    account = ACCOUNTS[0]
    ledger = run(
        [
            open_("open", account),
            dep("in-1", account, 500),
            wd("out", account, 200),
            dep("in-2", account, 100),
        ]
    )
    events = journals(ledger)[harness_partition(account)]
    store: dict[str, bytes] = {}
    written: dict[str, bytes | None] = {}
    for event in events:
        fold = ReadFold(store.get, AnomalyRules())
        fold.event(event)
        store.update(fold.out.writes)
        written[event.command_id] = fold.out.writes.get(anomaly_key(account))
    assert written["open"] is None  # moves no money
    assert written["in-1"] == to_json(AnomalyState())
    out = written["out"]
    assert out is not None and from_json(out, AnomalyState).count_out == 1
    assert written["in-2"] is None
    assert store[anomaly_key(account)] == out
