"""Every message on every topic: commands as pydantic models (they come from clients, so
their validation explains itself and reads decimal amounts), and what the writers make
(legs, results, journal events and the state records) as msgspec structs, which are built,
copied, encoded and decoded on the hot path at a fraction of pydantic's cost. JSON Schemas in
`schemas/` are generated from both.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from ledger_stream.money import BALANCE_MAX, CURRENCY_EXPONENTS, parse_amount

IDENTIFIER_PATTERN = r"^[A-Za-z0-9@._:/+=-]+$"
IDENTIFIER_CHARS_MAX = 128
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
replaced = msgspec.structs.replace  # a copy of a record with some fields changed


class CommandBase(Message):
    command_id: Identifier = Field(description="Client-made idempotency key")
    account: Identifier = Field(description="The account that acts first; the message key")
    reply_partition: int | None = Field(
        default=None, ge=0, strict=True, description="Results partition the answer is written to"
    )
    metadata: Metadata | None = None

    def fingerprint_fields(self) -> dict[str, Any]:
        """What makes two commands with one id the same command (not routing or metadata)."""
        # The fields are plain values, so the instance's own dict is `model_dump`'s answer.
        return {k: v for k, v in self.__dict__.items() if k not in _NOT_FINGERPRINTED}


_NOT_FINGERPRINTED = ("reply_partition", "metadata")


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


class OpenAccount(CommandBase, CurrencyField):
    type: Literal["open_account"]
    overdraft_limit: WireAmount = 0


class Deposit(CommandBase, AmountFields):
    type: Literal["deposit"]


class Withdraw(CommandBase, AmountFields):
    type: Literal["withdraw"]


class Transfer(CommandBase, AmountFields):
    type: Literal["transfer"]
    destination: Identifier


class CloseAccount(CommandBase):
    type: Literal["close_account"]


Command = Annotated[
    OpenAccount | Deposit | Withdraw | Transfer | CloseAccount, Field(discriminator="type")
]
COMMAND_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)
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
    code: str | None = None
    payload_digest: Annotated[str | None, Meta(description="Of the transfer command")] = None

    def fingerprint_fields(self) -> dict[str, Any]:
        fields = msgspec.structs.asdict(self)
        del fields["reply_partition"]
        return fields

    @property
    def account(self) -> str:
        """The account whose writer handles this leg (the message key)."""
        return self.destination if self.type == "credit" else self.source


LegBatch = Annotated[list[Leg], Meta(min_length=1, max_length=1_000_000)]


class Result(WriterMessage, frozen=True):
    """The answer to one command, keyed by `command_id`."""

    command_id: str
    status: Literal["accepted", "rejected"]
    code: str | None = None
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
    ]
    account: Annotated[
        str, Meta(description="The account this event is about (its writer posted it)")
    ]
    currency: str
    postings: list[Posting]
    timestamp_ms: Annotated[int, Meta(description="Timestamp of the command record that caused it")]
    overdraft_limit: int | None = None
    metadata: dict[str, str] | None = None
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

    @property
    def balance(self) -> int:
        return self.credits_posted - self.debits_posted

    @property
    def credit_headroom(self) -> int:
        """Credits the account can still take, keeping room for refunds of what is in transit."""
        return BALANCE_MAX - self.credits_posted - self.debits_in_transit

    @property
    def available(self) -> int:
        """What a debit may take now: balance less pending debits plus the overdraft."""
        return self.balance - self.debits_pending + self.overdraft_limit


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
}
