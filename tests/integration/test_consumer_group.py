"""How a consumer of the ledger leaves its group (`ledger_stream.kafka.group`)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer

from ledger_stream.kafka import group
from ledger_stream.settings import Settings
from ledger_stream.topics import TopicNames, connected_admin, ensure_topics


async def members_after_stop(settings: Settings) -> tuple[bool, int]:
    """Start the only consumer of a group, so its leader, stop it, and count the members the
    coordinator still lists."""
    await ensure_topics(settings)
    group_id = f"{settings.topic_prefix}group"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=group_id,
        session_timeout_ms=10_000,  # a member that did not leave is listed until then
    )
    await consumer.start()
    try:
        consumer.subscribe([TopicNames.from_settings(settings).commands])
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=200)
        coordinator = consumer._coordinator
        assert coordinator is not None
        led = coordinator.leader_id == coordinator.member_id
    finally:
        await consumer.stop()
    admin = await connected_admin(settings)
    try:
        [described] = await admin.describe_consumer_groups([group_id])
        members = described.groups[0][5]  # error, id, state, protocol type, protocol, members
    finally:
        await admin.close()
    return led, len(members)


@pytest.mark.parametrize(("leader_leaves", "members"), [(True, 0), (False, 1)])
async def test_the_leader_leaves_its_group_unless_told_not_to(
    ledger: Settings, monkeypatch: pytest.MonkeyPatch, leader_leaves: bool, members: int
) -> None:
    monkeypatch.setattr(group, "leader_leaves", leader_leaves)
    assert await asyncio.wait_for(members_after_stop(ledger), 60) == (True, members)
