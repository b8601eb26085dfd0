"""The ledger's decision core: pure, synchronous, no I/O and no clock.

`decide` takes the state of one partition (read through `get`, nothing else), the head of its
journal chain and a batch of inputs (commands and transfer legs, in log order) and returns
the changed state, the journal events (each new one linked onto the chain by `seq` and
`prev_hash`), the results, the receipts and the legs to send. Rejections are values, and so
are refusals: a leg that cannot belong to any transfer of this partition (a forged or
mismatched settle or refund, a credit above any amount a transfer may move) is handed back
with the reason, for a dead letter. An exception here is a bug and stops the partition.

A command is refused with the first code that applies, in the precedence of
`ledger_stream.codes` (written out in the README). Time is the command record's timestamp:
a day for the daily limits is its UTC day (never earlier than the last day the account
counted), and a hold's deadline passes by it.

The destination of a cross-partition transfer is checked by its own writer (account not
found, closed, currency, overflow); when it refuses, the money comes back through
``@transit`` and the transfer's result is a rejection with the destination's code. Holds,
invoice payments and reversals whose money crosses partitions travel the same way.

A leg that no writer of this ledger sent is refused: not answered, not remembered, and handed
back in `Decision.refused` for the dead-letter topic. Checked in this order:

- a credit leg of more than `money.AMOUNT_MAX` (no transfer moves that much)
- a settle or refund leg for a transfer never posted on this partition
- a settle or refund leg for a transfer still in transit that differs from the credit leg the
  transfer sent (in any of `TRANSFER_FIELDS`)
- a refund leg whose code is none a destination sends (`REFUND_CODES`)

A settle or refund for a transfer that has its answer already is a repeat, answered as before.

A command naming an alias where an account goes is resolved first, by the writer of the
alias's partition (`_resolve`), and then decided as the command on the account, by that
account's writer; on the way it is sent on through the commands topic (`Decision.forwards`).

What the writer remembers besides accounts is kept as outcomes, by key: `cmd:<command id>`
(a command's outcome; a hold's state is in the outcome of the command that placed it),
`leg:credit:<transfer id>` (a credit leg's), `unresolved:<command id>` (a command refused
for naming an alias not registered), and the claims that keep an invoice paid once
(`inv:<payer>|<invoice id>`), a command reversed once (`rev:<command id>`) and an alias
registered once (the alias itself, `alias:<name>`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

import msgspec
import orjson

from ledger_stream.codes import REFUND_CODES, Code
from ledger_stream.messages import (
    ALIAS_PREFIX,
    AccountLimits,
    AccountState,
    Action,
    CloseAccount,
    Command,
    ConfirmPayment,
    Deposit,
    ExpireHold,
    FailPayment,
    Hold,
    JournalEvent,
    JournalHead,
    Leg,
    LimitBreach,
    Limits,
    OpenAccount,
    Outcome,
    PayInvoice,
    PlaceHold,
    PostHold,
    Posting,
    Receipt,
    RegisterAlias,
    Result,
    Reverse,
    SetLimits,
    Transfer,
    VoidHold,
    Withdraw,
    aliases_named,
    from_builtins,
    replaced,
)
from ledger_stream.money import AMOUNT_MAX, BALANCE_MAX

WORLD = "@world"  # money entering and leaving the ledger
TRANSIT = "@transit"  # money between the two legs of a cross-partition transfer
DAY_MS = 86_400_000

# What a settle or refund leg must share with the credit leg its transfer sent.
TRANSFER_FIELDS = (
    "transfer_id",
    "source",
    "destination",
    "amount",
    "currency",
    "payload_digest",
    "command",
)
# Result types a reversal may target; a reversal's own is refused as `reversal_of_reversal`.
REVERSIBLE = ("deposit", "withdraw", "transfer", "pay_invoice", "post_hold", "confirm_payment")


@dataclass(frozen=True)
class Rules:
    """What configuration decides: the limits of an account opened without any, and how
    long a payment through an external channel waits for its confirmation."""

    default_limits: Limits | None = None
    payment_timeout_ms: int = 15 * 60 * 1000


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
    sends them to the dead-letter topic. `forwards` holds the commands that name an alias
    another writer resolves, or, with their aliases resolved, an account another writer
    owns: the writer sends them on to the commands topic (keyed by `messages.routed_by`)
    with their record time.
    """

    accounts: dict[str, AccountState] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    journal: list[JournalEvent] = field(default_factory=list)
    results: list[Reply] = field(default_factory=list)
    legs: list[Leg] = field(default_factory=list)
    receipts: list[Receipt] = field(default_factory=list)
    refused: list[tuple[Incoming, str]] = field(default_factory=list)
    forwards: list[Incoming] = field(default_factory=list)
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
        if outcome.receipt is not None:
            self.receipts.append(outcome.receipt)
        if duplicate:
            # The answer goes to whoever asked this time, which may be another client.
            update = {"reply_partition": reply_partition}
            self.legs.extend(replaced(leg, **update) for leg in outcome.legs)
        else:
            self.legs.extend(outcome.legs)


# Outcome keys: a prefix, then a command id (or, for an invoice, payer and invoice id; for
# an alias, its name: the key is the alias).
_COMMAND, _CREDIT, _INVOICE, _REVERSAL = "cmd:", "leg:credit:", "inv:", "rev:"
_UNRESOLVED = "unresolved:"  # a command refused here because an alias it named was not known
_ALIAS = ALIAS_PREFIX


def outcome_key(message: Command | Leg) -> str:
    """Key of the outcome that makes `message` idempotent: a command's own, a credit leg's
    own, and for settle and refund legs the outcome of their transfer at the source."""
    if isinstance(message, Leg) and message.type == "credit":
        return _CREDIT + message.transfer_id
    if isinstance(message, Leg):
        return _COMMAND + message.transfer_id
    return _COMMAND + message.command_id


def invoice_key(payer: str, invoice_id: str) -> str:
    """The claim that keeps an invoice paid once ('|' is in no identifier)."""
    return f"{_INVOICE}{payer}|{invoice_id}"


def compacted(
    key: str, outcome: Outcome, before_ms: int, acknowledged: Mapping[tuple[str, int], int]
) -> bytes | None:
    """What is kept for good of the whole outcome under `key` once it was decided before
    `before_ms` (record time): its fingerprint, its answer and its hold, so a late repeat is
    still answered and never applied twice, without the journal events and legs a repeat
    inside the window re-sends. Stored without what the key and the fingerprint say again
    (the command id; the payload digest when it is the fingerprint; the reason when it is
    its code's), a field that cannot be told from those written as null;
    `outcome_from_compact` reads it back.

    None while it stays whole: decided since; waiting for its legs (no result yet); a hold
    not yet resolved; a claim whose payment or reversal is not final; or its last input
    (`origin`) not yet acknowledged, so a restart may read that input again and must re-send
    its outputs (`acknowledged`: the next offset to read per topic and partition). So any
    window is safe, 0 included, and a compact value never changes once written.
    """
    if outcome.result is None or (outcome.timestamp_ms or 0) >= before_ms:
        return None
    if outcome.hold is not None and outcome.hold.status in ("pending", "posting"):
        return None
    if outcome.origin:
        topic, partition, offset, _ = outcome.origin.split("/")
        if int(offset) >= acknowledged.get((topic, int(partition)), 0):
            return None
    result = msgspec.to_builtins(outcome.result)  # without the fields at their defaults
    if _command_id_of(key) == result["command_id"]:
        del result["command_id"]
    if result.get("payload_digest") == outcome.fingerprint:
        del result["payload_digest"]
    elif "payload_digest" not in result:
        result["payload_digest"] = None
    code = result.get("code")
    if code is not None and "limit" not in result and result.get("reason") == Code(code).reason:
        result.pop("reason", None)
    elif code is not None and "reason" not in result:
        result["reason"] = None
    fields: dict[str, Any] = {"fingerprint": outcome.fingerprint, "result": result}
    if outcome.timestamp_ms is not None:
        fields["timestamp_ms"] = outcome.timestamp_ms
    if outcome.hold is not None:
        fields["hold"] = msgspec.to_builtins(outcome.hold)
    return orjson.dumps(fields)


def outcome_from_compact(key: str, raw: bytes) -> Outcome:
    """The outcome under `key` from its compact form (`compacted`)."""
    data = orjson.loads(raw)
    result = data.get("result")
    if result is not None:
        if "command_id" not in result:
            result["command_id"] = _command_id_of(key)
        result.setdefault("payload_digest", data["fingerprint"])
        code = result.get("code")
        if code is not None:
            result.setdefault("reason", Code(code).reason)
    return from_builtins(data, Outcome)


def _command_id_of(key: str) -> str | None:
    """The command id an outcome key names (claims name something else)."""
    for prefix in (_CREDIT, _COMMAND, _UNRESOLVED):
        if key.startswith(prefix):
            return key.removeprefix(prefix)
    assert key.startswith((_INVOICE, _REVERSAL, _ALIAS)), f"unknown outcome key {key!r}"
    return None


def fingerprint(message: Command | Leg) -> str:
    """Digest of what makes a command (or leg) the same one again; routing is not part of it."""
    fields: dict[str, Any] = message.fingerprint_fields()
    # Amounts past 64 bits are refused by `decide`, but still need a digest (orjson
    # encodes only 64-bit integers).
    fields = {k: str(v) if isinstance(v, int) and abs(v) >= 2**63 else v for k, v in fields.items()}
    return hashlib.blake2b(
        orjson.dumps(fields, option=orjson.OPT_SORT_KEYS), digest_size=16
    ).hexdigest()


V = TypeVar("V", covariant=True)


class Reads(Protocol[V]):
    """State as `decide` reads it: a dict, or the writer's store behind the same `get`."""

    def get(self, key: str, /) -> V | None: ...


def decide(
    accounts: Reads[AccountState],
    outcomes: Reads[Outcome],
    batch: Sequence[Incoming],
    is_local: Callable[[str], bool],
    head: JournalHead = JournalHead(),  # noqa: B008 (frozen, so one shared default is safe)
    rules: Rules = Rules(),
) -> Decision:
    """Decide a batch of one partition, in order. Later inputs see earlier inputs' effects.

    `accounts` and `outcomes` give the partition's state by key (None when absent); they are
    only read. `is_local(account)` tells whether an account belongs to this partition, so a
    transfer is posted in one event or split into legs. `head` is the end of the
    partition's journal chain: each new journal event takes the next `seq` and the
    `chain_hash` of the one before as its `prev_hash`; `Decision.head` is the end after.
    Events re-sent from stored outcomes keep the stamps they were first sent with.
    """
    state = _State(accounts, outcomes, head, is_local, rules)
    decision = Decision()
    for incoming in batch:
        message = incoming.message
        if isinstance(message, Leg) and message.type != "credit":
            _return_to_source(state, decision, message, incoming)
        elif not isinstance(message, Leg) and aliases_named(message):
            _resolve(state, decision, message, incoming)
        else:
            _decide_input(state, decision, message, incoming)
    decision.accounts = state.accounts
    decision.outcomes = state.outcomes
    decision.head = state.head
    _assert_invariants(decision, head, state.stamped)
    return decision


def _decide_input(
    state: _State, decision: Decision, message: Command | Leg, incoming: Incoming
) -> None:
    """A command or a credit leg: a repeat re-sends its outcome, a new one is decided."""
    if isinstance(message, Leg) and message.amount > AMOUNT_MAX:
        # No transfer moves that much, so no writer sent it; a refund would carry it on.
        reason = f"credit leg of {message.amount} minor units is over the limit of {AMOUNT_MAX}"
        decision.refused.append((incoming, reason))
        return
    key = outcome_key(message)
    digest = fingerprint(message)
    if _answered_before(state, decision, key, message, digest, incoming):
        return
    if isinstance(message, Leg):
        outputs = _apply_credit(state, message, incoming.timestamp_ms)
    else:
        outputs = _apply_command(state, message, incoming.timestamp_ms, digest)
    _store(state, decision, key, message, digest, incoming, outputs)


def _answered_before(
    state: _State,
    decision: Decision,
    key: str,
    message: Command | Leg,
    digest: str,
    incoming: Incoming,
) -> bool:
    """Answer `message` from the outcome under `key` when there is one: the same message
    again is answered as before, another one with the same id is refused."""
    previous = state.outcome(key)
    if previous is None:
        return False
    if previous.fingerprint == digest:
        # The same record read again (after a crash) is a replay, not a repeat.
        replay = bool(incoming.origin) and previous.origin == incoming.origin
        decision.emit(previous, message.reply_partition, duplicate=not replay)
    elif isinstance(message, Leg):
        # Command ids are unique per partition; a transfer from another partition may
        # reuse the id of one already credited here. It goes back to its source.
        code = Code.EXISTS_WITH_DIFFERENT_PAYLOAD
        decision.legs.append(replaced(message, type="refund", code=code))
    else:
        rejection = _rejected(message, Code.EXISTS_WITH_DIFFERENT_PAYLOAD, digest)
        decision.results.append(Reply(rejection, message.reply_partition))
    return True


def _store(
    state: _State,
    decision: Decision,
    key: str,
    message: Command | Leg,
    digest: str,
    incoming: Incoming,
    outputs: Outputs,
) -> None:
    """Keep what deciding `message` produced as its outcome under `key`, and send it."""
    outcome = Outcome(
        fingerprint=digest,
        result=outputs.result,
        journal=[state.stamp(event) for event in outputs.journal],
        legs=list(outputs.legs),
        origin=incoming.origin or None,
        timestamp_ms=incoming.timestamp_ms,
        hold=outputs.hold,
        receipt=outputs.receipt,
        counted=outputs.counted,
    )
    state.put_outcome(key, outcome)
    decision.emit(outcome, message.reply_partition)
    if outputs.claim is not None:
        assert not isinstance(message, Leg)
        state.put_outcome(outputs.claim, _claim(outcome, message.command_id))


def _resolve(state: _State, decision: Decision, command: Command, incoming: Incoming) -> None:
    """A command naming aliases where accounts go. The writer of an alias's partition puts
    the account the alias names in its place (every alias of its own at once); the command
    then goes on to the next alias's writer, or is decided as the command on its account,
    here when the account is here. An alias names its account for good, so the same
    command resolves the same way every time, and its account's writer keeps its outcome;
    a command naming an alias not registered (yet) is refused, and kept refused, here."""
    named = aliases_named(command)
    here = [(name, alias) for name, alias in named if state.is_local(alias)]
    if not here:
        decision.forwards.append(Incoming(command, incoming.timestamp_ms))
        return
    key = _UNRESOLVED + command.command_id
    digest = fingerprint(command)
    if _answered_before(state, decision, key, command, digest, incoming):
        return
    update: dict[str, str] = {}
    for name, alias in here:
        claim = state.outcome(alias)
        if claim is None or claim.result is None or claim.result.destination is None:
            reason = f"no account is registered under {alias!r}"
            refusal = _refused(command, Refusal(Code.ALIAS_NOT_FOUND, reason), digest)
            _store(state, decision, key, command, digest, incoming, refusal)
            return
        update[name] = claim.result.destination
    resolved = command.model_copy(update=update)
    if aliases_named(resolved) or not state.is_local(resolved.account):
        decision.forwards.append(Incoming(resolved, incoming.timestamp_ms))
    else:
        _decide_input(state, decision, resolved, incoming)


def _claim(outcome: Outcome, claimant: str) -> Outcome:
    """A claim on an invoice, a reversal target or an alias: final (with the result) once
    its money has moved (an alias's at once), else naming the command whose outcome says
    whether it still holds."""
    done = outcome.result is not None and outcome.hold is None and not outcome.legs
    return Outcome(
        fingerprint=outcome.fingerprint,
        result=outcome.result if done else None,
        claimed_by=claimant,
        timestamp_ms=outcome.timestamp_ms,
    )


def _assert_invariants(
    decision: Decision, head: JournalHead, stamped: Sequence[JournalEvent]
) -> None:
    """What every decision leaves true, checked at the end as well as along the way."""
    for event in decision.journal:
        for postings in (event.postings, event.pending or (), event.released or ()):
            debits = sum(p.debit for p in postings)
            credits = sum(p.credit for p in postings)
            assert debits == credits, f"journal event {event.entry_id} does not balance"
    for name, account in decision.accounts.items():
        assert account.available >= 0, f"account {name} passed its overdraft limit"
        assert account.debits_pending >= 0 and account.credits_pending >= 0, name
    # The new events continue the chain from `head`, one seq each, and end at the new head.
    assert [e.seq for e in stamped] == list(range(head.seq + 1, decision.head.seq + 1))
    if stamped:
        assert stamped[0].prev_hash == head.hash, "the first new event does not follow the head"
        assert stamped[-1].chain_hash() == decision.head.hash
    else:
        assert decision.head == head


class Outputs(NamedTuple):
    """What deciding one input produces, before it is stored as its outcome. `claim`: the
    key of the invoice, reversal or alias claim the command takes."""

    result: Result | None = None
    journal: Sequence[JournalEvent] = ()
    legs: Sequence[Leg] = ()
    hold: Hold | None = None
    receipt: Receipt | None = None
    claim: str | None = None
    counted: int | None = None  # the day a transfer out counted toward, in case it comes back


class Refusal(NamedTuple):
    """A rejection with more to say than its code's reason."""

    code: Code
    reason: str | None = None
    limit: LimitBreach | None = None


Check = Code | Refusal | None


class _State:
    """The partition as the batch has changed it so far: reads fall through to the store."""

    def __init__(
        self,
        accounts: Reads[AccountState],
        outcomes: Reads[Outcome],
        head: JournalHead,
        is_local: Callable[[str], bool],
        rules: Rules,
    ) -> None:
        self.stored_accounts, self.stored_outcomes = accounts, outcomes
        self.accounts: dict[str, AccountState] = {}
        self.outcomes: dict[str, Outcome] = {}
        self.head = head
        self.is_local, self.rules = is_local, rules
        self.stamped: list[JournalEvent] = []

    def account(self, name: str) -> AccountState | None:
        found = self.accounts.get(name)
        return found if found is not None else self.stored_accounts.get(name)

    def outcome(self, key: str) -> Outcome | None:
        found = self.outcomes.get(key)
        return found if found is not None else self.stored_outcomes.get(key)

    def put(self, name: str, account: AccountState) -> None:
        self.accounts[name] = account

    def put_outcome(self, key: str, outcome: Outcome) -> None:
        self.outcomes[key] = outcome

    def stamp(self, event: JournalEvent) -> JournalEvent:
        """Link a new event onto the journal chain; call in the order events are created."""
        assert event.seq is None and event.prev_hash is None, f"{event.entry_id} is stamped"
        stamped = replaced(event, seq=self.head.seq + 1, prev_hash=self.head.hash)
        self.head = JournalHead(seq=self.head.seq + 1, hash=stamped.chain_hash())
        self.stamped.append(stamped)
        return stamped

    def change(self, name: str, **fields: int) -> AccountState:
        """Add to an account's counters (`debits_pending=-5`); returns the account after."""
        account = self.account(name)
        assert account is not None, f"account {name!r} is not open here"
        updated = replaced(account, **{k: getattr(account, k) + v for k, v in fields.items()})
        self.put(name, updated)
        return updated


# Commands. Each handler checks in the precedence of `ledger_stream.codes` and, past its
# checks, must succeed.


def _apply_command(state: _State, command: Command, timestamp_ms: int, digest: str) -> Outputs:
    handler: Callable[[_State, Any, int, str], Outputs] = _HANDLERS[type(command)]
    return handler(state, command, timestamp_ms, digest)


def _open_account(state: _State, command: OpenAccount, ts: int, digest: str) -> Outputs:
    check: Check = _check_reserved(command.account) or _check_amount(command.overdraft_limit, 0)
    if check is None and state.account(command.account) is not None:
        check = Code.ACCOUNT_EXISTS
    if check is not None:
        return _refused(command, check, digest)
    limits = _limits(command.limits) if command.limits is not None else state.rules.default_limits
    opened = AccountState(
        currency=command.currency, overdraft_limit=command.overdraft_limit, limits=limits
    )
    state.put(command.account, opened)
    event = _event(
        command, ts, "account_opened", command.currency, overdraft_limit=command.overdraft_limit
    )
    event = replaced(event, limits=limits, low_balance=command.low_balance)
    return Outputs(_accepted(command, digest), [event])


def _set_limits(state: _State, command: SetLimits, ts: int, digest: str) -> Outputs:
    account = state.account(command.account)
    check: Check = _check_reserved(command.account) or _check_open(account)
    overdraft = command.overdraft_limit
    if check is None and overdraft is not None:
        assert account is not None
        if account.available - account.overdraft_limit + overdraft < 0:
            below = account.available - account.overdraft_limit
            check = Refusal(
                Code.INSUFFICIENT_FUNDS,
                f"the available balance ({below}) is below the new floor (-{overdraft})",
            )
    if check is not None:
        return _refused(command, check, digest)
    assert account is not None
    limits = account.limits if command.limits is None else _limits(command.limits)
    overdraft = account.overdraft_limit if overdraft is None else overdraft
    state.put(command.account, replaced(account, limits=limits, overdraft_limit=overdraft))
    event = _event(command, ts, "limits_set", account.currency, overdraft_limit=overdraft)
    # The writer does not keep the low-balance threshold (nothing it decides reads it): the
    # event carries it when given, and the read side keeps the last one.
    event = replaced(event, limits=limits, low_balance=command.low_balance)
    return Outputs(_accepted(command, digest), [event])


def _close_account(state: _State, command: CloseAccount, ts: int, digest: str) -> Outputs:
    account = state.account(command.account)
    check = _check_reserved(command.account) or _check_open(account)
    if check is None:
        assert account is not None
        if (
            account.debits_posted != account.credits_posted
            or account.debits_pending
            or account.credits_pending
        ):
            check = Code.BALANCE_NOT_ZERO
        elif account.debits_in_transit:
            check = Code.TRANSFER_IN_TRANSIT
    if check is not None:
        return _refused(command, check, digest)
    assert account is not None
    state.put(command.account, replaced(account, status="closed"))
    return Outputs(
        _accepted(command, digest), [_event(command, ts, "account_closed", account.currency)]
    )


def _deposit(state: _State, command: Deposit, ts: int, digest: str) -> Outputs:
    check = _check_move(state, command, None, local=False) or _check_credit_side(
        state, command.account, command.amount, "deposit", ts
    )
    if check is not None:
        return _refused(command, check, digest)
    _use(state, command.account, "deposit", command.amount, ts)
    postings = _move(state, WORLD, command.account, command.amount)
    event = _event(command, ts, "deposit", command.currency, postings=postings)
    return Outputs(_accepted(command, digest, command.amount), [event])


def _withdraw(state: _State, command: Withdraw, ts: int, digest: str) -> Outputs:
    check = _check_move(state, command, None, local=False) or _check_debit(
        state, command.account, command.amount, "withdrawal", ts, None
    )
    if check is not None:
        return _refused(command, check, digest)
    _use(state, command.account, "withdrawal", command.amount, ts)
    postings = _move(state, command.account, WORLD, command.amount)
    event = _event(command, ts, "withdrawal", command.currency, postings=postings)
    return Outputs(_accepted(command, digest, command.amount), [event])


def _transfer(state: _State, command: Transfer, ts: int, digest: str) -> Outputs:
    local = state.is_local(command.destination)
    check = _check_move(state, command, command.destination, local) or _check_debit(
        state, command.account, command.amount, "transfer_out", ts, command.destination, local
    )
    if check is not None:
        return _refused(command, check, digest)
    day = _use(state, command.account, "transfer_out", command.amount, ts)
    event = _event(command, ts, "transfer" if local else "transfer_debit", command.currency)
    outputs = _pay_out(state, command, digest, event, command.destination, command.amount, local)
    return outputs._replace(counted=day if outputs.legs else None)


def _place_hold(state: _State, command: PlaceHold, ts: int, digest: str) -> Outputs:
    local = state.is_local(command.destination)
    check = _check_payment(state, command, ts, local)
    if check is not None:
        return _refused(command, check, digest)
    deadline = None if command.timeout_s is None else ts + command.timeout_s * 1000
    return _hold(state, command, ts, digest, local, deadline, None)


def _pay_invoice(state: _State, command: PayInvoice, ts: int, digest: str) -> Outputs:
    claim = invoice_key(command.account, command.invoice_id)
    local = state.is_local(command.destination)
    check = _check_payment(state, command, ts, local, claim)
    if check is not None:
        return _refused(command, check, digest)
    if command.channel != "ledger":
        timeout_ms = state.rules.payment_timeout_ms
        if command.timeout_s is not None:
            timeout_ms = command.timeout_s * 1000
        outputs = _hold(state, command, ts, digest, local, ts + timeout_ms, command.invoice_id)
        return outputs._replace(claim=claim)
    day = _use(state, command.account, "transfer_out", command.amount, ts)
    event = _event(command, ts, "invoice_payment", command.currency)
    event = replaced(event, invoice_id=command.invoice_id)
    outputs = _pay_out(state, command, digest, event, command.destination, command.amount, local)
    outputs = outputs._replace(counted=day if outputs.legs else None)
    if outputs.result is not None:  # landed at once: paid
        entries = [event.entry_id]
        outputs = outputs._replace(receipt=_receipt(command, command.command_id, entries, ts))
    return outputs._replace(claim=claim)


def _check_payment(
    state: _State, command: PlaceHold | PayInvoice, ts: int, local: bool, claim: str | None = None
) -> Check:
    """A hold or an invoice payment: the checks of a transfer, the invoice's between the
    accounts' and the limits."""
    check = _check_move(state, command, command.destination, local)
    if check is None and claim is not None:
        status = _claim_status(state, claim)
        if status == "done":
            check = Code.INVOICE_ALREADY_PAID
        elif status == "pending":
            check = Code.INVOICE_PAYMENT_PENDING
    return check or _check_debit(
        state, command.account, command.amount, "transfer_out", ts, command.destination, local
    )


def _hold(
    state: _State,
    command: PlaceHold | PayInvoice,
    ts: int,
    digest: str,
    local: bool,
    deadline: int | None,
    invoice: str | None,
) -> Outputs:
    """Reserve the amount: pending debits on the source, pending credits on a local
    destination (else on @transit), so the available balance drops and the posted does not."""
    _use(state, command.account, "transfer_out", command.amount, ts)
    amount = command.amount
    state.change(command.account, debits_pending=amount)
    counter = TRANSIT
    if local:
        state.change(command.destination, credits_pending=amount)
        counter = command.destination
    event = replaced(
        _event(command, ts, "hold_placed", command.currency),
        hold_id=command.command_id,
        pending=_pair(command.account, counter, amount),
        invoice_id=invoice,
        counterparty=command.destination,
    )
    hold = Hold(
        source=command.account,
        destination=command.destination,
        amount=amount,
        currency=command.currency,
        deadline_ms=deadline,
        invoice_id=invoice,
    )
    result = _accepted(command, digest, amount, command.destination)
    return Outputs(result, [event], hold=hold)


def _post_hold(state: _State, command: PostHold, ts: int, digest: str) -> Outputs:
    found = _find_hold(state, command.account, command.hold_id)
    check: Check = _check_reserved(command.account)
    if check is None and command.amount is not None:
        check = _check_amount(command.amount, 1)
    check = check or _check_hold(found, ts, expiring=False)
    amount = command.amount
    if check is None:
        assert found is not None and found.hold is not None
        if amount is None:
            amount = found.hold.amount
        if amount > found.hold.amount:
            check = Code.AMOUNT_EXCEEDS_HOLD
    if check is not None:
        return _refused(command, check, digest)
    assert found is not None and amount is not None
    return _settle_hold(state, command, ts, digest, found, amount)


def _void_hold(state: _State, command: VoidHold | ExpireHold, ts: int, digest: str) -> Outputs:
    found = _find_hold(state, command.account, command.hold_id)
    expiring = isinstance(command, ExpireHold)
    check = _check_reserved(command.account) or _check_hold(
        found, ts, expiring=expiring, voiding=not expiring
    )
    if check is not None:
        return _refused(command, check, digest)
    assert found is not None
    return _release_hold(state, command, ts, digest, found, "expired" if expiring else "voided")


def _confirm_payment(
    state: _State, command: ConfirmPayment | FailPayment, ts: int, digest: str
) -> Outputs:
    """The gateway's answer to a payment through an external channel: post its hold in
    full, or void it."""
    claim = state.outcome(invoice_key(command.account, command.invoice_id))
    check = _check_reserved(command.account)
    found = None
    if check is None and claim is not None and claim.result is not None:
        check = Code.INVOICE_ALREADY_PAID
    elif check is None and claim is not None and claim.claimed_by is not None:
        found = state.outcome(_COMMAND + claim.claimed_by)
    if check is None and (found is None or found.hold is None):
        check = Code.PAYMENT_NOT_FOUND
    voiding = isinstance(command, FailPayment)
    refusal = check or _check_hold(found, ts, expiring=False, voiding=voiding)
    if refusal is not None:
        return _refused(command, refusal, digest)
    assert found is not None and found.hold is not None
    if isinstance(command, ConfirmPayment):
        return _settle_hold(state, command, ts, digest, found, found.hold.amount)
    return _release_hold(state, command, ts, digest, found, "voided")


def _find_hold(state: _State, account: str, hold_id: str) -> Outcome | None:
    """The outcome of the hold `hold_id` placed by `account`, or None."""
    found = state.outcome(_COMMAND + hold_id)
    if found is None or found.hold is None or found.hold.source != account:
        return None
    return found


_RESOLVED: dict[str, Code] = {
    "posting": Code.HOLD_ALREADY_POSTED,
    "posted": Code.HOLD_ALREADY_POSTED,
    "returned": Code.HOLD_ALREADY_POSTED,
    "voided": Code.HOLD_VOIDED,
    "expired": Code.HOLD_EXPIRED,
}


def _check_hold(found: Outcome | None, ts: int, *, expiring: bool, voiding: bool = False) -> Check:
    """Whether a hold may resolve now: found, not resolved, and by record time past its
    deadline to expire, not past it to post (a void releases it either way)."""
    if found is None or found.hold is None:
        return Code.HOLD_NOT_FOUND
    hold = found.hold
    if hold.status != "pending":
        return _RESOLVED[hold.status]
    passed = hold.deadline_ms is not None and ts >= hold.deadline_ms
    if expiring and not passed:
        return Code.HOLD_NOT_EXPIRED
    if not expiring and not voiding and passed:
        return Refusal(
            Code.HOLD_EXPIRED, f"the hold's deadline ({hold.deadline_ms}) passed at record time"
        )
    return None


def _settle_hold(
    state: _State,
    command: PostHold | ConfirmPayment,
    ts: int,
    digest: str,
    found: Outcome,
    amount: int,
) -> Outputs:
    """Post `amount` of a pending hold and release the rest; across partitions the posted
    amount travels as a transfer does."""
    hold = found.hold
    assert hold is not None
    local = state.is_local(hold.destination)
    counter = hold.destination if local else TRANSIT
    state.change(hold.source, debits_pending=-hold.amount)
    if local:
        state.change(hold.destination, credits_pending=-hold.amount)
    assert found.result is not None
    hold_key = _COMMAND + found.result.command_id
    status: Literal["posted", "posting"] = "posted" if local else "posting"
    state.put_outcome(hold_key, replaced(found, hold=replaced(hold, status=status, posted=amount)))
    event = replaced(
        _event(command, ts, "hold_posted", hold.currency),
        hold_id=hold_key.removeprefix(_COMMAND),
        released=_pair(hold.source, counter, hold.amount),
        invoice_id=hold.invoice_id,
    )
    outputs = _pay_out(state, command, digest, event, hold.destination, amount, local, hold.source)
    if hold.invoice_id is not None:
        claim = invoice_key(hold.source, hold.invoice_id)
        paid = outputs.result
        if paid is not None:  # landed at once
            entries = [f"{hold_key.removeprefix(_COMMAND)}:0", event.entry_id]
            receipt = _receipt_of_hold(hold, hold_key, amount, entries, ts)
            outputs = outputs._replace(receipt=receipt)
            state.put_outcome(claim, _paid_claim(state, claim, paid))
    return outputs


def _release_hold(
    state: _State,
    command: VoidHold | ExpireHold | FailPayment,
    ts: int,
    digest: str,
    found: Outcome,
    status: Literal["voided", "expired"],
) -> Outputs:
    hold = found.hold
    assert hold is not None and found.result is not None
    hold_id = found.result.command_id
    counter = TRANSIT
    state.change(hold.source, debits_pending=-hold.amount)
    if state.is_local(hold.destination):
        state.change(hold.destination, credits_pending=-hold.amount)
        counter = hold.destination
    state.put_outcome(_COMMAND + hold_id, replaced(found, hold=replaced(hold, status=status)))
    kind: Literal["hold_voided", "hold_expired"] = (
        "hold_voided" if status == "voided" else "hold_expired"
    )
    event = replaced(
        _event(command, ts, kind, hold.currency),
        hold_id=hold_id,
        released=_pair(hold.source, counter, hold.amount),
        invoice_id=hold.invoice_id,
    )
    result = _accepted(command, digest, hold.amount, hold.destination)
    return Outputs(result, [event])


def _reverse(state: _State, command: Reverse, ts: int, digest: str) -> Outputs:
    account = state.account(command.account)
    check: Check = _check_reserved(command.account) or _check_open(account)
    original = None
    if check is None:
        original = _original(state, command.account, command.target)
        if original is None:
            check = Code.ORIGINAL_NOT_FOUND
        elif original.result is None:
            raise AssertionError("an original without a result is not found")
        elif original.result.type == "reverse":
            check = Code.REVERSAL_OF_REVERSAL
        elif (
            original.result.status != "accepted"
            or original.result.type not in REVERSIBLE
            or original.hold is not None
        ):
            check = Code.NOT_REVERSIBLE
        elif _claim_status(state, _REVERSAL + command.target) != "free":
            check = Code.ALREADY_REVERSED
    if check is not None:
        return _refused(command, check, digest)
    assert account is not None and original is not None and original.result is not None
    done = original.result
    amount = done.amount
    assert amount is not None, f"accepted {done.type} {done.command_id} without its amount"
    if done.type == "withdraw":  # the money comes back from @world
        if account.credit_headroom < amount:
            return _refused(command, Code.OVERFLOW, digest)
        postings = _move(state, WORLD, command.account, amount)
        event = _event(command, ts, "reversal", account.currency, postings=postings)
        event = replaced(event, reverses=command.target)
        result = _accepted(command, digest, amount)
        return Outputs(result, [event], claim=_REVERSAL + command.target)
    counter = WORLD if done.type == "deposit" else done.account
    assert counter is not None
    check = None
    local = counter == WORLD or state.is_local(counter)
    if counter != WORLD and local:
        other = state.account(counter)
        if other is None or other.status == "closed":
            check = Refusal(
                Code.ACCOUNT_CLOSED, f"{counter}, which the money goes back to, is closed"
            )
    check = check or _check_debit(state, command.account, amount, None, ts, counter, local)
    if check == Code.INSUFFICIENT_FUNDS:
        check = Refusal(
            Code.INSUFFICIENT_FUNDS,
            f"reversing {command.target} would take {command.account} past its floor",
        )
    if check is not None:
        return _refused(command, check, digest)
    event = replaced(_event(command, ts, "reversal", account.currency), reverses=command.target)
    outputs = _pay_out(state, command, digest, event, counter, amount, local)
    return outputs._replace(claim=_REVERSAL + command.target)


def _original(state: _State, account: str, target: str) -> Outcome | None:
    """The outcome of the command `target` on this partition in which `account` is the side a
    reversal takes the money from: a deposit's or withdrawal's account, else the destination
    (a cross-partition transfer is known there by its credit leg)."""
    for key in (_COMMAND + target, _CREDIT + target):
        found = state.outcome(key)
        if found is None or found.result is None:
            continue
        result = found.result
        if result.status == "accepted" and result.type in REVERSIBLE and found.hold is None:
            side = result.account if result.type in ("deposit", "withdraw") else result.destination
        else:  # not reversible (found, to say so) from either side
            side = account if account in (result.account, result.destination) else None
        if side == account:
            return found
    return None


def _claim_status(state: _State, key: str) -> Literal["free", "pending", "done"]:
    """An invoice's, a reversal target's or an alias's claim: done once its money moved (an
    alias's once registered), pending while its payment or reversal may still do so, free
    when there is none (or it failed)."""
    claim = state.outcome(key)
    if claim is None:
        return "free"
    if claim.result is not None:
        return "done"
    assert claim.claimed_by is not None, f"claim {key} names no command"
    by = state.outcome(_COMMAND + claim.claimed_by)
    assert by is not None, f"claim {key} names {claim.claimed_by}, which was never decided"
    if by.hold is not None:
        return "pending" if by.hold.status in ("pending", "posting") else "free"
    if by.result is None:
        return "pending"
    return "done" if by.result.status == "accepted" else "free"


def _paid_claim(state: _State, key: str, result: Result) -> Outcome:
    """The claim `key`, final now that the money it claimed for has moved."""
    claim = state.outcome(key)
    assert claim is not None and claim.claimed_by is not None
    return replaced(claim, result=result)


def _register_alias(state: _State, command: RegisterAlias, ts: int, digest: str) -> Outputs:
    """The alias's claim makes it unique: only this partition's writer decides it. The
    target lives on another partition, so it is not checked; an alias event moves nothing."""
    assert command.account.startswith(ALIAS_PREFIX) and not _check_reserved(command.target)
    claim = command.account  # the alias is the key of its own claim (`alias:<name>`)
    if _claim_status(state, claim) != "free":
        return _refused(command, Code.ALIAS_TAKEN, digest)
    # After this point the registration must succeed.
    event = replaced(_event(command, ts, "alias_registered", ""), target=command.target)
    result = _accepted(command, digest, None, command.target)
    return Outputs(result, [event], claim=claim)


def _pay_out(
    state: _State,
    command: Command,
    digest: str,
    event: JournalEvent,
    destination: str,
    amount: int,
    local: bool,
    source: str | None = None,
) -> Outputs:
    """Move `amount` from `source` (the command's account) to `destination` in `event`: at
    once when the destination is `local` (or @world), else to @transit with a credit leg,
    the result waiting for the destination's writer."""
    source = source or command.account
    if destination != WORLD:
        other = destination if event.account == source else source
        event = replaced(event, counterparty=other)
    if local:
        postings = _move(state, source, destination, amount)
        result = _accepted(command, digest, amount, None if destination == WORLD else destination)
        return Outputs(result, [replaced(event, postings=postings)])
    postings = _move(state, source, TRANSIT, amount)
    state.change(source, debits_in_transit=amount)
    leg = Leg(
        type="credit",
        transfer_id=command.command_id,
        source=source,
        destination=destination,
        amount=amount,
        currency=event.currency,
        reply_partition=command.reply_partition,
        payload_digest=digest,
        command=command.type,
        metadata=command.metadata,
        invoice_id=event.invoice_id,
    )
    # The result comes from the destination's writer, once the money has landed.
    return Outputs(journal=[replaced(event, postings=postings)], legs=[leg])


def _check_reserved(*names: str) -> Code | None:
    """System accounts and aliases are never an account a command acts on or pays."""
    reserved = any(name.startswith(("@", ALIAS_PREFIX)) for name in names)
    return Code.ACCOUNT_RESERVED if reserved else None


def _check_amount(amount: int, smallest: int) -> Code | None:
    if amount < smallest:
        return Code.INVALID_AMOUNT
    return Code.AMOUNT_TOO_LARGE if amount > AMOUNT_MAX else None


def _check_open(account: AccountState | None) -> Code | None:
    if account is None:
        return Code.ACCOUNT_NOT_FOUND
    return Code.ACCOUNT_CLOSED if account.status == "closed" else None


def _check_move(
    state: _State,
    command: Deposit | Withdraw | Transfer | PlaceHold | PayInvoice,
    destination: str | None,
    local: bool,
) -> Code | None:
    """The checks of a command that moves money, up to the accounts' currency: the
    destination's when it is local (its own writer checks it otherwise)."""
    names = [command.account] if destination is None else [command.account, destination]
    check = _check_reserved(*names) or _check_amount(command.amount, 1)
    if check is not None:
        return check
    if destination == command.account:
        return Code.ACCOUNTS_MUST_BE_DIFFERENT
    accounts = [state.account(name) for name in (names if local else names[:1])]
    for account in accounts:
        if account is None:
            return Code.ACCOUNT_NOT_FOUND
    for account in accounts:
        if account is not None and account.status == "closed":
            return Code.ACCOUNT_CLOSED
    for account in accounts:
        if account is not None and account.currency != command.currency:
            return Code.CURRENCY_MISMATCH
    return None


def _check_debit(
    state: _State,
    name: str,
    amount: int,
    action: Action | None,
    ts: int,
    counter: str | None,
    local: bool = True,
) -> Check:
    """Limits, funds and overflow of taking `amount` from `name` for `counter` (another
    account, @world, or None for @world): a `local` counter must take the credit; a remote
    one may refuse it, so a refund must fit."""
    account = state.account(name)
    assert account is not None
    if action is not None:
        breach = _limit_breach(account, action, amount, ts)
        if breach is not None:
            return breach
    if account.available < amount:
        return Code.INSUFFICIENT_FUNDS
    if account.debits_posted + account.debits_pending + amount > BALANCE_MAX:
        return Code.OVERFLOW
    if counter is None or counter == WORLD:
        return None
    if not local:
        return Code.OVERFLOW if account.credit_headroom < amount else None
    other = state.account(counter)
    if other is not None and other.credit_headroom < amount:
        return Code.OVERFLOW
    return None


def _check_credit_side(state: _State, name: str, amount: int, action: Action, ts: int) -> Check:
    account = state.account(name)
    assert account is not None
    breach = _limit_breach(account, action, amount, ts)
    if breach is not None:
        return breach
    return Code.OVERFLOW if account.credit_headroom < amount else None


def _limit_breach(account: AccountState, action: Action, amount: int, ts: int) -> Refusal | None:
    """The first of the account's limits that `amount` more of `action` would pass."""
    limits = account.limits
    if limits is None:
        return None
    largest = limits.transaction_amount_max
    if largest is not None and amount > largest:
        return _breach("transaction_amount_max", largest, 0, amount)
    same_day = _day(account, ts) == account.day
    used = account.used_amount.get(action, 0) if same_day else 0
    most = limits.daily_amount_max.get(action)
    if most is not None and used + amount > most:
        return _breach(f"daily_amount_max.{action}", most, used, amount)
    count = account.used_count.get(action, 0) if same_day else 0
    most = limits.daily_count_max.get(action)
    if most is not None and count + 1 > most:
        return _breach(f"daily_count_max.{action}", most, count, 1)
    return None


def _breach(limit: str, value: int, used: int, requested: int) -> Refusal:
    reason = f"{limit} is {value}: used {used} today, this command {requested}"
    if limit == "transaction_amount_max":
        reason = f"{limit} is {value}, this command moves {requested}"
    return Refusal(Code.LIMIT_EXCEEDED, reason, LimitBreach(limit, value, used, requested))


def _day(account: AccountState, ts: int) -> int:
    """The UTC day of record time `ts`, never before the last day the account counted (a
    record stamped earlier than one decided before it counts toward the later day)."""
    return max(ts // DAY_MS, account.day)


def _use(state: _State, name: str, action: Action, amount: int, ts: int) -> int | None:
    """Count an accepted command toward the account's daily usage, when it has limits (an
    account without any is not counted, so that it costs nothing); the day it counted
    toward, None when not counted."""
    account = state.account(name)
    assert account is not None
    if account.limits is None:
        return None
    day = _day(account, ts)
    amounts = dict(account.used_amount) if day == account.day else {}
    counts = dict(account.used_count) if day == account.day else {}
    amounts[action] = amounts.get(action, 0) + amount
    counts[action] = counts.get(action, 0) + 1
    state.put(name, replaced(account, day=day, used_amount=amounts, used_count=counts))
    return day


def _unuse(state: _State, name: str, action: Action, amount: int, day: int | None) -> None:
    """Take back what a command counted toward `day` (a transfer its destination refused: a
    rejection counts toward nothing), while the account is still in that day."""
    account = state.account(name)
    assert account is not None
    if day is None or account.limits is None or day != account.day:
        return
    amounts, counts = dict(account.used_amount), dict(account.used_count)
    amounts[action] = max(amounts.get(action, 0) - amount, 0)
    counts[action] = max(counts.get(action, 0) - 1, 0)
    state.put(name, replaced(account, used_amount=amounts, used_count=counts))


def _limits(given: AccountLimits) -> Limits:
    return from_builtins(given.model_dump(), Limits)


def _pair(debit: str, credit: str, amount: int) -> list[Posting]:
    return [Posting(account=debit, debit=amount), Posting(account=credit, credit=amount)]


def _event(
    command: Command,
    ts: int,
    kind: Any,
    currency: str,
    postings: list[Posting] | None = None,
    overdraft_limit: int | None = None,
) -> JournalEvent:
    """The journal event of a command: entry `<command_id>:0`."""
    return JournalEvent(
        entry_id=f"{command.command_id}:0",
        kind=kind,
        command_id=command.command_id,
        account=command.account,
        currency=currency,
        postings=postings or [],
        timestamp_ms=ts,
        overdraft_limit=overdraft_limit,
        metadata=command.metadata,
    )


def _receipt(command: PayInvoice, payment_id: str, entries: list[str], ts: int) -> Receipt:
    return Receipt(
        invoice_id=command.invoice_id,
        payer=command.account,
        payee=command.destination,
        amount=command.amount,
        currency=command.currency,
        payment_id=payment_id,
        entry_ids=entries,
        timestamp_ms=ts,
    )


def _receipt_of_hold(
    hold: Hold, hold_key: str, amount: int, entries: list[str], ts: int
) -> Receipt:
    assert hold.invoice_id is not None
    return Receipt(
        invoice_id=hold.invoice_id,
        payer=hold.source,
        payee=hold.destination,
        amount=amount,
        currency=hold.currency,
        payment_id=hold_key.removeprefix(_COMMAND),
        entry_ids=entries,
        timestamp_ms=ts,
    )


_HANDLERS: dict[type, Callable[[_State, Any, int, str], Outputs]] = {
    OpenAccount: _open_account,
    SetLimits: _set_limits,
    CloseAccount: _close_account,
    Deposit: _deposit,
    Withdraw: _withdraw,
    Transfer: _transfer,
    PlaceHold: _place_hold,
    PostHold: _post_hold,
    VoidHold: _void_hold,
    ExpireHold: _void_hold,
    Reverse: _reverse,
    PayInvoice: _pay_invoice,
    ConfirmPayment: _confirm_payment,
    FailPayment: _confirm_payment,
    RegisterAlias: _register_alias,
}


# Legs.


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
    if original.result is not None:  # a repeat: re-send what it produced here
        if leg.type == "refund":  # the result and the refund event
            result = replaced(original.result, duplicate=True)
            decision.results.append(Reply(result, leg.reply_partition))
            decision.journal.extend(original.journal[1:])
        if original.receipt is not None:
            decision.receipts.append(original.receipt)
        return
    # After this point the transfer must end here: it matches what was sent.
    if leg.type == "settle":
        finished = _finish_at_source(state, leg, incoming, _leg_result(leg, "accepted", None), [])
        if finished.receipt is not None:
            decision.receipts.append(finished.receipt)
        return
    postings = _move(state, TRANSIT, leg.source, leg.amount)
    event = state.stamp(_leg_event(leg, 2, "transfer_refund", postings, incoming.timestamp_ms))
    assert leg.code is not None  # a refund's code is one of REFUND_CODES (`_check_return`)
    result = _leg_result(leg, "rejected", Code(leg.code))
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
        counterparty=leg.source if leg.account == leg.destination else leg.destination,
        invoice_id=leg.invoice_id,
    )


def _finish_at_source(
    state: _State, leg: Leg, incoming: Incoming, result: Result, journal: list[JournalEvent]
) -> Outcome:
    """The transfer has landed or come back: it is no longer in transit from its source, and
    the source's record of the command now carries the final answer (and no legs to re-send,
    since the destination has them). Its `origin` becomes the leg's, the last input that
    changed it. What the money was for ends with it: a hold posted across partitions is
    posted (or returned), and a paid invoice gets its receipt and its claim made final."""
    # The leg matches the transfer posted from this account, which has not ended yet.
    source = state.change(leg.source, debits_in_transit=-leg.amount)
    assert source.debits_in_transit >= 0
    key = outcome_key(leg)
    original = state.outcome(key)
    assert original is not None
    sent = original.journal[0]
    landed = leg.type == "settle"
    receipt = None
    if sent.kind == "hold_posted":
        assert sent.hold_id is not None
        hold_key = _COMMAND + sent.hold_id
        held = state.outcome(hold_key)
        assert held is not None and held.hold is not None and held.hold.status == "posting"
        status: Literal["posted", "returned"] = "posted" if landed else "returned"
        state.put_outcome(hold_key, replaced(held, hold=replaced(held.hold, status=status)))
        if landed and held.hold.invoice_id is not None:
            entries = [f"{sent.hold_id}:0", sent.entry_id, f"{leg.transfer_id}:1"]
            receipt = _receipt_of_hold(
                held.hold, hold_key, leg.amount, entries, incoming.timestamp_ms
            )
    elif sent.kind == "invoice_payment" and landed:
        assert sent.invoice_id is not None
        receipt = Receipt(
            invoice_id=sent.invoice_id,
            payer=leg.source,
            payee=leg.destination,
            amount=leg.amount,
            currency=leg.currency,
            payment_id=leg.transfer_id,
            entry_ids=[sent.entry_id, f"{leg.transfer_id}:1"],
            timestamp_ms=incoming.timestamp_ms,
        )
    if not landed:
        _unuse(state, leg.source, "transfer_out", leg.amount, original.counted)
    if landed and sent.invoice_id is not None:
        claim = invoice_key(leg.source, sent.invoice_id)
        state.put_outcome(claim, _paid_claim(state, claim, result))
    if landed and sent.reverses is not None:
        claim = _REVERSAL + sent.reverses
        state.put_outcome(claim, _paid_claim(state, claim, result))
    update = {
        "result": result,
        "journal": [*original.journal, *journal],
        "legs": [],
        "origin": incoming.origin or original.origin,
        "receipt": receipt,
    }
    finished = replaced(original, **update)
    state.put_outcome(key, finished)
    return finished


def _check_credit(state: _State, leg: Leg) -> Code | None:
    account = state.account(leg.destination)
    if account is None:
        return Code.ACCOUNT_NOT_FOUND
    if account.status == "closed":
        return Code.ACCOUNT_CLOSED
    if account.currency != leg.currency:
        return Code.CURRENCY_MISMATCH
    if account.credit_headroom < leg.amount:
        return Code.OVERFLOW
    return None


def _move(state: _State, debit: str, credit: str, amount: int) -> list[Posting]:
    """Post `amount` from `debit` to `credit`; system accounts are journal-only."""
    for name, side in ((debit, "debits_posted"), (credit, "credits_posted")):
        if not name.startswith("@"):
            updated = state.change(name, **{side: amount})
            assert updated.debits_posted <= BALANCE_MAX and updated.credits_posted <= BALANCE_MAX
    return _pair(debit, credit, amount)


# Results.


def _accepted(
    command: Command, digest: str, amount: int | None = None, destination: str | None = None
) -> Result:
    return Result(
        command_id=command.command_id,
        status="accepted",
        type=command.type,
        account=command.account,
        payload_digest=digest,
        amount=amount,
        destination=destination,
        metadata=command.metadata,
    )


def _rejected(command: Command, check: Code | Refusal, digest: str) -> Result:
    refusal = check if isinstance(check, Refusal) else Refusal(check)
    return Result(
        command_id=command.command_id,
        status="rejected",
        code=refusal.code,
        type=command.type,
        account=command.account,
        reason=refusal.reason or refusal.code.reason,
        payload_digest=digest,
        destination=getattr(command, "destination", None),
        limit=refusal.limit,
        metadata=command.metadata,
    )


def _refused(command: Command, check: Code | Refusal, digest: str) -> Outputs:
    return Outputs(result=_rejected(command, check, digest))


def _leg_result(leg: Leg, status: Literal["accepted", "rejected"], code: Code | None) -> Result:
    accepted = status == "accepted"
    return Result(
        command_id=leg.transfer_id,
        status=status,
        code=code,
        type=leg.command,
        account=leg.source,
        reason=code.reason if code else None,
        payload_digest=leg.payload_digest,
        amount=leg.amount if accepted else None,
        destination=leg.destination,
        metadata=leg.metadata,
    )
