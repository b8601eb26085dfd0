"""Operators' views of a ledger on Kafka: its topics against the layouts the ledger expects
(`topics describe`), one topic's records as they come (`tail`), and how far each consumer
group of the ledger is behind (`lag`). Comparing and formatting are pure functions; the
async functions of each section read Kafka.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from ledger_stream.errors import BrokerUnavailable, ConfigurationError
from ledger_stream.kafka.reading import Record, true_ends
from ledger_stream.settings import Settings
from ledger_stream.topics import (
    TopicNames,
    connected_admin,
    connected_reader,
    ensure_topics,
    topic_layouts,
)

logger = logging.getLogger(__name__)

POLL_MS = 200
NOT_REPORTED = "not reported by the broker"


# -- topics -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicFound:
    """A topic as the broker describes it. `configs` holds what the broker reported: Apache
    Kafka reports every config, defaults included; the embedded broker only those set when
    the topic was created, and a broker that does not answer DescribeConfigs none."""

    name: str
    partitions: int
    replication_factor: int  # the fewest replicas of any of its partitions
    configs: Mapping[str, str]


@dataclass(frozen=True)
class Compared:
    """One setting of a topic: what the ledger expects and what the broker reports."""

    setting: str
    expected: str
    reported: str | None  # None: not reported by the broker, so not checked

    @property
    def differs(self) -> bool:
        return self.reported is not None and self.reported != self.expected


@dataclass(frozen=True)
class TopicCheck:
    """A topic of the ledger's layout (`topic_layouts`) against the topic found, if any.

    >>> layout = NewTopic("l.journal", 4, 1, topic_configs={"cleanup.policy": "compact"})
    >>> TopicCheck(layout, TopicFound("l.journal", 2, 1, {})).differences
    ['l.journal: partitions 2, expected 4']
    >>> TopicCheck(layout, TopicFound("l.journal", 4, 1, {})).unreported
    ['l.journal: cleanup.policy']
    """

    expected: NewTopic
    found: TopicFound | None

    @property
    def topic(self) -> str:
        return str(self.expected.name)

    @property
    def compared(self) -> list[Compared]:
        """Partitions, replication factor, then each config the layout sets, in its order."""
        if self.found is None:
            return []
        found, layout = self.found, self.expected
        return [
            Compared("partitions", str(layout.num_partitions), str(found.partitions)),
            Compared(
                "replication factor",
                str(layout.replication_factor),
                str(found.replication_factor),
            ),
            *(
                Compared(name, value, found.configs.get(name))
                for name, value in layout.topic_configs.items()
            ),
        ]

    @property
    def differences(self) -> list[str]:
        if self.found is None:
            return [f"{self.topic}: missing"]
        return [
            f"{self.topic}: {c.setting} {c.reported}, expected {c.expected}"
            for c in self.compared
            if c.differs
        ]

    @property
    def unreported(self) -> list[str]:
        return [f"{self.topic}: {c.setting}" for c in self.compared if c.reported is None]

    def as_dict(self) -> dict[str, Any]:
        layout, found = self.expected, self.found
        return {
            "topic": self.topic,
            "exists": found is not None,
            "partitions": None if found is None else found.partitions,
            "replication_factor": None if found is None else found.replication_factor,
            "configs": {
                name: None if found is None else found.configs.get(name)
                for name in layout.topic_configs
            },
            "expected": {
                "partitions": layout.num_partitions,
                "replication_factor": layout.replication_factor,
                "configs": dict(layout.topic_configs),
            },
            "differences": self.differences,
            "unreported": self.unreported,
        }


def topics_dict(checks: Sequence[TopicCheck]) -> dict[str, Any]:
    """`topics describe --json`: one object; `ok` when no topic differs or is missing."""
    differences = [line for check in checks for line in check.differences]
    return {
        "ok": not differences,
        "differences": differences,
        "unreported": [line for check in checks for line in check.unreported],
        "topics": [check.as_dict() for check in checks],
    }


def topics_text(checks: Sequence[TopicCheck]) -> str:
    """A table of every topic's settings, as reported and as expected, then the verdict."""
    rows = [("topic", "setting", "broker", "expected", "")]
    for check in checks:
        if check.found is None:
            rows.append((check.topic, "missing", "", "", "DIFFERS"))
        for i, c in enumerate(check.compared):
            verdict = "DIFFERS" if c.differs else NOT_REPORTED if c.reported is None else ""
            shown = "" if c.reported is None else c.reported
            rows.append((check.topic if i == 0 else "", c.setting, shown, c.expected, verdict))
    summary = topics_dict(checks)
    lines = table(rows)
    if summary["differences"]:
        lines.append(f"{len(summary['differences'])} difference(s) from the ledger's layouts:")
        lines.extend(f"  {line}" for line in summary["differences"])
    else:
        lines.append(f"all {len(checks)} topics as the ledger expects")
    if summary["unreported"]:
        lines.append(
            f"{len(summary['unreported'])} setting(s) {NOT_REPORTED}, so not checked: "
            + ", ".join(summary["unreported"])
        )
    return "\n".join(lines)


async def describe_topics(settings: Settings) -> list[TopicCheck]:
    """Every topic the ledger expects, against what the broker reports of it."""
    layouts = topic_layouts(settings)
    async with _admin(settings) as admin:
        found = await _found_topics(admin, {layout.name for layout in layouts})
    return [TopicCheck(layout, found.get(layout.name)) for layout in layouts]


@dataclass(frozen=True)
class Created:
    created: list[str]
    existing: list[str]

    def as_dict(self) -> dict[str, list[str]]:
        return {"created": self.created, "existing": self.existing}

    def text(self) -> str:
        lines = [f"created {name}" for name in self.created]
        lines += [f"exists  {name}" for name in self.existing]
        lines.append(
            f"{len(self.created)} topic(s) created, {len(self.existing)} already there; "
            "`ledger-stream topics describe` compares them with their layouts"
        )
        return "\n".join(lines)


async def create_topics(settings: Settings) -> Created:
    """Create the ledger's missing topics with their layouts, as a worker does at start
    (`ensure_topics`: an existing topic with another partition count is refused)."""
    created = await ensure_topics(settings)
    names = [layout.name for layout in topic_layouts(settings)]
    return Created(created, [name for name in names if name not in created])


async def _found_topics(admin: AIOKafkaAdminClient, names: set[str]) -> dict[str, TopicFound]:
    # Metadata of every topic: asking for a topic by name creates it where the broker
    # creates topics on demand (the embedded broker does).
    described = await admin.describe_topics()
    partitions = {
        entry["topic"]: entry["partitions"]
        for entry in described
        if entry["topic"] in names and not entry["error_code"]
    }
    configs = await _reported_configs(admin, sorted(partitions))
    return {
        name: TopicFound(
            name,
            len(listed),
            min((len(p["replicas"]) for p in listed), default=0),
            configs.get(name, {}),
        )
        for name, listed in partitions.items()
    }


async def _reported_configs(
    admin: AIOKafkaAdminClient, names: list[str]
) -> dict[str, dict[str, str]]:
    """Each topic's configs as the broker reports them (all of them: the embedded broker
    drops the connection when asked for some by name); none when it does not answer."""
    if not names:
        return {}
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
    try:
        responses = await admin.describe_configs(resources)
    except (KafkaError, OSError) as error:
        logger.warning("the broker did not describe the topics' configs (%r)", error)
        return {}
    reported: dict[str, dict[str, str]] = {}
    for response in responses:
        for error_code, _message, _type, name, entries, *_ in response.resources:
            if not error_code:
                reported[name] = {e[0]: e[1] for e in entries if e[1] is not None}
    return reported


# -- tail -------------------------------------------------------------------------------------

TOPIC_NAMES = tuple(field.name for field in fields(TopicNames))

# Fields of a message that name an account: commands, results, journal events (`counterparty`
# is the other side of a movement), legs (`source`), receipts (`payer`, `payee`).
ACCOUNT_FIELDS = ("account", "destination", "source", "counterparty", "payer", "payee")


def topic_named(settings: Settings, short_name: str) -> str:
    """The full name of a ledger topic from its short name (`journal` → `ledger.journal`)."""
    if short_name not in TOPIC_NAMES:
        raise ConfigurationError(
            f"{short_name!r} is not a ledger topic; one of: {', '.join(TOPIC_NAMES)}"
        )
    return str(getattr(TopicNames.from_settings(settings), short_name))


@dataclass(frozen=True)
class Shown:
    """A record as `tail` shows it: the value parsed when it is JSON, else as text."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: str | None
    value: Any  # parsed JSON; None for a record without a value
    text: str | None  # the value, when it is not JSON
    headers: dict[str, str]


def shown(record: Record) -> Shown:
    value, text = None, None
    if record.value is not None:
        try:
            value = json.loads(record.value)
        except ValueError:
            text = _decoded(record.value)
    return Shown(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp,
        key=None if record.key is None else _decoded(record.key),
        value=value,
        text=text,
        headers={name: _decoded(raw) for name, raw in record.headers},
    )


def names_account(item: Shown, account: str) -> bool:
    """Does the record name `account`: as its key, or in a naming field of its value (of
    each message of an array, and of the messages a message carries, as an undelivered
    notification carries its notification)?

    >>> names_account(Shown("t", 0, 0, 0, "x:0", {"counterparty": "bob"}, None, {}), "bob")
    True
    """
    if item.key == account:
        return True
    return any(
        message.get(name) == account for message in _messages(item.value) for name in ACCOUNT_FIELDS
    )


def tail_line(item: Shown) -> str:
    """One readable line: partition, offset, record time, key, the value compacted."""
    value = item.text if item.text is not None else _compact(item.value)
    line = f"{item.partition:>3} {item.offset:>9}  {_time(item.timestamp_ms)}  {item.key or '-'}  "
    line += value
    if item.headers:
        line += "  headers " + _compact(item.headers)
    return line


def tail_dict(item: Shown) -> dict[str, Any]:
    """`tail --json`: one object a record; `value_text` instead of `value` when not JSON."""
    shown_value = {"value": item.value} if item.text is None else {"value_text": item.text}
    return {
        "topic": item.topic,
        "partition": item.partition,
        "offset": item.offset,
        "timestamp_ms": item.timestamp_ms,
        "time": _time(item.timestamp_ms),
        "key": item.key,
        **shown_value,
        "headers": item.headers,
    }


async def tail(
    settings: Settings,
    short_name: str,
    show: Callable[[Shown], None],
    *,
    account: str | None = None,
    from_beginning: bool = False,
    limit: int | None = None,
) -> int:
    """Hand `show` each record of the topic that names `account` (every record without
    one), from the true end of each partition (or its start) on, until `limit` records were
    shown; without a limit, until cancelled. Returns how many were shown."""
    topic = topic_named(settings, short_name)
    count = 0
    async with _reader(settings) as consumer:
        tps = _partitions(consumer, settings, [topic])
        if from_beginning:
            starts = await consumer.beginning_offsets(tps)
        else:
            starts = await true_ends(consumer, tps)
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, starts[tp])
        logger.info(
            "following %s (%d partitions) from %s; Ctrl-C stops",
            topic,
            len(tps),
            "the start" if from_beginning else "the end",
        )
        while limit is None or count < limit:
            fetched = await consumer.getmany(timeout_ms=POLL_MS)
            for tp in sorted(fetched):
                for record in fetched[tp]:
                    item = shown(record)
                    if account is not None and not names_account(item, account):
                        continue
                    show(item)
                    count += 1
                    if count == limit:
                        return count
    return count


def _messages(value: Any) -> Iterator[dict[str, Any]]:
    for message in value if isinstance(value, list) else [value]:
        if isinstance(message, dict):
            yield message
            yield from (inner for inner in message.values() if isinstance(inner, dict))


def _decoded(raw: bytes) -> str:
    return raw.decode("utf-8", errors="backslashreplace")


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _time(timestamp_ms: int) -> str:
    if timestamp_ms < 0:
        return "-"
    moment = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- lag --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsumerGroup:
    group_id: str
    topics: tuple[str, ...]
    readers: str  # who reads in this group


def ledger_groups(settings: Settings) -> list[ConsumerGroup]:
    """The consumer groups of the ledger. The projectors and clients read without a group
    (a projector keeps its positions in its read models: `ledger_read_lag_records`)."""
    names = TopicNames.from_settings(settings)
    return [
        ConsumerGroup(settings.app_id, (names.commands, names.legs), "the writers"),
        # As agents/notifier.py names it.
        ConsumerGroup(f"{settings.topic_prefix}notifier", (names.notifications,), "the notifier"),
    ]


@dataclass(frozen=True)
class PartitionLag:
    """A group's committed offset in one partition against the partition's true end.

    >>> PartitionLag("g", "t", 0, committed=None, start=0, end=5).lag
    5
    """

    group: str
    topic: str
    partition: int
    committed: int | None  # None: the group has committed nothing here
    start: int  # the log start, where a group with no offset begins (`earliest`)
    end: int  # the true end: last offset + 1

    @property
    def lag(self) -> int:
        position = self.start if self.committed is None else max(self.committed, self.start)
        return max(0, self.end - position)

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "committed": self.committed,
            "end": self.end,
            "lag": self.lag,
        }


def lag_dict(groups: Sequence[ConsumerGroup], lags: Sequence[PartitionLag]) -> dict[str, Any]:
    """`lag --json`: one object, a group after another."""
    return {"groups": [_group_dict(group, lags) for group in groups]}


def _group_dict(group: ConsumerGroup, lags: Sequence[PartitionLag]) -> dict[str, Any]:
    of_group = [lag for lag in lags if lag.group == group.group_id]
    return {
        "group": group.group_id,
        "readers": group.readers,
        "lag": sum(lag.lag for lag in of_group),
        "committed_any": any(lag.committed is not None for lag in of_group),
        "partitions": [lag.as_dict() for lag in of_group],
    }


def lag_text(groups: Sequence[ConsumerGroup], lags: Sequence[PartitionLag]) -> str:
    rows = [("group", "topic", "partition", "committed", "end", "lag")]
    rows += [
        (
            lag.group,
            lag.topic,
            str(lag.partition),
            "-" if lag.committed is None else str(lag.committed),
            str(lag.end),
            str(lag.lag),
        )
        for lag in lags
    ]
    lines = table(rows)
    for group in lag_dict(groups, lags)["groups"]:
        never = "" if group["committed_any"] else "; no offset committed: it has never run"
        lines.append(f"{group['group']} ({group['readers']}): {group['lag']} records behind{never}")
    return "\n".join(lines)


async def consumer_lag(settings: Settings) -> tuple[list[ConsumerGroup], list[PartitionLag]]:
    """Each group's committed offsets and the true ends of its partitions (a Fetch's high
    watermark: the embedded broker's ListOffsets answers short of the end)."""
    groups = ledger_groups(settings)
    lags: list[PartitionLag] = []
    async with _reader(settings) as consumer, _admin(settings) as admin:
        read = {group.group_id: _partitions(consumer, settings, group.topics) for group in groups}
        for group in groups:
            tps = read[group.group_id]
            # Offsets before ends: an offset committed in between is then never past its end.
            committed = await admin.list_consumer_group_offsets(group.group_id, partitions=tps)
            ends = await true_ends(consumer, tps)
            starts = await consumer.beginning_offsets(tps)
            for tp in tps:
                offset = committed[tp].offset if tp in committed else -1
                lags.append(
                    PartitionLag(
                        group.group_id,
                        tp.topic,
                        tp.partition,
                        committed=None if offset < 0 else offset,
                        start=starts[tp],
                        end=ends[tp],
                    )
                )
    return groups, lags


# -- shared -----------------------------------------------------------------------------------


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as lines, each column as wide as its widest cell.

    >>> table([("a", "bb"), ("ccc", "d")])
    ['a    bb', 'ccc  d']
    """
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


@asynccontextmanager
async def _admin(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = await connected_admin(settings)
    try:
        with _lost_kafka(settings):
            yield admin
    finally:
        await admin.close()


@asynccontextmanager
async def _reader(settings: Settings) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = await connected_reader(settings, fetch_max_wait_ms=settings.fetch_wait_ms)
    try:
        with _lost_kafka(settings):
            yield consumer
    finally:
        await consumer.stop()


@contextmanager
def _lost_kafka(settings: Settings) -> Iterator[None]:
    """A Kafka error after connecting becomes BrokerUnavailable, naming the broker."""
    try:
        yield
    except KafkaError as error:
        raise BrokerUnavailable(
            f"lost Kafka at {settings.bootstrap_servers} ({error}); run the command again "
            "once it answers"
        ) from error


def _partitions(
    consumer: AIOKafkaConsumer, settings: Settings, topics: Sequence[str]
) -> list[TopicPartition]:
    """Every partition of `topics`, from the metadata of every topic the consumer loaded at
    start: ask before assigning it anything, which narrows its metadata to what it reads."""
    tps = []
    for topic in topics:
        numbers = sorted(consumer.partitions_for_topic(topic) or ())
        if not numbers:
            raise ConfigurationError(
                f"topic {topic!r} does not exist; check the topic prefix (--topic-prefix, "
                f"LEDGER_TOPIC_PREFIX is {settings.topic_prefix!r}) or create the topics "
                "(`ledger-stream topics create`)"
            )
        tps += [TopicPartition(topic, number) for number in numbers]
    return tps
