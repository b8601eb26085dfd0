"""Commands as they come off the wire: parsing, amount normalisation and refusals."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import msgspec
import orjson
import pytest
from pydantic import ValidationError

from ledger_stream.messages import (
    COMMAND_ADAPTER,
    COMMAND_BATCH_ADAPTER,
    AccountState,
    CloseAccount,
    Deposit,
    JournalEvent,
    Leg,
    LegBatch,
    OpenAccount,
    Transfer,
    Withdraw,
    from_builtins,
    from_json,
    replaced,
    to_json,
)

BASE: dict[str, dict[str, Any]] = {
    "open_account": {
        "type": "open_account",
        "command_id": "c1",
        "account": "alice",
        "currency": "USD",
    },
    "deposit": {
        "type": "deposit",
        "command_id": "c1",
        "account": "alice",
        "currency": "USD",
        "amount": 100,
    },
    "withdraw": {
        "type": "withdraw",
        "command_id": "c1",
        "account": "alice",
        "currency": "USD",
        "amount": 100,
    },
    "transfer": {
        "type": "transfer",
        "command_id": "c1",
        "account": "alice",
        "currency": "USD",
        "amount": 100,
        "destination": "bob",
    },
    "close_account": {"type": "close_account", "command_id": "c1", "account": "alice"},
}


def wire(kind: str, **changes: Any) -> bytes:
    """The JSON of a valid command of `kind`, with fields changed (None removes a field)."""
    body = {**BASE[kind], **changes}
    # The standard library, because orjson refuses integers beyond 64 bits.
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


def error_fields(error: ValidationError) -> set[str]:
    return {str(part) for issue in error.errors() for part in issue["loc"]}


@pytest.mark.parametrize(
    ("kind", "model"),
    [
        ("open_account", OpenAccount),
        ("deposit", Deposit),
        ("withdraw", Withdraw),
        ("transfer", Transfer),
        ("close_account", CloseAccount),
    ],
)
def test_each_command_type_parses_into_its_model(kind: str, model: type) -> None:
    command = COMMAND_ADAPTER.validate_json(wire(kind))
    assert type(command) is model
    assert (command.command_id, command.account, command.type) == ("c1", "alice", kind)


# (command type, wire amount, currency, minor units)
AMOUNTS = [
    ("deposit", "12.50", "USD", 1250),
    ("deposit", "12.5", "USD", 1250),
    ("deposit", 1250, "USD", 1250),
    ("withdraw", "0.01", "USD", 1),
    ("transfer", "3", "EUR", 300),
    ("deposit", "7", "JPY", 7),
    ("deposit", 7, "JPY", 7),
    ("deposit", "1.234", "KWD", 1234),
    ("deposit", "1", "KWD", 1000),
    # Zero and negatives parse; the core refuses them with invalid_amount.
    ("deposit", "0", "USD", 0),
    ("withdraw", "-1.00", "USD", -100),
    ("deposit", -5, "USD", -5),
    # Above AMOUNT_MAX parses; the core refuses it with amount_too_large.
    ("deposit", 10**29, "USD", 10**29),
]


@pytest.mark.parametrize(("kind", "raw", "currency", "minor"), AMOUNTS)
def test_amount_is_normalised_to_minor_units(
    kind: str, raw: object, currency: str, minor: int
) -> None:
    command = COMMAND_ADAPTER.validate_json(wire(kind, amount=raw, currency=currency))
    assert command.amount == minor


@pytest.mark.parametrize(
    ("raw", "currency", "minor"),
    [("25.00", "USD", 2500), (2500, "USD", 2500), ("3", "JPY", 3), ("0.5", "KWD", 500)],
)
def test_overdraft_limit_is_normalised_to_minor_units(
    raw: object, currency: str, minor: int
) -> None:
    command = COMMAND_ADAPTER.validate_json(
        wire("open_account", overdraft_limit=raw, currency=currency)
    )
    assert command.overdraft_limit == minor


def test_overdraft_limit_defaults_to_zero() -> None:
    command = COMMAND_ADAPTER.validate_json(wire("open_account"))
    assert command.overdraft_limit == 0


# (name, wire bytes, a field the error must name)
REFUSED = [
    ("float amount", wire("deposit", amount=12.5), "amount"),
    ("integral float amount", wire("deposit", amount=1250.0), "amount"),
    (
        "exponent number",
        b'{"type":"deposit","command_id":"c1","account":"alice","currency":"USD","amount":1e5}',
        "amount",
    ),
    ("exponent string", wire("deposit", amount="1e5"), "amount"),
    ("bool amount", wire("deposit", amount=True), "amount"),
    (
        "null amount",
        b'{"type":"deposit","command_id":"c1","account":"alice","currency":"USD","amount":null}',
        "amount",
    ),
    ("too many fraction digits", wire("withdraw", amount="1.234"), "amount"),
    ("fraction for JPY", wire("deposit", amount="1.5", currency="JPY"), "amount"),
    ("missing amount", wire("transfer", amount=None), "amount"),
    ("float overdraft", wire("open_account", overdraft_limit=1.5), "overdraft_limit"),
    ("unknown currency", wire("deposit", currency="XYZ"), "currency"),
    ("lower-case currency", wire("deposit", currency="usd"), "currency"),
    ("short currency", wire("open_account", currency="US"), "currency"),
    ("missing currency", wire("deposit", currency=None), "currency"),
    ("unknown field", wire("deposit", memo="hi"), "memo"),
    ("currency on close_account", wire("close_account", currency="USD"), "currency"),
    ("amount on open_account", wire("open_account", amount=1), "amount"),
    ("missing type", wire("deposit", type=None), "type"),
    ("unknown type", wire("deposit", type="refund"), "type"),
    ("missing command_id", wire("deposit", command_id=None), "command_id"),
    ("missing destination", wire("transfer", destination=None), "destination"),
    ("command_id with a space", wire("deposit", command_id="c 1"), "command_id"),
    ("command_id with a newline", wire("deposit", command_id="c1\n"), "command_id"),
    ("command_id non-ASCII", wire("deposit", command_id="c\u00e91"), "command_id"),
    ("command_id with a semicolon", wire("deposit", command_id="c;1"), "command_id"),
    ("empty command_id", wire("deposit", command_id=""), "command_id"),
    ("command_id of 129 characters", wire("deposit", command_id="c" * 129), "command_id"),
    ("account with a slash-star", wire("deposit", account="a/*"), "account"),
    ("destination with a space", wire("transfer", destination="b b"), "destination"),
    ("negative reply_partition", wire("deposit", reply_partition=-1), "reply_partition"),
    ("metadata with a number", wire("deposit", metadata={"k": 1}), "metadata"),
    (
        "metadata of 33 keys",
        wire("deposit", metadata={f"k{i}": "v" for i in range(33)}),
        "metadata",
    ),
    ("metadata with an empty key", wire("deposit", metadata={"": "v"}), "metadata"),
    ("metadata key of 65 characters", wire("deposit", metadata={"k" * 65: "v"}), "metadata"),
    ("metadata value of 513 characters", wire("deposit", metadata={"k": "v" * 513}), "metadata"),
]


@pytest.mark.parametrize(("name", "raw", "field"), REFUSED, ids=[row[0] for row in REFUSED])
def test_command_adapter_refuses(name: str, raw: bytes, field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        COMMAND_ADAPTER.validate_json(raw)
    if field == "type":
        # A missing or unknown discriminator is reported on the message as a whole.
        kinds = {issue["type"] for issue in refused.value.errors()}
        assert kinds & {"union_tag_not_found", "union_tag_invalid"}
    else:
        assert field in error_fields(refused.value)


def test_unknown_currency_also_fails_the_amount_so_the_currency_is_reported() -> None:
    with pytest.raises(ValidationError) as refused:
        COMMAND_ADAPTER.validate_json(wire("deposit", currency="XYZ"))
    assert {"currency", "amount"} <= error_fields(refused.value)
    assert "unknown currency 'XYZ'" in str(refused.value)


def test_identifiers_of_128_characters_and_every_allowed_symbol_are_accepted() -> None:
    command_id = ("Az09@._:/+=-" * 11)[:128]
    command = COMMAND_ADAPTER.validate_json(wire("deposit", command_id=command_id))
    assert command.command_id == command_id


def test_fingerprint_fields_leave_out_routing_and_metadata() -> None:
    plain = COMMAND_ADAPTER.validate_json(wire("transfer", amount="1.00"))
    routed = COMMAND_ADAPTER.validate_json(
        wire("transfer", amount=100, reply_partition=3, metadata={"note": "again"})
    )
    assert plain.fingerprint_fields() == routed.fingerprint_fields()
    assert "reply_partition" not in plain.fingerprint_fields()
    assert "metadata" not in plain.fingerprint_fields()


def test_fingerprint_fields_differ_when_the_amount_differs() -> None:
    one = COMMAND_ADAPTER.validate_json(wire("deposit", amount=100))
    other = COMMAND_ADAPTER.validate_json(wire("deposit", amount=101))
    assert one.fingerprint_fields() != other.fingerprint_fields()


def test_a_command_without_low_balance_keeps_the_fingerprint_it_had_before_the_field() -> None:
    """An outcome decided before `low_balance` existed holds the digest of the command
    without it; a repeat of that command must still match it."""
    opened = COMMAND_ADAPTER.validate_json(wire("open_account"))
    assert set(opened.fingerprint_fields()) == {
        "type",
        "command_id",
        "account",
        "currency",
        "overdraft_limit",
        "limits",
    }
    limited = COMMAND_ADAPTER.validate_python(
        {"type": "set_limits", "command_id": "c1", "account": "alice", "overdraft_limit": 5}
    )
    assert "low_balance" not in limited.fingerprint_fields()
    given = COMMAND_ADAPTER.validate_json(wire("open_account", low_balance=100))
    assert given.fingerprint_fields() == {**opened.fingerprint_fields(), "low_balance": 100}


def test_a_leg_without_an_invoice_keeps_the_fingerprint_it_had_before_the_field() -> None:
    """Legs sent before `invoice_id` existed are kept with the digest of their fields then."""
    leg = Leg(
        type="credit",
        transfer_id="t1",
        source="alice",
        destination="zed",
        amount=5,
        currency="USD",
        reply_partition=2,
        metadata={"note": "n"},
    )
    assert set(leg.fingerprint_fields()) == {
        "type",
        "transfer_id",
        "source",
        "destination",
        "amount",
        "currency",
        "code",
        "payload_digest",
        "command",
    }
    paid = msgspec.structs.replace(leg, invoice_id="INV-1")
    assert paid.fingerprint_fields() == {**leg.fingerprint_fields(), "invoice_id": "INV-1"}


def test_commands_are_frozen() -> None:
    command = COMMAND_ADAPTER.validate_json(wire("deposit"))
    with pytest.raises(ValidationError):
        command.amount = 5  # type: ignore[misc]


def test_batch_adapter_reads_an_array_in_order() -> None:
    raw = orjson.dumps([BASE["open_account"], {**BASE["deposit"], "command_id": "c2"}])
    commands = COMMAND_BATCH_ADAPTER.validate_json(raw)
    assert [type(c) for c in commands] == [OpenAccount, Deposit]


@pytest.mark.parametrize("size", [0, 10_001])
def test_batch_adapter_refuses_an_empty_or_oversized_array(size: int) -> None:
    raw = orjson.dumps([BASE["close_account"]] * size)
    with pytest.raises(ValidationError):
        COMMAND_BATCH_ADAPTER.validate_json(raw)


@pytest.mark.parametrize(("kind", "account"), [("credit", "bob"), ("refund", "alice")])
def test_leg_is_keyed_by_the_account_whose_writer_handles_it(kind: str, account: str) -> None:
    leg = Leg(
        type=kind, transfer_id="t1", source="alice", destination="bob", amount=5, currency="USD"
    )
    assert leg.account == account


@pytest.mark.parametrize("amount", [0, -1])
def test_a_leg_read_from_the_topic_must_move_a_positive_amount(amount: int) -> None:
    leg = {"transfer_id": "t1", "source": "a", "destination": "b", "currency": "USD"}
    raw = orjson.dumps([{"type": "credit", **leg, "amount": amount}])
    with pytest.raises(msgspec.ValidationError, match=r"amount"):
        from_json(raw, LegBatch)


@pytest.mark.parametrize(
    ("state", "balance", "available"),
    [
        (AccountState(currency="USD"), 0, 0),
        (AccountState(currency="USD", credits_posted=100, debits_posted=30), 70, 70),
        (AccountState(currency="USD", overdraft_limit=50), 0, 50),
        (AccountState(currency="USD", overdraft_limit=50, debits_posted=50), -50, 0),
        (AccountState(currency="USD", credits_posted=100, debits_pending=40), 100, 60),
    ],
)
def test_account_state_balance_and_available(
    state: AccountState, balance: int, available: int
) -> None:
    assert (state.balance, state.available) == (balance, available)


def test_metadata_at_its_limits_is_accepted() -> None:
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(32)}
    command = COMMAND_ADAPTER.validate_json(wire("deposit", metadata=metadata))
    assert command.metadata == metadata
    assert all(len(key) == 64 for key in metadata)


def test_metadata_may_hold_empty_values() -> None:
    command = COMMAND_ADAPTER.validate_json(wire("deposit", metadata={"k": ""}))
    assert command.metadata == {"k": ""}


def journal_event(**changes: Any) -> JournalEvent:
    fields: dict[str, Any] = {
        "entry_id": "c1:0",
        "command_id": "c1",
        "kind": "deposit",
        "account": "alice",
        "currency": "USD",
        "postings": [{"account": "@world", "debit": 5}, {"account": "alice", "credit": 5}],
        "timestamp_ms": 1_000,
        "seq": 1,
        "prev_hash": "",
    }
    return from_builtins({**fields, **changes}, JournalEvent)


@pytest.mark.parametrize(
    "changes",
    [
        {"seq": 2},
        {"prev_hash": "ab" * 16},
        {"timestamp_ms": 1_001},
        {"postings": [{"account": "@world", "debit": 6}, {"account": "alice", "credit": 6}]},
        {"metadata": {"note": "x"}},
    ],
    ids=["seq", "prev_hash", "timestamp", "postings", "metadata"],
)
def test_the_chain_hash_of_a_journal_event_covers_every_field(changes: dict[str, Any]) -> None:
    assert journal_event(**changes).chain_hash() != journal_event().chain_hash()


def test_the_chain_hash_is_the_same_for_an_event_read_back_from_its_json() -> None:
    event = journal_event(metadata={"b": "2", "a": "1"})
    assert from_json(to_json(event), JournalEvent).chain_hash() == event.chain_hash()


def test_the_chain_hash_is_blake2b_of_the_events_json_with_sorted_keys_and_no_nulls() -> None:
    # The definition the README gives, so that a consumer in any language can check a chain.
    event = journal_event(metadata={"b": "2", "a": "1"}, overdraft_limit=None)
    fields = {k: v for k, v in json.loads(to_json(event)).items() if v is not None}
    canonical = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    assert event.chain_hash() == hashlib.blake2b(canonical, digest_size=16).hexdigest()


def test_a_record_is_written_without_its_defaults_and_read_back_the_same() -> None:
    account = AccountState(currency="USD", overdraft_limit=5)
    assert to_json(account) == b'{"currency":"USD","overdraft_limit":5}'
    assert from_json(to_json(account), AccountState) == account
    closed = replaced(account, debits_posted=7, status="closed")
    assert from_json(to_json(closed), AccountState) == closed
    assert account.debits_posted == 0 and account.status == "open"  # the original stays
