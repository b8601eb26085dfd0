"""Turning records into inputs for the core, and bad records into dead letters.

A command record holds one command (a JSON object) or a batch of commands of one partition
(a JSON array); a leg record holds a JSON array of legs of one partition. A command belongs to
the partition of its account, or of the first alias it names (`messages.routed_by`: how a
writer sends on a command whose alias another writer resolves). Anything that
cannot be read, or names an account this partition does not own, becomes a dead letter with
the original bytes and headers saying why; when a `command_id` can be read, a rejection
result goes back to the client too. A record over `RECORD_BYTES_MAX` is not decided: its
commands whose `command_id` can be read are rejected (`invalid_command`), the rest only
dead-lettered; one over `RECORD_PARSE_BYTES_MAX` is not even parsed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from pydantic import ValidationError

from ledger_stream.codes import Code
from ledger_stream.core import Incoming, Reply
from ledger_stream.messages import (
    COMMAND_ADAPTER,
    COMMAND_BATCH_ADAPTER,
    COMMAND_BATCH_MAX,
    IDENTIFIER_CHARS_MAX,
    CommandBase,
    LegBatch,
    Result,
    from_json,
    routed_by,
)

DEADLETTER_HEADERS = ("source_topic", "source_partition", "source_offset", "error")
# A record over this is refused unread. Writers send legs in records of at most 500 and
# clients batch 500 commands a record, far below it.
RECORD_BYTES_MAX = 1024 * 1024
RECORD_PARSE_BYTES_MAX = 16 * 1024 * 1024  # read only to answer the ids of an oversize record


@dataclass(frozen=True)
class Record:
    """The parts of a Kafka record that intake needs."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    is_leg: bool


@dataclass(frozen=True)
class DeadLetter:
    record: Record
    error: str
    replies: tuple[Reply, ...] = ()

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        values = (self.record.topic, self.record.partition, self.record.offset, self.error)
        return [
            (name, str(value).encode())
            for name, value in zip(DEADLETTER_HEADERS, values, strict=True)
        ]


@dataclass(frozen=True)
class Intake:
    """What one record gives the core, and its dead letter when any part was refused."""

    inputs: list[Incoming]
    dead_letter: DeadLetter | None = None


def read_record(record: Record, is_here: Callable[[str], bool]) -> Intake:
    """Parse one record into core inputs; what cannot be used becomes its dead letter.

    In a batch (a JSON array) each command stands alone: the good ones are decided, the bad
    ones answered, and the record goes to the dead-letter topic naming the bad items.
    """
    value = record.value
    if not value:
        return Intake([], DeadLetter(record, "empty message value"))
    if len(value) > RECORD_BYTES_MAX:
        error = f"record of {len(value)} bytes is over the limit of {RECORD_BYTES_MAX} bytes"
        replies = () if record.is_leg else _oversize_rejections(value, error)
        return Intake([], DeadLetter(record, error, replies))
    if record.is_leg:
        try:
            legs: list[Any] = from_json(value, LegBatch)
        except msgspec.DecodeError as error:
            return Intake([], DeadLetter(record, str(error)[:1000]))
        return _placed(record, legs, is_here)
    try:
        if value.lstrip()[:1] == b"[":
            messages = COMMAND_BATCH_ADAPTER.validate_json(value)
        else:
            messages = [COMMAND_ADAPTER.validate_json(value)]
    except ValidationError as error:
        return _read_items(record, error, is_here)
    return _placed(record, messages, is_here)


def _read_items(record: Record, error: ValidationError, is_here: Callable[[str], bool]) -> Intake:
    """The slow path for a record that failed as a whole: one command at a time."""
    assert record.value is not None
    try:
        parsed = json.loads(record.value)  # not orjson: NaN must not hide a command id
    except ValueError:
        return Intake([], DeadLetter(record, _describe(error)))
    batch = isinstance(parsed, list)
    items = parsed if batch else [parsed]
    if not items or len(items) > COMMAND_BATCH_MAX:
        return Intake([], DeadLetter(record, _describe(error)))
    commands: list[Any] = []
    problems: list[str] = []
    replies: list[Reply] = []
    for index, item in enumerate(items):
        try:
            commands.append(COMMAND_ADAPTER.validate_python(item))
        except ValidationError as item_error:
            where = f"item {index}: " if batch else ""
            problems.append(where + _describe(item_error))
            reply = _rejection_of(item, item_error)
            if reply is not None:
                replies.append(reply)
    return _placed(record, commands, is_here, problems, replies)


def _placed(
    record: Record,
    messages: list[Any],
    is_here: Callable[[str], bool],
    problems: list[str] | None = None,
    replies: list[Reply] | None = None,
) -> Intake:
    """Keep the messages whose account belongs to this partition; refuse the others."""
    problems, replies = list(problems or []), list(replies or [])
    inputs: list[Incoming] = []
    position = f"{record.topic}/{record.partition}/{record.offset}"
    for index, message in enumerate(messages):
        if is_here(message.account) or (
            isinstance(message, CommandBase) and is_here(routed_by(message))
        ):
            inputs.append(Incoming(message, record.timestamp_ms, f"{position}/{index}"))
            continue
        reason = (
            f"account {message.account!r} does not belong to partition {record.partition}; "
            "key command messages by account with Kafka's default partitioner"
        )
        problems.append(reason)
        if isinstance(message, CommandBase):
            replies.append(
                _rejection(
                    message.command_id, Code.WRONG_PARTITION, reason, message.reply_partition
                )
            )
    if not problems:
        return Intake(inputs)
    return Intake(inputs, DeadLetter(record, "; ".join(problems)[:1000], tuple(replies)))


def _describe(error: ValidationError) -> str:
    problems = [
        f"{'.'.join(str(part) for part in issue['loc']) or 'message'}: {issue['msg']}"
        for issue in error.errors()[:5]
    ]
    return "; ".join(problems)[:1000]


def _oversize_rejections(value: bytes, error: str) -> tuple[Reply, ...]:
    """Rejections for the commands of a record too large to decide, so that their clients
    are answered rather than left to time out."""
    if len(value) > RECORD_PARSE_BYTES_MAX:
        return ()
    try:
        parsed = json.loads(value)
    except ValueError:
        return ()
    items = parsed if isinstance(parsed, list) else [parsed]
    replies = []
    for item in items[:COMMAND_BATCH_MAX]:
        if isinstance(item, dict) and isinstance(item.get("command_id"), str):
            partition = _reply_partition(item)
            replies.append(
                _rejection(
                    item["command_id"][:IDENTIFIER_CHARS_MAX],
                    Code.INVALID_COMMAND,
                    error,
                    partition,
                )
            )
    return tuple(replies)


def _reply_partition(item: dict[str, Any]) -> int | None:
    partition = item.get("reply_partition")
    if not isinstance(partition, int) or isinstance(partition, bool) or partition < 0:
        return None
    return partition


def _rejection_of(item: Any, error: ValidationError) -> Reply | None:
    """The rejection of a refused command, when its command_id can still be read."""
    if not isinstance(item, dict) or not isinstance(item.get("command_id"), str):
        return None
    command_id = item["command_id"][:IDENTIFIER_CHARS_MAX]
    return _rejection(command_id, _code_for(error), _describe(error), _reply_partition(item))


# Fields whose own validation failing has a code of its own.
_FIELD_CODES = {
    "amount": Code.INVALID_AMOUNT,
    "overdraft_limit": Code.INVALID_AMOUNT,
    "currency": Code.INVALID_CURRENCY,
}


def _code_for(error: ValidationError) -> Code:
    for issue in error.errors():
        loc = issue["loc"]  # (command type, field, ...) for a command's own fields
        field = str(loc[1]) if len(loc) == 2 else ""
        if field in _FIELD_CODES and issue["type"] != "extra_forbidden":
            return _FIELD_CODES[field]
    return Code.INVALID_COMMAND


def _rejection(command_id: str, code: Code, reason: str, partition: int | None) -> Reply:
    return Reply(
        Result(command_id=command_id, status="rejected", code=code, reason=reason), partition
    )
