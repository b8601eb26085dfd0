"""Every message on every topic: commands as pydantic models (they come from clients, so
their validation explains itself and reads decimal amounts), and what the writers make
(legs, results, journal events and the state records) as msgspec structs, which are built,
copied, encoded and decoded on the hot path at a fraction of pydantic's cost. JSON Schemas in
`schemas/` are generated from both.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal, TypeVar, get_args

import msgspec
from msgspec import Meta
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    TypeAdapter,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from ledger_stream.codes import Code
from ledger_stream.money import AMOUNT_MAX, BALANCE_MAX, CURRENCY_EXPONENTS, parse_amount

IDENTIFIER_CHARS = "A-Za-z0-9@._:/+=-"
IDENTIFIER_PATTERN = rf"^[{IDENTIFIER_CHARS}]+$"
IDENTIFIER_CHARS_MAX = 128
# An account id that starts with this names an alias (`alias:bob@example.com`), registered
# by `register_alias`; other commands take one where an account goes (`aliased_fields`).
ALIAS_PREFIX = "alias:"


def aliased_fields(command_type: str) -> tuple[str, ...]:
    """The fields of a command that take an alias for the account it names: not the alias
    being registered, nor the account being opened, which may not be named `alias:`."""
    if command_type in ("register_alias", "open_account"):
        return ()
    return ("account", "destination")


def aliases_named(command: CommandBase) -> list[tuple[str, str]]:
    """(field, alias) of each alias the command names where an account goes, in field order."""
    named = []
    for name in aliased_fields(command.type):  # type: ignore[attr-defined]
        value = getattr(command, name, None)
        if value is not None and value.startswith(ALIAS_PREFIX):
            named.append((name, value))
    return named


def with_accounts_of(command: C, result: Result) -> C:
    """`command`, naming where it named aliases the accounts its result names: the command
    as the writer that answered it had it (so its payload digest is the result's)."""
    update = {}
    for name, _ in aliases_named(command):
        account = getattr(result, name)
        if account is not None and not account.startswith(ALIAS_PREFIX):
            update[name] = account
    return command.model_copy(update=update) if update else command


def routed_by(command: CommandBase) -> str:
    """What a command is keyed by when a writer sends it on: the first alias it still names,
    whose writer puts the account in its place, else its account."""
    named = aliases_named(command)
    return named[0][1] if named else command.account


Identifier = Annotated[
    str, Field(min_length=1, max_length=IDENTIFIER_CHARS_MAX, pattern=IDENTIFIER_PATTERN)
]
Currency = Annotated[
    str,
    Field(
        pattern=r"^[A-Z]{3}$",
        description="ISO 4217 code; the exponent table is ledger_stream.money.CURRENCY_EXPONENTS",
    ),
]
WireAmount = Annotated[
    int,
    WithJsonSchema(
        {
            "description": "Integer minor units, or a decimal string with at most the "
            "currency's exponent of fraction digits. Floats and exponents are refused.",
            "oneOf": [{"type": "integer"}, {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$"}],
        }
    ),
]
# Copied onto a command's journal event and kept in its outcome: small, so that one
# command's outputs stay small.
METADATA_ENTRIES_MAX = 32
METADATA_KEY_CHARS_MAX = 64
METADATA_VALUE_CHARS_MAX = 512
Metadata = Annotated[
    dict[
        Annotated[str, Field(min_length=1, max_length=METADATA_KEY_CHARS_MAX)],
        Annotated[str, Field(max_length=METADATA_VALUE_CHARS_MAX)],
    ],
    Field(max_length=METADATA_ENTRIES_MAX),
]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WriterMessage(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True
):
    """What writers make: built unchecked, checked when read (`from_json`), written without
    the fields at their defaults (`to_json`)."""


T = TypeVar("T")
C = TypeVar("C", bound="CommandBase")
replaced = msgspec.structs.replace  # a copy of a record with some fields changed


class CommandBase(Message):
    command_id: Identifier = Field(description="Client-made idempotency key")
    account: Identifier = Field(
        description="The account that acts first, or an alias of it (alias:<name>); the message key"
    )
    reply_partition: int | None = Field(
        default=None, ge=0, strict=True, description="Results partition the answer is written to"
    )
    metadata: Metadata | None = None

    def fingerprint_fields(self) -> dict[str, Any]:
        """What makes two commands with one id the same command (not routing or metadata)."""
        # The fields are plain values (limits aside), so the instance's own dict is
        # `model_dump`'s answer.
        return fingerprinted(
            {k: v.model_dump() if isinstance(v, BaseModel) else v for k, v in self.__dict__.items()}
        )


_NOT_FINGERPRINTED = ("reply_partition", "metadata")
# Fields added after commands and legs without them were decided: left out while absent, so
# that the digest of such a message, kept in its outcome, is still the digest of its repeat.
_FINGERPRINTED_WHEN_GIVEN = ("low_balance", "invoice_id")


def fingerprinted(fields: dict[str, Any]) -> dict[str, Any]:
    """The fields of a command or leg that its fingerprint is made of."""
    return {
        k: v
        for k, v in fields.items()
        if k not in _NOT_FINGERPRINTED and not (v is None and k in _FINGERPRINTED_WHEN_GIVEN)
    }


class CurrencyField(Message):
    """A currency, and the amounts of the model read in its minor units."""

    currency: Currency

    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        if value not in CURRENCY_EXPONENTS:
            raise ValueError(f"unknown currency {value!r}")
        return value

    @field_validator("amount", "overdraft_limit", mode="before", check_fields=False)
    @classmethod
    def _minor_units(cls, value: object, info: ValidationInfo) -> int:
        currency = info.data.get("currency")
        if currency is None:  # currency failed its own validation; report that instead
            raise ValueError(f"{info.field_name} cannot be read without a valid currency")
        return parse_amount(value, currency)


class AmountFields(CurrencyField):
    amount: WireAmount


# What a daily limit counts: deposits, withdrawals, and money leaving the account for
# another (transfers, holds when placed, invoice payments).
Action = Literal["deposit", "withdrawal", "transfer_out"]
LimitAmount = Annotated[StrictInt, Field(ge=0, le=AMOUNT_MAX)]
Timeout = Annotated[
    StrictInt,
    Field(gt=0, le=10 * 365 * 86_400, description="Seconds after the command's record time"),
]


class AccountLimits(Message):
    """An account's limits, in minor units of its currency; a limit left out is no limit.
    A command exactly at a limit passes; one unit (or one command) more is refused."""

    transaction_amount_max: LimitAmount | None = Field(
        default=None, description="Largest amount one command may move"
    )
    daily_amount_max: dict[Action, LimitAmount] = Field(
        default_factory=dict, description="Per action, the most it may move in a day"
    )
    daily_count_max: dict[Action, LimitAmount] = Field(
        default_factory=dict, description="Per action, how many it may make in a day"
    )


class OpenAccount(CommandBase, CurrencyField):
    type: Literal["open_account"]
    overdraft_limit: WireAmount = 0
    limits: AccountLimits | None = Field(
        default=None, description="Absent: the configured default (LEDGER_DEFAULT_LIMITS)"
    )
    low_balance: LimitAmount | None = Field(
        default=None,
        description="Notify when the posted balance falls below this many minor units",
    )


class SetLimits(CommandBase):
    """Replaces the account's limits, its overdraft limit and its low-balance threshold,
    each when given."""

    type: Literal["set_limits"]
    limits: AccountLimits | None = None
    overdraft_limit: LimitAmount | None = Field(default=None, description="In minor units")
    low_balance: LimitAmount | None = Field(
        default=None,
        description="Notify when the posted balance falls below this many minor units; "
        "replaced when given",
    )


class Deposit(CommandBase, AmountFields):
    type: Literal["deposit"]


class Withdraw(CommandBase, AmountFields):
    type: Literal["withdraw"]


class Transfer(CommandBase, AmountFields):
    type: Literal["transfer"]
    destination: Identifier


class CloseAccount(CommandBase):
    type: Literal["close_account"]


class PlaceHold(CommandBase, AmountFields):
    """Reserves `amount` of `account` for `destination`; its id is its command id."""

    type: Literal["hold"]
    destination: Identifier
    timeout_s: Timeout | None = Field(default=None, description="Expires this long after")


class PostHold(CommandBase):
    type: Literal["post_hold"]
    hold_id: Identifier = Field(description="The command id of the hold; `account` placed it")
    amount: LimitAmount | None = Field(
        default=None, description="Minor units to post (the rest is released); absent: all"
    )


class VoidHold(CommandBase):
    type: Literal["void_hold"]
    hold_id: Identifier


class ExpireHold(CommandBase):
    """Sent by the writer's timer once the hold's deadline has passed; decided by record
    time, so any producer may send it."""

    type: Literal["expire_hold"]
    hold_id: Identifier


class Reverse(CommandBase):
    """Posts the opposite of an accepted command. `account` is the one the reversal takes
    the money from: a deposit's account, a transfer's or payment's destination (or a
    withdrawal's account, which gets it back)."""

    type: Literal["reverse"]
    target: Identifier = Field(description="The command id of the command to reverse")


class PayInvoice(CommandBase, AmountFields):
    """`account` pays `destination` an invoice, at most once per (payer, invoice id)."""

    type: Literal["pay_invoice"]
    invoice_id: Identifier
    destination: Identifier
    channel: Identifier = Field(
        default="ledger",
        description="'ledger' moves the money at once; any other places a hold that waits "
        "for confirm_payment or fail_payment",
    )
    timeout_s: Timeout | None = Field(
        default=None,
        description="Other channels: the hold expires this long after "
        "(absent: LEDGER_PAYMENT_TIMEOUT_S)",
    )


class ConfirmPayment(CommandBase):
    type: Literal["confirm_payment"]
    invoice_id: Identifier


class FailPayment(CommandBase):
    type: Literal["fail_payment"]
    invoice_id: Identifier


class RegisterAlias(CommandBase):
    """Registers the alias `account` (`alias:<name>`) for the account `target`, once and for
    good. The alias is the message key, so one writer, its partition's, decides every
    registration of it. The target is not checked: it lives on another partition."""

    type: Literal["register_alias"]
    account: str = Field(
        max_length=IDENTIFIER_CHARS_MAX,
        pattern=rf"^{ALIAS_PREFIX}[{IDENTIFIER_CHARS}]+$",
        description=f"The alias, {ALIAS_PREFIX}<name>; the message key",
    )
    target: Identifier = Field(description="The account the alias names")

    @field_validator("target")
    @classmethod
    def _an_account(cls, value: str) -> str:
        if value.startswith((ALIAS_PREFIX, "@")):
            raise ValueError(
                f"the target must be a customer account, not an alias ({ALIAS_PREFIX}...) "
                "or a system account (@...)"
            )
        return value


Command = Annotated[
    OpenAccount
    | SetLimits
    | Deposit
    | Withdraw
    | Transfer
    | CloseAccount
    | PlaceHold
    | PostHold
    | VoidHold
    | ExpireHold
    | Reverse
    | PayInvoice
    | ConfirmPayment
    | FailPayment
    | RegisterAlias,
    Field(discriminator="type"),
]
COMMAND_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)
# Command type -> its model, from the `Command` union.
COMMAND_MODELS: dict[str, type[CommandBase]] = {
    get_args(model.model_fields["type"].annotation)[0]: model
    for model in get_args(get_args(Command)[0])
}
# A command message carries one command, or a JSON array of commands of one partition.
COMMAND_BATCH_MAX = 10_000
COMMAND_BATCH_ADAPTER: TypeAdapter[list[Command]] = TypeAdapter(
    Annotated[list[Command], Field(min_length=1, max_length=COMMAND_BATCH_MAX)]
)


# `Identifier`, for msgspec.
LegIdentifier = Annotated[
    str, Meta(min_length=1, max_length=IDENTIFIER_CHARS_MAX, pattern=IDENTIFIER_PATTERN)
]


class Leg(WriterMessage, frozen=True):
    """Writer-to-writer message for the second half of a cross-partition transfer.

    `credit` goes to the destination's writer. Back to the source's writer goes `settle`
    when the money landed, or `refund` with the destination's rejection code.
    """

    type: Literal["credit", "settle", "refund"]
    transfer_id: LegIdentifier
    source: LegIdentifier
    destination: LegIdentifier
    amount: Annotated[int, Meta(gt=0)]
    currency: Annotated[str, Meta(pattern=r"^[A-Z]{3}$")]
    reply_partition: int | None = None
    code: Annotated[str | None, Meta(description="A refund's: the destination's code")] = None
    payload_digest: Annotated[str | None, Meta(description="Of the transfer command")] = None
    command: Annotated[
        str, Meta(description="Type of the command that sent the money (its result's type)")
    ] = "transfer"
    metadata: Annotated[
        dict[str, str] | None, Meta(description="The command's, for its result")
    ] = None
    invoice_id: Annotated[
        str | None, Meta(description="An invoice payment's invoice, for its credit and refund")
    ] = None

    def fingerprint_fields(self) -> dict[str, Any]:
        return fingerprinted(msgspec.structs.asdict(self))

    @property
    def account(self) -> str:
        """The account whose writer handles this leg (the message key)."""
        return self.destination if self.type == "credit" else self.source


LegBatch = Annotated[list[Leg], Meta(min_length=1, max_length=1_000_000)]


class Limits(WriterMessage, frozen=True):
    """An account's limits as the writer keeps them (`AccountLimits` of the commands)."""

    transaction_amount_max: int | None = None
    daily_amount_max: dict[Action, int] = msgspec.field(default_factory=dict)
    daily_count_max: dict[Action, int] = msgspec.field(default_factory=dict)


class LimitBreach(WriterMessage, frozen=True):
    """Which limit a rejected command would have passed: its value, what the day had used
    before the command, and what the command asked for (an amount, or 1 for a count)."""

    limit: Annotated[
        str,
        Meta(
            description="transaction_amount_max, daily_amount_max.<action> "
            "or daily_count_max.<action>"
        ),
    ]
    value: int
    used: int
    requested: int


class Result(WriterMessage, frozen=True):
    """The answer to one command, keyed by `command_id`."""

    command_id: str
    status: Literal["accepted", "rejected"]
    code: Code | None = None
    duplicate: Annotated[bool, Meta(description="Present (true) on the answer to a repeat")] = False
    type: Annotated[str | None, Meta(description="Command type, when it could be read")] = None
    account: str | None = None
    reason: Annotated[str | None, Meta(description="Human-readable detail")] = None
    payload_digest: Annotated[
        str | None,
        Meta(
            description="Digest of the command payload this answers (ledger_stream.core."
            "fingerprint); tells apart answers to two different commands sent with one "
            "command_id"
        ),
    ] = None
    amount: Annotated[int | None, Meta(description="What the command moved or held")] = None
    destination: str | None = None
    limit: LimitBreach | None = None
    metadata: Annotated[dict[str, str] | None, Meta(description="The command's")] = None


class Posting(WriterMessage, frozen=True, omit_defaults=False):
    account: str
    debit: Annotated[int, Meta(ge=0)] = 0
    credit: Annotated[int, Meta(ge=0)] = 0


class JournalEvent(WriterMessage, frozen=True):
    """One balanced double-entry event, keyed by `entry_id` on a compacted topic."""

    entry_id: Annotated[
        str, Meta(description="<command_id>:<leg>; deterministic, so re-sends collapse")
    ]
    command_id: str
    kind: Literal[
        "account_opened",
        "account_closed",
        "deposit",
        "withdrawal",
        "transfer",
        "transfer_debit",
        "transfer_credit",
        "transfer_refund",
        "limits_set",
        "hold_placed",
        "hold_posted",
        "hold_voided",
        "hold_expired",
        "reversal",
        "invoice_payment",
        "alias_registered",
    ]
    account: Annotated[
        str, Meta(description="The account this event is about (its writer posted it)")
    ]
    currency: str
    postings: list[Posting]
    timestamp_ms: Annotated[int, Meta(description="Timestamp of the command record that caused it")]
    overdraft_limit: int | None = None
    limits: Annotated[Limits | None, Meta(description="On account_opened and limits_set")] = None
    metadata: dict[str, str] | None = None
    hold_id: str | None = None
    pending: Annotated[
        list[Posting] | None,
        Meta(description="hold_placed: what it reserves (pending, not posted)"),
    ] = None
    released: Annotated[
        list[Posting] | None,
        Meta(description="hold_posted, hold_voided, hold_expired: the reservation released"),
    ] = None
    reverses: Annotated[str | None, Meta(description="reversal: the command reversed")] = None
    invoice_id: str | None = None
    target: Annotated[
        str | None, Meta(description="alias_registered: the account the alias names")
    ] = None
    counterparty: Annotated[
        str | None,
        Meta(
            description="The other account of a movement between two: a transfer's (or "
            "payment's, hold post's, reversal's) destination on its source's event, its "
            "source on the credit's, its destination on a refund's"
        ),
    ] = None
    low_balance: Annotated[
        int | None,
        Meta(
            description="account_opened and limits_set: the low-balance threshold (minor "
            "units), when the command gave one"
        ),
    ] = None
    seq: (
        Annotated[int, Meta(ge=1, description="Position in its journal partition's chain, from 1")]
        | None
    ) = None
    prev_hash: Annotated[
        str | None,
        Meta(
            description="chain_hash of the previous event of its journal partition ('' for "
            "the first); an edited, removed or reordered event breaks the chain"
        ),
    ] = None

    def chain_hash(self) -> str:
        """Digest of the whole event, `prev_hash` and `seq` included: the next event's
        `prev_hash`."""
        return hashlib.blake2b(_SORTED.encode(self), digest_size=16).hexdigest()


class AccountState(WriterMessage, frozen=True):
    """The writer's record of one account (value of the accounts table)."""

    currency: str
    status: Literal["open", "closed"] = "open"
    overdraft_limit: int = 0
    debits_posted: int = 0
    credits_posted: int = 0
    debits_pending: int = 0
    credits_pending: int = 0
    debits_in_transit: Annotated[
        int, Meta(description="Debited to @transit for transfers that have not landed yet")
    ] = 0
    limits: Limits | None = None
    day: Annotated[int, Meta(description="UTC day (since 1970) the usage below counts")] = 0
    used_amount: Annotated[dict[Action, int], Meta(description="Moved in `day`")] = msgspec.field(
        default_factory=dict
    )
    used_count: Annotated[dict[Action, int], Meta(description="Commands in `day`")] = msgspec.field(
        default_factory=dict
    )

    @property
    def balance(self) -> int:
        return self.credits_posted - self.debits_posted

    @property
    def credit_headroom(self) -> int:
        """Credits the account can still take, keeping room for refunds of what is in transit
        and for the holds that may post to it."""
        return BALANCE_MAX - self.credits_posted - self.credits_pending - self.debits_in_transit

    @property
    def available(self) -> int:
        """What a debit may take now: balance less pending debits plus the overdraft."""
        return self.balance - self.debits_pending + self.overdraft_limit


class Hold(WriterMessage, frozen=True):
    """A hold, kept in the outcome of the command that placed it (its id)."""

    source: str
    destination: str
    amount: int
    currency: str
    # posting: posted across partitions, the money on its way; returned: posted, then
    # refused by its destination's writer (the money came back)
    status: Literal["pending", "posting", "posted", "voided", "expired", "returned"] = "pending"
    posted: int = 0
    deadline_ms: Annotated[int | None, Meta(description="Expires at this record time")] = None
    invoice_id: Annotated[str | None, Meta(description="The invoice it pays, if any")] = None


class Receipt(WriterMessage, frozen=True):
    """Proof of a paid invoice, keyed by `invoice_id` on `<prefix>receipts`."""

    invoice_id: str
    payer: str
    payee: str
    amount: int
    currency: str
    payment_id: Annotated[str, Meta(description="Command id of the pay_invoice")]
    entry_ids: Annotated[list[str], Meta(description="Journal entries that moved the money")]
    timestamp_ms: Annotated[int, Meta(description="Record time of the command that paid it")]


class Outcome(WriterMessage, frozen=True):
    """What the writer decided for one command or leg, kept for idempotency.

    A repeat re-sends these outputs; every consumer is idempotent by entry id or command id.
    """

    fingerprint: str
    result: Result | None = None
    journal: list[JournalEvent] = msgspec.field(default_factory=list)
    legs: list[Leg] = msgspec.field(default_factory=list)
    origin: Annotated[
        str | None, Meta(description="topic/partition/offset/index of the record that decided it")
    ] = None
    timestamp_ms: Annotated[
        int | None, Meta(description="Timestamp of the record that decided it (for the window)")
    ] = None
    hold: Annotated[Hold | None, Meta(description="The hold this command placed")] = None
    receipt: Annotated[Receipt | None, Meta(description="The receipt this command sent")] = None
    claimed_by: Annotated[
        str | None,
        Meta(description="Claims (inv:, rev:): the command id of the payment or reversal"),
    ] = None
    counted: Annotated[
        int | None,
        Meta(description="A transfer out in flight: the day it counted toward (limits)"),
    ] = None


class JournalHead(WriterMessage, frozen=True, omit_defaults=False):
    """The end of a journal partition's chain: the last event's `seq` and `chain_hash`."""

    seq: Annotated[int, Meta(ge=0)] = 0
    hash: str = ""


class StateRecord(WriterMessage, frozen=True):
    """One record of the state log (`<prefix>state`, co-partitioned, never compacted).

    A writer's commit holds every state change of one decided batch of its partition in this
    one record, so it lands whole or not at all on any broker. `expect` is the offset the
    writer expects it to land at (the end of the partition as its writer knows it): a record
    at any other offset is void, for its writer and for recovery. A new owner appends a
    `claim` at the end it restored to; a writer that finds a valid record of another writer
    between its last one and its commit has lost the partition.

    A `snapshot` is the whole state of the partition as of its `base` offset, written by the
    owner between batches as records of the same kind (`last` on the final one, which holds
    nothing): a restore into an empty store starts at the base of the latest complete one,
    which every record names (`snapshot`), and the log before an older one may be deleted.
    """

    kind: Literal["commit", "claim", "snapshot"]
    expect: Annotated[int, Meta(ge=0, description="Offset this record is valid at")]
    writer: Annotated[str, Meta(description="Id of the writer process incarnation that wrote it")]
    accounts: dict[str, AccountState] = msgspec.field(default_factory=dict)
    outcomes: dict[str, Outcome] = msgspec.field(default_factory=dict)
    head: Annotated[JournalHead | None, Meta(description="Journal chain after the commit")] = None
    snapshot: Annotated[
        int | None,
        Meta(description="Base offset of the latest complete snapshot its writer knew"),
    ] = None
    base: Annotated[int | None, Meta(description="A snapshot record's snapshot: its first")] = None
    last: Annotated[bool, Meta(description="The snapshot record that completes it")] = False


_ENCODER = msgspec.json.Encoder()
_SORTED = msgspec.json.Encoder(order="sorted")  # canonical: the chain hash's input
_DECODERS: dict[Any, msgspec.json.Decoder[Any]] = {}


def to_json(record: Any) -> bytes:
    """A record (or a list of them) as JSON, its fields at their defaults left out."""
    return _ENCODER.encode(record)


def from_json(raw: bytes | str, kind: type[T]) -> T:
    """`raw` read as `kind`, checked against its types and constraints (`msgspec.
    ValidationError` or `msgspec.DecodeError` when it is not one)."""
    decoder = _DECODERS.get(kind)
    if decoder is None:
        decoder = _DECODERS[kind] = msgspec.json.Decoder(kind)
    return decoder.decode(raw)


def from_builtins(data: Any, kind: type[T]) -> T:
    """Parsed JSON (dicts and lists) as `kind`, checked as `from_json` checks."""
    return msgspec.convert(data, kind)


def as_dict(record: WriterMessage) -> dict[str, Any]:
    """Every field of a record, those at their defaults too, as plain values."""
    return {name: msgspec.to_builtins(getattr(record, name)) for name in record.__struct_fields__}


# Message models whose JSON Schema is published in schemas/, by file stem.
SCHEMA_MODELS: dict[str, Any] = {
    "command": Command,
    "leg": Leg,
    "result": Result,
    "journal_event": JournalEvent,
    "account_state": AccountState,
    "outcome": Outcome,
    "state_record": StateRecord,
    "receipt": Receipt,
}
