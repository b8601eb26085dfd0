"""Turning records into inputs for the core, and bad records into dead letters.

A command record holds one command (a JSON object) or a batch of commands of one partition
(a JSON array); a leg record holds a JSON array of legs of one partition. Anything that
cannot be read, or names an account this partition does not own, becomes a dead letter with
the original bytes and headers saying why; when a `command_id` can be read, a rejection
result goes back to the client too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from ledger_stream.core import Incoming, Reply
from ledger_stream.messages import (
    COMMAND_ADAPTER,
    COMMAND_BATCH_ADAPTER,
    LEG_BATCH_ADAPTER,
    CommandBase,
    Result,
)

DEADLETTER_HEADERS = ("source_topic", "source_partition", "source_offset", "error")


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


def read_record(record: Record, is_here: Callable[[str], bool]) -> list[Incoming] | DeadLetter:
    """Parse one record into core inputs, or say why it is a dead letter."""
    if not record.value:
        return DeadLetter(record, "empty message value")
    try:
        messages: list[Any]
        if record.is_leg:
            messages = LEG_BATCH_ADAPTER.validate_json(record.value)
        elif record.value.lstrip()[:1] == b"[":
            messages = COMMAND_BATCH_ADAPTER.validate_json(record.value)
        else:
            messages = [COMMAND_ADAPTER.validate_json(record.value)]
    except ValidationError as error:
        return DeadLetter(record, _describe(error), _rejections(record.value, error))
    elsewhere = [m.account for m in messages if not is_here(m.account)]
    if elsewhere:
        reason = (
            f"account {elsewhere[0]!r} does not belong to partition {record.partition}; "
            "key command messages by account with Kafka's default partitioner"
        )
        replies = tuple(
            _rejection(m.command_id, "wrong_partition", reason, m.reply_partition)
            for m in messages
            if isinstance(m, CommandBase)
        )
        return DeadLetter(record, reason, replies)
    return [Incoming(message, record.timestamp_ms) for message in messages]


def _describe(error: ValidationError) -> str:
    problems = [
        f"{'.'.join(str(part) for part in issue['loc']) or 'message'}: {issue['msg']}"
        for issue in error.errors()[:5]
    ]
    return "; ".join(problems)[:1000]


def _rejections(value: bytes, error: ValidationError) -> tuple[Reply, ...]:
    """Rejection results for the commands whose command_id can still be read."""
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        return ()
    items = parsed if isinstance(parsed, list) else [parsed]
    code = _code_for(error)
    detail = _describe(error)
    replies = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("command_id"), str):
            continue
        partition = item.get("reply_partition")
        partition = partition if isinstance(partition, int) and partition >= 0 else None
        replies.append(_rejection(item["command_id"][:128], code, detail, partition))
    return tuple(replies)


def _code_for(error: ValidationError) -> str:
    fields = {str(part) for issue in error.errors() for part in issue["loc"]}
    if "currency" in fields:
        return "invalid_currency"
    if fields & {"amount", "overdraft_limit"}:
        return "invalid_amount"
    return "invalid_command"


def _rejection(command_id: str, code: str, reason: str, partition: int | None) -> Reply:
    return Reply(
        Result(command_id=command_id, status="rejected", code=code, reason=reason), partition
    )
