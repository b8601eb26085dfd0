"""Every message on every topic, as pydantic models: commands, legs, results, journal events,
and the writer's table records. JSON Schemas in `schemas/` are generated from these.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal, TypeVar

import orjson
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

Identifier = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9@._:/+=-]+$")]
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
RejectionCode = str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


M = TypeVar("M", bound=Message)
_set = object.__setattr__


def replaced(message: M, **changes: Any) -> M:
    """`message.model_copy(update=changes)` for the writer's hot path: the same shallow copy
    with the same fields set, and like it unvalidated, at a fifth of the cost."""
    copy = message.__class__.__new__(message.__class__)
    _set(copy, "__dict__", {**message.__dict__, **changes})
    _set(copy, "__pydantic_fields_set__", message.__pydantic_fields_set__.union(changes))
    _set(copy, "__pydantic_extra__", None)
    _set(copy, "__pydantic_private__", None)
    return copy


class CommandBase(Message):
    command_id: Identifier = Field(description="Client-made idempotency key")
    account: Identifier = Field(description="The account that acts first; the message key")
    reply_partition: int | None = Field(
        default=None, ge=0, strict=True, description="Results partition the answer is written to"
    )
    metadata: Metadata | None = None

    def fingerprint_fields(self) -> dict[str, Any]:
        """What makes two commands with one id the same command (not routing or metadata)."""
        return self.model_dump(exclude={"reply_partition", "metadata"})


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


class Leg(Message):
    """Writer-to-writer message for the second half of a cross-partition transfer.

    `credit` goes to the destination's writer. Back to the source's writer goes `settle`
    when the money landed, or `refund` with the destination's rejection code.
    """

    type: Literal["credit", "settle", "refund"]
    transfer_id: Identifier
    source: Identifier
    destination: Identifier
    amount: int = Field(gt=0)
    currency: Currency
    reply_partition: int | None = None
    code: RejectionCode | None = None
    payload_digest: str | None = Field(default=None, description="Of the transfer command")

    def fingerprint_fields(self) -> dict[str, Any]:
        return self.model_dump(exclude={"reply_partition"})

    @property
    def account(self) -> str:
        """The account whose writer handles this leg (the message key)."""
        return self.destination if self.type == "credit" else self.source


LEG_BATCH_ADAPTER: TypeAdapter[list[Leg]] = TypeAdapter(
    Annotated[list[Leg], Field(min_length=1, max_length=1_000_000)]
)


class Result(Message):
    """The answer to one command, keyed by `command_id`."""

    command_id: str
    status: Literal["accepted", "rejected"]
    code: RejectionCode | None = None
    duplicate: bool = False
    type: str | None = Field(default=None, description="Command type, when it could be read")
    account: str | None = None
    reason: str | None = Field(default=None, description="Human-readable detail")
    payload_digest: str | None = Field(
        default=None,
        description="Digest of the command payload this answers (ledger_stream.core.fingerprint)"
        "; tells apart answers to two different commands sent with one command_id",
    )


class Posting(Message):
    account: str
    debit: int = Field(default=0, ge=0)
    credit: int = Field(default=0, ge=0)


class JournalEvent(Message):
    """One balanced double-entry event, keyed by `entry_id` on a compacted topic."""

    entry_id: str = Field(description="<command_id>:<leg>; deterministic, so re-sends collapse")
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
    account: str = Field(description="The account this event is about (its writer posted it)")
    currency: str
    postings: list[Posting]
    timestamp_ms: int = Field(description="Timestamp of the command record that caused it")
    overdraft_limit: int | None = None
    metadata: Metadata | None = None
    seq: int | None = Field(
        default=None, ge=1, description="Position in its journal partition's chain, from 1"
    )
    prev_hash: str | None = Field(
        default=None,
        description="chain_hash of the previous event of its journal partition ('' for the "
        "first); an edited, removed or reordered event breaks the chain",
    )

    def chain_hash(self) -> str:
        """Digest of the whole event, `prev_hash` and `seq` included: the next event's
        `prev_hash`."""
        canonical = orjson.dumps(self.model_dump(exclude_none=True), option=orjson.OPT_SORT_KEYS)
        return hashlib.blake2b(canonical, digest_size=16).hexdigest()


class AccountState(Message):
    """The writer's record of one account (value of the accounts table)."""

    currency: str
    status: Literal["open", "closed"] = "open"
    overdraft_limit: int = 0
    debits_posted: int = 0
    credits_posted: int = 0
    debits_pending: int = 0
    credits_pending: int = 0
    debits_in_transit: int = Field(
        default=0, description="Debited to @transit for transfers that have not landed yet"
    )

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


class Outcome(Message):
    """What the writer decided for one command or leg, kept for idempotency.

    A repeat re-sends these outputs; every consumer is idempotent by entry id or command id.
    """

    fingerprint: str
    result: Result | None = None
    journal: list[JournalEvent] = Field(default_factory=list)
    legs: list[Leg] = Field(default_factory=list)
    origin: str | None = Field(
        default=None, description="topic/partition/offset/index of the record that decided it"
    )
    timestamp_ms: int | None = Field(
        default=None, description="Timestamp of the record that decided it (for the window)"
    )


class JournalHead(Message):
    """The end of a journal partition's chain: the last event's `seq` and `chain_hash`."""

    seq: int = Field(default=0, ge=0)
    hash: str = ""


class StateRecord(Message):
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
    expect: int = Field(ge=0, description="Offset this record is valid at")
    writer: str = Field(description="Id of the writer process incarnation that wrote it")
    accounts: dict[str, AccountState] = Field(default_factory=dict)
    outcomes: dict[str, Outcome] = Field(default_factory=dict)
    head: JournalHead | None = Field(default=None, description="Journal chain after the commit")
    snapshot: int | None = Field(
        default=None, description="Base offset of the latest complete snapshot its writer knew"
    )
    base: int | None = Field(default=None, description="A snapshot record's snapshot: its first")
    last: bool = Field(default=False, description="The snapshot record that completes it")


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
