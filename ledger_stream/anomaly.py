"""Anomaly flags for the read side: a pure fold of one account's movements of money, with
no I/O and no clock, (state, movement) → (state, flags) in the way of Bytewax's stateful steps.

The projector folds the journal per account, calls `check` for each movement of money out of
or into an account, keeps the `AnomalyState` it returns (`to_json`) and publishes the flags.
A movement is judged against the account's state before it, then folded in, so a refold of
the same movements gives the same states and the same flags (a flag's id is
`<entry_id>:<rule>`). Only money out is judged; money in leaves the state as it was.

The rules (`AnomalyRules`, from JSON in `LEDGER_ANOMALY_RULES`):

- `large_amount`: an amount out far above the median of the account's recent amounts out;
- `burst`: more movements out than allowed within a span of journal time, flagged once a burst;
- `new_counterparty`: a large first payment to an account this one has not paid before.

>>> rules = AnomalyRules()
>>> state, flags = None, []
>>> for i in range(6):
...     state, flags = check(rules, state, Movement(
...         entry_id=f"e{i}", command_id=f"c{i}", account="alice", counterparty="bob",
...         amount=5_000, direction="out", kind="transfer", timestamp_ms=i * 60_000))
>>> flags
[]
>>> state, flags = check(rules, state, Movement(
...     entry_id="e6", command_id="c6", account="alice", counterparty="bob",
...     amount=120_000, direction="out", kind="transfer", timestamp_ms=6 * 60_000))
>>> [(flag.id, flag.reason) for flag in flags]
[('e6:large_amount', '120000 is 24.0 times the median 5000 of the last 6 payments out')]
>>> state.amounts_out, state.paid
([5000, 5000, 5000, 5000, 5000, 5000, 120000], 'bob')
"""

from __future__ import annotations

from fractions import Fraction
from typing import Annotated, Literal, TypeVar

import msgspec
from msgspec import Meta
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ledger_stream.messages import WriterMessage
from ledger_stream.money import AMOUNT_MAX

T = TypeVar("T")
Rule = Literal["large_amount", "burst", "new_counterparty"]


class _RuleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="Whether the rule flags at all")


class LargeAmountRule(_RuleConfig):
    """An amount out far above the account's own recent pattern."""

    window: int = Field(
        default=20, ge=1, le=1000, description="How many of the latest amounts out are compared"
    )
    history_min: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Earlier amounts out the window must hold before the rule judges at all",
    )
    multiple: float = Field(
        default=5.0,
        ge=1.0,
        le=1_000_000.0,
        description="Flagged when the amount is more than this many times their median",
    )
    amount_min: int = Field(
        default=10_000,
        ge=0,
        le=AMOUNT_MAX,
        description="Minor units; smaller amounts are never flagged (so cents don't count)",
    )

    @model_validator(mode="after")
    def _history_fits_window(self) -> LargeAmountRule:
        if self.history_min > self.window:
            raise ValueError(
                f"history_min {self.history_min} is more than the window {self.window} holds: "
                "the rule could never flag"
            )
        return self


class BurstRule(_RuleConfig):
    """More movements out than allowed within a span of journal time."""

    count_max: int = Field(
        default=10,
        ge=1,
        le=10_000,
        description="Movements out allowed within window_s; one more is a burst",
    )
    window_s: int = Field(
        default=60,
        ge=1,
        le=7 * 86_400,
        description="Seconds of journal time (the events' timestamp_ms) the movements are "
        "counted over",
    )


class NewCounterpartyRule(_RuleConfig):
    """A large first payment to an account this one has not paid before."""

    amount_min: int = Field(
        default=100_000,
        ge=0,
        le=AMOUNT_MAX,
        description="Minor units; a smaller first payment is not flagged (and makes the "
        "counterparty a known one)",
    )
    history_min: int = Field(
        default=1,
        ge=0,
        le=1_000_000,
        description="Earlier movements out the account must have made: a brand-new account's "
        "first payment is not flagged unless this is 0",
    )
    counterparties_max: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Counterparties remembered per account, the most recently paid; one "
        "forgotten is new again",
    )


class AnomalyRules(BaseModel):
    """Which anomalies are flagged, and from what figures on. Read from JSON in
    `LEDGER_ANOMALY_RULES`; a rule or field left out keeps its default, e.g.
    `{"large_amount": {"multiple": 8.0, "amount_min": 50000}, "burst": {"enabled": false},
    "new_counterparty": {"amount_min": 1000000, "counterparties_max": 200}}`.

    A rule switched off still keeps its history in the state, so switching it on judges
    against the account's real pattern at once.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    large_amount: LargeAmountRule = Field(
        default_factory=LargeAmountRule,
        description="An amount out more than `multiple` times the median of the latest ones",
    )
    burst: BurstRule = Field(
        default_factory=BurstRule,
        description="More than `count_max` movements out within `window_s` seconds",
    )
    new_counterparty: NewCounterpartyRule = Field(
        default_factory=NewCounterpartyRule,
        description="A first payment of at least `amount_min` to an account not paid before",
    )


class Movement(msgspec.Struct, frozen=True):
    """Money moved out of or into `account` by one journal event, as the projector reads it."""

    entry_id: str
    command_id: str
    account: str
    counterparty: str | None  # the other account; None for deposits and withdrawals
    amount: int  # minor units, > 0
    direction: Literal["out", "in"]
    kind: str  # the journal event's kind
    timestamp_ms: int  # the journal event's


class AnomalyState(WriterMessage, frozen=True):
    """What the rules remember of one account, kept by the projector on every movement out,
    so it holds only what the rules need, each list bounded by its rule.

    `paid` keeps the most recently paid (at most `counterparties_max`): a counterparty
    forgotten since may be flagged as new again. It is one string, because the projector
    reads, rebuilds and writes the state at every payment out: with a thousand names that
    cost about 65 µs as a list of strings and 30 as one string (12 and 8 with a hundred).
    """

    amounts_out: Annotated[
        list[int], Meta(description="The latest amounts out, oldest first (large_amount.window)")
    ] = msgspec.field(default_factory=list)
    times_out_ms: Annotated[
        list[int],
        Meta(
            description="Timestamps of the latest movements out within burst.window_s of the "
            "last one, oldest first (burst.count_max)"
        ),
    ] = msgspec.field(default_factory=list)
    in_burst: Annotated[
        bool, Meta(description="The last movement out was part of a burst (flagged as it began)")
    ] = False
    paid: Annotated[
        str,
        Meta(
            description="Accounts paid, least recently paid first, separated by spaces "
            "(counterparties_max)"
        ),
    ] = ""
    count_out: Annotated[int, Meta(ge=0, description="Movements out so far")] = 0
    counterparties: Annotated[
        list[str],
        Meta(
            description="Read models written before `paid`: the same accounts as a list; the "
            "account's next movement out writes them as `paid`"
        ),
    ] = msgspec.field(default_factory=list)


class Flag(WriterMessage, frozen=True):
    """One anomaly of one movement out, with the figures that tripped the rule."""

    id: Annotated[str, Meta(description="<entry_id>:<rule>, the same on every refold")]
    rule: Rule
    account: str
    entry_id: str
    command_id: str
    timestamp_ms: Annotated[int, Meta(description="The movement's journal event's")]
    amount: Annotated[int, Meta(gt=0, description="Minor units moved out")]
    counterparty: str | None
    figures: Annotated[
        dict[str, int | float], Meta(description="The figures that tripped the rule")
    ]
    reason: Annotated[str, Meta(description="One sentence with the figures, for people")]


def check(
    rules: AnomalyRules, state: AnomalyState | None, movement: Movement
) -> tuple[AnomalyState, list[Flag]]:
    """The account's state after `movement`, and the flags it raises (in the order of
    `Rule`), judged against the state before it. Money in changes nothing."""
    before = AnomalyState() if state is None else state
    if movement.direction == "in":
        return before, []
    assert movement.amount > 0, f"movement {movement.entry_id} moves {movement.amount}"

    in_window = _times_in_window(rules.burst, before.times_out_ms, movement.timestamp_ms)
    count = len(in_window) + 1
    paid = before.paid or " ".join(before.counterparties)
    at = -1 if movement.counterparty is None else _find(paid, movement.counterparty)
    flags = [
        flag
        for flag in (
            _large_amount(rules.large_amount, before, movement),
            _burst(rules.burst, before, movement, count),
            _new_counterparty(rules.new_counterparty, before, movement, at >= 0),
        )
        if flag is not None
    ]
    after = AnomalyState(
        amounts_out=_latest([*before.amounts_out, movement.amount], rules.large_amount.window),
        times_out_ms=_latest([*in_window, movement.timestamp_ms], rules.burst.count_max),
        in_burst=count > rules.burst.count_max,
        paid=_paid(rules.new_counterparty, paid, movement.counterparty, at),
        count_out=before.count_out + 1,
    )
    assert len(after.amounts_out) <= rules.large_amount.window
    assert len(after.times_out_ms) <= rules.burst.count_max
    return after, flags


def _large_amount(rule: LargeAmountRule, state: AnomalyState, movement: Movement) -> Flag | None:
    history = state.amounts_out[-rule.window :]
    if not rule.enabled or len(history) < rule.history_min or movement.amount < rule.amount_min:
        return None
    median = _median(history)
    # Exact: the multiple as the float it is, the median as a fraction (a half at most).
    if movement.amount <= Fraction(rule.multiple) * median:
        return None
    median_figure = int(median) if median.denominator == 1 else float(median)
    times = _times_above(movement.amount / median, rule.multiple)
    return _flag(
        "large_amount",
        movement,
        {
            "amount": movement.amount,
            "median": median_figure,
            "multiple": rule.multiple,
            "history": len(history),
        },
        f"{movement.amount} is {times} times the median {median_figure} "
        f"of the last {_payments(len(history))} out",
    )


def _burst(rule: BurstRule, state: AnomalyState, movement: Movement, count: int) -> Flag | None:
    if not rule.enabled or count <= rule.count_max or state.in_burst:
        return None
    return _flag(
        "burst",
        movement,
        {"count": count, "window_s": rule.window_s, "count_max": rule.count_max},
        f"{_payments(count)} out within {rule.window_s} s, more than the {rule.count_max} allowed",
    )


def _new_counterparty(
    rule: NewCounterpartyRule, state: AnomalyState, movement: Movement, known: bool
) -> Flag | None:
    counterparty = movement.counterparty
    if (
        not rule.enabled
        or counterparty is None
        or known
        or state.count_out < rule.history_min
        or movement.amount < rule.amount_min
    ):
        return None
    return _flag(
        "new_counterparty",
        movement,
        {"amount": movement.amount, "amount_min": rule.amount_min, "history": state.count_out},
        f"first payment to {counterparty}, of {movement.amount} (at least {rule.amount_min}), "
        f"after {_payments(state.count_out)} out",
    )


def _flag(rule: Rule, movement: Movement, figures: dict[str, int | float], reason: str) -> Flag:
    return Flag(
        id=f"{movement.entry_id}:{rule}",
        rule=rule,
        account=movement.account,
        entry_id=movement.entry_id,
        command_id=movement.command_id,
        timestamp_ms=movement.timestamp_ms,
        amount=movement.amount,
        counterparty=movement.counterparty,
        figures=figures,
        reason=reason,
    )


def _times_in_window(rule: BurstRule, times_ms: list[int], timestamp_ms: int) -> list[int]:
    # Record timestamps are the producers' and may step back a little, so the window
    # reaches either side of the movement's time.
    window_ms = rule.window_s * 1000
    return [t for t in times_ms if abs(timestamp_ms - t) < window_ms]


def _find(paid: str, counterparty: str) -> int:
    """Where `counterparty` starts in `paid`, or -1. Account names hold no spaces
    (`IDENTIFIER_CHARS`); one paid last time too is found without a scan."""
    assert " " not in counterparty, counterparty
    if paid == counterparty or paid.endswith(f" {counterparty}"):
        return len(paid) - len(counterparty)
    if paid.startswith(f"{counterparty} "):
        return 0
    at = paid.find(f" {counterparty} ")
    return at + 1 if at >= 0 else -1


def _paid(rule: NewCounterpartyRule, paid: str, counterparty: str | None, at: int) -> str:
    """`paid` with `counterparty` (found at `at`, or -1) moved to the end (the most recently
    paid), and no more than `counterparties_max` of them."""
    if counterparty is not None and at < 0:
        paid = f"{paid} {counterparty}" if paid else counterparty
    elif counterparty is not None and at + len(counterparty) < len(paid):  # not last already
        paid = f"{paid[:at]}{paid[at + len(counterparty) + 1 :]} {counterparty}"
    # At most one name a character and a space: count them only when there may be too many.
    if len(paid) < 2 * rule.counterparties_max:
        return paid
    extra = paid.count(" ") + 1 - rule.counterparties_max
    return paid.split(" ", extra)[-1] if extra > 0 else paid


def _latest(items: list[T], count_max: int) -> list[T]:
    assert count_max >= 1
    return items[-count_max:]


def _median(amounts: list[int]) -> Fraction:
    ordered = sorted(amounts)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return Fraction(ordered[middle])
    return Fraction(ordered[middle - 1] + ordered[middle], 2)


def _payments(count: int) -> str:
    return f"{count} payment" if count == 1 else f"{count} payments"


def _times_above(ratio: Fraction, multiple: float) -> str:
    """`ratio` to one decimal, or to as many more (up to six) as show it above `multiple`
    (25001 over 5000 reads 5.0002, not 5.0, against a multiple of 5)."""
    shown = f"{float(ratio):.1f}"
    for decimals in range(2, 7):
        if float(shown) > multiple:
            break
        shown = f"{float(ratio):.{decimals}f}"
    return shown
