"""Each topic's schema stays compatible with its last released version.

`schemas/topics/<topic>.json` is the current schema of a topic, generated from the models;
`schemas/v<N>/<topic>.json` is version N as released, frozen. The current schema of a topic
at version N (its `x-version`, `Topic.version` in `ledger_stream/schemas.py`) must not break
`schemas/v<N>/<topic>.json`, in the topic's direction (`ledger_stream/schema_compat.py`):
for `in` (commands) every message valid under the release stays valid; for `out` (journal,
results, deadletter, receipts, notifications, notifications.undelivered, flags) every
message the current schema allows is one a reader of the release handles, ignoring fields
it does not know and values it does not know of an `x-extensible` enum; for `both` (legs,
state, outcomes, which the ledger's workers read back across versions) both hold, with
objects closed. Adding an optional field is compatible except where old readers refuse
unknown fields (`both`).

When a break is intended:
1. bump the topic's `version` in `ledger_stream.schemas.TOPICS` (N to N + 1);
2. run `make schemas`, then `python -m ledger_stream.schemas --release`, which freezes
   `schemas/v<N+1>/<topic>.json` (and never rewrites a released file);
3. commit the new file beside `schemas/v<N>/<topic>.json`, which stays: readers and
   producers of version N read it until they move. From then on this test compares the
   topic with v<N+1>.
"""

from __future__ import annotations

import copy
import doctest
import json
import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ledger_stream import schema_compat as sc
from ledger_stream.schema_compat import Break, Direction, breaking_changes
from ledger_stream.schemas import (
    CURRENT_DIR,
    SCHEMA_DIR,
    TOPICS,
    Topic,
    release,
    released_path,
    render,
    topic_schema,
)
from ledger_stream.topics import TopicNames


def obj(required: tuple[str, ...] = (), closed: bool = True, **fields: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": fields, "required": list(required)}
    if closed:
        schema["additionalProperties"] = False
    return schema


STRING = {"type": "string"}
INTEGER = {"type": "integer"}
NULLABLE_INTEGER = {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None}
AMOUNT = {"oneOf": [{"type": "integer"}, {"type": "string", "pattern": "^[0-9]+$"}]}


def union(*variants: dict[str, Any]) -> dict[str, Any]:
    """A union of objects told apart by their `type`, as pydantic writes one."""
    return {"oneOf": list(variants), "discriminator": {"propertyName": "type"}}


def variant(name: str, **fields: Any) -> dict[str, Any]:
    return obj(("type",), type={"const": name, "type": "string"}, **fields)


def with_ref(definition: dict[str, Any], name: str = "Thing") -> dict[str, Any]:
    return {"$ref": f"#/$defs/{name}", "$defs": {name: definition}}


# (case, direction, old, new, expected breaks as (path, kind))
BREAKING: list[tuple[str, Direction, dict[str, Any], dict[str, Any], set[tuple[str, str]]]] = [
    # What producers send: an old message must stay valid.
    ("required field added", "in", obj(a=STRING), obj(("b",), a=STRING, b=STRING),
     {("b", sc.REQUIRED_ADDED)}),
    ("optional field made required", "in", obj(a=STRING), obj(("a",), a=STRING),
     {("a", sc.REQUIRED_ADDED)}),
    ("field removed from a closed object", "in", obj(a=STRING, b=STRING), obj(a=STRING),
     {("b", sc.FIELD_REMOVED)}),
    ("object closed", "in", obj(closed=False, a=STRING), obj(a=STRING),
     {("", sc.OBJECT_CLOSED)}),
    ("field added to an open object", "in", obj(closed=False), obj(closed=False, a=STRING),
     {("a", sc.TYPE_NARROWED)}),
    ("type narrowed", "in", obj(a=AMOUNT), obj(a=INTEGER), {("a", sc.TYPE_NARROWED)}),
    ("null no longer accepted", "in", obj(a=NULLABLE_INTEGER), obj(a=INTEGER),
     {("a", sc.TYPE_NARROWED), ("a", sc.DEFAULT_CHANGED)}),
    ("number narrowed to integer", "in", obj(a={"type": "number"}), obj(a=INTEGER),
     {("a", sc.TYPE_NARROWED)}),
    ("type changed", "in", obj(a=STRING), obj(a=INTEGER), {("a", sc.TYPE_CHANGED)}),
    ("enum value removed", "in", obj(a={"enum": ["x", "y"]}), obj(a={"enum": ["x"]}),
     {("a", sc.ENUM_VALUE_REMOVED)}),
    ("enum imposed on a string", "in", obj(a=STRING), obj(a={"enum": ["x"]}),
     {("a", sc.ENUM_IMPOSED)}),
    ("variant removed", "in", union(variant("deposit"), variant("withdraw")),
     union(variant("deposit")), {("<type=withdraw>", sc.VARIANT_REMOVED)}),
    ("field of a variant narrowed", "in", union(variant("deposit", amount=AMOUNT)),
     union(variant("deposit", amount=INTEGER)), {("<type=deposit>.amount", sc.TYPE_NARROWED)}),
    ("pattern added", "in", obj(a=STRING), obj(a={**STRING, "pattern": "^[A-Z]{3}$"}),
     {("a", sc.PATTERN_CHANGED)}),
    ("pattern changed, even to a wider one", "in", obj(a={**STRING, "pattern": "^[A-Z]{3}$"}),
     obj(a={**STRING, "pattern": "^[A-Z]+$"}), {("a", sc.PATTERN_CHANGED)}),
    ("format added", "in", obj(a=STRING), obj(a={**STRING, "format": "date"}),
     {("a", sc.FORMAT_CHANGED)}),
    ("minimum raised", "in", obj(a={**INTEGER, "minimum": 0}), obj(a={**INTEGER, "minimum": 1}),
     {("a", sc.RANGE_NARROWED)}),
    ("minimum made exclusive", "in", obj(a={**INTEGER, "minimum": 0}),
     obj(a={**INTEGER, "exclusiveMinimum": 0}), {("a", sc.RANGE_NARROWED)}),
    ("maximum added", "in", obj(a=INTEGER), obj(a={**INTEGER, "maximum": 10}),
     {("a", sc.RANGE_NARROWED)}),
    ("maxLength lowered", "in", obj(a={**STRING, "maxLength": 128}),
     obj(a={**STRING, "maxLength": 64}), {("a", sc.SIZE_NARROWED)}),
    ("array items narrowed", "in", obj(a={"type": "array", "items": AMOUNT}),
     obj(a={"type": "array", "items": INTEGER}), {("a[]", sc.TYPE_NARROWED)}),
    ("maxItems lowered", "in", {"type": "array", "items": STRING, "maxItems": 10},
     {"type": "array", "items": STRING, "maxItems": 5}, {("", sc.SIZE_NARROWED)}),
    ("map values narrowed", "in", obj(m={"type": "object", "additionalProperties": STRING}),
     obj(m={"type": "object", "additionalProperties": {**STRING, "maxLength": 5}}),
     {("m{}", sc.SIZE_NARROWED)}),
    ("map keys narrowed", "in", obj(m={"type": "object", "propertyNames": {"maxLength": 64}}),
     obj(m={"type": "object", "propertyNames": {"maxLength": 8}}), {("m{key}", sc.SIZE_NARROWED)}),
    ("default changed", "in", obj(a={**INTEGER, "default": 0}), obj(a={**INTEGER, "default": 1}),
     {("a", sc.DEFAULT_CHANGED)}),
    ("a change inside a definition", "in", with_ref(obj(a=AMOUNT)), with_ref(obj(a=INTEGER)),
     {("a", sc.TYPE_NARROWED)}),
    # What the ledger writes: every new message must be one an old reader handles.
    ("optional field removed", "out", obj(a=STRING, b=NULLABLE_INTEGER), obj(a=STRING),
     {("b", sc.FIELD_REMOVED)}),
    ("field renamed", "out", obj(("a",), closed=False, a=STRING),
     obj(("b",), closed=False, b=STRING), {("a", sc.FIELD_REMOVED)}),
    ("field that was always present became optional", "out", obj(("a",), a=STRING),
     obj(a=STRING), {("a", sc.BECAME_OPTIONAL)}),
    ("field may now be null", "out", obj(a=INTEGER), obj(a={"anyOf": [INTEGER, {"type": "null"}]}),
     {("a", sc.TYPE_WIDENED)}),
    ("integer widened to number", "out", obj(a=INTEGER), obj(a={"type": "number"}),
     {("a", sc.TYPE_WIDENED)}),
    ("type changed", "out", obj(a=STRING), obj(a=INTEGER), {("a", sc.TYPE_CHANGED)}),
    ("enum value added to a closed enum", "out", obj(a={"enum": ["x"]}),
     obj(a={"enum": ["x", "y"]}), {("a", sc.ENUM_VALUE_ADDED)}),
    ("closed enum dropped", "out", obj(a={"enum": ["x"]}), obj(a=STRING),
     {("a", sc.ENUM_DROPPED)}),
    ("variant added", "out", union(variant("deposit")), union(variant("deposit"), variant("x")),
     {("<type=x>", sc.VARIANT_ADDED)}),
    ("maximum raised", "out", obj(a={**INTEGER, "maximum": 10}), obj(a={**INTEGER, "maximum": 11}),
     {("a", sc.RANGE_WIDENED)}),
    ("minimum removed", "out", obj(a={**INTEGER, "minimum": 0}), obj(a=INTEGER),
     {("a", sc.RANGE_WIDENED)}),
    ("maxLength removed", "out", obj(a={**STRING, "maxLength": 3}), obj(a=STRING),
     {("a", sc.SIZE_WIDENED)}),
    ("pattern removed", "out", obj(a={**STRING, "pattern": "^[A-Z]{3}$"}), obj(a=STRING),
     {("a", sc.PATTERN_CHANGED)}),
    ("default changed", "out", obj(a={**STRING, "default": "open"}),
     obj(a={**STRING, "default": "closed"}), {("a", sc.DEFAULT_CHANGED)}),
    ("object opened where readers refuse unknown fields", "out", obj(a=STRING),
     obj(closed=False, a=STRING), {("", sc.OBJECT_OPENED)}),
    ("a change deep in a list of definitions", "out",
     {**with_ref(obj(postings={"type": "array", "items": {"$ref": "#/$defs/Posting"}})),
      "$defs": {"Thing": obj(postings={"type": "array", "items": {"$ref": "#/$defs/Posting"}}),
                "Posting": obj(("debit",), debit={**INTEGER, "minimum": 0})}},
     {**with_ref(obj(postings={"type": "array", "items": {"$ref": "#/$defs/Posting"}})),
      "$defs": {"Thing": obj(postings={"type": "array", "items": {"$ref": "#/$defs/Posting"}}),
                "Posting": obj(("debit",), debit=INTEGER)}},
     {("postings[].debit", sc.RANGE_WIDENED)}),
    # Written and read back by the ledger itself: both rules, objects closed.
    ("optional field added to a closed object", "both", obj(a=STRING),
     obj(a=STRING, b=NULLABLE_INTEGER), {("b", sc.ADDED_TO_CLOSED)}),
    ("enum value added", "both", obj(a={"enum": ["x"]}), obj(a={"enum": ["x", "y"]}),
     {("a", sc.ENUM_VALUE_ADDED)}),
    ("enum value removed", "both", obj(a={"enum": ["x", "y"]}), obj(a={"enum": ["x"]}),
     {("a", sc.ENUM_VALUE_REMOVED)}),
    ("field made required", "both", obj(a=STRING), obj(("a",), a=STRING),
     {("a", sc.REQUIRED_ADDED)}),
    ("field removed", "both", obj(a=STRING, b=STRING), obj(a=STRING),
     {("b", sc.FIELD_REMOVED)}),
    # The record key and headers are compared as the value is.
    ("key type changed", "out", {**obj(), "x-key": STRING}, {**obj(), "x-key": INTEGER},
     {("(key)", sc.TYPE_CHANGED)}),
    ("header removed", "out", {"x-headers": obj(("error",), closed=False, error=STRING)},
     {"x-headers": obj(closed=False)}, {("(headers).error", sc.FIELD_REMOVED)}),
]  # fmt: skip

COMPATIBLE: list[tuple[str, Direction, dict[str, Any], dict[str, Any]]] = [
    ("optional field added", "in", obj(a=STRING), obj(a=STRING, b=NULLABLE_INTEGER)),
    ("required field made optional", "in", obj(("a",), a=STRING), obj(a=STRING)),
    ("enum value added", "in", obj(a={"enum": ["x"]}), obj(a={"enum": ["x", "y"]})),
    ("variant added", "in", union(variant("deposit")), union(variant("deposit"), variant("x"))),
    ("type widened", "in", obj(a=INTEGER), obj(a=AMOUNT)),
    ("integer widened to number", "in", obj(a=INTEGER), obj(a={"type": "number"})),
    ("range and size widened", "in", obj(a={**INTEGER, "minimum": 1}, b={**STRING, "maxLength": 3}),
     obj(a={**INTEGER, "minimum": 0}, b={**STRING, "maxLength": 9})),
    ("pattern removed", "in", obj(a={**STRING, "pattern": "^[A-Z]{3}$"}), obj(a=STRING)),
    ("object opened", "in", obj(a=STRING), obj(closed=False, a=STRING)),
    ("field removed from an open object", "in", obj(closed=False, a=STRING), obj(closed=False)),
    ("optional field added to an open object", "out", obj(closed=False, a=STRING),
     obj(closed=False, a=STRING, b=NULLABLE_INTEGER)),
    ("optional field made required", "out", obj(a=STRING), obj(("a",), a=STRING)),
    ("enum value removed", "out", obj(a={"enum": ["x", "y"]}), obj(a={"enum": ["x"]})),
    ("value added to an x-extensible enum", "out", obj(a={"enum": ["x"], "x-extensible": True}),
     obj(a={"enum": ["x", "y"], "x-extensible": True})),
    ("x-extensible enum opened", "out", {"$defs": {"Code": {"enum": ["x"], "x-extensible": True}},
     **obj(a={"$ref": "#/$defs/Code"})}, obj(a=STRING)),
    ("null no longer written", "out", obj(a={"anyOf": [INTEGER, {"type": "null"}]}),
     obj(a=INTEGER)),
    ("variant removed", "out", union(variant("deposit"), variant("x")), union(variant("deposit"))),
    ("range narrowed and pattern added", "out", obj(a={**INTEGER, "minimum": 0}, b=STRING),
     obj(a={**INTEGER, "minimum": 1}, b={**STRING, "pattern": "^[a-z]+$"})),
    ("object closed", "out", obj(closed=False, a=STRING), obj(a=STRING)),
    ("descriptions, titles and definition names changed", "both",
     with_ref({**obj(("a",), a={"enum": ["x", "y"]}), "title": "Old", "description": "old"}),
     with_ref({**obj(("a",), a={"enum": ["y", "x"], "description": "new"}), "title": "New"},
              name="Renamed")),
    ("recursive definitions unchanged", "both",
     with_ref(obj(next={"anyOf": [{"$ref": "#/$defs/Thing"}, {"type": "null"}]})),
     with_ref(obj(next={"anyOf": [{"$ref": "#/$defs/Thing"}, {"type": "null"}]}))),
]  # fmt: skip


@pytest.mark.parametrize(
    ("direction", "old", "new", "expected"),
    [pytest.param(*row[1:], id=row[0]) for row in BREAKING],
)
def test_each_kind_of_break_is_named_where_it_happens(
    direction: Direction, old: dict[str, Any], new: dict[str, Any], expected: set[tuple[str, str]]
) -> None:
    found = breaking_changes(old, new, direction)
    assert {(change.path, change.kind) for change in found} == expected, found


@pytest.mark.parametrize(
    ("direction", "old", "new"), [pytest.param(*row[1:], id=row[0]) for row in COMPATIBLE]
)
def test_compatible_changes_pass(
    direction: Direction, old: dict[str, Any], new: dict[str, Any]
) -> None:
    assert breaking_changes(old, new, direction) == []


def test_the_direction_is_the_old_schemas_and_changing_it_breaks() -> None:
    old = {**obj(a=STRING), "x-direction": "in"}
    assert breaking_changes(old, {**obj(a=STRING, b=STRING), "x-direction": "in"}) == []
    assert breaking_changes(old, {**obj(("b",), a=STRING, b=STRING), "x-direction": "in"}) == [
        Break("b", sc.REQUIRED_ADDED, "old messages lack it")
    ]
    assert [
        change.kind for change in breaking_changes(old, {**obj(a=STRING), "x-direction": "out"})
    ] == [sc.DIRECTION_CHANGED]
    with pytest.raises(ValueError, match="direction"):
        breaking_changes(obj(), obj())


def test_a_break_reads_as_where_what_and_how() -> None:
    (change,) = breaking_changes(obj(a=INTEGER), obj(a=STRING), "out")
    assert str(change) == "a: type changed: was integer, now string"


def test_the_modules_examples_hold() -> None:
    failed, attempted = doctest.testmod(sc)
    assert attempted > 0 and failed == 0


# -- the real schemas ---------------------------------------------------------------------


def _released(topic: Topic) -> dict[str, Any]:
    path = released_path(topic)
    assert path.exists(), (
        f"{topic.name} is at version {topic.version}, which is not released: run "
        "`python -m ledger_stream.schemas --release` and commit "
        f"{path.relative_to(SCHEMA_DIR.parent)}"
    )
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


@pytest.mark.parametrize("topic", TOPICS, ids=lambda topic: topic.name)
def test_each_topic_is_compatible_with_its_last_released_version(topic: Topic) -> None:
    released = _released(topic)
    breaks = breaking_changes(released, topic_schema(topic))
    shown = "\n".join(f"  {topic.name}: {change}" for change in breaks)
    assert not breaks, (
        f"the {topic.name} topic's schema breaks its release v{topic.version} "
        f"(schemas/v{topic.version}/{topic.name}.json, direction {topic.direction}):\n{shown}\n"
        f"If the break is intended: set {topic.name}'s version to {topic.version + 1} in "
        "ledger_stream/schemas.py (TOPICS), run `make schemas` and "
        f"`python -m ledger_stream.schemas --release`, and commit "
        f"schemas/v{topic.version + 1}/{topic.name}.json beside the old one."
    )


def _defs(name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda document: document["$defs"][name]


def _drop(where: Callable[[dict[str, Any]], dict[str, Any]], name: str) -> Callable[..., None]:
    def change(document: dict[str, Any]) -> None:
        node = where(document)
        del node["properties"][name]
        node["required"] = [field for field in node.get("required", []) if field != name]

    return change


def _add(
    where: Callable[[dict[str, Any]], dict[str, Any]], name: str, required: bool
) -> Callable[..., None]:
    def change(document: dict[str, Any]) -> None:
        node = where(document)
        node["properties"][name] = {"type": "string"}
        if required:
            node["required"] = [*node.get("required", []), name]

    return change


def _more_codes(document: dict[str, Any]) -> None:
    document["$defs"]["Code"]["enum"].append("new_code")


# (topic, a change to its current schema, the breaks expected as (path, kind))
REAL_CHANGES: list[tuple[str, Callable[..., None], set[tuple[str, str]]]] = [
    ("commands", _add(_defs("Deposit"), "memo", required=True),
     {("<type=deposit>.memo", sc.REQUIRED_ADDED), ("[]<type=deposit>.memo", sc.REQUIRED_ADDED)}),
    ("commands", _add(_defs("Deposit"), "memo", required=False), set()),
    ("commands", _drop(_defs("Transfer"), "destination"),
     {("<type=transfer>.destination", sc.FIELD_REMOVED),
      ("[]<type=transfer>.destination", sc.FIELD_REMOVED)}),
    ("journal", _drop(_defs("JournalEvent"), "counterparty"),
     {("counterparty", sc.FIELD_REMOVED)}),
    ("journal", _add(_defs("JournalEvent"), "memo", required=False), set()),
    ("journal", lambda d: d["$defs"]["JournalEvent"]["properties"]["kind"]["enum"].append("x"),
     set()),
    ("results", _more_codes, set()),
    ("results", lambda d: d["$defs"]["Result"]["required"].remove("status"),
     {("status", sc.BECAME_OPTIONAL)}),
    ("state", _more_codes, {("outcomes{}.result.code", sc.ENUM_VALUE_ADDED)}),
    ("legs", _add(_defs("Leg"), "memo", required=False), {("[].memo", sc.ADDED_TO_CLOSED)}),
    ("outcomes", _add(_defs("CompactOutcome"), "memo", required=False),
     {("memo", sc.ADDED_TO_CLOSED)}),
    ("deadletter", lambda d: d["x-headers"]["properties"].pop("error"),
     {("(headers).error", sc.FIELD_REMOVED)}),
    ("flags", lambda d: d["$defs"]["Flag"]["properties"]["amount"].pop("exclusiveMinimum"),
     {("amount", sc.RANGE_WIDENED)}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "change", "expected"),
    REAL_CHANGES,
    ids=[f"{row[0]}-{index}" for index, row in enumerate(REAL_CHANGES)],
)
def test_a_change_to_a_real_topic_schema_is_judged_by_its_direction(
    name: str, change: Callable[..., None], expected: set[tuple[str, str]]
) -> None:
    (topic,) = [topic for topic in TOPICS if topic.name == name]
    current = topic_schema(topic)
    changed = copy.deepcopy(current)
    change(changed)
    found = breaking_changes(current, changed)
    assert {(b.path, b.kind) for b in found} == expected, found


def test_every_released_file_names_its_topic_and_version_and_no_later_one_exists() -> None:
    versions = {topic.name: topic.version for topic in TOPICS}
    released = sorted(SCHEMA_DIR.glob("v*/*.json"))
    assert released, "no released schemas: run `python -m ledger_stream.schemas --release`"
    for path in released:
        match = re.fullmatch(r"v([0-9]+)", path.parent.name)
        assert match, f"{path}: released versions live in schemas/v<N>/"
        version, name = int(match[1]), path.name.removesuffix(".json")
        assert name in versions, f"{path}: no topic {name!r} in ledger_stream.schemas.TOPICS"
        assert version <= versions[name], (
            f"{path} is released, but {name} is at version {versions[name]}"
        )
        document = json.loads(path.read_text())
        assert document["$id"] == f"ledger_stream/v{version}/{name}.json", path
        assert (document["x-topic"], document["x-version"]) == (name, version), path


def test_the_topics_are_every_topic_the_ledger_has() -> None:
    names = TopicNames.from_settings(SimpleNamespace(topic_prefix=""))  # type: ignore[arg-type]
    assert [topic.name for topic in TOPICS] == list(vars(names).values())


def test_generating_never_touches_a_released_version(tmp_path: Path) -> None:
    assert not [name for name in render() if not name.startswith(f"{CURRENT_DIR}/") and "/" in name]
    first = release(tmp_path)
    assert sorted(path.name for path in first) == sorted(f"{t.name}.json" for t in TOPICS)
    frozen = first[0]
    frozen.write_text("{}\n")  # a release is never written again, even when it differs
    assert release(tmp_path) == []
    assert frozen.read_text() == "{}\n"


def test_a_released_file_is_the_current_schema_under_its_released_id() -> None:
    for topic in TOPICS:
        current, frozen = topic_schema(topic), topic_schema(topic, released=True)
        assert current["$id"] == f"ledger_stream/topics/{topic.name}.json"
        assert {**frozen, "$id": current["$id"]} == current
