"""An independent reference ledger for the stateful tests (our `auditor.zig`).

Plain dicts of balances, statuses, currencies and seen ids; it imports nothing from
`ledger_stream.core`. For every command or leg a partition's writer decides, it predicts the
result, the journal entries and the legs, from the rules written in the docstring of
`ledger_stream.core` (rejection codes in precedence order, cross-partition transfers through
`@transit` with a credit leg answered by a settle or a refund leg, repeats answered with the
original outcome, legs that no transfer sent refused).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

# Written out again rather than imported, so a changed constant in the code is noticed.
AMOUNT_MAX = 2**53 - 1
BALANCE_MAX = 2**63 - 1
# The codes a destination refuses a credit with; a refund carrying any other is forged.
DESTINATION_CODES = (
    "exists_with_different_payload",
    "account_not_found",
    "account_closed",
    "currency_mismatch",
    "overflow",
)


@dataclass
class ModelAccount:
    currency: str
    overdraft_limit: int
    debits: int = 0
    credits: int = 0
    sent: int = 0  # debited to @transit by transfers not yet settled or refunded
    closed: bool = False

    @property
    def balance(self) -> int:
        return self.credits - self.debits


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


@dataclass(frozen=True)
class Prediction:
    """What deciding one input emits: an answer or none, journal entries, legs; or, for a
    leg that no transfer sent, a refusal (it emits and changes nothing)."""

    answer: Answer | None = None
    entries: tuple[tuple[str, str], ...] = ()  # (entry_id, kind)
    legs: tuple[ModelLeg, ...] = ()
    refused: bool = False


@dataclass
class _Seen:
    payload: tuple[Any, ...]
    prediction: Prediction


@dataclass
class ModelLedger:
    partition_of: Callable[[str], int]
    accounts: dict[str, ModelAccount] = field(default_factory=dict)
    commands: dict[tuple[int, str], _Seen] = field(default_factory=dict)
    legs: dict[tuple[int, str, str], _Seen] = field(default_factory=dict)
    transit: dict[str, int] = field(default_factory=dict)  # on @transit, by transfer id

    def apply(self, partition: int, message: Any) -> Prediction:
        """Predict (and apply) one input decided by `partition`'s writer."""
        if hasattr(message, "transfer_id"):
            return self._apply_leg(partition, message)
        return self._apply_command(partition, message)

    # Commands

    def _apply_command(self, partition: int, command: Any) -> Prediction:
        payload = _command_payload(command)
        seen = self.commands.get((partition, command.command_id))
        if seen is not None:
            if seen.payload == payload:
                return _repeat(seen.prediction, command.reply_partition)
            answer = self._answer(command, "exists_with_different_payload")
            return Prediction(answer=answer)
        code = self._refusal(partition, command)
        if code is not None:
            prediction = Prediction(answer=self._answer(command, code))
        else:
            prediction = self._post(partition, command)
        self.commands[(partition, command.command_id)] = _Seen(payload, prediction)
        return prediction

    def _answer(self, command: Any, code: str | None) -> Answer:
        return Answer(
            command_id=command.command_id,
            status="accepted" if code is None else "rejected",
            code=code,
            duplicate=False,
            type=command.type,
            account=command.account,
            partition=command.reply_partition,
        )

    def _refusal(self, partition: int, command: Any) -> str | None:
        kind = command.type
        destination = getattr(command, "destination", None)
        names = [command.account] + ([destination] if destination is not None else [])
        if any(name.startswith("@") for name in names):
            return "account_reserved"
        if kind == "open_account":
            if command.overdraft_limit < 0:
                return "invalid_amount"
            if command.overdraft_limit > AMOUNT_MAX:
                return "amount_too_large"
            return "account_exists" if command.account in self.accounts else None
        if kind != "close_account":
            if command.amount <= 0:
                return "invalid_amount"
            if command.amount > AMOUNT_MAX:
                return "amount_too_large"
        if destination == command.account:
            return "accounts_must_be_different"
        # The destination of a cross-partition transfer is its own writer's to check.
        checked = [command.account]
        if destination is not None and self.partition_of(destination) == partition:
            checked.append(destination)
        if any(name not in self.accounts for name in checked):
            return "account_not_found"
        if any(self.accounts[name].closed for name in checked):
            return "account_closed"
        currency = getattr(command, "currency", None)
        if currency is not None and any(self.accounts[n].currency != currency for n in checked):
            return "currency_mismatch"
        account = self.accounts[command.account]
        if kind == "close_account":
            if account.balance != 0:
                return "balance_not_zero"
            # A refund could still come back to it.
            return "transfer_in_transit" if account.sent else None
        if kind in ("withdraw", "transfer"):
            if account.balance + account.overdraft_limit < command.amount:
                return "insufficient_funds"
            if account.debits + command.amount > BALANCE_MAX:
                return "overflow"
        if kind == "deposit" and account.credits + command.amount > BALANCE_MAX:
            return "overflow"
        if len(checked) == 2 and self.accounts[destination].credits + command.amount > BALANCE_MAX:
            return "overflow"
        return None

    def _post(self, partition: int, command: Any) -> Prediction:
        kind = command.type
        entry = f"{command.command_id}:0"
        answer = self._answer(command, None)
        if kind == "open_account":
            self.accounts[command.account] = ModelAccount(command.currency, command.overdraft_limit)
            return Prediction(answer, ((entry, "account_opened"),))
        account = self.accounts[command.account]
        if kind == "close_account":
            account.closed = True
            return Prediction(answer, ((entry, "account_closed"),))
        if kind == "deposit":
            account.credits += command.amount
            return Prediction(answer, ((entry, "deposit"),))
        account.debits += command.amount
        if kind == "withdraw":
            return Prediction(answer, ((entry, "withdrawal"),))
        if self.partition_of(command.destination) == partition:
            self.accounts[command.destination].credits += command.amount
            return Prediction(answer, ((entry, "transfer"),))
        self.transit[command.command_id] = command.amount
        account.sent += command.amount
        leg = ModelLeg(
            type="credit",
            transfer_id=command.command_id,
            source=command.account,
            destination=command.destination,
            amount=command.amount,
            currency=command.currency,
            reply_partition=command.reply_partition,
            code=None,
        )
        # No answer yet: the destination's writer gives it.
        return Prediction(None, ((entry, "transfer_debit"),), (leg,))

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
        fields = ("transfer_id", "source", "destination", "amount", "currency")
        sent = [
            credit
            for credit in seen.prediction.legs
            if all(getattr(credit, name) == getattr(leg, name) for name in fields)
        ]
        return not sent or (leg.type == "refund" and leg.code not in DESTINATION_CODES)

    def _apply_leg(self, partition: int, leg: Any) -> Prediction:
        if self._forged(partition, leg):
            return Prediction(refused=True)
        payload = _leg_payload(leg)
        key = (partition, leg.type, leg.transfer_id)
        seen = self.legs.get(key)
        if seen is not None:
            assert seen.payload == payload, "the test reused a transfer id"
            return _repeat(seen.prediction, leg.reply_partition)
        if leg.type == "credit":
            prediction = self._credit(leg)
        elif leg.type == "settle":
            prediction = self._settle(partition, leg)
        else:
            prediction = self._refund(partition, leg)
        self.legs[key] = _Seen(payload, prediction)
        return prediction

    def _credit(self, leg: Any) -> Prediction:
        destination = self.accounts.get(leg.destination)
        code = None
        if destination is None:
            code = "account_not_found"
        elif destination.closed:
            code = "account_closed"
        elif destination.currency != leg.currency:
            code = "currency_mismatch"
        elif destination.credits + leg.amount > BALANCE_MAX:
            code = "overflow"
        if code is not None:
            refund = replace(model_leg_of(leg), type="refund", code=code)
            return Prediction(None, (), (refund,))
        destination.credits += leg.amount
        del self.transit[leg.transfer_id]
        settle = replace(model_leg_of(leg), type="settle")
        entry = (f"{leg.transfer_id}:1", "transfer_credit")
        return Prediction(_leg_answer(leg, None), (entry,), (settle,))

    def _settle(self, partition: int, leg: Any) -> Prediction:
        self.accounts[leg.source].sent -= leg.amount
        self._finish_transfer(partition, leg, _leg_answer(leg, None), ())
        return Prediction()

    def _refund(self, partition: int, leg: Any) -> Prediction:
        source = self.accounts[leg.source]
        assert not source.closed, "close_account must wait for the transfer to come back"
        source.credits += leg.amount
        source.sent -= leg.amount
        del self.transit[leg.transfer_id]
        answer = _leg_answer(leg, leg.code)
        entries = ((f"{leg.transfer_id}:2", "transfer_refund"),)
        self._finish_transfer(partition, leg, answer, entries)
        return Prediction(answer, entries)

    def _finish_transfer(
        self, partition: int, leg: Any, answer: Answer, entries: tuple[tuple[str, str], ...]
    ) -> None:
        """A repeat of the transfer now gets the final answer, and re-sends no leg."""
        seen = self.commands[(partition, leg.transfer_id)]
        original = seen.prediction
        seen.prediction = Prediction(answer, original.entries + entries, ())


def _repeat(prediction: Prediction, partition: int | None) -> Prediction:
    """A repeat re-emits the original outputs, marked as a repeat. Its answer, and the answer
    its legs will bring, go to the results partition of whoever asked this time."""
    answer = prediction.answer
    if answer is not None:
        answer = replace(answer, duplicate=True, partition=partition)
    legs = tuple(replace(leg, reply_partition=partition) for leg in prediction.legs)
    return replace(prediction, answer=answer, legs=legs)


def _leg_answer(leg: Any, code: str | None) -> Answer:
    return Answer(
        command_id=leg.transfer_id,
        status="accepted" if code is None else "rejected",
        code=code,
        duplicate=False,
        type="transfer",
        account=leg.source,
        partition=leg.reply_partition,
    )


def _command_payload(command: Any) -> tuple[Any, ...]:
    """What makes two commands with one id the same: not metadata, not reply_partition."""
    return (
        command.type,
        command.account,
        getattr(command, "currency", None),
        getattr(command, "amount", None),
        getattr(command, "destination", None),
        getattr(command, "overdraft_limit", None),
    )


def _leg_payload(leg: Any) -> tuple[Any, ...]:
    """What makes two legs of one transfer the same leg: not the results partition."""
    fields = replace(model_leg_of(leg), reply_partition=None)
    return (fields, getattr(leg, "payload_digest", None))


def _model_leg_fields(leg: Any) -> tuple[Any, ...]:
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


def model_leg_of(leg: Any) -> ModelLeg:
    """The model's view of a leg (one the core emitted, or one it receives)."""
    return ModelLeg(*_model_leg_fields(leg))
