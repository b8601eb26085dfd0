"""The ledger's decision core: pure, synchronous, no I/O and no clock.

`decide` takes the prefetched state of one partition, the head of its journal chain and a
batch of inputs (commands and transfer legs, in log order) and returns the new state, the
journal events (each new one linked onto the chain by `seq` and `prev_hash`), the results and
the legs to send. Rejections are values, and so are refusals: a leg that cannot belong to any
transfer of this partition (a forged or mismatched settle or refund, a credit above any
amount a transfer may move) is handed back with the reason, for a dead letter. An exception
here is a bug and stops the partition.

Rejection codes, in the order they are checked (the first that applies is returned):

1.  ``exists_with_different_payload`` - the command id was decided before with another payload
    (the same payload returns the original outcome, marked ``duplicate``, and moves nothing)
2.  ``account_reserved``       - a command names a system account (``@world``, ``@transit``)
3.  ``invalid_amount``         - amount (or overdraft limit) is zero or negative
4.  ``amount_too_large``       - amount (or overdraft limit) is above ``money.AMOUNT_MAX``
5.  ``accounts_must_be_different`` - a transfer to the account itself
6.  ``account_exists``         - ``open_account`` for an account that exists (open or closed)
7.  ``account_not_found``      - the account (then the destination) was never opened
8.  ``account_closed``         - the account (then the destination) is closed
9.  ``currency_mismatch``      - the command's currency is not the account's (then the
    destination's)
10. ``balance_not_zero``       - ``close_account`` while money is still on the account
    ``transfer_in_transit``    - ``close_account`` while a transfer from it has not landed
    (a refund may still come back to it)
11. ``insufficient_funds``     - a debit past the balance plus the overdraft limit
12. ``overflow``               - posted debits or credits would pass ``money.BALANCE_MAX``
    (credits count what is in transit from the account, so a refund always fits)

The destination of a cross-partition transfer is checked by its own writer (checks 7-9 and
12); when it refuses, the money comes back through ``@transit`` and the transfer's result is a
rejection with the destination's code.

A leg that no writer of this ledger sent is refused: not answered, not remembered, and handed
back in `Decision.refused` for the dead-letter topic. Checked in this order:

- a credit leg of more than `money.AMOUNT_MAX` (no transfer moves that much)
- a settle or refund leg for a transfer never posted on this partition
- a settle or refund leg for a transfer still in transit that differs from the credit leg the
  transfer sent (in any of `TRANSFER_FIELDS`)
- a refund leg whose code is none a destination sends (`REFUND_CODES`)

A settle or refund for a transfer that has its answer already is a repeat, answered as before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Literal, NamedTuple

import msgspec
import orjson

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
    Posting,
    Result,
    Transfer,
    Withdraw,
    from_builtins,
    replaced,
)
from ledger_stream.money import AMOUNT_MAX, BALANCE_MAX

# Command types that move money, and those that take it from the acting account.
MOVES = (Deposit, Withdraw, Transfer)
DEBITS = (Withdraw, Transfer)

WORLD = "@world"  # money entering and leaving the ledger
TRANSIT = "@transit"  # money between the two legs of a cross-partition transfer

# The codes a destination's writer sends back on a refund leg (see `_check_credit`).
REFUND_CODES = (
    "exists_with_different_payload",
    "account_not_found",
    "account_closed",
    "currency_mismatch",
    "overflow",
)
# What a settle or refund leg must share with the credit leg its transfer sent.
TRANSFER_FIELDS = ("transfer_id", "source", "destination", "amount", "currency", "payload_digest")


@dataclass(frozen=True)
class Incoming:
    """One input of a batch: a command or a leg, with its record's timestamp and where it was
    read (`origin`: topic/partition/offset/index), which tells a replay from a repeat."""

    message: Command | Leg
    timestamp_ms: int
    origin: str = ""


@dataclass(frozen=True)
class Reply:
    """A result and the results partition it is written to (None: by its key)."""

    result: Result
    partition: int | None


@dataclass
class Decision:
    """Everything one batch changes: state to write, then messages to send.

    `head` is the end of the journal chain after the batch. `refused` holds the inputs that
    were not decided, with the reason: they change nothing and answer no one; the writer
    sends them to the dead-letter topic.
    """

    accounts: dict[str, AccountState] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    journal: list[JournalEvent] = field(default_factory=list)
    results: list[Reply] = field(default_factory=list)
    legs: list[Leg] = field(default_factory=list)
    refused: list[tuple[Incoming, str]] = field(default_factory=list)
    head: JournalHead = field(default_factory=JournalHead)

    def emit(
        self, outcome: Outcome, reply_partition: int | None, *, duplicate: bool = False
    ) -> None:
        if outcome.result is not None:
            result = outcome.result
            if duplicate:
                result = replaced(result, duplicate=True)
            self.results.append(Reply(result, reply_partition))
        self.journal.extend(outcome.journal)
        if duplicate:
            # The answer goes to whoever asked this time, which may be another client.
            update = {"reply_partition": reply_partition}
            self.legs.extend(replaced(leg, **update) for leg in outcome.legs)
        else:
            self.legs.extend(outcome.legs)


_COMMAND, _CREDIT = "cmd:", "leg:credit:"  # outcome keys: a prefix, then a command id


def outcome_key(message: Command | Leg) -> str:
    """Key of the outcome that makes `message` idempotent: a command's own, a credit leg's
    own, and for settle and refund legs the outcome of their transfer at the source."""
    if isinstance(message, Leg) and message.type == "credit":
        return _CREDIT + message.transfer_id
    if isinstance(message, Leg):
        return _COMMAND + message.transfer_id
    return _COMMAND + message.command_id


def compacted(
    key: str, outcome: Outcome, before_ms: int, acknowledged: Mapping[tuple[str, int], int]
) -> bytes | None:
    """What is kept for good of the whole outcome under `key` once it was decided before
    `before_ms` (record time): its fingerprint and its answer, so a late repeat is still
    answered and never applied twice, without the journal events and legs a repeat inside
    the window re-sends. Stored without what the key and the fingerprint say again (the
    command id; the payload digest when it is the fingerprint; the reason when it is its
    code's), a field that cannot be told from those written as null; `outcome_from_compact`
    reads it back.

    None while it stays whole: decided since; waiting for its legs (no result yet); or its
    last input (`origin`) not yet acknowledged, so a restart may read that input again and
    must re-send its outputs (`acknowledged`: the next offset to read per topic and
    partition). So any window is safe, 0 included.
    """
    if outcome.result is None or (outcome.timestamp_ms or 0) >= before_ms:
        return None
    if outcome.origin:
        topic, partition, offset, _ = outcome.origin.split("/")
        if int(offset) >= acknowledged.get((topic, int(partition)), 0):
            return None
    result = msgspec.to_builtins(outcome.result)  # without the fields at their defaults
    del result["command_id"]
    if result.get("payload_digest") == outcome.fingerprint:
        del result["payload_digest"]
    elif "payload_digest" not in result:
        result["payload_digest"] = None
    code = result.get("code")
    if code is not None and result.get("reason") == REASONS.get(code):
        result.pop("reason", None)
    elif code is not None and "reason" not in result:
        result["reason"] = None
    fields: dict[str, Any] = {"fingerprint": outcome.fingerprint, "result": result}
    if outcome.timestamp_ms is not None:
        fields["timestamp_ms"] = outcome.timestamp_ms
    assert key.startswith((_COMMAND, _CREDIT)), f"no command id in outcome key {key!r}"
    return orjson.dumps(fields)


def outcome_from_compact(key: str, raw: bytes) -> Outcome:
    """The outcome under `key` from its compact form (`compacted`)."""
    data = orjson.loads(raw)
    result = data.get("result")
    if result is not None and "command_id" not in result:
        prefix = _CREDIT if key.startswith(_CREDIT) else _COMMAND
        result["command_id"] = key.removeprefix(prefix)
        result.setdefault("payload_digest", data["fingerprint"])
        code = result.get("code")
        if code is not None:
            result.setdefault("reason", REASONS.get(code))
    return from_builtins(data, Outcome)


def fingerprint(message: Command | Leg) -> str:
    """Digest of what makes a command (or leg) the same one again; routing is not part of it."""
    fields: dict[str, Any] = message.fingerprint_fields()
    # Amounts past 64 bits are refused by `decide`, but still need a digest (orjson
    # encodes only 64-bit integers).
    fields = {k: str(v) if isinstance(v, int) and abs(v) >= 2**63 else v for k, v in fields.items()}
    return hashlib.blake2b(
        orjson.dumps(fields, option=orjson.OPT_SORT_KEYS), digest_size=16
    ).hexdigest()


def accounts_to_prefetch(message: Command | Leg, is_local: Callable[[str], bool]) -> list[str]:
    """Accounts `decide` reads for this input; the destination only when it is local."""
    if isinstance(message, Transfer) and is_local(message.destination):
        return [message.account, message.destination]
    return [message.account]


def outcomes_to_prefetch(message: Command | Leg) -> list[str]:
    """Outcome keys `decide` reads for this input."""
    return [outcome_key(message)]


def decide(
    accounts: Mapping[str, AccountState | None],
    outcomes: Mapping[str, Outcome | None],
    batch: Sequence[Incoming],
    is_local: Callable[[str], bool],
    head: JournalHead = JournalHead(),  # noqa: B008 (frozen, so one shared default is safe)
) -> Decision:
    """Decide a batch of one partition, in order. Later inputs see earlier inputs' effects.

    `accounts` and `outcomes` hold what was prefetched for every key the batch names
    (None when absent). `is_local(account)` tells whether an account belongs to this
    partition, so a transfer is posted in one event or split into legs. `head` is the end of
    the partition's journal chain: each new journal event takes the next `seq` and the
    `chain_hash` of the one before as its `prev_hash`; `Decision.head` is the end after.
    Events re-sent from stored outcomes keep the stamps they were first sent with.
    """
    state = _State(dict(accounts), dict(outcomes), head)
    decision = Decision()
    for incoming in batch:
        message = incoming.message
        if isinstance(message, Leg) and message.type != "credit":
            _return_to_source(state, decision, message, incoming)
        else:
            _decide_input(state, decision, message, incoming, is_local)
    decision.accounts = {name: state.accounts[name] for name in state.touched}  # type: ignore[misc]
    decision.outcomes = {key: state.outcomes[key] for key in state.touched_outcomes}  # type: ignore[misc]
    decision.head = state.head
    _assert_invariants(decision, head, state.stamped)
    return decision


def _decide_input(
    state: _State,
    decision: Decision,
    message: Command | Leg,
    incoming: Incoming,
    is_local: Callable[[str], bool],
) -> None:
    """A command or a credit leg: a repeat re-sends its outcome, a new one is decided."""
    if isinstance(message, Leg) and message.amount > AMOUNT_MAX:
        # No transfer moves that much, so no writer sent it; a refund would carry it on.
        reason = f"credit leg of {message.amount} minor units is over the limit of {AMOUNT_MAX}"
        decision.refused.append((incoming, reason))
        return
    key = outcome_key(message)
    digest = fingerprint(message)
    previous = state.outcome(key)
    if previous is not None:
        if previous.fingerprint == digest:
            # The same record read again (after a crash) is a replay, not a repeat.
            replay = bool(incoming.origin) and previous.origin == incoming.origin
            decision.emit(previous, message.reply_partition, duplicate=not replay)
        elif isinstance(message, Leg):
            # Command ids are unique per partition; a transfer from another partition may
            # reuse the id of one already credited here. It goes back to its source.
            code = "exists_with_different_payload"
            decision.legs.append(replaced(message, type="refund", code=code))
        else:
            rejection = _rejected(message, "exists_with_different_payload", digest)
            decision.results.append(Reply(rejection, message.reply_partition))
        return
    if isinstance(message, Leg):
        outputs = _apply_credit(state, message, incoming.timestamp_ms)
    else:
        outputs = _apply_command(state, message, incoming.timestamp_ms, digest, is_local)
    outcome = Outcome(
        fingerprint=digest,
        result=outputs.result,
        journal=[state.stamp(event) for event in outputs.journal],
        legs=list(outputs.legs),
        origin=incoming.origin or None,
        timestamp_ms=incoming.timestamp_ms,
    )
    state.put_outcome(key, outcome)
    decision.emit(outcome, message.reply_partition)


def _assert_invariants(
    decision: Decision, head: JournalHead, stamped: Sequence[JournalEvent]
) -> None:
    """What every decision leaves true, checked at the end as well as along the way."""
    for event in decision.journal:
        debits = sum(p.debit for p in event.postings)
        credits = sum(p.credit for p in event.postings)
        assert debits == credits, f"journal event {event.entry_id} does not balance"
    for name, account in decision.accounts.items():
        assert account.available >= 0, f"account {name} passed its overdraft limit"
    # The new events continue the chain from `head`, one seq each, and end at the new head.
    assert [e.seq for e in stamped] == list(range(head.seq + 1, decision.head.seq + 1))
    if stamped:
        assert stamped[0].prev_hash == head.hash, "the first new event does not follow the head"
        assert stamped[-1].chain_hash() == decision.head.hash
    else:
        assert decision.head == head


class Outputs(NamedTuple):
    """What deciding one input produces, before it is stored as its outcome."""

    result: Result | None = None
    journal: Sequence[JournalEvent] = ()
    legs: Sequence[Leg] = ()


@dataclass
class _State:
    accounts: dict[str, AccountState | None]
    outcomes: dict[str, Outcome | None]
    head: JournalHead
    touched: set[str] = field(default_factory=set)
    touched_outcomes: set[str] = field(default_factory=set)
    stamped: list[JournalEvent] = field(default_factory=list)

    def account(self, name: str) -> AccountState | None:
        assert name in self.accounts, f"account {name!r} was not prefetched"
        return self.accounts[name]

    def outcome(self, key: str) -> Outcome | None:
        assert key in self.outcomes, f"outcome {key!r} was not prefetched"
        return self.outcomes[key]

    def put(self, name: str, account: AccountState) -> None:
        self.accounts[name] = account
        self.touched.add(name)

    def put_outcome(self, key: str, outcome: Outcome) -> None:
        self.outcomes[key] = outcome
        self.touched_outcomes.add(key)

    def stamp(self, event: JournalEvent) -> JournalEvent:
        """Link a new event onto the journal chain; call in the order events are created."""
        assert event.seq is None and event.prev_hash is None, f"{event.entry_id} is stamped"
        stamped = replaced(event, seq=self.head.seq + 1, prev_hash=self.head.hash)
        self.head = JournalHead(seq=self.head.seq + 1, hash=stamped.chain_hash())
        self.stamped.append(stamped)
        return stamped


def _apply_command(
    state: _State,
    command: Command,
    timestamp_ms: int,
    digest: str,
    is_local: Callable[[str], bool],
) -> Outputs:
    # Whether a transfer lands on this partition: asked once, for the checks and the posting.
    local = isinstance(command, Transfer) and is_local(command.destination)
    code = _check_command(state, command, local)
    if code is not None:
        return Outputs(result=_rejected(command, code, digest))
    # After this point the command must succeed: every check is above.
    journal = _post_command(state, command, timestamp_ms, local)
    if isinstance(command, Transfer) and not local:
        leg = Leg(
            type="credit",
            transfer_id=command.command_id,
            source=command.account,
            destination=command.destination,
            amount=command.amount,
            currency=command.currency,
            reply_partition=command.reply_partition,
            payload_digest=digest,
        )
        # The result comes from the destination's writer, once the money has landed.
        return Outputs(journal=journal, legs=[leg])
    return Outputs(result=_accepted(command, digest), journal=journal)


def _check_command(state: _State, command: Command, local: bool) -> str | None:
    """The guards of one command, in the precedence order of the module docstring; `local`:
    a transfer whose destination is on this partition."""
    names = [command.account]
    if isinstance(command, Transfer):
        names.append(command.destination)
    if any(name.startswith("@") for name in names):
        return "account_reserved"
    amount = _amount_of(command)
    if amount is not None:
        # An overdraft limit may be zero; an amount that moves money may not.
        if amount < 0 or (amount == 0 and not isinstance(command, OpenAccount)):
            return "invalid_amount"
        if amount > AMOUNT_MAX:
            return "amount_too_large"
    if isinstance(command, Transfer) and command.destination == command.account:
        return "accounts_must_be_different"
    account = state.account(command.account)
    if isinstance(command, OpenAccount):
        return "account_exists" if account is not None else None
    local_names = names if local else [command.account]
    for name in local_names:
        found = state.account(name)
        if found is None:
            return "account_not_found"
    for name in local_names:
        if state.account(name).status == "closed":  # type: ignore[union-attr]
            return "account_closed"
    currency = getattr(command, "currency", None)
    for name in local_names:
        if currency is not None and state.account(name).currency != currency:  # type: ignore[union-attr]
            return "currency_mismatch"
    assert account is not None
    if isinstance(command, CloseAccount):
        if account.debits_posted != account.credits_posted or account.debits_pending:
            return "balance_not_zero"
        if account.debits_in_transit:
            return "transfer_in_transit"
        return None
    assert amount is not None
    if isinstance(command, DEBITS) and account.available < amount:
        return "insufficient_funds"
    if isinstance(command, Deposit) and account.credit_headroom < amount:
        return "overflow"
    if isinstance(command, DEBITS) and account.debits_posted + amount > BALANCE_MAX:
        return "overflow"
    if isinstance(command, Transfer):
        if not local and account.credit_headroom < amount:
            return "overflow"  # the refund, should one come, must fit
        destination = state.account(command.destination) if local else None
        if destination is not None and destination.credit_headroom < amount:
            return "overflow"
    return None


def _amount_of(command: Command) -> int | None:
    if isinstance(command, OpenAccount):
        return command.overdraft_limit
    if isinstance(command, MOVES):
        return command.amount
    return None


def _post_command(
    state: _State, command: Command, timestamp_ms: int, local: bool
) -> list[JournalEvent]:
    entry = f"{command.command_id}:0"
    common: dict[str, Any] = {
        "entry_id": entry,
        "command_id": command.command_id,
        "account": command.account,
        "timestamp_ms": timestamp_ms,
        "metadata": command.metadata,
    }
    if isinstance(command, OpenAccount):
        state.put(
            command.account,
            AccountState(currency=command.currency, overdraft_limit=command.overdraft_limit),
        )
        return [
            JournalEvent(
                kind="account_opened",
                currency=command.currency,
                postings=[],
                overdraft_limit=command.overdraft_limit,
                **common,
            )
        ]
    account = state.account(command.account)
    assert account is not None
    if isinstance(command, CloseAccount):
        state.put(command.account, replaced(account, status="closed"))
        return [
            JournalEvent(kind="account_closed", currency=account.currency, postings=[], **common)
        ]
    if isinstance(command, Deposit):
        postings = _move(state, WORLD, command.account, command.amount)
        return [
            JournalEvent(kind="deposit", currency=command.currency, postings=postings, **common)
        ]
    if isinstance(command, Withdraw):
        postings = _move(state, command.account, WORLD, command.amount)
        return [
            JournalEvent(kind="withdrawal", currency=command.currency, postings=postings, **common)
        ]
    assert isinstance(command, Transfer)
    if local:
        postings = _move(state, command.account, command.destination, command.amount)
        return [
            JournalEvent(kind="transfer", currency=command.currency, postings=postings, **common)
        ]
    postings = _move(state, command.account, TRANSIT, command.amount)
    source = state.account(command.account)
    assert source is not None
    in_transit = source.debits_in_transit + command.amount
    state.put(command.account, replaced(source, debits_in_transit=in_transit))
    return [
        JournalEvent(kind="transfer_debit", currency=command.currency, postings=postings, **common)
    ]


def _apply_credit(state: _State, leg: Leg, timestamp_ms: int) -> Outputs:
    """A credit leg at the destination: land the money, or send it back with the reason."""
    code = _check_credit(state, leg)
    if code is not None:
        assert code in REFUND_CODES, f"the source would refuse a refund with code {code!r}"
        refund = replaced(leg, type="refund", code=code)
        return Outputs(legs=[refund])
    # After this point the credit must succeed.
    postings = _move(state, TRANSIT, leg.destination, leg.amount)
    event = _leg_event(leg, 1, "transfer_credit", postings, timestamp_ms)
    settle = replaced(leg, type="settle")
    result = _leg_result(leg, "accepted", None)
    return Outputs(result=result, journal=[event], legs=[settle])


def _return_to_source(state: _State, decision: Decision, leg: Leg, incoming: Incoming) -> None:
    """A settle or refund leg back at the source. The transfer's own outcome makes it
    idempotent: once it carries a result, the transfer has settled or come back already."""
    original = state.outcome(outcome_key(leg))
    refusal = _check_return(leg, original)
    if refusal is not None:
        decision.refused.append((incoming, refusal))
        return
    assert original is not None
    if original.result is not None:
        if leg.type == "refund":  # re-send what the refund produced: result, refund event
            result = replaced(original.result, duplicate=True)
            decision.results.append(Reply(result, leg.reply_partition))
            decision.journal.extend(original.journal[1:])
        return
    # After this point the transfer must end here: it matches what was sent.
    if leg.type == "settle":
        _finish_at_source(state, leg, incoming, _leg_result(leg, "accepted", None), [])
        return
    postings = _move(state, TRANSIT, leg.source, leg.amount)
    event = state.stamp(_leg_event(leg, 2, "transfer_refund", postings, incoming.timestamp_ms))
    result = _leg_result(leg, "rejected", leg.code)
    _finish_at_source(state, leg, incoming, result, [event])
    decision.results.append(Reply(result, leg.reply_partition))
    decision.journal.append(event)


def _check_return(leg: Leg, original: Outcome | None) -> str | None:
    """The guards of a settle or refund leg, in order; None when it may be decided.

    The legs topic is open to any producer: a leg this partition's transfers never sent must
    change nothing here, and must not stop the writer either.
    """
    if original is None:
        return f"{leg.type} leg for transfer {leg.transfer_id!r}, never posted on this partition"
    if original.result is not None:
        return None  # final already: a repeat, answered as before
    if not any(sent.type == "credit" and _same_transfer(sent, leg) for sent in original.legs):
        return (
            f"{leg.type} leg for transfer {leg.transfer_id!r} does not match the credit leg it "
            f"sent (compared: {', '.join(TRANSFER_FIELDS)})"
        )
    if leg.type == "refund" and leg.code not in REFUND_CODES:
        return f"refund leg with code {leg.code!r}, which no destination sends"
    return None


def _same_transfer(one: Leg, other: Leg) -> bool:
    return _transfer_fields(one) == _transfer_fields(other)


_transfer_fields = attrgetter(*TRANSFER_FIELDS)


def _leg_event(
    leg: Leg,
    number: int,
    kind: Literal["transfer_credit", "transfer_refund"],
    postings: list[Posting],
    timestamp_ms: int,
) -> JournalEvent:
    """The journal event of a leg: entry `<transfer_id>:1` (credit) or `:2` (refund)."""
    return JournalEvent(
        entry_id=f"{leg.transfer_id}:{number}",
        kind=kind,
        command_id=leg.transfer_id,
        account=leg.account,
        currency=leg.currency,
        timestamp_ms=timestamp_ms,
        postings=postings,
    )


def _finish_at_source(
    state: _State, leg: Leg, incoming: Incoming, result: Result, journal: list[JournalEvent]
) -> None:
    """The transfer has landed or come back: it is no longer in transit from its source, and
    the source's record of the command now carries the final answer (and no legs to re-send,
    since the destination has them). Its `origin` becomes the leg's, the last input that
    changed it."""
    source = state.account(leg.source)
    # The leg matches the transfer posted from this account, which has not ended yet.
    assert source is not None and source.debits_in_transit >= leg.amount
    in_transit = source.debits_in_transit - leg.amount
    state.put(leg.source, replaced(source, debits_in_transit=in_transit))
    key = outcome_key(leg)
    original = state.outcome(key)
    assert original is not None
    update = {
        "result": result,
        "journal": [*original.journal, *journal],
        "legs": [],
        "origin": incoming.origin or original.origin,
    }
    state.put_outcome(key, replaced(original, **update))


def _check_credit(state: _State, leg: Leg) -> str | None:
    account = state.account(leg.destination)
    if account is None:
        return "account_not_found"
    if account.status == "closed":
        return "account_closed"
    if account.currency != leg.currency:
        return "currency_mismatch"
    if account.credit_headroom < leg.amount:
        return "overflow"
    return None


def _move(state: _State, debit: str, credit: str, amount: int) -> list[Posting]:
    """Post `amount` from `debit` to `credit`; system accounts are journal-only."""
    for name, side in ((debit, "debits_posted"), (credit, "credits_posted")):
        if name.startswith("@"):
            continue
        account = state.account(name)
        assert account is not None
        updated = replaced(account, **{side: getattr(account, side) + amount})
        assert updated.debits_posted <= BALANCE_MAX and updated.credits_posted <= BALANCE_MAX
        state.put(name, updated)
    return [Posting(account=debit, debit=amount), Posting(account=credit, credit=amount)]


def _accepted(command: Command, digest: str) -> Result:
    return Result(
        command_id=command.command_id,
        status="accepted",
        type=command.type,
        account=command.account,
        payload_digest=digest,
    )


def _rejected(command: Command, code: str, digest: str) -> Result:
    return Result(
        command_id=command.command_id,
        status="rejected",
        code=code,
        type=command.type,
        account=command.account,
        reason=REASONS[code],
        payload_digest=digest,
    )


def _leg_result(leg: Leg, status: Literal["accepted", "rejected"], code: str | None) -> Result:
    return Result(
        command_id=leg.transfer_id,
        status=status,
        code=code,
        type="transfer",
        account=leg.source,
        reason=REASONS[code] if code else None,
        payload_digest=leg.payload_digest,
    )


REASONS: dict[str, str] = {
    "exists_with_different_payload": "this command_id was already used for another command",
    "account_reserved": "accounts starting with '@' are system accounts",
    "invalid_amount": "amounts must be positive integers of minor units",
    "amount_too_large": f"amounts may not exceed {AMOUNT_MAX} minor units",
    "accounts_must_be_different": "a transfer needs two different accounts",
    "account_exists": "the account was already opened",
    "account_not_found": "the account has not been opened",
    "account_closed": "the account is closed",
    "currency_mismatch": "the currency is not the account's currency",
    "balance_not_zero": "an account can only be closed with a zero balance",
    "transfer_in_transit": "a transfer from the account has not landed yet; retry the close",
    "insufficient_funds": "the debit exceeds the balance plus the overdraft limit",
    "overflow": f"posted debits or credits would exceed {BALANCE_MAX}",
    "invalid_command": "the message is not a valid command (see the dead-letter topic)",
    "invalid_currency": "the currency is not a known ISO 4217 code",
    "wrong_partition": "the command was not keyed by its account",
}
