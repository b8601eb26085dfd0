"""Fixtures for tests that talk to the embedded (Tansu) broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger_stream.local import FAST_GROUP_ENV, WorkerProcess
from ledger_stream.settings import Settings

_HERE = Path(__file__).resolve().parent

WORKER_READY_TIMEOUT_S = 90.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)


class LedgerWorkers:
    """Starts ledger workers for one ledger; `stop_all` stops each one it started, by pid.

    Every start gets its own log file: `WorkerProcess.wait_for_log` reads the whole log, so
    a restarted worker appending to its predecessor's log would look ready at once.
    """

    def __init__(self, settings: Settings, root: Path) -> None:
        self.settings = settings
        self.root = root
        self.started: list[WorkerProcess] = []

    @property
    def env(self) -> dict[str, str]:
        return {
            **FAST_GROUP_ENV,
            "LEDGER_TOPIC_PREFIX": self.settings.topic_prefix,
            "LEDGER_PARTITIONS": str(self.settings.partitions),
        }

    def __call__(self, data_dir: Path | None = None) -> WorkerProcess:
        """Start a worker (default data dir: `<root>/worker`) and wait until Faust is ready."""
        log_path = self.root / f"worker-{len(self.started) + 1}.log"
        worker = WorkerProcess(
            self.settings.bootstrap_servers,
            data_dir or self.root / "worker",
            log_path=log_path,
            env=self.env,
        )
        self.started.append(worker)
        worker.start()
        if not worker.wait_for_log("Worker ready", WORKER_READY_TIMEOUT_S):
            tail = worker.log_tail(60)
            worker.stop()
            pytest.fail(f"worker pid {worker.pid} did not become ready; log tail:\n{tail}")
        return worker

    def stop_all(self) -> None:
        for worker in reversed(self.started):
            worker.stop()


@pytest.fixture(scope="module")
def module_workers(
    module_ledger: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LedgerWorkers]:
    """Starts workers of `module_ledger`; each is stopped by pid when the module ends."""
    workers = LedgerWorkers(module_ledger, tmp_path_factory.mktemp("ledger"))
    try:
        yield workers
    finally:
        workers.stop_all()


@pytest.fixture
def workers(ledger: Settings, tmp_path: Path) -> Iterator[LedgerWorkers]:
    """Starts workers of `ledger`; each is stopped by pid when the test ends."""
    started = LedgerWorkers(ledger, tmp_path)
    try:
        yield started
    finally:
        started.stop_all()
