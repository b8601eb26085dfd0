"""The worker's watch on its own progress (`agents.progress`): a worker that holds no
partitions for long says so, including one whose partitions were revoked by a rebalance that
never hands out the next assignment (the consumer's own assignment still lists the revoked
ones meanwhile)."""

from __future__ import annotations

import logging

import pytest
from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from agents.progress import Progress

TIMEOUT_S = 30.0
HELD = {TopicPartition("commands", 0), TopicPartition("legs", 0)}


def owned() -> float | None:
    return REGISTRY.get_sample_value("ledger_worker_partitions")


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_partitions_revoked_and_not_assigned_again_are_named_after_the_stall_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "agents.progress")
    progress = Progress(TIMEOUT_S)
    progress.assigned(HELD)
    progress._look_at_assignment(0.0)
    progress._look_at_assignment(10 * TIMEOUT_S)
    assert owned() == 2
    assert warnings(caplog) == []

    for tp in HELD:  # a rebalance begins: everything is revoked
        progress.forget(tp)
    progress._look_at_assignment(1_000.0)
    assert owned() == 0
    progress._look_at_assignment(1_000.0 + TIMEOUT_S - 1)
    assert warnings(caplog) == []
    progress._look_at_assignment(1_000.0 + TIMEOUT_S)
    (warning,) = warnings(caplog)
    assert warning.startswith("no partitions assigned for 30 s"), warning
    progress._look_at_assignment(1_000.0 + TIMEOUT_S + 1)  # not again at once
    assert len(warnings(caplog)) == 1

    progress.assigned({TopicPartition("commands", 3)})
    progress._look_at_assignment(2_000.0)
    assert owned() == 1
    assert progress.unassigned_since is None
