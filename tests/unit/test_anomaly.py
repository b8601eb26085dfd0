"""Anomaly flags (`ledger_stream.anomaly`): each rule on crafted sequences at and past its
boundary, switched off, once per burst, quiet on ordinary traffic, deterministic and bounded,
and checked against a reference that keeps every movement and judges from scratch."""

from __future__ import annotations

import doctest
import random
import statistics
from collections.abc import Iterable, Sequence
from typing import Any, Literal, NamedTuple

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ledger_stream import anomaly
from ledger_stream.anomaly import (
    AnomalyRules,
    AnomalyState,
    Flag,
    LargeAmountRule,
    Movement,
    NewCounterpartyRule,
    check,
)
from ledger_stream.messages import from_json, to_json

T0 = 1_700_000_000_000  # journal time of the first movement, ms
MINUTE_MS = 60_000


def out(
    i: int, amount: int, to: str | None = "bob", at_ms: int | None = None, account: str = "alice"
) -> Movement:
    """The i-th movement out of `account` (a minute after the one before, unless `at_ms`)."""
    return Movement(
        entry_id=f"e{i}",
        command_id=f"c{i}",
        account=account,
        counterparty=to,
        amount=amount,
        direction="out",
        kind="transfer" if to is not None else "withdrawal",
        timestamp_ms=T0 + i * MINUTE_MS if at_ms is None else at_ms,
    )


def into(i: int, amount: int, source: str | None = "bob", account: str = "alice") -> Movement:
    return Movement(
        entry_id=f"e{i}",
        command_id=f"c{i}",
        account=account,
        counterparty=source,
        amount=amount,
        direction="in",
        kind="transfer" if source is not None else "deposit",
        timestamp_ms=T0 + i * MINUTE_MS,
    )


def payments(amounts: Iterable[int], to: str | None = "bob") -> list[Movement]:
    return [out(i, amount, to) for i, amount in enumerate(amounts)]


class Fold(NamedTuple):
    states: list[AnomalyState]  # after each movement
    flags: list[list[Flag]]  # raised by each movement

    @property
    def state(self) -> AnomalyState:
        return self.states[-1]

    @property
    def all_flags(self) -> list[Flag]:
        return [flag for flags in self.flags for flag in flags]


def fold(rules: AnomalyRules, movements: Iterable[Movement]) -> Fold:
    state: AnomalyState | None = None
    states, flags = [], []
    for movement in movements:
        state, raised = check(rules, state, movement)
        states.append(state)
        flags.append(raised)
    return Fold(states, flags)


def last_flags(rules: AnomalyRules, movements: Sequence[Movement]) -> list[Flag]:
    return fold(rules, movements).flags[-1]


def rules_with(**rules: dict[str, Any]) -> AnomalyRules:
    return AnomalyRules.model_validate(rules)


DEFAULT = AnomalyRules()


# Large amounts: each row is the earlier amounts out, the amount judged, and the figures and
# reason of its flag (None: no flag).

LARGE_AMOUNT_CASES = {
    "at the multiple": ([5000] * 5, 25_000, None),
    "one past the multiple": (
        [5000] * 5,
        25_001,
        (
            {"amount": 25_001, "median": 5000, "multiple": 5.0, "history": 5},
            "25001 is 5.0002 times the median 5000 of the last 5 payments out",
        ),
    ),
    "far past, a full window": (
        [5000] * 20,
        120_000,
        (
            {"amount": 120_000, "median": 5000, "multiple": 5.0, "history": 20},
            "120000 is 24.0 times the median 5000 of the last 20 payments out",
        ),
    ),
    "one short of history_min": ([5000] * 4, 120_000, None),
    "one under amount_min": ([1000] * 5, 9_999, None),
    "at amount_min": (
        [1000] * 5,
        10_000,
        (
            {"amount": 10_000, "median": 1000, "multiple": 5.0, "history": 5},
            "10000 is 10.0 times the median 1000 of the last 5 payments out",
        ),
    ),
    "even history, at the multiple": ([1000, 2000, 3000, 4000, 5000, 6000], 17_500, None),
    "even history, one past": (
        [6000, 1000, 5000, 2000, 4000, 3000],
        17_501,
        (
            {"amount": 17_501, "median": 3500, "multiple": 5.0, "history": 6},
            "17501 is 5.0003 times the median 3500 of the last 6 payments out",
        ),
    ),
    "a half median, at the multiple": ([1000, 1000, 2000, 2001, 9000, 9000], 10_002, None),
    "a half median, one past": (
        [1000, 1000, 2000, 2001, 9000, 9000],
        10_003,
        (
            {"amount": 10_003, "median": 2000.5, "multiple": 5.0, "history": 6},
            "10003 is 5.0002 times the median 2000.5 of the last 6 payments out",
        ),
    ),
    "only the window counts": (
        [100_000] * 5 + [5000] * 20,
        30_000,
        (
            {"amount": 30_000, "median": 5000, "multiple": 5.0, "history": 20},
            "30000 is 6.0 times the median 5000 of the last 20 payments out",
        ),
    ),
}


@pytest.mark.parametrize(
    ("earlier", "amount", "expected"), LARGE_AMOUNT_CASES.values(), ids=LARGE_AMOUNT_CASES.keys()
)
def test_large_amount_flags_past_the_multiple_of_the_median(
    earlier: list[int], amount: int, expected: tuple[dict[str, Any], str] | None
) -> None:
    movements = [*payments(earlier), out(len(earlier), amount)]
    flags = last_flags(DEFAULT, movements)
    if expected is None:
        assert flags == []
        return
    figures, reason = expected
    i = len(earlier)
    assert flags == [
        Flag(
            id=f"e{i}:large_amount",
            rule="large_amount",
            account="alice",
            entry_id=f"e{i}",
            command_id=f"c{i}",
            timestamp_ms=T0 + i * MINUTE_MS,
            amount=amount,
            counterparty="bob",
            figures=figures,
            reason=reason,
        )
    ]
    assert type(flags[0].figures["median"]) is type(figures["median"])


def test_large_amount_is_judged_against_the_amounts_before_it_only() -> None:
    """The first large amount is compared with the earlier ones (a withdrawal among them);
    the second with a window that holds the first (median still 5000); money in counts for
    nothing."""
    earlier = [*payments([5000] * 4), out(4, 5000, to=None)]
    movements = [*earlier, into(5, 1_000_000), out(6, 100_000), out(7, 100_000)]
    result = fold(DEFAULT, movements)
    assert [[f.id for f in flags] for flags in result.flags[5:]] == [
        [],
        ["e6:large_amount"],
        ["e7:large_amount"],
    ]
    assert result.flags[7][0].figures["history"] == 6
    assert result.state.amounts_out == [5000] * 5 + [100_000, 100_000]


# Bursts: movements a second apart unless said otherwise.


def burst_of(count: int, start: int = 0, start_ms: int = T0, gap_ms: int = 1000) -> list[Movement]:
    return [out(start + k, 500, at_ms=start_ms + k * gap_ms) for k in range(count)]


def test_burst_flags_when_the_count_first_passes_count_max() -> None:
    result = fold(DEFAULT, burst_of(11))
    assert result.flags[:10] == [[]] * 10
    assert result.flags[10] == [
        Flag(
            id="e10:burst",
            rule="burst",
            account="alice",
            entry_id="e10",
            command_id="c10",
            timestamp_ms=T0 + 10_000,
            amount=500,
            counterparty="bob",
            figures={"count": 11, "window_s": 60, "count_max": 10},
            reason="11 payments out within 60 s, more than the 10 allowed",
        )
    ]


BURST_EDGE_CASES = {
    # Ten movements 6 s apart, then one `at` ms after the first.
    "the first one just out of the window": (60_000, 10, None),
    "the first one just inside the window": (59_999, 10, 11),
    "ten in all": (59_999, 9, None),
}


@pytest.mark.parametrize(
    ("last_at_ms", "before", "expected_count"),
    BURST_EDGE_CASES.values(),
    ids=BURST_EDGE_CASES.keys(),
)
def test_burst_counts_within_window_s_only(
    last_at_ms: int, before: int, expected_count: int | None
) -> None:
    movements = [*burst_of(before, gap_ms=6000), out(before, 500, at_ms=T0 + last_at_ms)]
    flags = last_flags(DEFAULT, movements)
    assert [f.figures["count"] for f in flags] == (
        [] if expected_count is None else [expected_count]
    )


def test_burst_flags_once_per_burst_and_again_for_a_later_one() -> None:
    first = burst_of(30)  # thirty in thirty seconds: one burst
    later = burst_of(15, start=30, start_ms=T0 + 10 * MINUTE_MS)
    result = fold(DEFAULT, [*first, *later])
    assert [f.id for f in result.all_flags] == ["e10:burst", "e40:burst"]
    assert [f.figures["count"] for f in result.all_flags] == [11, 11]


def test_burst_ends_when_the_window_no_longer_holds_more_than_count_max() -> None:
    """Eleven quick ones, one a minute later (the burst is over), then ten more quick ones:
    the window holds eleven again, and that is a new burst."""
    quick = burst_of(11)
    calm = out(11, 500, at_ms=T0 + 10_000 + MINUTE_MS)
    again = burst_of(10, start=12, start_ms=T0 + 11_000 + MINUTE_MS)
    result = fold(DEFAULT, [*quick, calm, *again])
    assert result.states[10].in_burst and not result.states[11].in_burst
    assert [f.id for f in result.all_flags] == ["e10:burst", "e21:burst"]


def test_burst_counts_journal_time_that_steps_back_a_little() -> None:
    movements = [out(k, 500, at_ms=T0 + (k % 3) * 1000) for k in range(11)]
    assert [f.id for f in fold(DEFAULT, movements).all_flags] == ["e10:burst"]


# New counterparties: each row is the earlier movements out (amount, counterparty), the
# payment judged, the rule's settings, and the figures and reason of its flag.

NEW_COUNTERPARTY_CASES: dict[str, tuple[Any, ...]] = {
    "at amount_min": (
        [(1000, "bob")],
        (100_000, "carol"),
        {},
        (
            {"amount": 100_000, "amount_min": 100_000, "history": 1},
            "first payment to carol, of 100000 (at least 100000), after 1 payment out",
        ),
    ),
    "one under amount_min": ([(1000, "bob")], (99_999, "carol"), {}, None),
    "a counterparty paid before": ([(1000, "bob")], (500_000, "bob"), {}, None),
    "paid before with a small amount": (
        [(1000, "bob"), (5, "carol")],
        (500_000, "carol"),
        {},
        None,
    ),
    "a brand-new account's first payment": ([], (1_000_000, "carol"), {}, None),
    "a brand-new account's first payment, history_min 0": (
        [],
        (1_000_000, "carol"),
        {"history_min": 0},
        (
            {"amount": 1_000_000, "amount_min": 100_000, "history": 0},
            "first payment to carol, of 1000000 (at least 100000), after 0 payments out",
        ),
    ),
    "withdrawals count as history": (
        [(1000, None), (2000, None)],
        (150_000, "carol"),
        {},
        (
            {"amount": 150_000, "amount_min": 100_000, "history": 2},
            "first payment to carol, of 150000 (at least 100000), after 2 payments out",
        ),
    ),
    "one short of history_min": ([(1000, "bob")], (150_000, "carol"), {"history_min": 2}, None),
    "a withdrawal has no counterparty": ([(1000, "bob")], (150_000, None), {}, None),
    "forgotten, beyond counterparties_max": (
        [(1000, "bob"), (1000, "carol"), (1000, "dave")],
        (150_000, "bob"),
        {"counterparties_max": 2},
        (
            {"amount": 150_000, "amount_min": 100_000, "history": 3},
            "first payment to bob, of 150000 (at least 100000), after 3 payments out",
        ),
    ),
    "kept, as paid most recently": (
        [(1000, "bob"), (1000, "carol"), (1000, "bob"), (1000, "dave")],
        (150_000, "bob"),
        {"counterparties_max": 2},
        None,
    ),
}


@pytest.mark.parametrize(
    ("earlier", "judged", "rule", "expected"),
    NEW_COUNTERPARTY_CASES.values(),
    ids=NEW_COUNTERPARTY_CASES.keys(),
)
def test_new_counterparty_flags_a_large_first_payment(
    earlier: list[tuple[int, str | None]],
    judged: tuple[int, str | None],
    rule: dict[str, Any],
    expected: tuple[dict[str, Any], str] | None,
) -> None:
    rules = rules_with(new_counterparty=rule)
    i = len(earlier)
    movements = [*(out(k, a, to) for k, (a, to) in enumerate(earlier)), out(i, *judged)]
    flags = [f for f in last_flags(rules, movements) if f.rule == "new_counterparty"]
    if expected is None:
        assert flags == []
        return
    figures, reason = expected
    assert flags == [
        Flag(
            id=f"e{i}:new_counterparty",
            rule="new_counterparty",
            account="alice",
            entry_id=f"e{i}",
            command_id=f"c{i}",
            timestamp_ms=T0 + i * MINUTE_MS,
            amount=judged[0],
            counterparty=judged[1],
            figures=figures,
            reason=reason,
        )
    ]


def test_one_movement_may_trip_every_rule_in_order() -> None:
    movements = [*burst_of(10), out(10, 1_000_000, to="mallory", at_ms=T0 + 10_000)]
    assert [f.id for f in last_flags(DEFAULT, movements)] == [
        "e10:large_amount",
        "e10:burst",
        "e10:new_counterparty",
    ]


# Switched off.

TRIPPING = {
    "large_amount": [*payments([5000] * 5), out(5, 120_000)],
    "burst": burst_of(11),
    "new_counterparty": [out(0, 1000, "bob"), out(1, 100_000, "carol")],
}


@pytest.mark.parametrize("rule", TRIPPING)
def test_a_rule_switched_off_flags_nothing_and_keeps_its_history(rule: str) -> None:
    movements = TRIPPING[rule]
    on = fold(DEFAULT, movements)
    off = fold(rules_with(**{rule: {"enabled": False}}), movements)
    assert [f.rule for f in on.all_flags] == [rule]
    assert off.all_flags == []
    assert off.states == on.states


# Money in.


def test_money_in_leaves_the_state_as_it_was() -> None:
    state = fold(DEFAULT, payments([5000] * 3)).state
    assert check(DEFAULT, state, into(3, 10_000_000, "mallory")) == (state, [])
    assert check(DEFAULT, state, into(3, 10_000_000, None))[0] is state
    assert check(DEFAULT, None, into(0, 1)) == (AnomalyState(), [])


# Ordinary traffic.


@st.composite
def ordinary_traffic(draw: st.DrawFn) -> list[Movement]:
    """One account's ordinary traffic: amounts out within a factor of two of its typical
    amount, spaced at least 6 s apart (at most ten within a minute), a few counterparties
    paid first and then paid again, withdrawals, and money in. An account whose payments
    reach the new-counterparty amount keeps to the one counterparty it started with."""
    typical = draw(st.integers(100, 2_000_000))
    payees_n = 1 if 2 * typical >= DEFAULT.new_counterparty.amount_min else draw(st.integers(1, 5))
    payees = [f"payee-{k}" for k in range(payees_n)]
    at_ms, movements, paid = T0, [], 0
    for i in range(draw(st.integers(1, 120))):
        at_ms += draw(st.integers(6_000, 86_400_000))
        amount = draw(st.integers(typical // 2, typical * 2))
        kind = draw(st.sampled_from(["payment"] * 6 + ["withdrawal", "in"]))
        if kind == "in":
            movements.append(
                Movement(f"e{i}", f"c{i}", "alice", "payer", amount, "in", "transfer", at_ms)
            )
            continue
        if kind == "withdrawal" and paid > 0:
            to = None
        else:
            to = payees[paid] if paid < payees_n else draw(st.sampled_from(payees))
            paid += 1
        movements.append(out(i, amount, to, at_ms))
    return movements


@settings(max_examples=300, deadline=None)
@given(ordinary_traffic())
def test_ordinary_traffic_raises_no_flags(movements: list[Movement]) -> None:
    assert fold(DEFAULT, movements).all_flags == []


# Determinism and bounds.


MOSTLY_OUT: tuple[Literal["out", "in"], ...] = ("out", "out", "out", "in")


def mixed_traffic(seed: int, count: int) -> list[Movement]:
    """Traffic that trips every rule now and then: bursts, outsized amounts, thousands of
    counterparties, money in, and journal time stepping back a little."""
    rng = random.Random(seed)
    at_ms, movements = T0, []
    for i in range(count):
        at_ms += rng.choice([100, 500, 2_000, 30_000, 600_000]) - rng.choice([0, 0, 0, 1_500])
        amount = rng.choice([rng.randint(1, 20_000), rng.randint(1, 5_000_000)])
        direction = rng.choice(MOSTLY_OUT)
        to = rng.choice([None, f"cp-{rng.randint(0, 3_000)}", f"cp-{rng.randint(0, 20)}"])
        kind = "transfer" if to is not None else "withdrawal"
        movements.append(Movement(f"e{i}", f"c{i}", "alice", to, amount, direction, kind, at_ms))
    return movements


def paid(state: AnomalyState) -> list[str]:
    return state.paid.split(" ") if state.paid else []


def assert_bounded(rules: AnomalyRules, state: AnomalyState) -> None:
    assert len(state.amounts_out) <= rules.large_amount.window
    assert len(state.times_out_ms) <= rules.burst.count_max
    assert len(paid(state)) <= rules.new_counterparty.counterparties_max
    assert len(set(paid(state))) == len(paid(state))
    assert all(paid(state)) and state.counterparties == []


def test_a_refold_gives_the_same_flags_and_states_and_the_state_stays_bounded() -> None:
    movements = mixed_traffic(seed=7, count=10_000)
    first = fold(DEFAULT, movements)
    again = fold(DEFAULT, movements)
    assert first == again
    for state in first.states:
        assert_bounded(DEFAULT, state)
    assert first.state.count_out == sum(m.direction == "out" for m in movements)
    assert len(paid(first.state)) == DEFAULT.new_counterparty.counterparties_max
    assert {f.rule for f in first.all_flags} == {"large_amount", "burst", "new_counterparty"}
    ids = [f.id for f in first.all_flags]
    assert len(ids) == len(set(ids))


def test_state_shrinks_to_rules_with_smaller_bounds() -> None:
    state = fold(DEFAULT, mixed_traffic(seed=3, count=2_000)).state
    small = rules_with(
        large_amount={"window": 3, "history_min": 1},
        burst={"count_max": 2},
        new_counterparty={"counterparties_max": 4},
    )
    after, _ = check(small, state, out(2_000, 100, "bob", at_ms=T0 + 10**12))
    assert_bounded(small, after)
    assert paid(after)[-1] == "bob"


# A reference that keeps every movement and judges each from scratch.


def reference_rules(movements: Sequence[Movement], rules: AnomalyRules) -> list[list[str]]:
    """The rules each movement trips, judged from every earlier movement out (journal time
    must not step back here: the state's window is pruned by it)."""
    earlier: list[Movement] = []
    tripped: list[list[str]] = []
    in_burst = False
    for m in movements:
        if m.direction == "in":
            tripped.append([])
            continue
        rules_tripped = []
        large = rules.large_amount
        history = [e.amount for e in earlier][-large.window :]
        if (
            large.enabled
            and len(history) >= large.history_min
            and m.amount >= large.amount_min
            and m.amount > large.multiple * statistics.median(history)
        ):
            rules_tripped.append("large_amount")
        burst = rules.burst
        count = 1 + sum(m.timestamp_ms - e.timestamp_ms < burst.window_s * 1000 for e in earlier)
        if burst.enabled and count > burst.count_max and not in_burst:
            rules_tripped.append("burst")
        in_burst = count > burst.count_max
        new = rules.new_counterparty
        recent: list[str] = []
        for e in reversed(earlier):
            if e.counterparty is not None and e.counterparty not in recent:
                recent.append(e.counterparty)
        known = recent[: new.counterparties_max]
        if (
            new.enabled
            and m.counterparty is not None
            and m.counterparty not in known
            and len(earlier) >= new.history_min
            and m.amount >= new.amount_min
        ):
            rules_tripped.append("new_counterparty")
        tripped.append(rules_tripped)
        earlier.append(m)
    return tripped


@st.composite
def small_rules(draw: st.DrawFn) -> AnomalyRules:
    window = draw(st.integers(1, 6))
    return rules_with(
        large_amount={
            "enabled": draw(st.booleans()),
            "window": window,
            "history_min": draw(st.integers(1, window)),
            # Multiples exact in binary, so the reference's float arithmetic is exact too.
            "multiple": draw(st.sampled_from([1.0, 1.5, 2.0, 2.25, 5.0])),
            "amount_min": draw(st.sampled_from([0, 1000, 100_000])),
        },
        burst={
            "enabled": draw(st.booleans()),
            "count_max": draw(st.integers(1, 4)),
            "window_s": draw(st.integers(1, 30)),
        },
        new_counterparty={
            "enabled": draw(st.booleans()),
            "amount_min": draw(st.sampled_from([0, 50_000])),
            "history_min": draw(st.integers(0, 3)),
            "counterparties_max": draw(st.integers(1, 4)),
        },
    )


# Names that begin or end one another, as the accounts paid are kept in one string.
PAYEES = (None, "bob", "bo", "bobby", "rebob", "carol", "erin")


@st.composite
def any_traffic(draw: st.DrawFn) -> list[Movement]:
    at_ms, movements = T0, []
    for i in range(draw(st.integers(0, 60))):
        at_ms += draw(st.sampled_from([0, 1, 999, 1000, 5_000, 29_999, 30_000, 120_000]))
        movements.append(
            Movement(
                f"e{i}",
                f"c{i}",
                "alice",
                draw(st.sampled_from(PAYEES)),
                draw(st.integers(1, 300_000)),
                draw(st.sampled_from(MOSTLY_OUT)),
                "transfer",
                at_ms,
            )
        )
    return movements


@settings(max_examples=500, deadline=None)
@given(small_rules(), any_traffic())
def test_the_bounded_fold_flags_as_the_reference_judges(
    rules: AnomalyRules, movements: list[Movement]
) -> None:
    result = fold(rules, movements)
    assert [[f.rule for f in flags] for flags in result.flags] == reference_rules(movements, rules)
    for state in result.states:
        assert_bounded(rules, state)


# Records and configuration.


def test_state_and_flags_round_trip_through_json() -> None:
    result = fold(
        DEFAULT,
        [*payments([1000, 2001]), out(2, 5000, "carol"), *burst_of(11, 3, T0 + 3 * MINUTE_MS)],
    )
    assert result.all_flags
    for state in result.states:
        assert from_json(to_json(state), AnomalyState) == state
    for flag in result.all_flags:
        assert from_json(to_json(flag), Flag) == flag
    half = fold(rules_with(large_amount={"history_min": 2}), payments([1000, 2001, 12_000]))
    (flag,) = half.all_flags
    assert flag.figures["median"] == 1500.5
    assert from_json(to_json(flag), Flag).figures == flag.figures
    assert to_json(AnomalyState()) == b"{}"


def test_state_from_json_refuses_what_is_not_one() -> None:
    with pytest.raises(msgspec.ValidationError):
        from_json(b'{"amounts_out": [1], "unknown": 1}', AnomalyState)
    with pytest.raises(msgspec.ValidationError):
        from_json(b'{"count_out": -1}', AnomalyState)


def test_rules_read_from_json_as_the_docstring_shows() -> None:
    raw = (
        '{"large_amount": {"multiple": 8.0, "amount_min": 50000}, "burst": {"enabled": false}, '
        '"new_counterparty": {"amount_min": 1000000, "counterparties_max": 200}}'
    )
    assert raw.replace(" ", "") in "".join((AnomalyRules.__doc__ or "").split())
    rules = AnomalyRules.model_validate_json(raw)
    assert rules.large_amount == LargeAmountRule(multiple=8.0, amount_min=50_000)
    assert not rules.burst.enabled and rules.burst.count_max == 10
    assert rules.new_counterparty == NewCounterpartyRule(
        amount_min=1_000_000, counterparties_max=200
    )


@pytest.mark.parametrize(
    "raw",
    [
        '{"large_amount": {"treshold": 3}}',
        '{"velocity": {}}',
        '{"large_amount": {"window": 3, "history_min": 4}}',
        '{"burst": {"count_max": 0}}',
        '{"large_amount": {"multiple": 0.5}}',
    ],
)
def test_rules_refuse_unknown_fields_and_rules_that_could_never_work(raw: str) -> None:
    with pytest.raises(ValidationError):
        AnomalyRules.model_validate_json(raw)


def test_every_rule_field_says_what_it_is() -> None:
    for model in (AnomalyRules, LargeAmountRule, anomaly.BurstRule, NewCounterpartyRule):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name}"


def test_docstring_examples_hold() -> None:
    failed, attempted = doctest.testmod(anomaly)
    assert attempted > 0 and failed == 0


@pytest.mark.parametrize("seed", range(5))
def test_a_state_that_lists_its_counterparties_is_judged_as_one_that_strings_them(
    seed: int,
) -> None:
    """Read models written before `paid` hold the same accounts as `counterparties`, a list:
    the next movement out raises the same flags from it and writes the same state."""
    movements = mixed_traffic(seed=seed, count=1_500)
    *before, judged = [m for m in movements if m.direction == "out"]
    rules = rules_with(new_counterparty={"amount_min": 1})
    state = fold(rules, before).state
    assert len(paid(state)) > 100
    listed = msgspec.structs.replace(state, paid="", counterparties=paid(state))
    assert check(rules, listed, judged) == check(rules, state, judged)
    known = replace_counterparty(judged, paid(state)[0])
    assert check(rules, listed, known) == check(rules, state, known)
    assert [f.rule for f in check(rules, state, known)[1]].count("new_counterparty") == 0


def replace_counterparty(movement: Movement, counterparty: str) -> Movement:
    return msgspec.structs.replace(movement, counterparty=counterparty)
