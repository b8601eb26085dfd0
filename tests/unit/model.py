"""An independent reference ledger for the stateful tests (our `auditor.zig`).

Plain dicts of accounts, holds, invoice and reversal claims, aliases and seen ids; it imports
nothing from `ledger_stream.core`. For every command or leg a partition's writer decides, it
predicts the result, the journal entries, the legs and the receipts, from the rules of the
README ("Commands", "Limits", "Holds (two-phase transfers)", "Invoice payments", "Reversals",
"Aliases", "Rejection codes, in precedence order", "Cross-partition transfers"): the first
code that applies by level wins, cross-partition money goes through `@transit` with a credit
leg answered by a settle or a refund leg, repeats are answered with the original outcome,
legs that no transfer sent are refused.

Where the README leaves something open (the order of two checks at one level, what a field
holds), the model takes the core's reading; each such place says `README silent` or
`README ambiguous`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

# Written out again rather than imported, so a changed constant in the code is noticed.
AMOUNT_MAX = 2**53 - 1
BALANCE_MAX = 2**63 - 1
DAY_MS = 86_400_000
WORLD = "@world"
TRANSIT = "@transit"
ALIAS = "alias:"  # what an alias starts with ("Aliases")
# The codes a destination refuses a credit with; a refund carrying any other is forged.
DESTINATION_CODES = (
    "exists_with_different_payload",
    "account_not_found",
    "account_closed",
    "currency_mismatch",
    "overflow",
)
# What a reversal may take back ("Reversals").
REVERSIBLE = ("deposit", "withdraw", "transfer", "pay_invoice", "post_hold", "confirm_payment")
# What a command counts toward in the daily limits ("Limits"); others count toward nothing.
ACTIONS = {
    "deposit": "deposit",
    "withdraw": "withdrawal",
    "transfer": "transfer_out",
    "hold": "transfer_out",
    "pay_invoice": "transfer_out",
}
# The answer to resolving a hold that has resolved ("Holds"). `posting`: posted across
# partitions, its credit leg not back yet (README silent; it has been posted already).
RESOLVED = {
    "posting": "hold_already_posted",
    "posted": "hold_already_posted",
    "returned": "hold_already_posted",
    "voided": "hold_voided",
    "expired": "hold_expired",
}

Postings = tuple[tuple[str, int, int], ...]  # (account, debit, credit)
Metadata = tuple[tuple[str, str], ...] | None  # sorted items
# (transaction_amount_max, daily_amount_max items, daily_count_max items), items sorted.
ModelLimits = tuple[int | None, tuple[tuple[str, int], ...], tuple[tuple[str, int], ...]]


def limits_of(limits: Any) -> ModelLimits | None:
    """The model's view of limits as a command gives them or as the writer keeps them."""
    if limits is None:
        return None
    return (
        limits.transaction_amount_max,
        tuple(sorted(limits.daily_amount_max.items())),
        tuple(sorted(limits.daily_count_max.items())),
    )


@dataclass
class ModelAccount:
    currency: str
    overdraft_limit: int
    limits: ModelLimits | None = None
    debits: int = 0
    credits: int = 0
    debits_pending: int = 0
    credits_pending: int = 0
    sent: int = 0  # debited to @transit by transfers not yet settled or refunded
    closed: bool = False
    # Daily use, counted only while the account has limits.
    day: int = 0
    used_amount: dict[str, int] = field(default_factory=dict)
    used_count: dict[str, int] = field(default_factory=dict)

    @property
    def balance(self) -> int:
        return self.credits - self.debits

    @property
    def available(self) -> int:
        """Balance less pending debits plus the overdraft limit ("Holds")."""
        return self.balance - self.debits_pending + self.overdraft_limit

    @property
    def headroom(self) -> int:
        """Credits it can still take, keeping room for refunds of what it has in transit and
        for the holds that may post to it ("overflow counts ...")."""
        return BALANCE_MAX - self.credits - self.credits_pending - self.sent


@dataclass
class ModelHold:
    source: str
    destination: str
    amount: int
    currency: str
    deadline_ms: int | None
    invoice_id: str | None
    # pending, posting (posted across partitions, its leg not back), posted, voided,
    # expired, returned (posted, refused by the destination's writer)
    status: str = "pending"
    posted: int = 0

    def passed(self, ts: int) -> bool:
        """Whether its deadline has passed by record time `ts` (a record stamped at the
        deadline is no earlier than it: passed)."""
        return self.deadline_ms is not None and ts >= self.deadline_ms


@dataclass
class _Claim:
    """An invoice's payment: the command that pays it, and whether the money landed."""

    payment_id: str
    paid: bool = False


@dataclass(frozen=True)
class _Send:
    """What a cross-partition move was for, to finish when its leg comes back."""

    hold_id: str | None = None
    invoice_id: str | None = None
    # A transfer or ledger payment from an account with limits: the day it counted toward.
    counted: int | None = None


@dataclass(frozen=True)
class Answer:
    """A result as the model expects it, with the results partition it goes to."""

    command_id: str
    status: str
    code: str | None
    duplicate: bool
    type: str
    account: str
    partition: int | None
    amount: int | None = None
    destination: str | None = None
    limit: tuple[str, int, int, int] | None = None  # (limit, value, used, requested)
    metadata: Metadata = None


@dataclass(frozen=True)
class ModelLeg:
    type: str
    transfer_id: str
    source: str
    destination: str
    amount: int
    currency: str
    reply_partition: int | None
    code: str | None
    command: str = "transfer"
    metadata: Metadata = None
    invoice_id: str | None = None


@dataclass(frozen=True)
class ModelEntry:
    entry_id: str
    command_id: str
    kind: str
    account: str
    currency: str
    timestamp_ms: int
    postings: Postings = ()
    pending: Postings | None = None
    released: Postings | None = None
    hold_id: str | None = None
    reverses: str | None = None
    invoice_id: str | None = None
    overdraft_limit: int | None = None
    limits: ModelLimits | None = None
    low_balance: int | None = None
    target: str | None = None
    metadata: Metadata = None


@dataclass(frozen=True)
class ModelReceipt:
    invoice_id: str
    payer: str
    payee: str
    amount: int
    currency: str
    payment_id: str
    entry_ids: tuple[str, ...]
    timestamp_ms: int


@dataclass(frozen=True)
class Prediction:
    """What deciding one input emits: an answer or none, journal entries, legs, receipts;
    or, for a leg that no transfer sent, a refusal (it emits and changes nothing)."""

    answer: Answer | None = None
    entries: tuple[ModelEntry, ...] = ()
    legs: tuple[ModelLeg, ...] = ()
    receipts: tuple[ModelReceipt, ...] = ()
    refused: bool = False
    forwards: tuple[Any, ...] = ()  # commands sent on to the writer of an alias or account


@dataclass
class _Seen:
    payload: tuple[Any, ...]
    prediction: Prediction
    names: tuple[str | None, ...] = ()  # the accounts the input named


class _Refused(Exception):
    """A command refused with `code` (and, for limit_exceeded, which limit)."""

    def __init__(self, code: str, limit: tuple[str, int, int, int] | None = None) -> None:
        super().__init__(code)
        self.code, self.limit = code, limit


def _refuse_if(condition: bool, code: str) -> None:
    if condition:
        raise _Refused(code)


@dataclass
class ModelLedger:
    partition_of: Callable[[str], int]
    default_limits: ModelLimits | None = None
    payment_timeout_ms: int = 15 * 60 * 1000
    accounts: dict[str, ModelAccount] = field(default_factory=dict)
    commands: dict[tuple[int, str], _Seen] = field(default_factory=dict)
    legs: dict[tuple[int, str, str], _Seen] = field(default_factory=dict)
    transit: dict[str, int] = field(default_factory=dict)  # posted on @transit, by transfer id
    holds: dict[tuple[int, str], ModelHold] = field(default_factory=dict)
    invoices: dict[tuple[int, str, str], _Claim] = field(default_factory=dict)  # (p, payer, id)
    reversals: dict[tuple[int, str], str] = field(default_factory=dict)  # (p, target): reversal
    aliases: dict[tuple[int, str], str] = field(default_factory=dict)  # (p, alias): its account
    # (p, command id): a command refused on p because an alias of p it named was not known
    unresolved: dict[tuple[int, str], _Seen] = field(default_factory=dict)
    sends: dict[tuple[int, str], _Send] = field(default_factory=dict)

    def apply(self, partition: int, message: Any, ts: int) -> Prediction:
        """Predict (and apply) one input decided by `partition`'s writer at record time `ts`."""
        if hasattr(message, "transfer_id"):
            return self._apply_leg(partition, message, ts)
        return self._apply_command(partition, message, ts)

    def answers(self, partition: int) -> list[tuple[str, Answer, tuple[str | None, ...]]]:
        """(id, answer, accounts named) of `partition`'s answered commands and credit legs,
        for a test to aim reversals at."""
        seen = [(key[1], s) for key, s in self.commands.items() if key[0] == partition]
        seen += [(key[2], s) for key, s in self.legs.items() if key[:2] == (partition, "credit")]
        return [(i, s.prediction.answer, s.names) for i, s in seen if s.prediction.answer]

    # Commands

    def _apply_command(self, partition: int, command: Any, ts: int) -> Prediction:
        if _aliases(command):
            return self._resolve(partition, command, ts)
        payload = _command_payload(command)
        seen = self.commands.get((partition, command.command_id))
        if seen is not None:
            if seen.payload == payload:
                return _repeat(seen.prediction, command.reply_partition)
            named = getattr(command, "destination", None)  # a rejection names it too
            answer = self._answer(command, "exists_with_different_payload", destination=named)
            return Prediction(answer=answer)
        handler = getattr(self, "_" + command.type)
        try:
            prediction = handler(partition, command, ts)
        except _Refused as refused:
            named = getattr(command, "destination", None)
            answer = self._answer(command, refused.code, destination=named, limit=refused.limit)
            prediction = Prediction(answer=answer)
        names = (command.account, getattr(command, "destination", None))
        self.commands[(partition, command.command_id)] = _Seen(payload, prediction, names)
        return prediction

    def _resolve(self, partition: int, command: Any, ts: int) -> Prediction:
        """The README's "Aliases": the writer of an alias's partition puts the account in its
        place (all the aliases of its partition at once), then the command goes on to the
        next alias's writer, or to its account's, which decides it (at once when that is this
        writer).
        An alias not registered refuses the command, for good, on the alias's partition."""
        here = [(name, alias) for name, alias in _aliases(command) if self._local(partition, alias)]
        if not here:
            return Prediction(forwards=(command,))
        payload = _command_payload(command)
        seen = self.unresolved.get((partition, command.command_id))
        if seen is not None:
            if seen.payload == payload:
                return _repeat(seen.prediction, command.reply_partition)
            named = getattr(command, "destination", None)
            answer = self._answer(command, "exists_with_different_payload", destination=named)
            return Prediction(answer=answer)
        update = {}
        for name, alias in here:
            target = self.aliases.get((partition, alias))
            if target is None:
                named = getattr(command, "destination", None)
                prediction = Prediction(
                    answer=self._answer(command, "alias_not_found", destination=named)
                )
                self.unresolved[(partition, command.command_id)] = _Seen(payload, prediction)
                return prediction
            update[name] = target
        resolved = command.model_copy(update=update)
        if _aliases(resolved) or not self._local(partition, resolved.account):
            return Prediction(forwards=(resolved,))
        return self._apply_command(partition, resolved, ts)

    def _answer(
        self,
        command: Any,
        code: str | None = None,
        *,
        amount: int | None = None,
        destination: str | None = None,
        limit: tuple[str, int, int, int] | None = None,
    ) -> Answer:
        return Answer(
            command_id=command.command_id,
            status="accepted" if code is None else "rejected",
            code=code,
            duplicate=False,
            type=command.type,
            account=command.account,
            partition=command.reply_partition,
            amount=amount,
            destination=destination,
            limit=limit,
            metadata=_metadata(command.metadata),
        )

    def _entry(self, command: Any, ts: int, kind: str, currency: str, **fields: Any) -> ModelEntry:
        """The journal event of a command: entry `<command_id>:0`, with its metadata."""
        return ModelEntry(
            entry_id=f"{command.command_id}:0",
            command_id=command.command_id,
            kind=kind,
            account=command.account,
            currency=currency,
            timestamp_ms=ts,
            metadata=_metadata(command.metadata),
            **fields,
        )

    def _local(self, partition: int, name: str) -> bool:
        return self.partition_of(name) == partition

    # The checks, each at its level of the table.

    def _reserved(self, *names: str | None) -> None:
        """System accounts, and aliases where an account goes."""
        _refuse_if(
            any(n is not None and (n.startswith("@") or n.startswith(ALIAS)) for n in names),
            "account_reserved",
        )

    def _open(self, name: str) -> ModelAccount:
        account = self.accounts.get(name)
        _refuse_if(account is None, "account_not_found")
        assert account is not None
        _refuse_if(account.closed, "account_closed")
        return account

    def _check_move(self, partition: int, command: Any, destination: str | None) -> ModelAccount:
        """A command that moves money, up to the currency (levels 2 to 9); a destination is
        checked after the account, and only when it is on this partition."""
        self._reserved(command.account, destination)
        _refuse_if(command.amount <= 0, "invalid_amount")
        _refuse_if(command.amount > AMOUNT_MAX, "amount_too_large")
        _refuse_if(destination == command.account, "accounts_must_be_different")
        names = [command.account]
        if destination is not None and self._local(partition, destination):
            names.append(destination)
        accounts = [self.accounts.get(name) for name in names]
        _refuse_if(any(a is None for a in accounts), "account_not_found")
        _refuse_if(any(a.closed for a in accounts if a is not None), "account_closed")
        _refuse_if(
            any(a.currency != command.currency for a in accounts if a is not None),
            "currency_mismatch",
        )
        return self.accounts[command.account]

    def _check_limits(self, account: ModelAccount, action: str, amount: int, ts: int) -> None:
        """Level 16: transaction_amount_max, then the day's amount, then its count. `used`
        is the day's use before the command (README silent for transaction_amount_max,
        which has no day: 0)."""
        if account.limits is None:
            return
        largest, daily_amounts, daily_counts = account.limits
        if largest is not None and amount > largest:
            raise _Refused("limit_exceeded", ("transaction_amount_max", largest, 0, amount))
        same_day = _day(account, ts) == account.day
        used = account.used_amount.get(action, 0) if same_day else 0
        most = dict(daily_amounts).get(action)
        if most is not None and used + amount > most:
            raise _Refused("limit_exceeded", (f"daily_amount_max.{action}", most, used, amount))
        count = account.used_count.get(action, 0) if same_day else 0
        most = dict(daily_counts).get(action)
        if most is not None and count + 1 > most:
            raise _Refused("limit_exceeded", (f"daily_count_max.{action}", most, count, 1))

    def _check_funds(self, account: ModelAccount, amount: int) -> None:
        """Levels 17 and 18 of the debit: the available balance, then the posted debits
        with the pending ones (a hold may post)."""
        _refuse_if(account.available < amount, "insufficient_funds")
        _refuse_if(account.debits + account.debits_pending + amount > BALANCE_MAX, "overflow")

    def _check_counter(
        self, partition: int, account: ModelAccount, counter: str, amount: int
    ) -> None:
        """Level 18 of the credit side: a local counter must take it; for a remote one the
        refund must fit back into the account."""
        if counter == WORLD:
            return
        if self._local(partition, counter):
            _refuse_if(self.accounts[counter].headroom < amount, "overflow")
        else:
            _refuse_if(account.headroom < amount, "overflow")

    def _use(self, account: ModelAccount, action: str, amount: int, ts: int) -> None:
        """Count an accepted command toward its day, when the account has limits."""
        if account.limits is None:
            return
        day = _day(account, ts)
        if day != account.day:
            account.day, account.used_amount, account.used_count = day, {}, {}
        account.used_amount[action] = account.used_amount.get(action, 0) + amount
        account.used_count[action] = account.used_count.get(action, 0) + 1

    # Handlers, one per command type: the checks, then what an accepted command does.

    def _open_account(self, partition: int, command: Any, ts: int) -> Prediction:
        self._reserved(command.account)
        _refuse_if(command.overdraft_limit < 0, "invalid_amount")
        _refuse_if(command.overdraft_limit > AMOUNT_MAX, "amount_too_large")
        _refuse_if(command.account in self.accounts, "account_exists")
        limits = self.default_limits if command.limits is None else limits_of(command.limits)
        self.accounts[command.account] = ModelAccount(
            command.currency, command.overdraft_limit, limits
        )
        entry = self._entry(
            command,
            ts,
            "account_opened",
            command.currency,
            overdraft_limit=command.overdraft_limit,
            limits=limits,
            low_balance=command.low_balance,
        )
        return Prediction(self._answer(command), (entry,))

    def _set_limits(self, partition: int, command: Any, ts: int) -> Prediction:
        self._reserved(command.account)
        account = self._open(command.account)
        overdraft = command.overdraft_limit
        # Not below what the account owes: its balance less its pending debits (README:
        # "not below what the account already owes"; the holds count, as in `available`).
        if overdraft is not None:
            _refuse_if(
                account.balance - account.debits_pending + overdraft < 0, "insufficient_funds"
            )
            account.overdraft_limit = overdraft
        if command.limits is not None:
            account.limits = limits_of(command.limits)
        entry = self._entry(
            command,
            ts,
            "limits_set",
            account.currency,
            overdraft_limit=account.overdraft_limit,
            limits=account.limits,
            low_balance=command.low_balance,  # as given: the writer does not keep it
        )
        return Prediction(self._answer(command), (entry,))

    def _register_alias(self, partition: int, command: Any, ts: int) -> Prediction:
        """An alias names one account, for good: the first registration on its partition
        wins. The target is on another partition, so nothing is checked of it; the command's
        syntax (`alias:` account, a customer account as target) is intake's."""
        assert command.account.startswith(ALIAS) and not command.target.startswith((ALIAS, "@"))
        _refuse_if((partition, command.account) in self.aliases, "alias_taken")
        self.aliases[(partition, command.account)] = command.target
        entry = self._entry(command, ts, "alias_registered", "", target=command.target)
        return Prediction(self._answer(command, destination=command.target), (entry,))

    def _close_account(self, partition: int, command: Any, ts: int) -> Prediction:
        self._reserved(command.account)
        account = self._open(command.account)
        # Both at level 15; README silent on which first when both apply: the balance.
        _refuse_if(
            account.balance != 0 or account.debits_pending or account.credits_pending,
            "balance_not_zero",
        )
        # A refund could still come back to it.
        _refuse_if(account.sent != 0, "transfer_in_transit")
        account.closed = True
        entry = self._entry(command, ts, "account_closed", account.currency)
        return Prediction(self._answer(command), (entry,))

    def _deposit(self, partition: int, command: Any, ts: int) -> Prediction:
        account = self._check_move(partition, command, None)
        self._check_limits(account, "deposit", command.amount, ts)
        _refuse_if(account.headroom < command.amount, "overflow")
        self._use(account, "deposit", command.amount, ts)
        account.credits += command.amount
        postings = ((WORLD, command.amount, 0), (command.account, 0, command.amount))
        entry = self._entry(command, ts, "deposit", command.currency, postings=postings)
        return Prediction(self._answer(command, amount=command.amount), (entry,))

    def _withdraw(self, partition: int, command: Any, ts: int) -> Prediction:
        account = self._check_move(partition, command, None)
        self._check_limits(account, "withdrawal", command.amount, ts)
        self._check_funds(account, command.amount)
        self._use(account, "withdrawal", command.amount, ts)
        account.debits += command.amount
        postings = ((command.account, command.amount, 0), (WORLD, 0, command.amount))
        entry = self._entry(command, ts, "withdrawal", command.currency, postings=postings)
        return Prediction(self._answer(command, amount=command.amount), (entry,))

    def _transfer(self, partition: int, command: Any, ts: int) -> Prediction:
        account = self._check_move(partition, command, command.destination)
        self._check_limits(account, "transfer_out", command.amount, ts)
        self._check_funds(account, command.amount)
        self._check_counter(partition, account, command.destination, command.amount)
        self._use(account, "transfer_out", command.amount, ts)
        prediction = self._pay_out(
            partition,
            command,
            ts,
            "transfer",
            command.account,
            command.destination,
            command.amount,
            command.currency,
        )
        self._remember_count(partition, command, account)
        return prediction

    def _remember_count(self, partition: int, command: Any, account: ModelAccount) -> None:
        """A send its destination's writer sends back counts toward nothing, while the day
        it counted toward lasts (README ambiguous on "lasts": the account still counts
        toward that day)."""
        key = (partition, command.command_id)
        if key in self.sends and account.limits is not None:
            self.sends[key] = replace(self.sends[key], counted=account.day)

    def _hold(self, partition: int, command: Any, ts: int) -> Prediction:
        account = self._check_move(partition, command, command.destination)
        self._check_limits(account, "transfer_out", command.amount, ts)
        self._check_funds(account, command.amount)
        self._check_counter(partition, account, command.destination, command.amount)
        self._use(account, "transfer_out", command.amount, ts)  # a hold counts when placed
        deadline = None if command.timeout_s is None else ts + command.timeout_s * 1000
        return self._place(partition, command, ts, deadline, None)

    def _pay_invoice(self, partition: int, command: Any, ts: int) -> Prediction:
        account = self._check_move(partition, command, command.destination)
        status = self.invoice_status(partition, command.account, command.invoice_id)
        _refuse_if(status == "done", "invoice_already_paid")
        _refuse_if(status == "pending", "invoice_payment_pending")
        self._check_limits(account, "transfer_out", command.amount, ts)
        self._check_funds(account, command.amount)
        self._check_counter(partition, account, command.destination, command.amount)
        self._use(account, "transfer_out", command.amount, ts)
        claim = _Claim(command.command_id)
        self.invoices[(partition, command.account, command.invoice_id)] = claim
        if command.channel != "ledger":
            timeout_ms = self.payment_timeout_ms
            if command.timeout_s is not None:
                timeout_ms = command.timeout_s * 1000
            return self._place(partition, command, ts, ts + timeout_ms, command.invoice_id)
        prediction = self._pay_out(
            partition,
            command,
            ts,
            "invoice_payment",
            command.account,
            command.destination,
            command.amount,
            command.currency,
            invoice_id=command.invoice_id,
        )
        if prediction.answer is None:
            self._remember_count(partition, command, account)
            return prediction  # paid when its leg lands
        claim.paid = True
        receipt = ModelReceipt(
            invoice_id=command.invoice_id,
            payer=command.account,
            payee=command.destination,
            amount=command.amount,
            currency=command.currency,
            payment_id=command.command_id,
            entry_ids=(f"{command.command_id}:0",),
            timestamp_ms=ts,
        )
        return replace(prediction, receipts=(receipt,))

    def _place(
        self, partition: int, command: Any, ts: int, deadline: int | None, invoice: str | None
    ) -> Prediction:
        """Reserve the amount: pending debit on the account, pending credit on a local
        destination, else on @transit."""
        amount = command.amount
        self.accounts[command.account].debits_pending += amount
        counter = TRANSIT
        if self._local(partition, command.destination):
            self.accounts[command.destination].credits_pending += amount
            counter = command.destination
        self.holds[(partition, command.command_id)] = ModelHold(
            command.account, command.destination, amount, command.currency, deadline, invoice
        )
        entry = self._entry(
            command,
            ts,
            "hold_placed",
            command.currency,
            pending=((command.account, amount, 0), (counter, 0, amount)),
            hold_id=command.command_id,
            invoice_id=invoice,
        )
        answer = self._answer(command, amount=amount, destination=command.destination)
        return Prediction(answer, (entry,))

    def _find_hold(self, partition: int, account: str, hold_id: str) -> ModelHold | None:
        hold = self.holds.get((partition, hold_id))
        return hold if hold is not None and hold.source == account else None

    def _check_hold(self, hold: ModelHold | None) -> ModelHold:
        """Levels 10 and 11: the hold was placed by this account, and has not resolved.
        README ambiguous: hold commands name no account to check for levels 7 and 8 (the
        account that placed a pending hold cannot have closed); a missing one has no hold."""
        _refuse_if(hold is None, "hold_not_found")
        assert hold is not None
        if hold.status != "pending":
            raise _Refused(RESOLVED[hold.status])
        return hold

    def _post_hold(self, partition: int, command: Any, ts: int) -> Prediction:
        self._reserved(command.account)
        if command.amount is not None:
            _refuse_if(command.amount <= 0, "invalid_amount")
            _refuse_if(command.amount > AMOUNT_MAX, "amount_too_large")
        hold = self._check_hold(self._find_hold(partition, command.account, command.hold_id))
        # Posting after the deadline is refused even before the timer's command lands.
        _refuse_if(hold.passed(ts), "hold_expired")
        amount = hold.amount if command.amount is None else command.amount
        _refuse_if(amount > hold.amount, "amount_exceeds_hold")
        return self._post(partition, command, ts, command.hold_id, hold, amount)

    def _void_hold(self, partition: int, command: Any, ts: int) -> Prediction:
        self._reserved(command.account)
        hold = self._check_hold(self._find_hold(partition, command.account, command.hold_id))
        # Only posting is refused past the deadline; a void releases it either way.
        return self._release(partition, command, ts, command.hold_id, hold, "voided")

    def _expire_hold(self, partition: int, command: Any, ts: int) -> Prediction:
        self._reserved(command.account)
        hold = self._check_hold(self._find_hold(partition, command.account, command.hold_id))
        _refuse_if(not hold.passed(ts), "hold_not_expired")
        return self._release(partition, command, ts, command.hold_id, hold, "expired")

    def _payment_hold(self, partition: int, command: Any) -> tuple[str, ModelHold]:
        """The hold of the payment waiting for its gateway. README ambiguous on a paid
        invoice (the core: invoice_already_paid, level 11, before payment_not_found) and on
        a payment that failed (the hold's own code: hold_voided, hold_expired)."""
        self._reserved(command.account)
        claim = self.invoices.get((partition, command.account, command.invoice_id))
        _refuse_if(claim is not None and claim.paid, "invoice_already_paid")
        hold = None if claim is None else self.holds.get((partition, claim.payment_id))
        _refuse_if(hold is None, "payment_not_found")
        assert claim is not None
        return claim.payment_id, self._check_hold(hold)

    def _confirm_payment(self, partition: int, command: Any, ts: int) -> Prediction:
        hold_id, hold = self._payment_hold(partition, command)
        _refuse_if(hold.passed(ts), "hold_expired")
        return self._post(partition, command, ts, hold_id, hold, hold.amount)

    def _fail_payment(self, partition: int, command: Any, ts: int) -> Prediction:
        hold_id, hold = self._payment_hold(partition, command)
        return self._release(partition, command, ts, hold_id, hold, "voided")

    def _post(
        self, partition: int, command: Any, ts: int, hold_id: str, hold: ModelHold, amount: int
    ) -> Prediction:
        """Release all of the hold and post `amount` of it; across partitions the posted
        amount travels as a transfer does."""
        self.accounts[hold.source].debits_pending -= hold.amount
        local = self._local(partition, hold.destination)
        counter = TRANSIT
        if local:
            self.accounts[hold.destination].credits_pending -= hold.amount
            counter = hold.destination
        hold.status, hold.posted = ("posted" if local else "posting"), amount
        prediction = self._pay_out(
            partition,
            command,
            ts,
            "hold_posted",
            hold.source,
            hold.destination,
            amount,
            hold.currency,
            hold_id=hold_id,
            invoice_id=hold.invoice_id,
            released=((hold.source, hold.amount, 0), (counter, 0, hold.amount)),
        )
        if local and hold.invoice_id is not None:
            self.invoices[(partition, hold.source, hold.invoice_id)].paid = True
            entries = (f"{hold_id}:0", f"{command.command_id}:0")
            receipt = _hold_receipt(hold, hold_id, amount, entries, ts)
            prediction = replace(prediction, receipts=(receipt,))
        return prediction

    def _release(
        self, partition: int, command: Any, ts: int, hold_id: str, hold: ModelHold, status: str
    ) -> Prediction:
        self.accounts[hold.source].debits_pending -= hold.amount
        counter = TRANSIT
        if self._local(partition, hold.destination):
            self.accounts[hold.destination].credits_pending -= hold.amount
            counter = hold.destination
        hold.status = status
        entry = self._entry(
            command,
            ts,
            f"hold_{status}",
            hold.currency,
            released=((hold.source, hold.amount, 0), (counter, 0, hold.amount)),
            hold_id=hold_id,
            invoice_id=hold.invoice_id,
        )
        answer = self._answer(command, amount=hold.amount, destination=hold.destination)
        return Prediction(answer, (entry,))

    def _reversal_original(self, partition: int, command: Any) -> tuple[ModelAccount, Answer]:
        """Levels 2 to 13 of a reversal: the account, then the original and its claim."""
        self._reserved(command.account)
        account = self._open(command.account)
        original = self._original(partition, command.account, command.target)
        _refuse_if(original is None, "original_not_found")
        assert original is not None
        _refuse_if(original.type == "reverse", "reversal_of_reversal")
        _refuse_if(not self._reversible(partition, original), "not_reversible")
        _refuse_if(self._reversal_status(partition, command.target) != "free", "already_reversed")
        return account, original

    def _reverse(self, partition: int, command: Any, ts: int) -> Prediction:
        account, original = self._reversal_original(partition, command)
        amount = original.amount
        assert amount is not None
        if original.type == "withdraw":  # it comes back from @world
            _refuse_if(account.headroom < amount, "overflow")
            account.credits += amount
            self.reversals[(partition, command.target)] = command.command_id
            entry = self._entry(
                command,
                ts,
                "reversal",
                account.currency,
                postings=((WORLD, amount, 0), (command.account, 0, amount)),
                reverses=command.target,
            )
            return Prediction(self._answer(command, amount=amount), (entry,))
        counter = WORLD if original.type == "deposit" else original.account
        # The other side, checked once the original is found: found (it took part in the
        # original, so it is), open. README ambiguous on where among levels 11 to 13; level 8
        # puts it before the funds.
        if counter != WORLD and self._local(partition, counter):
            _refuse_if(self.accounts[counter].closed, "account_closed")
        self._check_funds(account, amount)
        self._check_counter(partition, account, counter, amount)
        self.reversals[(partition, command.target)] = command.command_id
        return self._pay_out(
            partition,
            command,
            ts,
            "reversal",
            command.account,
            counter,
            amount,
            account.currency,
            reverses=command.target,
        )

    def _reversible(self, partition: int, answer: Answer) -> bool:
        """An accepted deposit, withdrawal, transfer, ledger payment, post or confirmation
        (an external payment is a hold, not a move)."""
        return (
            answer.status == "accepted"
            and answer.type in REVERSIBLE
            and (partition, answer.command_id) not in self.holds
        )

    def _original(self, partition: int, account: str, target: str) -> Answer | None:
        """The answer to `target` on this partition (a command's own, or the credit leg's
        of a transfer from another partition) that `account` may name: for what a reversal
        takes back, the side the money comes back from (a deposit's or withdrawal's account,
        else the destination); anything else by either of its accounts, to be refused
        (reversal_of_reversal, not_reversible). A transfer still in flight, or refused by
        its destination, has no answer there yet (README silent: not found)."""
        found = [
            self.commands.get((partition, target)),
            self.legs.get((partition, "credit", target)),
        ]
        for seen in found:
            answer = None if seen is None else seen.prediction.answer
            if answer is None:
                continue
            if self._reversible(partition, answer):
                side = answer.account if answer.type in ("deposit", "withdraw") else None
                if (side or answer.destination) == account:
                    return answer
            elif account in (*seen.names, answer.account, answer.destination):
                return answer
        return None

    def invoice_status(self, partition: int, payer: str, invoice_id: str) -> str:
        """free, pending (a payment may still land) or done (paid)."""
        claim = self.invoices.get((partition, payer, invoice_id))
        if claim is None:
            return "free"
        if claim.paid:
            return "done"
        hold = self.holds.get((partition, claim.payment_id))
        if hold is not None:
            return "pending" if hold.status in ("pending", "posting") else "free"
        answer = self.commands[(partition, claim.payment_id)].prediction.answer
        return "pending" if answer is None else "free"

    def _reversal_status(self, partition: int, target: str) -> str:
        reversal = self.reversals.get((partition, target))
        if reversal is None:
            return "free"
        answer = self.commands[(partition, reversal)].prediction.answer
        if answer is None:
            return "pending"
        return "done" if answer.status == "accepted" else "free"

    def _pay_out(
        self,
        partition: int,
        command: Any,
        ts: int,
        kind: str,
        source: str,
        destination: str,
        amount: int,
        currency: str,
        *,
        hold_id: str | None = None,
        invoice_id: str | None = None,
        **fields: Any,
    ) -> Prediction:
        """Move `amount` from `source` to `destination`: at once when the destination is
        local or @world, else to @transit with a credit leg, the answer left to the
        destination's writer."""
        self.accounts[source].debits += amount
        fields.update(hold_id=hold_id, invoice_id=invoice_id)
        if destination == WORLD or self._local(partition, destination):
            if destination != WORLD:
                self.accounts[destination].credits += amount
            postings = ((source, amount, 0), (destination, 0, amount))
            entry = self._entry(command, ts, kind, currency, postings=postings, **fields)
            to = None if destination == WORLD else destination
            return Prediction(self._answer(command, amount=amount, destination=to), (entry,))
        self.accounts[source].sent += amount
        self.transit[command.command_id] = amount
        self.sends[(partition, command.command_id)] = _Send(hold_id, invoice_id)
        postings = ((source, amount, 0), (TRANSIT, 0, amount))
        kind = "transfer_debit" if kind == "transfer" else kind
        entry = self._entry(command, ts, kind, currency, postings=postings, **fields)
        leg = ModelLeg(
            type="credit",
            transfer_id=command.command_id,
            source=source,
            destination=destination,
            amount=amount,
            currency=currency,
            reply_partition=command.reply_partition,
            code=None,
            command=command.type,
            metadata=_metadata(command.metadata),
            invoice_id=invoice_id,
        )
        # No answer yet: the destination's writer gives it.
        return Prediction(None, (entry,), (leg,))

    # Legs

    def pending_transfers(self, partition: int) -> list[ModelLeg]:
        """The credit legs of `partition`'s transfers that have no answer yet."""
        return [
            leg
            for (where, _), seen in self.commands.items()
            if where == partition and seen.prediction.answer is None
            for leg in seen.prediction.legs
        ]

    def _forged(self, partition: int, leg: Any) -> bool:
        """A leg no transfer of this ledger sent: a credit of more than any amount, or a
        settle or refund that matches no unanswered transfer of `partition`."""
        if leg.type == "credit":
            return leg.amount > AMOUNT_MAX
        seen = self.commands.get((partition, leg.transfer_id))
        if seen is None:
            return True
        if seen.prediction.answer is not None:
            return False  # answered already: a repeat
        fields = ("transfer_id", "source", "destination", "amount", "currency", "command")
        sent = [
            credit
            for credit in seen.prediction.legs
            if all(getattr(credit, name) == getattr(leg, name) for name in fields)
        ]
        return not sent or (leg.type == "refund" and leg.code not in DESTINATION_CODES)

    def _apply_leg(self, partition: int, leg: Any, ts: int) -> Prediction:
        if self._forged(partition, leg):
            return Prediction(refused=True)
        payload = _leg_payload(leg)
        key = (partition, leg.type, leg.transfer_id)
        seen = self.legs.get(key)
        if seen is not None:
            assert seen.payload == payload, "the test reused a transfer id"
            return _repeat(seen.prediction, leg.reply_partition)
        if leg.type == "credit":
            prediction = self._credit(leg, ts)
        elif leg.type == "settle":
            prediction = self._settle(partition, leg, ts)
        else:
            prediction = self._refund(partition, leg, ts)
        self.legs[key] = _Seen(payload, prediction, (leg.source, leg.destination))
        return prediction

    def _credit(self, leg: Any, ts: int) -> Prediction:
        destination = self.accounts.get(leg.destination)
        code = None
        if destination is None:
            code = "account_not_found"
        elif destination.closed:
            code = "account_closed"
        elif destination.currency != leg.currency:
            code = "currency_mismatch"
        elif destination.headroom < leg.amount:
            code = "overflow"
        if code is not None:
            refund = replace(model_leg_of(leg), type="refund", code=code)
            return Prediction(None, (), (refund,))
        destination.credits += leg.amount
        del self.transit[leg.transfer_id]
        settle = replace(model_leg_of(leg), type="settle")
        postings = ((TRANSIT, leg.amount, 0), (leg.destination, 0, leg.amount))
        entry = _leg_entry(leg, 1, "transfer_credit", leg.destination, postings, ts)
        return Prediction(_leg_answer(leg, None), (entry,), (settle,))

    def _settle(self, partition: int, leg: Any, ts: int) -> Prediction:
        self.accounts[leg.source].sent -= leg.amount
        send = self.sends.pop((partition, leg.transfer_id))
        receipts: tuple[ModelReceipt, ...] = ()
        if send.hold_id is not None:
            hold = self.holds[(partition, send.hold_id)]
            assert hold.status == "posting"
            hold.status = "posted"
            if hold.invoice_id is not None:
                self.invoices[(partition, hold.source, hold.invoice_id)].paid = True
                entries = (f"{send.hold_id}:0", f"{leg.transfer_id}:0", f"{leg.transfer_id}:1")
                receipts = (_hold_receipt(hold, send.hold_id, leg.amount, entries, ts),)
        elif send.invoice_id is not None:
            self.invoices[(partition, leg.source, send.invoice_id)].paid = True
            receipt = ModelReceipt(
                invoice_id=send.invoice_id,
                payer=leg.source,
                payee=leg.destination,
                amount=leg.amount,
                currency=leg.currency,
                payment_id=leg.transfer_id,
                entry_ids=(f"{leg.transfer_id}:0", f"{leg.transfer_id}:1"),
                timestamp_ms=ts,
            )
            receipts = (receipt,)
        self._finish_transfer(partition, leg, _leg_answer(leg, None), (), receipts)
        return Prediction(receipts=receipts)

    def _refund(self, partition: int, leg: Any, ts: int) -> Prediction:
        source = self.accounts[leg.source]
        assert not source.closed, "close_account must wait for the transfer to come back"
        source.credits += leg.amount
        source.sent -= leg.amount
        del self.transit[leg.transfer_id]
        send = self.sends.pop((partition, leg.transfer_id))
        if send.hold_id is not None:
            hold = self.holds[(partition, send.hold_id)]
            assert hold.status == "posting"
            hold.status = "returned"  # and an invoice it paid is open again
        if send.counted is not None and send.counted == source.day:
            source.used_amount["transfer_out"] -= leg.amount
            source.used_count["transfer_out"] -= 1
            assert source.used_amount["transfer_out"] >= 0 <= source.used_count["transfer_out"]
        answer = _leg_answer(leg, leg.code)
        postings = ((TRANSIT, leg.amount, 0), (leg.source, 0, leg.amount))
        entries = (_leg_entry(leg, 2, "transfer_refund", leg.source, postings, ts),)
        self._finish_transfer(partition, leg, answer, entries, ())
        return Prediction(answer, entries)

    def _finish_transfer(
        self,
        partition: int,
        leg: Any,
        answer: Answer,
        entries: tuple[ModelEntry, ...],
        receipts: tuple[ModelReceipt, ...],
    ) -> None:
        """A repeat of the transfer now gets the final answer (and its receipt), and re-sends
        no leg."""
        seen = self.commands[(partition, leg.transfer_id)]
        original = seen.prediction
        seen.prediction = Prediction(answer, original.entries + entries, (), receipts)


def _day(account: ModelAccount, ts: int) -> int:
    """The UTC day of record time `ts`, never earlier than the last day the account counted."""
    return max(ts // DAY_MS, account.day)


def _hold_receipt(
    hold: ModelHold, hold_id: str, amount: int, entry_ids: tuple[str, ...], ts: int
) -> ModelReceipt:
    assert hold.invoice_id is not None
    return ModelReceipt(
        invoice_id=hold.invoice_id,
        payer=hold.source,
        payee=hold.destination,
        amount=amount,
        currency=hold.currency,
        payment_id=hold_id,
        entry_ids=entry_ids,
        timestamp_ms=ts,
    )


def _repeat(prediction: Prediction, partition: int | None) -> Prediction:
    """A repeat re-emits the original outputs, marked as a repeat. Its answer, and the answer
    its legs will bring, go to the results partition of whoever asked this time."""
    answer = prediction.answer
    if answer is not None:
        answer = replace(answer, duplicate=True, partition=partition)
    legs = tuple(replace(leg, reply_partition=partition) for leg in prediction.legs)
    return replace(prediction, answer=answer, legs=legs)


def _leg_answer(leg: Any, code: str | None) -> Answer:
    accepted = code is None
    return Answer(
        command_id=leg.transfer_id,
        status="accepted" if accepted else "rejected",
        code=code,
        duplicate=False,
        type=leg.command,
        account=leg.source,
        partition=leg.reply_partition,
        amount=leg.amount if accepted else None,
        destination=leg.destination,
        metadata=_metadata(leg.metadata),
    )


def _leg_entry(
    leg: Any, number: int, kind: str, account: str, postings: Postings, ts: int
) -> ModelEntry:
    return ModelEntry(
        entry_id=f"{leg.transfer_id}:{number}",
        command_id=leg.transfer_id,
        kind=kind,
        account=account,
        currency=leg.currency,
        timestamp_ms=ts,
        postings=postings,
        invoice_id=leg.invoice_id,
    )


def _aliases(command: Any) -> list[tuple[str, str]]:
    """(field, alias) of the aliases a command names where an account goes: its account and
    destination, but for `open_account` and `register_alias` ("Aliases")."""
    if command.type in ("open_account", "register_alias"):
        return []
    named = [(name, getattr(command, name, None)) for name in ("account", "destination")]
    return [(name, value) for name, value in named if value and value.startswith(ALIAS)]


def _command_payload(command: Any) -> tuple[Any, ...]:
    """What makes two commands with one id the same: not metadata, not reply_partition."""
    fields = ("type", "account", "currency", "amount", "destination", "overdraft_limit")
    more = ("hold_id", "timeout_s", "invoice_id", "channel", "target", "low_balance")
    return (
        *(getattr(command, name, None) for name in fields + more),
        limits_of(getattr(command, "limits", None)),
    )


def _leg_payload(leg: Any) -> tuple[Any, ...]:
    """What makes two legs of one transfer the same leg: not the results partition."""
    fields = replace(model_leg_of(leg), reply_partition=None)
    return (fields, getattr(leg, "payload_digest", None))


def model_leg_of(leg: Any) -> ModelLeg:
    """The model's view of a leg (one the core emitted, or one it receives)."""
    return ModelLeg(
        type=leg.type,
        transfer_id=leg.transfer_id,
        source=leg.source,
        destination=leg.destination,
        amount=leg.amount,
        currency=leg.currency,
        reply_partition=leg.reply_partition,
        code=leg.code,
        command=leg.command,
        metadata=_metadata(leg.metadata),
        invoice_id=leg.invoice_id,
    )


def _metadata(metadata: dict[str, str] | None) -> Metadata:
    return None if metadata is None else tuple(sorted(metadata.items()))


def _postings(postings: Any) -> Postings | None:
    if postings is None:
        return None
    return tuple((p.account, p.debit, p.credit) for p in postings)


def model_entry_of(event: Any) -> ModelEntry:
    """The model's view of a journal event the core emitted (its chain stamps aside)."""
    return ModelEntry(
        entry_id=event.entry_id,
        command_id=event.command_id,
        kind=event.kind,
        account=event.account,
        currency=event.currency,
        timestamp_ms=event.timestamp_ms,
        postings=_postings(event.postings) or (),
        pending=_postings(event.pending),
        released=_postings(event.released),
        hold_id=event.hold_id,
        reverses=event.reverses,
        invoice_id=event.invoice_id,
        overdraft_limit=event.overdraft_limit,
        limits=limits_of(event.limits),
        low_balance=event.low_balance,
        target=event.target,
        metadata=_metadata(event.metadata),
    )


def model_receipt_of(receipt: Any) -> ModelReceipt:
    return ModelReceipt(
        invoice_id=receipt.invoice_id,
        payer=receipt.payer,
        payee=receipt.payee,
        amount=receipt.amount,
        currency=receipt.currency,
        payment_id=receipt.payment_id,
        entry_ids=tuple(receipt.entry_ids),
        timestamp_ms=receipt.timestamp_ms,
    )
