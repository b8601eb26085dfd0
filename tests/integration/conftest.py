"""Fixtures for tests that talk to the embedded (Tansu) broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from worker_harness import Workers

from ledger_stream.settings import Settings

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
