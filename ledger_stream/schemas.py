"""JSON Schemas of every message on every topic, generated from the models (pydantic for
commands, msgspec for what the writers and the read side make): one file per model, and one
contract per topic, versioned, for producers and consumers in other languages.

`python -m ledger_stream.schemas` rewrites `schemas/*.json` and `schemas/topics/`; a test
fails when the files drift. `python -m ledger_stream.schemas --release` freezes each topic's
current version as `schemas/v<version>/<topic>.json`, once: released files are never
written again, and `tests/unit/test_schema_compat.py` holds every topic's current schema to
its released version.
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from pydantic import TypeAdapter

from ledger_stream.anomaly import Flag
from ledger_stream.codes import PRECEDENCE, Code, table
from ledger_stream.intake import DEADLETTER_HEADERS
from ledger_stream.messages import (
    COMMAND_BATCH_MAX,
    SCHEMA_MODELS,
    Command,
    JournalEvent,
    LegBatch,
    Outcome,
    Receipt,
    Result,
    StateRecord,
    WriterMessage,
)
from ledger_stream.notify import Notification, Undelivered
from ledger_stream.outputs import DEAD_LETTER_VALUE_BYTES_MAX
from ledger_stream.schema_compat import Direction

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
README = SCHEMA_DIR.parent / "README.md"
CODES_START, CODES_END = "<!-- codes -->\n", "<!-- /codes -->\n"
DRAFT = "https://json-schema.org/draft/2020-12/schema"
CURRENT_DIR = "topics"  # under SCHEMA_DIR: each topic's current schema, regenerated


def released_dir(version: int) -> str:
    """Under SCHEMA_DIR: the frozen schemas of the topics at `version`."""
    return f"v{version}"


# -- one file per model -------------------------------------------------------------------

# Which topic carries which message (key, value); documented in each schema's description.
MODEL_TOPICS = {
    "command": "<prefix>commands (key: account; value: one command or a JSON array of them)",
    "leg": "<prefix>legs (key: account; value: a JSON array of legs of one partition)",
    "result": "<prefix>results (key: command_id)",
    "journal_event": "<prefix>journal (key: entry_id; compacted)",
    "account_state": "inside <prefix>state records (accounts, by account name)",
    "outcome": "inside <prefix>state records (outcomes, by cmd:<id>, leg:credit:<id>, "
    "inv:<payer>|<invoice_id> or rev:<id>); compact ones on <prefix>outcomes",
    "state_record": "<prefix>state (one record per commit or claim; never compacted)",
    "receipt": "<prefix>receipts (key: invoice_id; on the payer's partition; compacted)",
    "code": "result.code of <prefix>results: every rejection code, its precedence and reason",
}


def code_schema() -> dict[str, Any]:
    """The rejection codes: lowest precedence first applies (0: intake, before deciding)."""
    return {
        "type": "string",
        "oneOf": [
            {"const": code.value, "description": code.reason, "x-precedence": PRECEDENCE[code]}
            for code in Code
        ],
    }


def model_schema(model: Any) -> dict[str, Any]:
    """The JSON Schema of a message model: a msgspec struct, a pydantic type, or `Code`."""
    if model is Code:
        return code_schema()
    if isinstance(model, type) and issubclass(model, WriterMessage):
        return msgspec.json.schema(model)
    return TypeAdapter(model).json_schema()


# -- one contract per topic ---------------------------------------------------------------


@dataclass(frozen=True)
class Topic:
    """One topic's contract: its name after the prefix; the version of its schema, bumped
    by a breaking change only; which way its messages travel (`schema_compat`); what its
    record key and headers hold; and its value's schema, with the enums whose new values
    readers must expect (JSON pointers into the value's schema)."""

    name: str
    version: int
    direction: Direction
    description: str
    key: dict[str, Any]
    value: Callable[[], dict[str, Any]]
    extensible: tuple[str, ...] = ()
    headers: dict[str, Any] | None = None


# What each direction asks of the other side, said in every topic schema's description.
READING: dict[Direction, str] = {
    "in": "Producers: a message valid under this schema stays valid under every later schema "
    "of the same x-version.",
    "out": "Readers: ignore fields you do not know, and values you do not know of an enum "
    "marked x-extensible; a later schema of the same x-version may add both, but removes no "
    "field, makes none optional, and widens no type, range or other enum.",
    "both": "Written and read by the ledger's own workers, which refuse unknown fields and "
    "values: a newer version reads an older one's records and, during a rolling upgrade, the "
    "other way round, so a later schema of the same x-version changes only descriptions.",
}

_ACCOUNT_KEY = {"type": "string", "description": "The account (UTF-8)"}


def _commands() -> dict[str, Any]:
    """One command, or a JSON array of commands of one partition."""
    command = TypeAdapter(Command).json_schema()
    definitions = command.pop("$defs")
    batch = {
        "type": "array",
        "description": "Commands of one partition, each decided on its own",
        "items": {"$ref": "#/$defs/Command"},
        "minItems": 1,
        "maxItems": COMMAND_BATCH_MAX,
    }
    return {
        "anyOf": [{"$ref": "#/$defs/Command"}, batch],
        "$defs": {**definitions, "Command": {"title": "Command", **command}},
    }


def _compact_outcome() -> dict[str, Any]:
    """What `core.compacted` writes: an outcome without what a late repeat does not need,
    its result without what its key and fingerprint say again (`core.outcome_from_compact`
    reads it back). The shape has no model of its own."""
    schema = msgspec.json.schema(Outcome)
    definitions = schema["$defs"]
    whole, result = definitions["Outcome"], definitions["Result"]
    fields = whole["properties"]
    compact_result = {
        **result,
        "title": "CompactResult",
        "description": "The outcome's result, without what its key and fingerprint say again",
        "properties": {
            **result["properties"],
            "command_id": {
                "type": "string",
                "description": "Absent when the outcome key names it (cmd:, leg:credit:, "
                "unresolved:)",
            },
            "payload_digest": {
                "anyOf": [{"type": "string"}, {"type": "null"}],
                "description": "Absent: the outcome's fingerprint; null: none",
            },
            "reason": {
                "anyOf": [{"type": "string"}, {"type": "null"}],
                "description": "Absent: none, or on a rejection without a limit its code's "
                "reason (ledger_stream.codes); null: none",
            },
        },
        "required": [name for name in result["required"] if name != "command_id"],
    }
    compact = {
        "title": "CompactOutcome",
        "description": "A decided outcome kept for good once its window has passed: enough "
        "to answer a late repeat and never apply it twice",
        "type": "object",
        "properties": {
            "fingerprint": fields["fingerprint"],
            "result": {"$ref": "#/$defs/CompactResult"},
            "timestamp_ms": {
                "type": "integer",
                "description": fields["timestamp_ms"]["description"],
            },
            "hold": {"$ref": "#/$defs/Hold", "description": "The resolved hold it placed"},
        },
        "required": ["fingerprint", "result"],
        "additionalProperties": False,
    }
    definitions.update(CompactOutcome=compact, CompactResult=compact_result)
    return _pruned({"$ref": "#/$defs/CompactOutcome", "$defs": definitions})


def _deadletter_headers() -> dict[str, Any]:
    decimal = {"type": "string", "pattern": "^[0-9]+$"}
    properties = {
        "source_topic": {"type": "string", "description": "The topic the record was read from"},
        "source_partition": {**decimal, "description": "Its partition"},
        "source_offset": {**decimal, "description": "Its offset"},
        "error": {"type": "string", "description": "Why it was not used"},
        "truncated_from_bytes": {
            **decimal,
            "description": f"When the value was cut to {DEAD_LETTER_VALUE_BYTES_MAX} bytes: "
            "its size before",
        },
    }
    assert tuple(properties)[: len(DEADLETTER_HEADERS)] == DEADLETTER_HEADERS
    return {
        "type": "object",
        "description": "Kafka record headers, by name; each value UTF-8 text",
        "properties": properties,
        "required": list(DEADLETTER_HEADERS),
    }


# Every topic the ledger writes or reads, in the order of `topics.TopicNames`.
TOPICS: tuple[Topic, ...] = (
    Topic(
        "commands",
        1,
        "in",
        "Commands from producers: one command, or a JSON array of commands of one partition.",
        {
            "type": "string",
            "description": "The command's account, or the first alias it names (murmur2 of "
            "these bytes picks the partition); for an array, that of its commands",
        },
        _commands,
    ),
    Topic(
        "legs",
        1,
        "both",
        "Writer to writer: a JSON array of legs of one partition, the second half of "
        "cross-partition transfers.",
        {
            "type": "string",
            "description": "The account whose writer takes the legs: a credit's destination, "
            "a settle's or refund's source",
        },
        lambda: msgspec.json.schema(LegBatch),
    ),
    Topic(
        "journal",
        1,
        "out",
        "Balanced, hash-chained journal events; compacted.",
        {"type": "string", "description": "The event's entry_id, <command_id>:<leg>"},
        lambda: msgspec.json.schema(JournalEvent),
        extensible=("/$defs/JournalEvent/properties/kind",),
    ),
    Topic(
        "results",
        1,
        "out",
        "The answer to each command.",
        {"type": "string", "description": "The command_id"},
        lambda: msgspec.json.schema(Result),
        extensible=("/$defs/Code",),
    ),
    Topic(
        "deadletter",
        1,
        "out",
        "Records that could not be used: the value is the original record's value, byte for "
        f"byte (JSON or not; cut at {DEAD_LETTER_VALUE_BYTES_MAX} bytes), and the headers "
        "say where it came from and why.",
        {
            "type": ["string", "null"],
            "description": f"The original record's key (cut at {DEAD_LETTER_VALUE_BYTES_MAX} "
            "bytes); none when it had none",
        },
        lambda: {},
        headers=_deadletter_headers(),
    ),
    Topic(
        "state",
        1,
        "both",
        "The writers' state log: one record per commit, claim or snapshot record; never compacted.",
        {"type": "null", "description": "None: records are placed by partition"},
        lambda: msgspec.json.schema(StateRecord),
    ),
    Topic(
        "outcomes",
        1,
        "both",
        "Compact outcomes archived by snapshots, kept forever; a value never changes once written.",
        {
            "type": "string",
            "description": "The outcome key: cmd:<command_id>, leg:credit:<transfer_id>, "
            "inv:<payer>|<invoice_id>, rev:<command_id>, alias:<name> or "
            "unresolved:<command_id>",
        },
        _compact_outcome,
    ),
    Topic(
        "receipts",
        1,
        "out",
        "Receipts of paid invoices, on the payer's partition; compacted, kept forever.",
        {"type": "string", "description": "The invoice_id"},
        lambda: msgspec.json.schema(Receipt),
    ),
    Topic(
        "notifications",
        1,
        "out",
        "What happened to an account, for its webhooks (each delivery's body is the value).",
        _ACCOUNT_KEY,
        lambda: msgspec.json.schema(Notification),
        extensible=("/$defs/Notification/properties/type",),
    ),
    Topic(
        "notifications.undelivered",
        1,
        "out",
        "Notifications a webhook did not take after every attempt, and records of the "
        "notifications topic that are not notifications.",
        {
            "type": "string",
            "description": "The notification's id; for a record that is not a notification, "
            "<topic>/<partition>/<offset> of that record",
        },
        lambda: msgspec.json.schema(Undelivered),
    ),
    Topic(
        "flags",
        1,
        "out",
        "Anomaly flags raised by the read side's rules.",
        _ACCOUNT_KEY,
        lambda: msgspec.json.schema(Flag),
        extensible=("/$defs/Flag/properties/rule",),
    ),
)


def topic_schema(topic: Topic, released: bool = False) -> dict[str, Any]:
    """The contract of `topic` as a JSON Schema document: the value's schema at its root,
    the key's and headers' under `x-key` and `x-headers`. `released`: as frozen in
    `schemas/v<version>/`, which only its `$id` tells apart."""
    value = topic.value()
    if topic.direction == "out":
        value = _for_readers(value, topic.extensible)
    else:
        assert not topic.extensible, f"{topic.name}: its readers take no new values"
    folder = released_dir(topic.version) if released else CURRENT_DIR
    document = {
        "$schema": DRAFT,
        "$id": f"ledger_stream/{folder}/{topic.name}.json",
        "title": f"<prefix>{topic.name}",
        "description": f"{topic.description} {READING[topic.direction]}",
        "x-topic": topic.name,
        "x-version": topic.version,
        "x-direction": topic.direction,
        "x-key": topic.key,
    }
    if topic.headers is not None:
        document["x-headers"] = topic.headers
    clash = document.keys() & value.keys()
    assert not clash, f"{topic.name}: the value's schema sets {sorted(clash)}"
    return {**document, **value}


def _for_readers(schema: dict[str, Any], extensible: tuple[str, ...]) -> dict[str, Any]:
    """`schema` as a contract for readers: objects open (a later schema may add fields), and
    the enums at `extensible` marked as ones a later schema may add values to."""
    opened = _without_closed_objects(copy.deepcopy(schema))
    for pointer in extensible:
        node = _at(opened, pointer)
        assert "enum" in node, f"{pointer} is not an enum"
        node["x-extensible"] = True
    return opened


def _without_closed_objects(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: _without_closed_objects(value)
            for key, value in node.items()
            if not (key == "additionalProperties" and value is False)
        }
    if isinstance(node, list):
        return [_without_closed_objects(item) for item in node]
    return node


def _at(schema: dict[str, Any], pointer: str) -> dict[str, Any]:
    node: Any = schema
    for part in pointer.strip("/").split("/"):
        node = node[part]
    assert isinstance(node, dict), pointer
    return node


def _pruned(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with only the definitions its root refers to, directly or not."""
    definitions = schema["$defs"]
    reachable: set[str] = set()
    pending = [{k: v for k, v in schema.items() if k != "$defs"}]
    while pending:
        for ref in _refs(pending.pop()):
            name = ref.removeprefix("#/$defs/")
            if name not in reachable:
                reachable.add(name)
                pending.append(definitions[name])
    return {**schema, "$defs": {name: definitions[name] for name in sorted(reachable)}}


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


# -- files --------------------------------------------------------------------------------


def _text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def render() -> dict[str, str]:
    """Path under `schemas/` -> JSON text of each generated schema: one per model, and each
    topic's current one under `topics/`. Released versions are not among them."""
    files = {}
    for name, model in {**SCHEMA_MODELS, "code": Code}.items():
        schema = {
            "$schema": DRAFT,
            "$id": f"ledger_stream/{name}.json",
            "x-topic": MODEL_TOPICS[name],
            **model_schema(model),
        }
        files[f"{name}.json"] = _text(schema)
    for topic in TOPICS:
        files[f"{CURRENT_DIR}/{topic.name}.json"] = _text(topic_schema(topic))
    return files


def released_path(topic: Topic, directory: Path = SCHEMA_DIR) -> Path:
    return directory / released_dir(topic.version) / f"{topic.name}.json"


def with_codes_table(readme: str) -> str:
    """The README with its table of rejection codes rendered from `ledger_stream.codes`."""
    start = readme.index(CODES_START) + len(CODES_START)
    return readme[:start] + table() + readme[readme.index(CODES_END, start) :]


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Rewrite the generated schemas and the README's table of codes; released versions
    are left as they are."""
    README.write_text(with_codes_table(README.read_text()))
    written = [README]
    for name, text in render().items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def release(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Freeze each topic's current version that has no released file yet; a released file
    is never written again, so a released version cannot change."""
    written = []
    for topic in TOPICS:
        path = released_path(topic, directory)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_text(topic_schema(topic, released=True)))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ledger_stream.schemas", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--release",
        action="store_true",
        help="also freeze each topic's current version that is not released yet",
    )
    args = parser.parse_args(argv)
    paths = write() + (release() if args.release else [])
    for path in paths:
        print(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)


if __name__ == "__main__":
    main()
