"""Fixtures shared by the tests that need a broker: one embedded broker for the session, and
a ledger of its own (a fresh topic prefix, its topics created) for a test or a module."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from worker_harness import Workers

from ledger_stream.kafka.broker import EmbeddedBroker, free_port
from ledger_stream.settings import Settings
from ledger_stream.topics import ensure_topics

#: Partitions of every ledger the broker tests create.
PARTITIONS = 4


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One embedded broker on a free port for the whole session, stopped by pid at the end."""
    embedded = EmbeddedBroker(port=free_port())
    embedded.start()
    try:
        yield embedded
    finally:
        embedded.stop()


def new_ledger(broker: EmbeddedBroker) -> Settings:
    """Settings of a ledger of its own (a fresh topic prefix) whose topics exist."""
    settings = Settings(
        bootstrap_servers=broker.bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:12]}.",
        partitions=PARTITIONS,
    )
    asyncio.run(ensure_topics(settings))
    return settings


@pytest.fixture
def ledger(broker: EmbeddedBroker) -> Settings:
    """A ledger (own topic prefix, topics created) for one test."""
    return new_ledger(broker)


@pytest.fixture
def make_ledger(broker: EmbeddedBroker) -> Callable[[], Settings]:
    """Makes ledgers (own topic prefix, topics created), as many as a test needs."""
    return lambda: new_ledger(broker)


@pytest.fixture(scope="module")
def module_ledger(broker: EmbeddedBroker) -> Settings:
    """A ledger (own topic prefix, topics created) shared by the tests of one module."""
    return new_ledger(broker)


@pytest.fixture
def workers(ledger: Settings, tmp_path: Path) -> Iterator[Workers]:
    """Starts workers of `ledger`; each one is stopped by pid when the test ends."""
    started = Workers(ledger, tmp_path)
    try:
        yield started
    finally:
        started.stop_all()
