"""Fixtures for tests that talk to the embedded (Tansu) broker."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from worker_harness import Workers

from ledger_stream.client import LedgerClient
from ledger_stream.local import WorkerProcess
from ledger_stream.partitioning import name_on
from ledger_stream.settings import Settings

CLIENT_TIMEOUT_S = 60.0  # the first command waits for the worker's group join

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="module")
def module_workers(
    module_ledger: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Workers]:
    """Starts workers of `module_ledger`; each is stopped by pid when the module ends."""
    workers = Workers(module_ledger, tmp_path_factory.mktemp("ledger"))
    try:
        yield workers
    finally:
        workers.stop_all()


@pytest.fixture
async def client(module_ledger: Settings, worker: WorkerProcess) -> AsyncIterator[LedgerClient]:
    """A client of `module_ledger`, once the module's `worker` (its own fixture) is ready."""
    async with LedgerClient(
        module_ledger.bootstrap_servers,
        topic_prefix=module_ledger.topic_prefix,
        timeout_s=CLIENT_TIMEOUT_S,
    ) as ledger_client:
        yield ledger_client


@pytest.fixture
def on(module_ledger: Settings) -> Callable[[int, str], str]:
    """`on(partition, role)`: an account name of this test only, on that partition."""
    test = uuid.uuid4().hex[:8]
    return lambda partition, role: name_on(partition, f"{role}-{test}", module_ledger.partitions)
