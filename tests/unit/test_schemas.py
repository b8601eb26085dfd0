"""The published JSON Schemas match the models they come from, and every message the ledger
makes is valid under its topic's schema.

The messages are the real ones: a scenario runs through the core on the two-partition ledger
of `test_core_rules`, its journals are folded by the read side, and each output (commands
as sent on, legs, journal events, results, state records, compact outcomes, receipts,
notifications, undelivered notifications, flags, dead letters) is checked against
`schemas/topics/<topic>.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args, get_type_hints

import jsonschema
import msgspec
import pytest
from test_core_rules import (
    DAY11,
    T0,
    Ledger,
    alias,
    command,
    dep,
    hold,
    pay,
    post,
    rev,
    wd,
    xfer,
)
from test_core_rules import partition_of as harness_partition

import ledger_stream
from agents.projector import _limit_reached  # the one notification not folded from the journal
from ledger_stream.anomaly import AnomalyRules, Flag
from ledger_stream.codes import Code
from ledger_stream.core import compacted
from ledger_stream.intake import Record, read_record
from ledger_stream.messages import JournalEvent, JournalHead, to_json
from ledger_stream.notify import Notification, Undelivered
from ledger_stream.outputs import dead_letter_record
from ledger_stream.readmodel import ReadFold
from ledger_stream.schemas import (
    CURRENT_DIR,
    README,
    SCHEMA_DIR,
    TOPICS,
    render,
    with_codes_table,
)
from ledger_stream.state.log import encode
from ledger_stream.state.store import Changes


def test_schema_files_match_the_models() -> None:
    expected = render()
    generated = [*SCHEMA_DIR.glob("*.json"), *(SCHEMA_DIR / CURRENT_DIR).glob("*.json")]
    on_disk = {path.relative_to(SCHEMA_DIR).as_posix(): path.read_text() for path in generated}
    stale = sorted(name for name in expected if on_disk.get(name) != expected[name])
    extra = sorted(set(on_disk) - set(expected))
    assert not stale and not extra, (
        f"schemas/ drifted from the models (stale: {stale}, unknown: {extra}); "
        "run `make schemas` and commit the result"
    )


def test_the_readme_lists_every_rejection_code_as_the_codes_module_has_it() -> None:
    readme = README.read_text()
    assert with_codes_table(readme) == readme, (
        "the README's table of rejection codes drifted from ledger_stream/codes.py; "
        "run `make schemas` and commit the result"
    )
    for code in Code:
        assert f"`{code.value}`" in readme


def test_no_module_but_codes_spells_a_code_out() -> None:
    """Every code is `Code.<NAME>` outside ledger_stream/codes.py (tests and docs aside);
    three journal event kinds share their names with codes."""
    kinds = set(get_args(get_type_hints(JournalEvent)["kind"]))
    package = Path(ledger_stream.__file__).parent
    spelled = []
    for path in [*package.rglob("*.py"), *(package.parent / "agents").rglob("*.py")]:
        if path.name == "codes.py":
            continue
        text = path.read_text()
        spelled += [
            f"{path.name}: {c.value}"
            for c in Code
            if f'"{c.value}"' in text and c.value not in kinds
        ]
    assert not spelled


# -- the ledger's own messages, against their topics' schemas ------------------------------


def validator(topic: str, part: str | None = None) -> jsonschema.Validator:
    """The validator of a topic's value, or of its `x-key` or `x-headers`."""
    document = json.loads((SCHEMA_DIR / CURRENT_DIR / f"{topic}.json").read_text())
    schema = document if part is None else document[part]
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def as_json(raw: bytes) -> Any:
    return json.loads(raw)


@pytest.fixture(scope="module")
def traffic() -> dict[str, list[Any]]:
    """What the ledger writes to each topic for a scenario that touches every kind of output:
    limits, cross-partition transfers and a refund, holds, invoice payments (one across
    partitions), a reversal, an alias, a repeat and rejections."""
    ledger = Ledger()
    opened = command(
        "open_account",
        "o1",
        "ann",
        currency="USD",
        limits={"transaction_amount_max": 100, "daily_count_max": {"withdrawal": 5}},
        low_balance=50,
        metadata={"order": "A-1"},
    )
    commands = [
        opened,
        dep("d1", "ann", 90),
        wd("w1", "ann", 101),  # limit_exceeded
        wd("w2", "ann", 60),  # crosses the low balance
        xfer("t1", "alice", "zed", 300),  # across partitions: credit, settle
        xfer("t2", "alice", "bob", 10),
        xfer("t3", "alice", "zzz", 5),  # no such account there: refund
        hold("h1", "alice", "zoe", 50, timeout_s=60),
        post("p1", "alice", "h1", 20),
        pay("i1", "alice", "INV-1", "zed", 30),
        pay("i2", "alice", "INV-2", "bob", 30),
        rev("r1", "bob", "t2"),
        alias("a1", "alias:zip", "bob"),
        xfer("t4", "alice", "alias:zip", 1),  # sent on to the alias's writer
        xfer("t2", "alice", "bob", 10),  # a repeat
        wd("w3", "alice", 10**9),  # insufficient_funds
    ]
    for sent in commands:
        ledger.send(sent)
    decisions = ledger.decisions
    results = [reply.result for decision in decisions for reply in decision.results]
    journal = [event for decision in decisions for event in decision.journal]
    outcomes = {k: v for store in ledger.partitions for k, v in store.outcomes.items()}
    accounts = {k: v for store in ledger.partitions for k, v in store.accounts.items()}

    rules = AnomalyRules.model_validate(
        {"burst": {"count_max": 1}, "new_counterparty": {"amount_min": 0, "history_min": 0}}
    )
    notifications: list[Notification] = []
    flags: list[Flag] = []
    for number in (0, 1):
        fold = ReadFold(lambda key: None, rules)
        for event in journal:
            if harness_partition(event.account) == number:
                fold.event(event)
        notifications += [note for _, note in fold.out.notifications]
        flags += [flag for _, flag in fold.out.flags]
    notifications += [note for r in results for note in _limit_reached(r, T0)]

    changes = Changes(
        {name: to_json(state) for name, state in accounts.items()},
        {key: to_json(outcome) for key, outcome in outcomes.items()},
        JournalHead(seq=len(journal), hash="0" * 32),
    )
    compact = [compacted(key, outcome, DAY11, {}) for key, outcome in outcomes.items()]
    sent_on = [forward.message for decision in decisions for forward in decision.forwards]
    undelivered = [
        Undelivered(msgspec.Raw(to_json(notifications[0])), "http://hook", 5, "HTTP 503"),
        Undelivered(msgspec.Raw(b'"not json"'), None, 0, "not a notification"),
    ]
    return {
        "commands": [
            *(json.loads(c.model_dump_json(exclude_none=True)) for c in [*commands, *sent_on]),
            [json.loads(c.model_dump_json()) for c in commands[:3]],
        ],
        "legs": [as_json(to_json(decision.legs)) for decision in decisions if decision.legs],
        "journal": [as_json(to_json(event)) for event in journal],
        "results": [as_json(to_json(result)) for result in results],
        "state": [
            as_json(encode("commit", 12, "writer-a", changes)),
            as_json(encode("claim", 13, "writer-b")),
            as_json(encode("snapshot", 20, "writer-b", changes, {"base": 20, "snapshot": 9})),
            as_json(
                encode("snapshot", 21, "writer-b", Changes({}, {}), {"base": 20, "last": True})
            ),
        ],
        "outcomes": [as_json(value) for value in compact if value is not None],
        "receipts": [as_json(to_json(r)) for decision in decisions for r in decision.receipts],
        "notifications": [as_json(to_json(note)) for note in notifications],
        "notifications.undelivered": [as_json(to_json(item)) for item in undelivered],
        "flags": [as_json(to_json(flag)) for flag in flags],
    }


def test_the_scenario_makes_every_kind_of_message(traffic: dict[str, list[Any]]) -> None:
    assert {topic.name for topic in TOPICS} - set(traffic) == {"deadletter"}
    assert all(traffic[name] for name in traffic), [name for name in traffic if not traffic[name]]
    kinds = {event["kind"] for event in traffic["journal"]}
    assert {"transfer_debit", "transfer_credit", "transfer_refund", "hold_posted"} <= kinds
    assert {"invoice_payment", "reversal", "alias_registered"} <= kinds
    types = {note["type"] for note in traffic["notifications"]}
    assert {"money_received", "money_sent", "low_balance", "limit_reached"} <= types
    assert {"invoice_paid"} <= types
    assert any("limit" in result for result in traffic["results"])
    assert any(result.get("duplicate") for result in traffic["results"])
    assert {flag["rule"] for flag in traffic["flags"]} >= {"burst", "new_counterparty"}


@pytest.mark.parametrize("topic", [topic.name for topic in TOPICS if topic.name != "deadletter"])
def test_every_message_the_ledger_makes_is_valid_under_its_topics_schema(
    topic: str, traffic: dict[str, list[Any]]
) -> None:
    checked = validator(topic)
    for message in traffic[topic]:
        errors = [error.message for error in checked.iter_errors(message)]
        assert not errors, f"{topic}: {message} is refused: {errors}"


def test_a_dead_letter_has_the_headers_its_schema_names() -> None:
    headers, key = validator("deadletter", "x-headers"), validator("deadletter", "x-key")
    records = [
        Record("ledger.commands", 3, 17, T0, b"alice", b"not json", is_leg=False),
        Record("ledger.commands", 3, 18, T0, None, b"[" + b" " * (2 * 1024 * 1024) + b"]", False),
    ]
    for record in records:
        letter = read_record(record, lambda account: True).dead_letter
        assert letter is not None
        out = dead_letter_record("ledger.deadletter", letter)
        named = {name: value.decode() for name, value in out.headers}
        headers.validate(named)
        key.validate(None if out.key is None else out.key.decode())
    assert "truncated_from_bytes" in named


def test_producers_are_held_to_the_command_schema_and_readers_may_meet_new_fields() -> None:
    commands, journal, state = validator("commands"), validator("journal"), validator("state")
    deposit = {"type": "deposit", "command_id": "c1", "account": "ann", "amount": "12.50"}
    deposit["currency"] = "USD"
    commands.validate(deposit)
    commands.validate([deposit, {**deposit, "command_id": "c2", "amount": 1250}])
    for refused in (
        {**deposit, "colour": "red"},
        {**deposit, "amount": 12.5},
        {**deposit, "type": "steal"},
        [],
    ):
        assert not commands.is_valid(refused), refused
    event = {
        "entry_id": "c1:0",
        "command_id": "c1",
        "kind": "deposit",
        "account": "ann",
        "currency": "USD",
        "postings": [{"account": "ann", "debit": 0, "credit": 5}],
        "timestamp_ms": T0,
    }
    assert journal.is_valid({**event, "added_later": True, "kind": "deposit"})
    assert not journal.is_valid({k: v for k, v in event.items() if k != "postings"})
    assert not state.is_valid({"kind": "claim", "expect": 0, "writer": "w", "added_later": 1})
