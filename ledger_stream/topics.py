"""Topic names, their layouts, and creating them (or refusing a changed partition count)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import NoError, TopicAlreadyExistsError, for_code

from ledger_stream.errors import ConfigurationError
from ledger_stream.kafka.reading import reader
from ledger_stream.kafka.retry import started
from ledger_stream.kafka.security import connection_options
from ledger_stream.settings import Settings

logger = logging.getLogger(__name__)

# One state record holds a whole commit; the writer decides in pieces that fit.
STATE_RECORD_BYTES_MAX = 4 * 1024 * 1024


@dataclass(frozen=True)
class TopicNames:
    commands: str
    legs: str
    journal: str
    results: str
    deadletter: str
    state: str
    outcomes: str
    receipts: str
    notifications: str
    undelivered: str
    flags: str

    @classmethod
    def from_settings(cls, settings: Settings) -> TopicNames:
        prefix = settings.topic_prefix
        return cls(
            commands=f"{prefix}commands",
            legs=f"{prefix}legs",
            journal=f"{prefix}journal",
            results=f"{prefix}results",
            deadletter=f"{prefix}deadletter",
            state=f"{prefix}state",
            outcomes=f"{prefix}outcomes",
            receipts=f"{prefix}receipts",
            notifications=f"{prefix}notifications",
            undelivered=f"{prefix}notifications.undelivered",
            flags=f"{prefix}flags",
        )


def topic_layouts(settings: Settings) -> list[NewTopic]:
    """Every topic the ledger owns. Commands, legs and journal are co-partitioned by account."""
    names = TopicNames.from_settings(settings)
    n, rf = settings.partitions, settings.replication_factor
    journal_config = {
        "cleanup.policy": "compact",
        "retention.ms": str(settings.journal_retention_ms),
    }
    state_config = {
        "cleanup.policy": "delete",
        "retention.ms": "-1",
        "retention.bytes": "-1",
        "max.message.bytes": str(STATE_RECORD_BYTES_MAX + 64 * 1024),
    }
    results_config = {
        "cleanup.policy": "delete",
        "retention.ms": str(settings.results_retention_ms),
    }
    topics = [
        NewTopic(names.commands, n, rf, topic_configs={"cleanup.policy": "delete"}),
        NewTopic(names.legs, n, rf, topic_configs={"cleanup.policy": "delete"}),
        NewTopic(names.journal, n, rf, topic_configs=journal_config),
        NewTopic(names.results, n, rf, topic_configs=results_config),
        NewTopic(names.deadletter, 1, rf, topic_configs={"cleanup.policy": "delete"}),
        # The writers' state log: never compacted (compaction would keep a void commit's
        # value over a valid one), kept for as long as the ledger lives.
        NewTopic(names.state, n, rf, topic_configs=state_config),
        # Compact outcomes, by outcome key: a value once written never changes, so
        # compaction (which keeps the last value of a key) loses nothing here.
        NewTopic(names.outcomes, n, rf, topic_configs={**journal_config, "retention.ms": "-1"}),
        # Receipts of paid invoices, by invoice id, on the payer's partition; kept forever.
        NewTopic(names.receipts, n, rf, topic_configs={**journal_config, "retention.ms": "-1"}),
        # The read side's outputs, by account: notifications (and those no webhook took after
        # every attempt) and anomaly flags.
        NewTopic(names.notifications, n, rf, topic_configs=results_config),
        NewTopic(names.undelivered, 1, rf, topic_configs={"cleanup.policy": "delete"}),
        NewTopic(names.flags, n, rf, topic_configs=results_config),
    ]
    if settings.min_insync_replicas is not None:
        for topic in topics:
            topic.topic_configs = {
                **topic.topic_configs,
                "min.insync.replicas": str(settings.min_insync_replicas),
            }
    return topics


# Partition counts that must equal `partitions`: the writer's tables follow them.
_COPARTITIONED = (
    "commands",
    "legs",
    "journal",
    "results",
    "state",
    "outcomes",
    "receipts",
    "notifications",
    "flags",
)


async def ensure_topics(settings: Settings) -> list[str]:
    """Create missing topics; refuse to go on when an existing one has another partition count.
    Returns the names of the topics it created.

    Adding partitions moves accounts to other writers, whose tables do not hold them, so it
    is refused here: drain the commands, create a new ledger (new prefix) with the new
    count, and replay the journal into it (see README, "Changing the partition count").
    """
    admin = await connected_admin(settings)
    try:
        existing = await _partition_counts(admin)
        wanted = topic_layouts(settings)
        names = TopicNames.from_settings(settings)
        for field_name in _COPARTITIONED:
            topic = getattr(names, field_name)
            count = existing.get(topic)
            if count is not None and count != settings.partitions:
                raise ConfigurationError(
                    f"topic {topic!r} has {count} partitions but partitions "
                    f"(LEDGER_PARTITIONS) is {settings.partitions}; accounts would move "
                    "between writers. Use the topic's count, or migrate (README)."
                )
        missing = [topic for topic in wanted if topic.name not in existing]
        if missing:
            response = await admin.create_topics(missing)
            _raise_refusals(response.topic_errors)
            logger.info("created topics %s", ", ".join(t.name for t in missing))
        return [topic.name for topic in missing]
    finally:
        await admin.close()


def _raise_refusals(topic_errors: Sequence[tuple[Any, ...]]) -> None:
    """Refuse to go on when the broker refused to create a topic (a topic another worker
    created meanwhile aside): (topic, error code[, message]) per topic, as CreateTopics
    answers."""
    refused = [
        f"{entry[0]}: {for_code(entry[1]).__name__}"
        + (f" ({entry[2]})" if len(entry) > 2 and entry[2] else "")
        for entry in topic_errors
        if entry[1] not in (NoError.errno, TopicAlreadyExistsError.errno)
    ]
    if refused:
        raise ConfigurationError(
            "the broker refused to create topics: "
            + "; ".join(refused)
            + ". Check LEDGER_REPLICATION_FACTOR and LEDGER_MIN_INSYNC_REPLICAS against the "
            "brokers, and that this principal may create topics"
        )


async def connected_admin(settings: Settings) -> AIOKafkaAdminClient:
    async def close(admin: AIOKafkaAdminClient) -> None:
        await admin.close()

    return await started(
        lambda: AIOKafkaAdminClient(
            bootstrap_servers=settings.bootstrap_servers, **connection_options(settings)
        ),
        settings.bootstrap_servers,
        settings.connect_attempts_max,
        close,
    )


async def connected_reader(settings: Settings, **options: Any) -> AIOKafkaConsumer:
    """A started reader (`kafka.reading.reader`, with the connection settings and `options`),
    after the connect attempts `connected_admin` makes too."""

    async def stop(consumer: AIOKafkaConsumer) -> None:
        await consumer.stop()

    return await started(
        lambda: reader(settings.bootstrap_servers, **options, **connection_options(settings)),
        settings.bootstrap_servers,
        settings.connect_attempts_max,
        stop,
    )


async def _partition_counts(admin: AIOKafkaAdminClient) -> dict[str, int]:
    topics = await admin.list_topics()
    if not topics:
        return {}
    described = await admin.describe_topics(list(topics))
    return {entry["topic"]: len(entry["partitions"]) for entry in described}
