"""Tables of `decide`: one row per case, rejection codes in the documented precedence order.

Storage is a hand-written in-memory store per partition (`fake_store.PartitionStore`) that
`decide` reads and that takes back what `decide` returns, as the writer does.
"""

from __future__ import annotations

from typing import Any

import pytest
from fake_store import PartitionStore, event_sum, postings_of

from ledger_stream.codes import PRECEDENCE as LEVELS
from ledger_stream.codes import Code
from ledger_stream.core import (
    Decision,
    Incoming,
    compacted,
    decide,
    fingerprint,
    outcome_from_compact,
)
from ledger_stream.messages import (
    AccountState,
    CloseAccount,
    Command,
    Deposit,
    JournalEvent,
    JournalHead,
    Leg,
    OpenAccount,
    Outcome,
    Transfer,
    Withdraw,
    replaced,
    to_json,
)
from ledger_stream.money import AMOUNT_MAX, BALANCE_MAX

# The precedence order of the codes this file's first tables cover.
PRECEDENCE = [
    "exists_with_different_payload",
    "account_reserved",
    "invalid_amount",
    "amount_too_large",
    "accounts_must_be_different",
    "account_exists",
    "account_not_found",
    "account_closed",
    "currency_mismatch",
    "balance_not_zero",
    "transfer_in_transit",
    "insufficient_funds",
    "overflow",
]


def open_account(
    account: str,
    currency: str = "USD",
    overdraft_limit: Any = 0,
    command_id: str = "c1",
    **extra: Any,
) -> OpenAccount:
    return OpenAccount(
        type="open_account",
        command_id=command_id,
        account=account,
        currency=currency,
        overdraft_limit=overdraft_limit,
        **extra,
    )


def deposit(
    account: str, amount: Any, currency: str = "USD", command_id: str = "c1", **extra: Any
) -> Deposit:
    return Deposit(
        type="deposit",
        command_id=command_id,
        account=account,
        currency=currency,
        amount=amount,
        **extra,
    )


def withdraw(
    account: str, amount: Any, currency: str = "USD", command_id: str = "c1", **extra: Any
) -> Withdraw:
    return Withdraw(
        type="withdraw",
        command_id=command_id,
        account=account,
        currency=currency,
        amount=amount,
        **extra,
    )


def transfer(
    account: str,
    destination: str,
    amount: Any,
    currency: str = "USD",
    command_id: str = "c1",
    **extra: Any,
) -> Transfer:
    return Transfer(
        type="transfer",
        command_id=command_id,
        account=account,
        destination=destination,
        currency=currency,
        amount=amount,
        **extra,
    )


def close_account(account: str, command_id: str = "c1", **extra: Any) -> CloseAccount:
    return CloseAccount(type="close_account", command_id=command_id, account=account, **extra)


def credit_leg(
    transfer_id: str = "t1",
    source: str = "alice",
    destination: str = "bob",
    amount: Any = 5,
    **extra: Any,
) -> Leg:
    """A credit leg as a source writer sends it (its other types: `type=`)."""
    fields: dict[str, Any] = {"type": "credit", "currency": "USD", **extra}
    return Leg(
        transfer_id=transfer_id, source=source, destination=destination, amount=amount, **fields
    )


def usd(**posted: int) -> AccountState:
    return AccountState(currency="USD", **posted)


# One partition whose accounts are all local except those starting with "z".
ACCOUNTS: dict[str, AccountState] = {
    "alice": usd(credits_posted=100),
    "bob": usd(),
    "carol": AccountState(currency="USD", status="closed"),
    "yen": AccountState(currency="JPY", credits_posted=1000),
    "over": usd(overdraft_limit=50),
    "owing": usd(overdraft_limit=50, debits_posted=10),
    "emptied": usd(credits_posted=100, debits_posted=100),
    "held": usd(credits_posted=100, debits_posted=100, debits_pending=5),
    "full": usd(credits_posted=BALANCE_MAX - 5),
    "sending": usd(credits_posted=100, debits_posted=30, debits_in_transit=30),
    "sent": usd(credits_posted=100, debits_posted=100, debits_in_transit=100),
    "spent": usd(
        overdraft_limit=100, debits_posted=BALANCE_MAX - 5, credits_posted=BALANCE_MAX - 5
    ),
}


def is_local(account: str) -> bool:
    return not account.startswith("z")


def store() -> PartitionStore:
    return PartitionStore(is_local=is_local, accounts=dict(ACCOUNTS))


def leg_fields(leg: Leg) -> tuple[Any, ...]:
    return (
        leg.type,
        leg.transfer_id,
        leg.source,
        leg.destination,
        leg.amount,
        leg.currency,
        leg.reply_partition,
        leg.code,
    )


def result_fields(decision: Decision) -> list[tuple[Any, ...]]:
    return [
        (r.result.command_id, r.result.status, r.result.code, r.result.duplicate, r.partition)
        for r in decision.results
    ]


def assert_balanced(journal: list[JournalEvent]) -> None:
    for event in journal:
        assert event_sum(event) == 0, f"{event.entry_id} does not balance"
        assert all(p.debit == 0 or p.credit == 0 for p in event.postings)


def test_the_codes_are_listed_in_their_precedence_and_this_table_follows_it() -> None:
    levels = [LEVELS[code] for code in Code if LEVELS[code] > 0]
    assert levels == sorted(levels)
    assert [code for code in Code if code in PRECEDENCE] == PRECEDENCE
    assert all(code.reason for code in Code)


# Rejections: (case, command, code, later codes that also apply and must lose)
REJECTED: list[tuple[str, Command, str, tuple[str, ...]]] = [
    # open_account
    ("open a system account", open_account("@world"), "account_reserved", ()),
    (
        "open with a negative overdraft",
        open_account("dan", overdraft_limit=-1),
        "invalid_amount",
        (),
    ),
    (
        "open with an overdraft above AMOUNT_MAX",
        open_account("dan", overdraft_limit=AMOUNT_MAX + 1),
        "amount_too_large",
        (),
    ),
    ("open an open account", open_account("alice"), "account_exists", ()),
    ("open a closed account", open_account("carol"), "account_exists", ()),
    (
        "open an account again in another currency",
        open_account("alice", "EUR"),
        "account_exists",
        (),
    ),
    (
        "open a system account with a negative overdraft",
        open_account("@transit", overdraft_limit=-1),
        "account_reserved",
        ("invalid_amount",),
    ),
    (
        "open an open account with a negative overdraft",
        open_account("alice", overdraft_limit=-1),
        "invalid_amount",
        ("account_exists",),
    ),
    (
        "open an open account with too large an overdraft",
        open_account("alice", overdraft_limit=AMOUNT_MAX + 1),
        "amount_too_large",
        ("account_exists",),
    ),
    # deposit
    ("deposit to @world", deposit("@world", 5), "account_reserved", ()),
    ("deposit 0", deposit("alice", 0), "invalid_amount", ()),
    ("deposit -1", deposit("alice", -1), "invalid_amount", ()),
    ("deposit above AMOUNT_MAX", deposit("alice", AMOUNT_MAX + 1), "amount_too_large", ()),
    ("deposit beyond 64 bits", deposit("alice", 10**29), "amount_too_large", ()),
    ("withdraw minus 10**29", withdraw("alice", -(10**29)), "invalid_amount", ()),
    ("transfer 2**64", transfer("alice", "zed", 2**64), "amount_too_large", ()),
    (
        "open with an overdraft of 2**64",
        open_account("dan", overdraft_limit=2**64),
        "amount_too_large",
        (),
    ),
    ("deposit to an unknown account", deposit("nobody", 5), "account_not_found", ()),
    ("deposit to a closed account", deposit("carol", 5), "account_closed", ()),
    ("deposit in another currency", deposit("alice", 5, "EUR"), "currency_mismatch", ()),
    ("deposit past BALANCE_MAX", deposit("full", 6), "overflow", ()),
    ("deposit 0 to @transit", deposit("@transit", 0), "account_reserved", ("invalid_amount",)),
    ("deposit -1 to a closed account", deposit("carol", -1), "invalid_amount", ("account_closed",)),
    (
        "deposit too much to an unknown account",
        deposit("nobody", AMOUNT_MAX + 1),
        "amount_too_large",
        ("account_not_found",),
    ),
    (
        "deposit another currency to an unknown account",
        deposit("nobody", 5, "EUR"),
        "account_not_found",
        ("currency_mismatch",),
    ),
    (
        "deposit another currency to a closed account",
        deposit("carol", 5, "EUR"),
        "account_closed",
        ("currency_mismatch",),
    ),
    (
        "deposit another currency past BALANCE_MAX",
        deposit("full", 6, "EUR"),
        "currency_mismatch",
        ("overflow",),
    ),
    # withdraw
    ("withdraw from @world", withdraw("@world", 5), "account_reserved", ()),
    ("withdraw 0", withdraw("alice", 0), "invalid_amount", ()),
    ("withdraw above AMOUNT_MAX", withdraw("alice", AMOUNT_MAX + 1), "amount_too_large", ()),
    ("withdraw from an unknown account", withdraw("nobody", 5), "account_not_found", ()),
    ("withdraw from a closed account", withdraw("carol", 5), "account_closed", ()),
    ("withdraw in another currency", withdraw("yen", 5, "USD"), "currency_mismatch", ()),
    ("withdraw past the balance", withdraw("alice", 101), "insufficient_funds", ()),
    ("withdraw past the overdraft limit", withdraw("over", 51), "insufficient_funds", ()),
    (
        "withdraw past the overdraft limit when owing",
        withdraw("owing", 41),
        "insufficient_funds",
        (),
    ),
    ("withdraw past BALANCE_MAX debits", withdraw("spent", 6), "overflow", ()),
    (
        "withdraw from a closed account more than it has",
        withdraw("carol", 5),
        "account_closed",
        ("insufficient_funds",),
    ),
    (
        "withdraw another currency past the balance",
        withdraw("alice", 1000, "EUR"),
        "currency_mismatch",
        ("insufficient_funds",),
    ),
    (
        "withdraw past the balance and BALANCE_MAX debits",
        withdraw("spent", 101),
        "insufficient_funds",
        ("overflow",),
    ),
    # transfer, both accounts on this partition
    ("transfer to @world", transfer("alice", "@world", 5), "account_reserved", ()),
    ("transfer from @transit", transfer("@transit", "alice", 5), "account_reserved", ()),
    ("transfer 0", transfer("alice", "bob", 0), "invalid_amount", ()),
    ("transfer -5", transfer("alice", "bob", -5), "invalid_amount", ()),
    ("transfer above AMOUNT_MAX", transfer("alice", "bob", AMOUNT_MAX + 1), "amount_too_large", ()),
    ("transfer to itself", transfer("alice", "alice", 5), "accounts_must_be_different", ()),
    ("transfer from an unknown account", transfer("nobody", "bob", 5), "account_not_found", ()),
    ("transfer to an unknown account", transfer("alice", "nobody", 5), "account_not_found", ()),
    ("transfer from a closed account", transfer("carol", "bob", 5), "account_closed", ()),
    ("transfer to a closed account", transfer("alice", "carol", 5), "account_closed", ()),
    (
        "transfer in another currency than the source's",
        transfer("alice", "bob", 5, "EUR"),
        "currency_mismatch",
        (),
    ),
    (
        "transfer in another currency than the destination's",
        transfer("alice", "yen", 5),
        "currency_mismatch",
        (),
    ),
    ("transfer past the balance", transfer("alice", "bob", 101), "insufficient_funds", ()),
    ("transfer past the overdraft limit", transfer("over", "bob", 51), "insufficient_funds", ()),
    (
        "transfer past BALANCE_MAX credits of the destination",
        transfer("alice", "full", 6),
        "overflow",
        (),
    ),
    ("transfer past BALANCE_MAX debits of the source", transfer("spent", "bob", 6), "overflow", ()),
    (
        "transfer 0 to itself from a closed account",
        transfer("carol", "carol", 0),
        "invalid_amount",
        ("accounts_must_be_different", "account_closed"),
    ),
    (
        "transfer 0 to @world",
        transfer("alice", "@world", 0),
        "account_reserved",
        ("invalid_amount",),
    ),
    (
        "transfer too much to itself",
        transfer("alice", "alice", AMOUNT_MAX + 1),
        "amount_too_large",
        ("accounts_must_be_different", "insufficient_funds"),
    ),
    (
        "transfer to itself on an unknown account",
        transfer("nobody", "nobody", 5),
        "accounts_must_be_different",
        ("account_not_found",),
    ),
    (
        "transfer another currency to an unknown account",
        transfer("alice", "nobody", 5, "EUR"),
        "account_not_found",
        ("currency_mismatch",),
    ),
    (
        "transfer from a closed account to an unknown one",
        transfer("carol", "nobody", 5),
        "account_not_found",
        ("account_closed",),
    ),
    (
        "transfer another currency to a closed account",
        transfer("alice", "carol", 5, "EUR"),
        "account_closed",
        ("currency_mismatch",),
    ),
    (
        "transfer past the balance to another currency",
        transfer("alice", "yen", 101),
        "currency_mismatch",
        ("insufficient_funds",),
    ),
    (
        "transfer past the balance and BALANCE_MAX credits",
        transfer("alice", "full", 101),
        "insufficient_funds",
        ("overflow",),
    ),
    # transfer to another partition: only the source is checked here
    (
        "transfer to another partition from an unknown account",
        transfer("nobody", "zed", 5),
        "account_not_found",
        (),
    ),
    (
        "transfer to another partition from a closed account",
        transfer("carol", "zed", 5),
        "account_closed",
        (),
    ),
    (
        "transfer to another partition in another currency",
        transfer("alice", "zed", 5, "EUR"),
        "currency_mismatch",
        (),
    ),
    (
        "transfer to another partition past the balance",
        transfer("alice", "zed", 101),
        "insufficient_funds",
        (),
    ),
    (
        "transfer to another partition past BALANCE_MAX debits",
        transfer("spent", "zed", 6),
        "overflow",
        (),
    ),
    (
        "transfer to itself on another partition",
        transfer("zed", "zed", 5),
        "accounts_must_be_different",
        (),
    ),
    # close_account
    ("close @world", close_account("@world"), "account_reserved", ()),
    ("close an unknown account", close_account("nobody"), "account_not_found", ()),
    ("close a closed account", close_account("carol"), "account_closed", ()),
    ("close an account holding money", close_account("alice"), "balance_not_zero", ()),
    ("close an account in overdraft", close_account("owing"), "balance_not_zero", ()),
    ("close an account with pending debits", close_account("held"), "balance_not_zero", ()),
    ("close an account whose money is in flight", close_account("sent"), "transfer_in_transit", ()),
    (
        "close an account holding money with a transfer in flight",
        close_account("sending"),
        "balance_not_zero",
        ("transfer_in_transit",),
    ),
]


def test_every_rejection_code_of_a_command_has_a_row() -> None:
    codes = {code for _, _, code, _ in REJECTED}
    assert codes == set(PRECEDENCE) - {"exists_with_different_payload"}


@pytest.mark.parametrize(
    ("case", "command", "code", "losers"), REJECTED, ids=[row[0] for row in REJECTED]
)
def test_rejection(case: str, command: Command, code: str, losers: tuple[str, ...]) -> None:
    assert all(PRECEDENCE.index(code) < PRECEDENCE.index(later) for later in losers)
    partition = store()
    decision = partition.run([command])
    assert len(decision.results) == 1
    result = decision.results[0].result
    assert (result.command_id, result.status, result.code, result.duplicate) == (
        "c1",
        "rejected",
        code,
        False,
    )
    assert (result.type, result.account, result.reason) == (
        command.type,
        command.account,
        Code(code).reason,
    )
    assert decision.journal == []
    assert decision.legs == []
    assert decision.accounts == {}
    assert partition.accounts == ACCOUNTS
    # The rejection is kept, so that a repeat gets the same answer.
    assert list(decision.outcomes) == ["cmd:c1"]
    assert decision.outcomes["cmd:c1"].result == result


# Accepted: (case, command, accounts after, journal kind, postings (account, debit, credit))
ACCEPTED: list[tuple[str, Command, dict[str, AccountState], str, list[tuple[str, int, int]]]] = [
    (
        "open an account",
        open_account("dan", "EUR", overdraft_limit="25.00"),
        {"dan": AccountState(currency="EUR", overdraft_limit=2500)},
        "account_opened",
        [],
    ),
    (
        "open an account without overdraft",
        open_account("dan", "JPY"),
        {"dan": AccountState(currency="JPY")},
        "account_opened",
        [],
    ),
    (
        "open an account with an overdraft of AMOUNT_MAX",
        open_account("dan", overdraft_limit=AMOUNT_MAX),
        {"dan": usd(overdraft_limit=AMOUNT_MAX)},
        "account_opened",
        [],
    ),
    (
        "deposit",
        deposit("alice", "0.50"),
        {"alice": usd(credits_posted=150)},
        "deposit",
        [("@world", 50, 0), ("alice", 0, 50)],
    ),
    (
        "deposit AMOUNT_MAX",
        deposit("bob", AMOUNT_MAX),
        {"bob": usd(credits_posted=AMOUNT_MAX)},
        "deposit",
        [("@world", AMOUNT_MAX, 0), ("bob", 0, AMOUNT_MAX)],
    ),
    (
        "deposit up to BALANCE_MAX",
        deposit("full", 5),
        {"full": usd(credits_posted=BALANCE_MAX)},
        "deposit",
        [("@world", 5, 0), ("full", 0, 5)],
    ),
    (
        "withdraw the whole balance",
        withdraw("alice", 100),
        {"alice": usd(credits_posted=100, debits_posted=100)},
        "withdrawal",
        [("alice", 100, 0), ("@world", 0, 100)],
    ),
    (
        "withdraw down to minus the overdraft limit",
        withdraw("over", 50),
        {"over": usd(overdraft_limit=50, debits_posted=50)},
        "withdrawal",
        [("over", 50, 0), ("@world", 0, 50)],
    ),
    (
        "withdraw the rest of the overdraft",
        withdraw("owing", 40),
        {"owing": usd(overdraft_limit=50, debits_posted=50)},
        "withdrawal",
        [("owing", 40, 0), ("@world", 0, 40)],
    ),
    (
        "withdraw up to BALANCE_MAX debits",
        withdraw("spent", 5),
        {
            "spent": usd(
                overdraft_limit=100, debits_posted=BALANCE_MAX, credits_posted=BALANCE_MAX - 5
            )
        },
        "withdrawal",
        [("spent", 5, 0), ("@world", 0, 5)],
    ),
    (
        "withdraw in yen",
        withdraw("yen", 1000, "JPY"),
        {"yen": AccountState(currency="JPY", credits_posted=1000, debits_posted=1000)},
        "withdrawal",
        [("yen", 1000, 0), ("@world", 0, 1000)],
    ),
    (
        "transfer between two local accounts",
        transfer("alice", "bob", 30),
        {"alice": usd(credits_posted=100, debits_posted=30), "bob": usd(credits_posted=30)},
        "transfer",
        [("alice", 30, 0), ("bob", 0, 30)],
    ),
    (
        "transfer down to minus the overdraft limit",
        transfer("over", "bob", 50),
        {"over": usd(overdraft_limit=50, debits_posted=50), "bob": usd(credits_posted=50)},
        "transfer",
        [("over", 50, 0), ("bob", 0, 50)],
    ),
    (
        "transfer up to BALANCE_MAX credits",
        transfer("alice", "full", 5),
        {
            "alice": usd(credits_posted=100, debits_posted=5),
            "full": usd(credits_posted=BALANCE_MAX),
        },
        "transfer",
        [("alice", 5, 0), ("full", 0, 5)],
    ),
    (
        "close an account that never held money",
        close_account("bob"),
        {"bob": AccountState(currency="USD", status="closed")},
        "account_closed",
        [],
    ),
    (
        "close an account whose debits equal its credits",
        close_account("emptied"),
        {
            "emptied": AccountState(
                currency="USD", status="closed", credits_posted=100, debits_posted=100
            )
        },
        "account_closed",
        [],
    ),
]


@pytest.mark.parametrize(
    ("case", "command", "after", "kind", "postings"), ACCEPTED, ids=[row[0] for row in ACCEPTED]
)
def test_accepted(
    case: str,
    command: Command,
    after: dict[str, AccountState],
    kind: str,
    postings: list[tuple[str, int, int]],
) -> None:
    command = command.model_copy(update={"reply_partition": 4, "metadata": {"note": case[:20]}})
    partition = store()
    decision = partition.run([command], timestamp_ms=1_234)
    assert result_fields(decision) == [("c1", "accepted", None, False, 4)]
    result = decision.results[0].result
    assert (result.type, result.account, result.reason) == (command.type, command.account, None)
    assert decision.accounts == after
    assert partition.accounts == {**ACCOUNTS, **after}
    assert len(decision.journal) == 1
    event = decision.journal[0]
    assert (event.entry_id, event.command_id, event.kind, event.account) == (
        "c1:0",
        "c1",
        kind,
        command.account,
    )
    assert postings_of(event) == postings
    assert_balanced(decision.journal)
    assert event.currency == after[command.account].currency
    assert (event.timestamp_ms, event.metadata) == (1_234, {"note": case[:20]})
    if kind == "account_opened":
        assert event.overdraft_limit == after[command.account].overdraft_limit
    assert decision.legs == []
    assert list(decision.outcomes) == ["cmd:c1"]


def test_balances_never_pass_their_limits_after_a_decision() -> None:
    partition = store()
    for command in [
        withdraw("over", 50, command_id="w1"),
        withdraw("over", 1, command_id="w2"),
        transfer("owing", "bob", 40, command_id="t1"),
        transfer("owing", "bob", 1, command_id="t2"),
    ]:
        partition.run([command])
    assert partition.accounts["over"].balance == -50
    assert partition.accounts["owing"].balance == -50
    assert all(s.balance >= -s.overdraft_limit for s in partition.accounts.values())


def test_later_inputs_of_a_batch_see_the_effects_of_earlier_ones() -> None:
    partition = store()
    decision = partition.run(
        [
            open_account("dan", command_id="b1"),
            deposit("dan", 100, command_id="b2"),
            withdraw("dan", 60, command_id="b3"),
            withdraw("dan", 60, command_id="b4"),
            transfer("dan", "bob", 40, command_id="b5"),
            close_account("dan", command_id="b6"),
            deposit("dan", 1, command_id="b7"),
        ]
    )
    assert [(r.result.command_id, r.result.code) for r in decision.results] == [
        ("b1", None),
        ("b2", None),
        ("b3", None),
        ("b4", "insufficient_funds"),
        ("b5", None),
        ("b6", None),
        ("b7", "account_closed"),
    ]
    assert decision.accounts["dan"] == AccountState(
        currency="USD", status="closed", credits_posted=100, debits_posted=100
    )
    assert decision.accounts["bob"] == usd(credits_posted=40)
    assert [e.entry_id for e in decision.journal] == ["b1:0", "b2:0", "b3:0", "b5:0", "b6:0"]
    assert_balanced(decision.journal)
    assert set(decision.outcomes) == {f"cmd:b{i}" for i in range(1, 8)}


def test_decide_leaves_the_state_it_reads_untouched_and_is_deterministic() -> None:
    accounts = {"alice": ACCOUNTS["alice"], "bob": ACCOUNTS["bob"]}
    outcomes: dict[str, Any] = {"cmd:c1": None, "cmd:c2": None}
    batch = [
        Incoming(transfer("alice", "bob", 5, command_id="c1"), 7),
        Incoming(deposit("bob", 5, command_id="c2"), 8),
    ]
    first = decide(accounts, outcomes, batch, is_local)
    assert accounts == {"alice": ACCOUNTS["alice"], "bob": ACCOUNTS["bob"]}
    assert outcomes == {"cmd:c1": None, "cmd:c2": None}
    assert decide(accounts, outcomes, batch, is_local) == first


# Repeats of a command_id


REPEATED: list[Command] = [
    open_account("dan"),
    deposit("alice", 5),
    withdraw("alice", 5),
    transfer("alice", "bob", 5),
    close_account("bob"),
    deposit("nobody", 5),  # a rejection is repeated too
    transfer("alice", "zed", 5),  # posted here, answered by the destination's writer
]


@pytest.mark.parametrize("command", REPEATED, ids=lambda c: f"{c.type} {c.account}")
def test_a_repeat_re_emits_the_original_outcome_marked_duplicate_and_moves_nothing(
    command: Command,
) -> None:
    partition = store()
    first = partition.run([command], timestamp_ms=1_000)
    accounts, outcomes = dict(partition.accounts), dict(partition.outcomes)
    again = partition.run([command], timestamp_ms=2_000)
    assert [replaced(r.result, duplicate=False) for r in again.results] == [
        r.result for r in first.results
    ]
    assert all(r.result.duplicate for r in again.results)
    assert again.journal == first.journal  # same entry ids, same timestamp as the first time
    assert again.legs == first.legs
    assert again.accounts == {}
    assert again.outcomes == {}
    assert (partition.accounts, partition.outcomes) == (accounts, outcomes)


@pytest.mark.parametrize(
    "repeat",
    [
        deposit("alice", "12.50", command_id="c1"),
        deposit("alice", 1250, command_id="c1", reply_partition=7),
        deposit("alice", 1250, command_id="c1", metadata={"retry": "1"}),
    ],
    ids=["amount as a decimal string", "another reply partition", "other metadata"],
)
def test_a_repeat_that_differs_only_in_routing_metadata_or_spelling_is_a_duplicate(
    repeat: Deposit,
) -> None:
    partition = store()
    partition.run([deposit("alice", 1250, reply_partition=1, metadata={"retry": "0"})])
    again = partition.run([repeat])
    assert result_fields(again) == [("c1", "accepted", None, True, repeat.reply_partition)]
    assert partition.accounts["alice"] == usd(credits_posted=1350)


@pytest.mark.parametrize(
    "conflict",
    [
        deposit("alice", 6),
        deposit("alice", 5, "EUR"),
        deposit("bob", 5),
        withdraw("alice", 5),
        transfer("alice", "bob", 5),
        close_account("@world"),  # exists_with_different_payload is checked first of all
    ],
    ids=[
        "other amount",
        "other currency",
        "other account",
        "other type",
        "transfer",
        "system account",
    ],
)
def test_the_same_command_id_with_another_payload_is_rejected_and_moves_nothing(
    conflict: Command,
) -> None:
    original = deposit("alice", 5)
    partition = store()
    first = partition.run([original])
    accounts, outcomes = dict(partition.accounts), dict(partition.outcomes)
    refused = partition.run([conflict.model_copy(update={"reply_partition": 3})])
    assert result_fields(refused) == [("c1", "rejected", "exists_with_different_payload", False, 3)]
    result = refused.results[0].result
    assert (result.type, result.account) == (conflict.type, conflict.account)
    assert result.reason == Code.EXISTS_WITH_DIFFERENT_PAYLOAD.reason
    assert (refused.journal, refused.legs, refused.accounts, refused.outcomes) == ([], [], {}, {})
    assert (partition.accounts, partition.outcomes) == (accounts, outcomes)
    # The original is still what a repeat of it gets.
    again = partition.run([original])
    assert [replaced(r.result, duplicate=False) for r in again.results] == [
        r.result for r in first.results
    ]


def test_the_rejection_of_another_payload_carries_the_digest_of_that_payload() -> None:
    partition = store()
    partition.run([deposit("alice", 5)])
    conflict = deposit("alice", 6)
    refused = partition.run([conflict])
    assert refused.results[0].result.payload_digest == fingerprint(conflict)
    assert fingerprint(conflict) != fingerprint(deposit("alice", 5))


def test_a_rejected_command_id_stays_rejected_after_the_state_changes() -> None:
    partition = store()
    partition.run([deposit("dan", 5)])
    partition.run([open_account("dan", command_id="o1")])
    again = partition.run([deposit("dan", 5)])
    assert result_fields(again) == [("c1", "rejected", "account_not_found", True, None)]
    assert partition.accounts["dan"] == usd()


def test_a_repeat_in_the_same_batch_is_a_duplicate_of_the_first() -> None:
    partition = store()
    decision = partition.run(
        [deposit("alice", 5), deposit("alice", 5, reply_partition=2), deposit("alice", 7)]
    )
    assert result_fields(decision) == [
        ("c1", "accepted", None, False, None),
        ("c1", "accepted", None, True, 2),
        ("c1", "rejected", "exists_with_different_payload", False, None),
    ]
    assert [e.entry_id for e in decision.journal] == ["c1:0", "c1:0"]
    assert decision.accounts == {"alice": usd(credits_posted=105)}


# Transfers across partitions: a* accounts on partition 0, b* accounts on partition 1.


def partition_of(account: str) -> int:
    return 1 if account.startswith("b") else 0


def two_partitions(**destination: AccountState) -> tuple[PartitionStore, PartitionStore]:
    source = PartitionStore(
        is_local=lambda name: partition_of(name) == 0, accounts={"alice": usd(credits_posted=100)}
    )
    target = PartitionStore(
        is_local=lambda name: partition_of(name) == 1,
        accounts={"bob": usd(), "bea": usd(credits_posted=7), **destination},
    )
    return source, target


def transit_balance(*decisions: Decision) -> int:
    """@transit's balance from the journal of `decisions`, deduplicated by entry_id."""
    events = {e.entry_id: e for d in decisions for e in d.journal}
    return sum(
        p.credit - p.debit for e in events.values() for p in e.postings if p.account == "@transit"
    )


def test_cross_partition_transfer_posts_into_transit_and_sends_a_credit_leg_without_result() -> (
    None
):
    source, _ = two_partitions()
    decision = source.run([transfer("alice", "bob", 30, command_id="t1", reply_partition=1)])
    assert decision.results == []
    assert [(e.entry_id, e.kind, e.account) for e in decision.journal] == [
        ("t1:0", "transfer_debit", "alice")
    ]
    assert postings_of(decision.journal[0]) == [("alice", 30, 0), ("@transit", 0, 30)]
    assert_balanced(decision.journal)
    assert [leg_fields(leg) for leg in decision.legs] == [
        ("credit", "t1", "alice", "bob", 30, "USD", 1, None)
    ]
    assert decision.legs[0].account == "bob"
    assert decision.accounts == {
        "alice": usd(credits_posted=100, debits_posted=30, debits_in_transit=30)
    }
    assert source.outcomes["cmd:t1"].result is None
    assert source.outcomes["cmd:t1"].legs == decision.legs


def test_the_credit_leg_posts_out_of_transit_answers_accepted_and_sends_a_settle_leg() -> None:
    source, target = two_partitions()
    debit = source.run([transfer("alice", "bob", 30, command_id="t1", reply_partition=1)])
    credit = target.run(debit.legs, timestamp_ms=2_000)
    assert result_fields(credit) == [("t1", "accepted", None, False, 1)]
    result = credit.results[0].result
    assert (result.type, result.account) == ("transfer", "alice")
    assert [(e.entry_id, e.kind, e.account, e.timestamp_ms) for e in credit.journal] == [
        ("t1:1", "transfer_credit", "bob", 2_000)
    ]
    assert postings_of(credit.journal[0]) == [("@transit", 30, 0), ("bob", 0, 30)]
    assert_balanced(credit.journal)
    assert credit.accounts == {"bob": usd(credits_posted=30)}
    assert [leg_fields(leg) for leg in credit.legs] == [
        ("settle", "t1", "alice", "bob", 30, "USD", 1, None)
    ]
    assert credit.legs[0].account == "alice"
    assert transit_balance(debit, credit) == 0


def test_the_settle_leg_ends_the_transfer_at_the_source_and_a_repeat_gets_the_acceptance() -> None:
    source, target = two_partitions()
    command = transfer("alice", "bob", 30, command_id="t1", reply_partition=1)
    debit = source.run([command])
    credit = target.run(debit.legs)
    settle = source.run(credit.legs)
    assert (settle.results, settle.journal, settle.legs) == ([], [], [])
    assert settle.accounts == {"alice": usd(credits_posted=100, debits_posted=30)}
    outcome = source.outcomes["cmd:t1"]
    assert outcome.result is not None
    assert (outcome.result.status, outcome.result.code) == ("accepted", None)
    assert outcome.legs == []
    before = (dict(source.accounts), dict(target.accounts))

    again = source.run([command.model_copy(update={"reply_partition": 2})])
    assert result_fields(again) == [("t1", "accepted", None, True, 2)]
    assert again.journal == debit.journal
    assert (again.legs, again.accounts, again.outcomes) == ([], {}, {})
    assert (dict(source.accounts), dict(target.accounts)) == before


REFUSING_DESTINATIONS = [
    ("bnobody", {}, "account_not_found"),
    ("bclosed", {"bclosed": AccountState(currency="USD", status="closed")}, "account_closed"),
    ("byen", {"byen": AccountState(currency="JPY")}, "currency_mismatch"),
    ("bfull", {"bfull": usd(credits_posted=BALANCE_MAX - 29)}, "overflow"),
]


@pytest.mark.parametrize(
    ("destination", "accounts", "code"),
    REFUSING_DESTINATIONS,
    ids=[r[2] for r in REFUSING_DESTINATIONS],
)
def test_a_refusing_destination_sends_the_money_back_and_the_transfer_is_rejected(
    destination: str, accounts: dict[str, AccountState], code: str
) -> None:
    source, target = two_partitions(**accounts)
    target_accounts = dict(target.accounts)
    debit = source.run([transfer("alice", destination, 30, command_id="t1", reply_partition=1)])

    credit = target.run(debit.legs)
    assert (credit.results, credit.journal, credit.accounts) == ([], [], {})
    assert target.accounts == target_accounts
    assert [leg_fields(leg) for leg in credit.legs] == [
        ("refund", "t1", "alice", destination, 30, "USD", 1, code)
    ]
    assert credit.legs[0].account == "alice"

    refund = source.run(credit.legs, timestamp_ms=3_000)
    assert result_fields(refund) == [("t1", "rejected", code, False, 1)]
    result = refund.results[0].result
    assert (result.type, result.account, result.reason) == ("transfer", "alice", Code(code).reason)
    assert [(e.entry_id, e.kind, e.account, e.timestamp_ms) for e in refund.journal] == [
        ("t1:2", "transfer_refund", "alice", 3_000)
    ]
    assert postings_of(refund.journal[0]) == [("@transit", 30, 0), ("alice", 0, 30)]
    assert_balanced(refund.journal)
    assert refund.legs == []
    assert source.accounts["alice"] == usd(credits_posted=130, debits_posted=30)
    assert source.accounts["alice"].balance == 100
    assert transit_balance(debit, credit, refund) == 0
    # The source's record of the transfer now carries the final answer, and no leg.
    outcome = source.outcomes["cmd:t1"]
    assert outcome.result == result
    assert [e.entry_id for e in outcome.journal] == ["t1:0", "t1:2"]
    assert outcome.legs == []
    assert set(refund.outcomes) == {"cmd:t1"}


@pytest.mark.parametrize(
    ("destination", "accounts", "code"),
    REFUSING_DESTINATIONS,
    ids=[r[2] for r in REFUSING_DESTINATIONS],
)
def test_a_repeat_of_a_refunded_transfer_answers_the_rejection_and_moves_nothing(
    destination: str, accounts: dict[str, AccountState], code: str
) -> None:
    source, target = two_partitions(**accounts)
    command = transfer("alice", destination, 30, command_id="t1", reply_partition=1)
    debit = source.run([command])
    refund = source.run(target.run(debit.legs).legs)
    before = (dict(source.accounts), dict(target.accounts))

    again = source.run([command.model_copy(update={"reply_partition": 2})])
    assert result_fields(again) == [("t1", "rejected", code, True, 2)]
    assert again.journal == [*debit.journal, *refund.journal]
    assert (again.legs, again.accounts, again.outcomes) == ([], {}, {})
    assert (dict(source.accounts), dict(target.accounts)) == before


def test_a_credit_leg_decided_twice_credits_once() -> None:
    source, target = two_partitions()
    debit = source.run([transfer("alice", "bob", 30, command_id="t1")])
    leg = debit.legs[0]
    first = target.run([leg, leg])
    assert result_fields(first) == [
        ("t1", "accepted", None, False, None),
        ("t1", "accepted", None, True, None),
    ]
    assert [e.entry_id for e in first.journal] == ["t1:1", "t1:1"]
    assert [leg.type for leg in first.legs] == ["settle", "settle"]
    second = target.run([leg])
    assert result_fields(second) == [("t1", "accepted", None, True, None)]
    assert second.journal == first.journal[:1]
    assert (second.accounts, second.outcomes) == ({}, {})
    assert target.accounts["bob"] == usd(credits_posted=30)


def test_a_settle_leg_decided_twice_settles_once() -> None:
    source, target = two_partitions()
    debit = source.run([transfer("alice", "bob", 30, command_id="t1")])
    settle_leg = target.run(debit.legs).legs[0]
    source.run([settle_leg, settle_leg])
    again = source.run([settle_leg])
    assert (again.results, again.journal, again.legs) == ([], [], [])
    assert (again.accounts, again.outcomes) == ({}, {})
    assert source.accounts["alice"] == usd(credits_posted=100, debits_posted=30)


def test_a_refund_leg_decided_twice_refunds_once() -> None:
    source, target = two_partitions()
    debit = source.run([transfer("alice", "bnobody", 30, command_id="t1")])
    refund_leg = target.run(debit.legs).legs[0]
    first = source.run([refund_leg])
    second = source.run([refund_leg])
    assert result_fields(second) == [("t1", "rejected", "account_not_found", True, None)]
    assert second.journal == first.journal
    assert (second.accounts, second.outcomes) == ({}, {})
    assert source.accounts["alice"] == usd(credits_posted=130, debits_posted=30)


def test_a_repeat_of_the_transfer_while_the_credit_is_in_flight_re_sends_the_leg_only() -> None:
    source, target = two_partitions()
    command = transfer("alice", "bob", 30, command_id="t1", reply_partition=1)
    debit = source.run([command])
    again = source.run([command.model_copy(update={"reply_partition": 2})])
    assert again.results == []
    assert again.journal == debit.journal
    assert [replaced(leg, reply_partition=1) for leg in again.legs] == debit.legs
    assert again.accounts == {}
    assert source.accounts["alice"].debits_in_transit == 30
    # Both legs reach the destination: the money lands once.
    landed = target.run([*debit.legs, *again.legs])
    # Each answer goes to the results partition of the client that asked.
    assert [(r.result.status, r.result.duplicate, r.partition) for r in landed.results] == [
        ("accepted", False, 1),
        ("accepted", True, 2),
    ]
    assert target.accounts["bob"] == usd(credits_posted=30)
    source.run(landed.legs)
    assert source.accounts["alice"] == usd(credits_posted=100, debits_posted=30)


def test_an_account_cannot_be_closed_while_a_refund_may_still_come_back_to_it() -> None:
    source, target = two_partitions()
    debit = source.run([transfer("alice", "bnobody", 100, command_id="t1")])
    assert source.accounts["alice"].balance == 0
    early = source.run([close_account("alice", command_id="x1")])
    assert result_fields(early) == [("x1", "rejected", "transfer_in_transit", False, None)]
    assert early.accounts == {}
    source.run(target.run(debit.legs).legs)
    late = source.run([close_account("alice", command_id="x2")])
    assert [r.result.code for r in late.results] == ["balance_not_zero"]
    alice = source.accounts["alice"]
    assert (alice.status, alice.balance) == ("open", 100)


def test_an_account_can_be_closed_once_its_last_transfer_has_settled() -> None:
    source, target = two_partitions()
    debit = source.run([transfer("alice", "bob", 100, command_id="t1")])
    credit = target.run(debit.legs)
    early = source.run([close_account("alice", command_id="x1")])
    assert [r.result.code for r in early.results] == ["transfer_in_transit"]
    source.run(credit.legs)
    late = source.run([close_account("alice", command_id="x2")])
    assert result_fields(late) == [("x2", "accepted", None, False, None)]
    assert source.accounts["alice"].status == "closed"


# Ids reused across partitions, and refunds near the balance limit.


def test_credit_legs_sharing_a_transfer_id_from_two_partitions_do_not_stop_the_writer() -> None:
    target = PartitionStore(is_local=lambda name: partition_of(name) == 1, accounts={"bob": usd()})
    from_alice = credit_leg()
    from_carl = replaced(from_alice, source="carl", amount=7)
    target.run([from_alice])
    second = target.run([from_carl])
    # The id is taken on bob's partition: carl's 7 goes back to carl.
    assert target.accounts["bob"].credits_posted == 5
    assert [(leg.type, leg.source, leg.amount, leg.code) for leg in second.legs] == [
        ("refund", "carl", 7, "exists_with_different_payload")
    ]


def test_a_refund_that_would_pass_balance_max_on_the_source_does_not_stop_the_writer() -> None:
    source, _ = two_partitions()
    source.accounts["alice"] = usd(credits_posted=BALANCE_MAX - 10, debits_posted=BALANCE_MAX - 100)
    debit = source.run([transfer("alice", "bnobody", 50, command_id="t1")])
    # A refund of the 50 could not fit beside the credits: the transfer is refused up front.
    assert [r.result.code for r in debit.results] == ["overflow"]
    assert debit.legs == []
    source.run([deposit("alice", 10, command_id="d1")])
    assert source.accounts["alice"].credits_posted == BALANCE_MAX


def test_a_replayed_record_is_answered_as_before_and_a_repeat_as_a_duplicate() -> None:
    command = deposit("alice", 5, command_id="c1")
    accounts = {"alice": usd()}
    first = decide(accounts, {"cmd:c1": None}, [Incoming(command, 1, "cmds/0/7/0")], is_local)
    stored = first.outcomes["cmd:c1"]
    assert stored.origin == "cmds/0/7/0"
    # After a crash the same record is read again: the same answer, not marked duplicate.
    replay = decide(
        first.accounts, {"cmd:c1": stored}, [Incoming(command, 1, "cmds/0/7/0")], is_local
    )
    assert [(r.result.status, r.result.duplicate) for r in replay.results] == [("accepted", False)]
    # The client sends it again: another record, marked duplicate; nothing moves either way.
    repeat = decide(
        first.accounts, {"cmd:c1": stored}, [Incoming(command, 2, "cmds/0/9/0")], is_local
    )
    assert [(r.result.status, r.result.duplicate) for r in repeat.results] == [("accepted", True)]
    assert replay.accounts == repeat.accounts == {}
    assert [e.entry_id for e in replay.journal] == [e.entry_id for e in repeat.journal] == ["c1:0"]


# The journal chain: every new event takes the next seq and links to the one before.

D1 = deposit("alice", 5, command_id="d1")
D2 = deposit("alice", 7, command_id="d2")
W1 = withdraw("alice", 3, command_id="w1")

# (case, batches, (entry_id, seq) of the journal of each batch)
CHAINS: list[tuple[str, list[list[Command]], list[list[tuple[str, int]]]]] = [
    (
        "new events of one batch in order",
        [[open_account("dan", command_id="o1"), D1, W1]],
        [[("o1:0", 1), ("d1:0", 2), ("w1:0", 3)]],
    ),
    ("a rejection takes no seq", [[deposit("nobody", 5, command_id="r1"), D1]], [[("d1:0", 1)]]),
    (
        "two batches continue one chain",
        [[D1], [D2, W1]],
        [[("d1:0", 1)], [("d2:0", 2), ("w1:0", 3)]],
    ),
    (
        "a repeat in a later batch keeps its seq",
        [[D1], [D1, D2]],
        [[("d1:0", 1)], [("d1:0", 1), ("d2:0", 2)]],
    ),
    (
        "a repeat in the same batch keeps its seq",
        [[D1, D1, D2]],
        [[("d1:0", 1), ("d1:0", 1), ("d2:0", 2)]],
    ),
    (
        "a batch with nothing new leaves the head where it was",
        [[D1], [D1, deposit("nobody", 5, command_id="r1")], [D2]],
        [[("d1:0", 1)], [("d1:0", 1)], [("d2:0", 2)]],
    ),
]


@pytest.mark.parametrize(("case", "batches", "expected"), CHAINS, ids=[row[0] for row in CHAINS])
def test_journal_chain(
    case: str, batches: list[list[Command]], expected: list[list[tuple[str, int]]]
) -> None:
    partition = store()
    first_sent: dict[str, JournalEvent] = {}
    by_seq: dict[int, JournalEvent] = {}
    for batch, entries in zip(batches, expected, strict=True):
        head = partition.head
        decision = partition.run(batch)
        assert [(e.entry_id, e.seq) for e in decision.journal] == entries
        for event in decision.journal:
            assert event.seq is not None
            if event.entry_id in first_sent:  # a re-send: the same bytes as the first time
                assert to_json(event) == to_json(first_sent[event.entry_id])
                continue
            first_sent[event.entry_id] = by_seq[event.seq] = event
            before = by_seq[event.seq - 1].chain_hash() if event.seq > 1 else ""
            assert event.prev_hash == before
        new = [e for e in decision.journal if e.seq is not None and e.seq > head.seq]
        if new:
            assert decision.head == JournalHead(seq=new[-1].seq, hash=new[-1].chain_hash())
        else:
            assert decision.head == head
        assert partition.head == decision.head


def test_the_chain_starts_from_the_head_it_is_given() -> None:
    head = JournalHead(seq=41, hash="0f" * 16)
    decision = decide({"alice": usd()}, {"cmd:d1": None}, [Incoming(D1, 1)], is_local, head)
    (event,) = decision.journal
    assert (event.seq, event.prev_hash) == (42, head.hash)
    assert decision.head == JournalHead(seq=42, hash=event.chain_hash())


def test_without_a_head_the_chain_starts_at_seq_1_with_an_empty_prev_hash() -> None:
    decision = decide({"alice": usd()}, {"cmd:d1": None}, [Incoming(D1, 1)], is_local)
    assert [(e.seq, e.prev_hash) for e in decision.journal] == [(1, "")]


def test_a_batch_that_journals_nothing_returns_the_head_it_was_given() -> None:
    head = JournalHead(seq=7, hash="ab" * 16)
    rejected = deposit("nobody", 5, command_id="r1")
    decision = decide({"nobody": None}, {"cmd:r1": None}, [Incoming(rejected, 1)], is_local, head)
    assert decision.journal == []
    assert decision.head == head


def test_outcomes_store_the_stamped_events_they_sent() -> None:
    partition = store()
    decision = partition.run([D1, D2])
    assert [partition.outcomes[k].journal for k in ("cmd:d1", "cmd:d2")] == [
        [decision.journal[0]],
        [decision.journal[1]],
    ]


def test_a_changed_event_no_longer_matches_the_prev_hash_of_the_next() -> None:
    partition = store()
    first, second = partition.run([D1, D2]).journal
    assert second.prev_hash == first.chain_hash()
    edited = replaced(first, timestamp_ms=first.timestamp_ms + 1)
    assert edited.chain_hash() != second.prev_hash


def test_each_partition_keeps_its_own_chain_and_a_refund_event_is_stamped_on_the_source() -> None:
    source, target = two_partitions()
    source.run([deposit("alice", 1, command_id="d1")])
    command = transfer("alice", "bnobody", 30, command_id="t1", reply_partition=1)
    debit = source.run([command])
    target.run([deposit("bea", 1, command_id="d9")])
    credit = target.run(debit.legs)
    assert (credit.journal, credit.head) == ([], target.head)  # refused: nothing journaled
    refund = source.run(credit.legs)
    (debit_event,) = debit.journal
    (refund_event,) = refund.journal
    assert (debit_event.entry_id, debit_event.seq) == ("t1:0", 2)
    assert (refund_event.entry_id, refund_event.seq) == ("t1:2", 3)
    assert refund_event.prev_hash == debit_event.chain_hash()
    assert refund.head == JournalHead(seq=3, hash=refund_event.chain_hash())
    # The outcome keeps both stamped events: repeats re-send them byte for byte.
    assert source.outcomes["cmd:t1"].journal == [debit_event, refund_event]
    again = source.run([command])
    assert [to_json(e) for e in again.journal] == [to_json(e) for e in (debit_event, refund_event)]
    refund_again = source.run(credit.legs)
    assert refund_again.journal == [refund_event]
    assert source.head == refund.head


def test_a_credit_event_is_stamped_on_the_destination_chain() -> None:
    source, target = two_partitions()
    target.run([deposit("bea", 1, command_id="d9")])
    debit = source.run([transfer("alice", "bob", 30, command_id="t1")])
    credit = target.run(debit.legs)
    (event,) = credit.journal
    assert (event.entry_id, event.seq) == ("t1:1", 2)
    assert event.prev_hash == target.outcomes["cmd:d9"].journal[0].chain_hash()
    assert debit.journal[0].seq == 1  # the source's chain is its own


# Refused legs: a leg no transfer of this partition sent changes nothing and stops nothing.


def pending_transfer() -> tuple[PartitionStore, Leg]:
    """Partition 0 with transfer t1 (alice to bob, 30) sent and not yet settled; its credit leg."""
    source, _ = two_partitions()
    debit = source.run([transfer("alice", "bob", 30, command_id="t1", reply_partition=1)])
    return source, debit.legs[0]


def returned(kind: str, **changes: Any) -> dict[str, Any]:
    return {"type": kind, "code": "account_not_found" if kind == "refund" else None, **changes}


# (case, changes to the credit leg that make the returning leg, words the reason must hold)
REFUSED_LEGS: list[tuple[str, dict[str, Any], str]] = [
    ("settle for a transfer never posted", returned("settle", transfer_id="t9"), "never posted"),
    ("refund for a transfer never posted", returned("refund", transfer_id="t9"), "never posted"),
    ("settle of another amount", returned("settle", amount=31), "does not match"),
    ("refund of another amount", returned("refund", amount=29), "does not match"),
    ("refund of more than is in transit", returned("refund", amount=10**30), "does not match"),
    ("settle to another destination", returned("settle", destination="bea"), "does not match"),
    ("refund from another source", returned("refund", source="anna"), "does not match"),
    ("settle in another currency", returned("settle", currency="EUR"), "does not match"),
    ("settle of another payload", returned("settle", payload_digest="00" * 16), "does not match"),
    ("refund without a payload digest", returned("refund", payload_digest=None), "does not match"),
    ("refund without a code", returned("refund", code=None), "no destination sends"),
    (
        "refund with a code of a command",
        returned("refund", code="insufficient_funds"),
        "no destination",
    ),
    ("refund with an unknown code", returned("refund", code="gone"), "no destination sends"),
]


@pytest.mark.parametrize(
    ("case", "changes", "reason"), REFUSED_LEGS, ids=[row[0] for row in REFUSED_LEGS]
)
def test_a_returning_leg_that_matches_no_pending_transfer_is_refused(
    case: str, changes: dict[str, Any], reason: str
) -> None:
    source, credit_leg = pending_transfer()
    forged = replaced(credit_leg, **changes)
    accounts, outcomes, head = dict(source.accounts), dict(source.outcomes), source.head
    incoming = Incoming(forged, 5_000, "legs/0/3/0")
    decision = decide(source.accounts, source.outcomes, [incoming], source.is_local, head)
    assert [refused for refused, _ in decision.refused] == [incoming]
    assert reason in decision.refused[0][1]
    assert (decision.results, decision.journal, decision.legs) == ([], [], [])
    assert (decision.accounts, decision.outcomes, decision.head) == ({}, {}, head)
    assert (source.accounts, source.outcomes) == (accounts, outcomes)
    # The real transfer is untouched: its settle still ends it.
    settled = source.run([replaced(credit_leg, type="settle")])
    assert settled.refused == []
    assert source.accounts["alice"] == usd(credits_posted=100, debits_posted=30)


def test_a_refused_leg_in_a_batch_leaves_the_other_inputs_decided_in_order() -> None:
    source, credit_leg = pending_transfer()
    forged = replaced(credit_leg, type="settle", amount=31)
    decision = source.run([forged, deposit("alice", 5, command_id="d1"), forged])
    assert [incoming.message for incoming, _ in decision.refused] == [forged, forged]
    assert result_fields(decision) == [("d1", "accepted", None, False, None)]
    assert [(e.entry_id, e.seq) for e in decision.journal] == [("d1:0", 2)]


def test_a_returning_leg_for_a_final_outcome_is_answered_as_a_repeat_not_refused() -> None:
    source, credit_leg = pending_transfer()
    source.run([replaced(credit_leg, type="settle")])
    late_refund = replaced(credit_leg, type="refund", code="account_closed")
    decision = source.run([late_refund, replaced(credit_leg, type="settle")])
    assert decision.refused == []
    assert result_fields(decision) == [("t1", "accepted", None, True, 1)]
    assert (decision.journal, decision.legs, decision.accounts, decision.outcomes) == (
        [],
        [],
        {},
        {},
    )


@pytest.mark.parametrize("amount", [AMOUNT_MAX + 1, 2**64, 10**30])
def test_a_credit_leg_above_amount_max_is_refused_not_refunded(amount: int) -> None:
    _, target = two_partitions()
    leg = credit_leg(amount=amount)
    decision = target.run([leg])
    assert [(i.message, "over the limit" in r) for i, r in decision.refused] == [(leg, True)]
    assert (decision.results, decision.journal, decision.legs, decision.outcomes) == (
        [],
        [],
        [],
        {},
    )
    assert target.accounts["bob"] == usd()


def test_a_credit_leg_of_amount_max_lands() -> None:
    _, target = two_partitions()
    leg = credit_leg(amount=AMOUNT_MAX)
    decision = target.run([leg])
    assert decision.refused == []
    assert target.accounts["bob"] == usd(credits_posted=AMOUNT_MAX)


@pytest.mark.parametrize("destination", ["@world", "@transit"])
def test_a_credit_leg_to_a_system_account_is_refunded_as_not_found(destination: str) -> None:
    partition = store()
    leg = credit_leg(source="zed", destination=destination)
    decision = partition.run([leg])
    assert [(leg.type, leg.code) for leg in decision.legs] == [("refund", "account_not_found")]
    assert (decision.refused, decision.journal, decision.accounts) == ([], [], {})


def test_hostile_credit_legs_are_refunded_and_the_refund_is_refused_at_the_source() -> None:
    source, target = two_partitions(bclosed=AccountState(currency="USD", status="closed"))
    forged = credit_leg(transfer_id="t7", destination="bclosed")
    credit = target.run([forged])
    assert [(leg.type, leg.code) for leg in credit.legs] == [("refund", "account_closed")]
    back = source.run(credit.legs)
    assert [r for _, r in back.refused] == [
        "refund leg for transfer 't7', never posted on this partition"
    ]
    assert source.accounts["alice"] == usd(credits_posted=100)


# Outcomes past their window keep only what answers a late repeat.

ACKED = {("cmds", 0): 8, ("legs", 0): 6}  # next offset to read, per topic and partition


def decided_deposit(origin: str = "cmds/0/7/0") -> tuple[AccountState, Outcome]:
    decision = decide(
        {"alice": usd()},
        {"cmd:d1": None},
        [Incoming(deposit("alice", 5, command_id="d1"), 1_000, origin)],
        is_local,
    )
    return decision.accounts["alice"], decision.outcomes["cmd:d1"]


def kept(key: str, whole: Outcome, before_ms: int = 10**15) -> Outcome:
    """What `compacted` keeps of `whole`, read back as the writer reads it."""
    stored = compacted(key, whole, before_ms, ACKED)
    assert stored is not None
    assert b"command_id" not in stored and stored.count(whole.fingerprint.encode()) == 1
    return outcome_from_compact(key, stored)


def answer_only(whole: Outcome) -> Outcome:
    return Outcome(fingerprint=whole.fingerprint, result=whole.result, timestamp_ms=1_000)


def test_an_outcome_past_its_window_keeps_its_fingerprint_and_answer_and_still_dedups() -> None:
    alice, whole = decided_deposit()
    compact = kept("cmd:d1", whole, before_ms=1_001)
    assert compact == answer_only(whole)
    stored = compacted("cmd:d1", whole, 1_001, ACKED) or b""
    assert len(stored) < len(to_json(compact))
    repeat = decide(
        {"alice": alice},
        {"cmd:d1": compact},
        [Incoming(deposit("alice", 5, command_id="d1"), 9_000, "cmds/0/20/0")],
        is_local,
    )
    assert [(r.result.status, r.result.duplicate) for r in repeat.results] == [("accepted", True)]
    assert (repeat.journal, repeat.accounts, repeat.outcomes) == ([], {}, {})
    conflict = decide(
        {"alice": alice},
        {"cmd:d1": compact},
        [Incoming(deposit("alice", 6, command_id="d1"), 9_000, "cmds/0/21/0")],
        is_local,
    )
    assert [r.result.code for r in conflict.results] == ["exists_with_different_payload"]


@pytest.mark.parametrize(
    ("origin", "before_ms", "why"),
    [
        ("cmds/0/7/0", 1_000, "decided at the cut-off, not before it"),
        ("cmds/0/8/0", 1_001, "its input is not acknowledged: a restart reads it again"),
        ("cmds/1/0/0", 1_001, "nothing acknowledged on that partition yet"),
    ],
)
def test_an_outcome_stays_whole_inside_its_window_and_until_its_input_is_acknowledged(
    origin: str, before_ms: int, why: str
) -> None:
    _, whole = decided_deposit(origin)
    assert compacted("cmd:d1", whole, before_ms, ACKED) is None, why


def test_a_transfer_stays_whole_until_its_legs_return_and_the_return_is_acknowledged() -> None:
    source, target = two_partitions()
    command = transfer("alice", "bob", 30, command_id="t1")
    debit = decide(
        source.accounts, {"cmd:t1": None}, [Incoming(command, 1_000, "cmds/0/1/0")], source.is_local
    )
    in_transit = debit.outcomes["cmd:t1"]
    # no result yet: its legs may be needed
    assert compacted("cmd:t1", in_transit, 5_000, ACKED) is None
    credit = target.run(debit.legs)
    settle = decide(
        debit.accounts,
        {"cmd:t1": in_transit},
        [Incoming(credit.legs[0], 2_000, "legs/0/6/0")],
        source.is_local,
    )
    settled = settle.outcomes["cmd:t1"]
    assert settled.origin == "legs/0/6/0"  # the last input that changed it
    assert compacted("cmd:t1", settled, 5_000, ACKED) is None
    stored = compacted("cmd:t1", settled, 5_000, {**ACKED, ("legs", 0): 7})
    assert stored is not None
    assert outcome_from_compact("cmd:t1", stored).result == settled.result


def test_a_rejection_keeps_its_code_and_reason_and_an_id_with_colons_survives() -> None:
    command = withdraw("alice", 500, command_id="order:42:w")
    key = "cmd:order:42:w"
    decision = decide({"alice": usd()}, {key: None}, [Incoming(command, 1_000)], is_local)
    whole = decision.outcomes[key]
    assert whole.result is not None and whole.result.code == "insufficient_funds"
    assert b"reason" not in (compacted(key, whole, 10**15, ACKED) or b"")  # the code says it
    assert kept(key, whole) == answer_only(whole)
    without_reason = replaced(whole, result=replaced(whole.result, reason=None))
    assert kept(key, without_reason) == answer_only(without_reason)


def test_a_credit_legs_outcome_keeps_the_transfers_digest_and_its_absence() -> None:
    _, target = two_partitions()
    for transfer_id, digest in (("t:1", None), ("t2", "ab" * 16)):
        key = f"leg:credit:{transfer_id}"
        credit = target.run([credit_leg(transfer_id=transfer_id, payload_digest=digest)])
        whole = credit.outcomes[key]
        assert whole.result is not None and whole.result.payload_digest == digest
        assert kept(key, whole) == answer_only(whole)


def test_a_refusal_for_an_unknown_alias_keeps_its_reason_past_its_window() -> None:
    """Its reason names the alias, so it is kept; its key names the command id."""
    alias = "alias:nobody@example.com"  # on this test's partition, as every name is
    key = "unresolved:d1"
    decision = decide({}, {}, [Incoming(deposit(alias, 5, command_id="d1"), 1_000)], is_local)
    whole = decision.outcomes[key]
    assert whole.result is not None and whole.result.code == "alias_not_found"
    assert list(decision.outcomes) == [key] and decision.forwards == []
    assert kept(key, whole) == answer_only(whole)
