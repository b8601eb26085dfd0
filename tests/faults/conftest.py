"""Fixtures of the fault suite: one seed for the session and worker processes that each test
stops by pid (the embedded broker and a fresh ledger per test come from tests/conftest.py).

The seed comes from LEDGER_FAULT_SEED (random when unset) and is printed before the first
test and again in the summary; every random choice of a test comes from `rng`, a generator
seeded with the session seed and the test's id, so `LEDGER_FAULT_SEED=<seed>` replays the
same schedule for any selection of tests.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from worker_harness import Workers

_HERE = Path(__file__).resolve().parent
_SELECTED = pytest.StashKey[bool]()


def _session_seed() -> int:
    raw = os.environ.get("LEDGER_FAULT_SEED", "").strip()
    return int(raw) if raw else random.SystemRandom().randrange(2**32)


SEED = _session_seed()
SEED_LINE = f"ledger fault seed: {SEED} (replay with LEDGER_FAULT_SEED={SEED})"


def _ours(item: pytest.Item) -> bool:
    return _HERE in Path(item.path).resolve().parents


def pytest_report_header() -> str:
    return SEED_LINE  # shown when this directory is named on the command line


def pytest_collection_finish(session: pytest.Session) -> None:
    # Also under a plain `pytest`, where only the first conftests give report headers.
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and any(_ours(item) for item in session.items):
        session.config.stash[_SELECTED] = True
        reporter.write_line(SEED_LINE)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if terminalreporter.config.stash.get(_SELECTED, False):
        terminalreporter.write_line(SEED_LINE)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _ours(item):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """This test's random choices: from the session seed and the test's id, nothing else."""
    return random.Random(f"{SEED}/{request.node.nodeid}")


# A snapshot after every 64 KiB of state log, and outcomes compacted as soon as their inputs
# are acknowledged: every fault lands among snapshots, and wiped stores restore from one.
SNAPSHOTS_OFTEN_ENV = {"LEDGER_SNAPSHOT_BYTES": str(64 * 1024), "LEDGER_OUTCOME_WINDOW_S": "0"}


@pytest.fixture
def workers(workers: Workers) -> Workers:
    workers.env.update(SNAPSHOTS_OFTEN_ENV)
    return workers
