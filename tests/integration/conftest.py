"""Fixtures for tests that talk to the embedded (Tansu) broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger_stream.kafka.broker import EmbeddedBroker, free_port

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One embedded broker on a free port for the whole session, stopped by pid at the end."""
    embedded = EmbeddedBroker(port=free_port())
    embedded.start()
    try:
        yield embedded
    finally:
        embedded.stop()
