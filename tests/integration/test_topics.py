"""The worker's topics: created with their layouts, and a changed partition count refused."""

from __future__ import annotations

import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from ledger_stream.errors import ConfigurationError
from ledger_stream.kafka.broker import EmbeddedBroker
from ledger_stream.settings import Settings
from ledger_stream.topics import TopicNames, ensure_topics


async def describe(bootstrap: str, topics: list[str]) -> dict[str, tuple[int, str]]:
    """(partition count, cleanup.policy) of each topic, as the broker reports them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        counts = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(topics)}
        resources = [ConfigResource(ConfigResourceType.TOPIC, topic) for topic in topics]
        policies = {}
        for response in await admin.describe_configs(resources):
            for resource in response.resources:
                entries = {entry[0]: entry[1] for entry in resource[4]}
                policies[resource[3]] = entries.get("cleanup.policy", "")
        return {topic: (counts[topic], policies[topic]) for topic in topics}
    finally:
        await admin.close()


async def test_topics_are_created_with_partition_counts_and_cleanup_policies(
    broker: EmbeddedBroker,
) -> None:
    settings = Settings(
        bootstrap_servers=broker.bootstrap, topic_prefix=f"l{uuid.uuid4().hex[:8]}.", partitions=3
    )
    names = TopicNames.from_settings(settings)
    created = await ensure_topics(settings)
    assert sorted(created) == sorted(vars(names).values())
    assert await describe(broker.bootstrap, list(vars(names).values())) == {
        names.commands: (3, "delete"),
        names.legs: (3, "delete"),
        names.journal: (3, "compact"),
        names.results: (3, "delete"),
        names.deadletter: (1, "delete"),
        names.state: (3, "delete"),  # never compacted: a void commit must not win
        names.outcomes: (3, "compact"),  # compact outcomes never change once written
        names.receipts: (3, "compact"),
        names.notifications: (3, "delete"),
        names.undelivered: (1, "delete"),
        names.flags: (3, "delete"),
    }
    assert await ensure_topics(settings) == []  # a second worker creates nothing


async def test_a_changed_partition_count_is_refused_naming_the_setting(
    broker: EmbeddedBroker,
) -> None:
    prefix = f"l{uuid.uuid4().hex[:8]}."
    await ensure_topics(Settings(bootstrap_servers=broker.bootstrap, topic_prefix=prefix))
    grown = Settings(bootstrap_servers=broker.bootstrap, topic_prefix=prefix, partitions=12)
    with pytest.raises(ConfigurationError, match=r"has 8 partitions but partitions \(LEDGER_PAR"):
        await ensure_topics(grown)
