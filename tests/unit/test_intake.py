"""Records into core inputs, and unreadable or misrouted records into dead letters."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ledger_stream.core import Incoming
from ledger_stream.intake import (
    DEADLETTER_HEADERS,
    RECORD_BYTES_MAX,
    RECORD_PARSE_BYTES_MAX,
    DeadLetter,
    Record,
    read_record,
)
from ledger_stream.messages import Deposit, Leg, OpenAccount, RegisterAlias

HERE = {"alice", "bob"}  # accounts of partition 3 in these tests


def is_here(account: str) -> bool:
    return account in HERE


def record(value: bytes | None, *, is_leg: bool = False) -> Record:
    return Record(
        topic="ledger.commands",
        partition=3,
        offset=42,
        timestamp_ms=1_700_000_000_000,
        key=b"alice",
        value=value,
        is_leg=is_leg,
    )


def deposit(**changes: Any) -> dict[str, Any]:
    body = {
        "type": "deposit",
        "command_id": "c1",
        "account": "alice",
        "currency": "USD",
        "amount": "12.50",
        "reply_partition": 2,
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def register_alias(**changes: Any) -> dict[str, Any]:
    body = {
        "type": "register_alias",
        "command_id": "c1",
        "account": "alias:bob@example.com",
        "target": "bob",
        "reply_partition": 2,
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def dead_letter(value: bytes | None, *, is_leg: bool = False) -> DeadLetter:
    """The dead letter of a record of which nothing may be decided."""
    read = read_record(record(value, is_leg=is_leg), is_here)
    assert read.dead_letter is not None, f"expected a dead letter, got {read!r}"
    assert read.inputs == [], f"nothing of a dead record may be decided, got {read.inputs!r}"
    return read.dead_letter


def inputs(value: bytes, *, is_leg: bool = False) -> list[Incoming]:
    """The inputs of a record that is read whole, with no dead letter."""
    read = read_record(record(value, is_leg=is_leg), is_here)
    assert read.dead_letter is None, f"expected no dead letter, got {read.dead_letter!r}"
    return read.inputs


def test_a_single_command_object_becomes_one_input_with_the_record_timestamp() -> None:
    read = inputs(encode(deposit()))
    assert len(read) == 1
    assert isinstance(read[0], Incoming)
    assert isinstance(read[0].message, Deposit)
    assert read[0].message.amount == 1250
    assert read[0].timestamp_ms == 1_700_000_000_000


@pytest.mark.parametrize("prefix", [b"", b"  \n"])
def test_a_json_array_becomes_a_batch_in_order(prefix: bytes) -> None:
    opening = {"type": "open_account", "command_id": "c0", "account": "bob", "currency": "USD"}
    read = inputs(prefix + encode([opening, deposit()]))
    assert [type(i.message) for i in read] == [OpenAccount, Deposit]
    assert [i.message.command_id for i in read] == ["c0", "c1"]


def test_a_leg_record_becomes_legs() -> None:
    legs = [
        {
            "type": "credit",
            "transfer_id": "t1",
            "source": "zed",
            "destination": "bob",
            "amount": 5,
            "currency": "USD",
        }
    ]
    read = inputs(encode(legs), is_leg=True)
    assert [type(i.message) for i in read] == [Leg]
    assert read[0].message.destination == "bob"


@pytest.mark.parametrize("value", [b"", None])
def test_an_empty_value_is_a_dead_letter_without_reply(value: bytes | None) -> None:
    letter = dead_letter(value)
    assert letter.error == "empty message value"
    assert letter.replies == ()


@pytest.mark.parametrize(
    "value",
    [b"{not json", b'{"command_id": "c1", ', b"\xff\xfe", b"   ", b"[1, 2"],
    ids=["garbage", "truncated", "not utf-8", "whitespace", "open array"],
)
def test_malformed_json_is_a_dead_letter_without_reply(value: bytes) -> None:
    letter = dead_letter(value)
    assert letter.error
    assert letter.replies == ()


# (name, wire value, expected code, expected reply partition)
REJECTED = [
    ("missing destination", deposit(type="transfer"), "invalid_command", 2),
    ("missing amount", deposit(amount=None), "invalid_amount", 2),
    ("missing type", deposit(type=None), "invalid_command", 2),
    ("unknown type", deposit(type="refund"), "invalid_command", 2),
    ("unknown field", deposit(memo="x"), "invalid_command", 2),
    ("bad account id", deposit(account="a b"), "invalid_command", 2),
    ("float amount", deposit(amount=12.5), "invalid_amount", 2),
    ("exponent amount", deposit(amount="1e3"), "invalid_amount", 2),
    ("too many fraction digits", deposit(amount="1.001"), "invalid_amount", 2),
    (
        "float overdraft",
        {
            "type": "open_account",
            "command_id": "c1",
            "account": "alice",
            "currency": "USD",
            "overdraft_limit": 0.5,
        },
        "invalid_amount",
        None,
    ),
    ("unknown currency", deposit(currency="XYZ"), "invalid_currency", 2),
    ("lower-case currency", deposit(currency="usd"), "invalid_currency", 2),
    ("missing currency", deposit(currency=None), "invalid_currency", 2),
    ("negative reply partition", deposit(amount=1.5, reply_partition=-1), "invalid_amount", None),
    ("string reply partition", deposit(amount=1.5, reply_partition="2"), "invalid_amount", None),
    ("alias without its prefix", register_alias(account="bob"), "invalid_command", 2),
    ("alias with an empty name", register_alias(account="alias:"), "invalid_command", 2),
    ("alias with a bad name", register_alias(account="alias:bob smith"), "invalid_command", 2),
    ("alias to an alias", register_alias(target="alias:robert"), "invalid_command", 2),
    ("alias to a system account", register_alias(target="@world"), "invalid_command", 2),
    ("alias without a target", register_alias(target=None), "invalid_command", 2),
    ("alias with an amount", register_alias(amount=5), "invalid_command", 2),
]


@pytest.mark.parametrize(
    ("name", "value", "code", "partition"), REJECTED, ids=[row[0] for row in REJECTED]
)
def test_a_refused_command_with_a_readable_id_gets_one_rejection(
    name: str, value: dict[str, Any], code: str, partition: int | None
) -> None:
    letter = dead_letter(encode(value))
    assert len(letter.replies) == 1
    reply = letter.replies[0]
    assert (reply.result.command_id, reply.result.status, reply.result.code) == (
        "c1",
        "rejected",
        code,
    )
    assert reply.partition == partition
    assert reply.result.reason == letter.error


def test_the_dead_letter_error_names_the_field_at_fault() -> None:
    letter = dead_letter(encode(deposit(amount=12.5)))
    assert "amount" in letter.error
    assert "float" in letter.error


@pytest.mark.parametrize(
    ("value", "field", "words"),
    [
        (register_alias(account="bob"), "register_alias.account", "alias:"),
        (register_alias(target="alias:robert"), "register_alias.target", "not an alias"),
        (register_alias(target="@world"), "register_alias.target", "system account"),
    ],
    ids=["account", "target is an alias", "target is a system account"],
)
def test_a_refused_alias_registration_names_the_field_at_fault(
    value: dict[str, Any], field: str, words: str
) -> None:
    letter = dead_letter(encode(value))
    assert letter.error.startswith(f"{field}: ")
    assert words in letter.error


def test_an_alias_registration_is_read_on_the_alias_partition() -> None:
    read = read_record(record(encode(register_alias())), lambda account: account.startswith("a"))
    assert read.dead_letter is None
    (only,) = read.inputs
    assert isinstance(only.message, RegisterAlias)
    assert (only.message.account, only.message.target) == ("alias:bob@example.com", "bob")


@pytest.mark.parametrize(
    "value",
    [deposit(command_id=None, amount=1.5), deposit(command_id=7, amount=1.5), [1, "x"], "text"],
    ids=["no command_id", "numeric command_id", "array of scalars", "JSON string"],
)
def test_a_refused_command_without_a_readable_id_gets_no_reply(value: Any) -> None:
    assert dead_letter(encode(value)).replies == ()


def test_a_long_command_id_is_cut_to_128_characters_in_the_rejection() -> None:
    letter = dead_letter(encode(deposit(command_id="c" * 300)))
    assert [r.result.command_id for r in letter.replies] == ["c" * 128]


def test_an_empty_array_is_a_dead_letter_without_reply() -> None:
    assert dead_letter(b"[]").replies == ()


def test_in_a_batch_the_good_commands_are_decided_and_only_the_bad_one_is_refused() -> None:
    read = read_record(
        record(encode([deposit(command_id="good"), deposit(command_id="bad", amount=0.5)])),
        is_here,
    )
    assert [i.message.command_id for i in read.inputs] == ["good"]
    assert read.dead_letter is not None
    assert [(r.result.command_id, r.result.code) for r in read.dead_letter.replies] == [
        ("bad", "invalid_amount")
    ]
    assert read.dead_letter.error.startswith("item 1: ")  # names the item at fault


def test_a_field_named_amount_inside_metadata_is_not_an_amount_error() -> None:
    letter = dead_letter(encode(deposit(metadata={"amount": 1})))
    assert [r.result.code for r in letter.replies] == ["invalid_command"]


def test_an_unknown_currency_field_on_close_account_is_an_invalid_command() -> None:
    close = {"type": "close_account", "command_id": "c1", "account": "bob", "currency": "USD"}
    assert [r.result.code for r in dead_letter(encode(close)).replies] == ["invalid_command"]


def test_nan_in_the_json_does_not_hide_the_command_id() -> None:
    letter = dead_letter(
        b'{"type": "deposit", "command_id": "c1", "account": "bob", '
        b'"currency": "USD", "amount": NaN}'
    )
    assert [(r.result.command_id, r.result.code) for r in letter.replies] == [
        ("c1", "invalid_amount")
    ]


def test_a_boolean_reply_partition_is_refused_and_not_used_as_a_partition() -> None:
    letter = dead_letter(encode(deposit(reply_partition=True)))
    assert [(r.result.code, r.partition) for r in letter.replies] == [("invalid_command", None)]


def test_a_command_for_an_account_of_another_partition_is_rejected_wrong_partition() -> None:
    letter = dead_letter(encode(deposit(account="zed")))
    assert "'zed'" in letter.error
    assert "partition 3" in letter.error
    assert [(r.result.command_id, r.result.code, r.partition) for r in letter.replies] == [
        ("c1", "wrong_partition", 2)
    ]


def test_in_a_batch_only_the_misrouted_command_is_rejected() -> None:
    batch = [deposit(command_id="c1"), deposit(command_id="c2", account="zed", reply_partition=0)]
    read = read_record(record(encode(batch)), is_here)
    assert [i.message.command_id for i in read.inputs] == ["c1"]
    assert read.dead_letter is not None
    assert [
        (r.result.command_id, r.result.code, r.partition) for r in read.dead_letter.replies
    ] == [
        ("c2", "wrong_partition", 0),
    ]


def test_the_destination_of_a_transfer_may_live_on_another_partition() -> None:
    transfer = deposit(type="transfer", destination="zed")
    read = inputs(encode(transfer))
    assert len(read) == 1


@pytest.mark.parametrize(
    ("kind", "source", "destination"),
    [("credit", "zed", "bob"), ("settle", "bob", "zed"), ("refund", "bob", "zed")],
)
def test_a_leg_is_read_on_the_partition_of_the_account_that_handles_it(
    kind: str, source: str, destination: str
) -> None:
    leg = {
        "type": kind,
        "transfer_id": "t1",
        "source": source,
        "destination": destination,
        "amount": 5,
        "currency": "USD",
    }
    read = inputs(encode([leg]), is_leg=True)
    assert [(i.message.type, i.message.account) for i in read] == [(kind, "bob")]


def test_a_leg_for_an_account_of_another_partition_is_a_dead_letter_without_reply() -> None:
    legs = [
        {
            "type": "credit",
            "transfer_id": "t1",
            "source": "bob",
            "destination": "zed",
            "amount": 5,
            "currency": "USD",
        }
    ]
    letter = dead_letter(encode(legs), is_leg=True)
    assert "'zed'" in letter.error
    assert letter.replies == ()


def test_an_unreadable_leg_record_is_a_dead_letter_without_reply() -> None:
    letter = dead_letter(encode([{"type": "credit", "transfer_id": "t1"}]), is_leg=True)
    assert letter.replies == ()


def test_dead_letter_headers_say_where_the_record_came_from_and_why() -> None:
    letter = dead_letter(encode(deposit(amount=12.5)))
    headers = letter.headers
    assert [name for name, _ in headers] == list(DEADLETTER_HEADERS)
    assert [name for name, _ in headers] == [
        "source_topic",
        "source_partition",
        "source_offset",
        "error",
    ]
    values = dict(headers)
    assert values["source_topic"] == b"ledger.commands"
    assert values["source_partition"] == b"3"
    assert values["source_offset"] == b"42"
    assert values["error"] == letter.error.encode()
    assert all(isinstance(value, bytes) for _, value in headers)


def test_dead_letter_keeps_the_original_record() -> None:
    value = b"{not json"
    letter = dead_letter(value)
    assert letter.record.value == value
    assert letter.record.offset == 42


def test_each_input_knows_the_record_and_index_it_came_from() -> None:
    batch = [deposit(command_id="c1"), deposit(command_id="c2")]
    read = inputs(encode(batch))
    source = record(b"")
    assert [i.origin for i in read] == [
        f"{source.topic}/{source.partition}/{source.offset}/{index}" for index in (0, 1)
    ]


def padded(value: bytes, size: int) -> bytes:
    """`value` with trailing whitespace up to `size` bytes: still valid JSON."""
    return value + b" " * (size - len(value))


LEG = {
    "type": "credit",
    "transfer_id": "t1",
    "source": "zed",
    "destination": "bob",
    "amount": 5,
    "currency": "USD",
}

# (case, value, is_leg, size, ids answered) of records over the limit
OVERSIZE = [
    ("a command one byte over", encode(deposit()), False, RECORD_BYTES_MAX + 1, ["c1"]),
    ("a batch of commands", encode([deposit()]), False, 4 * RECORD_BYTES_MAX, ["c1"]),
    ("garbage", b"{not json", False, RECORD_BYTES_MAX + 1, []),
    ("too large to parse", encode(deposit()), False, RECORD_PARSE_BYTES_MAX + 1, []),
    ("a record of legs", encode([LEG]), True, RECORD_BYTES_MAX + 1, []),
]


@pytest.mark.parametrize(
    ("case", "value", "is_leg", "size", "answered"), OVERSIZE, ids=[row[0] for row in OVERSIZE]
)
def test_a_record_over_the_size_limit_is_a_dead_letter_and_its_commands_are_rejected(
    case: str, value: bytes, is_leg: bool, size: int, answered: list[str]
) -> None:
    letter = dead_letter(padded(value, size), is_leg=is_leg)
    assert letter.error == (f"record of {size} bytes is over the limit of {RECORD_BYTES_MAX} bytes")
    assert [reply.result.command_id for reply in letter.replies] == answered
    assert all(reply.result.code == "invalid_command" for reply in letter.replies)
    assert letter.record.value is not None and len(letter.record.value) == size


@pytest.mark.parametrize(
    ("value", "is_leg"), [(encode(deposit()), False), (encode([LEG]), True)], ids=["command", "leg"]
)
def test_a_record_of_exactly_the_size_limit_is_read(value: bytes, is_leg: bool) -> None:
    assert len(inputs(padded(value, RECORD_BYTES_MAX), is_leg=is_leg)) == 1


def test_the_record_size_limit_is_one_mebibyte() -> None:
    assert RECORD_BYTES_MAX == 1024 * 1024
