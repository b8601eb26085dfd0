"""A partition that has input waiting and makes no progress is named, in the worker's log and
in the `ledger_partition_stalled` metric, while the worker's process is still alive.

The writer is made to hang (LEDGER_FAULT_ACTION=hang) the first time it has decided a batch,
so the command it took stays unanswered and its partition stalls.
"""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families
from worker_harness import Workers

from ledger_stream.client import LedgerClient
from ledger_stream.partitioning import partition_of
from ledger_stream.settings import Settings

STALL_TIMEOUT_S = 2
WAIT_S = 90.0


def _stalled(metrics: str) -> dict[tuple[str, str], float]:
    """ledger_partition_stalled by (topic, partition), from the Prometheus text format."""
    return {
        (sample.labels["topic"], sample.labels["partition"]): sample.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "ledger_partition_stalled"
        for sample in family.samples
    }


async def test_a_stalled_partition_is_named_in_the_log_and_the_metric(
    ledger: Settings, workers: Workers
) -> None:
    env = {
        "LEDGER_STALL_TIMEOUT_S": str(STALL_TIMEOUT_S),
        "LEDGER_FAULT_POINT": "decided",
        "LEDGER_FAULT_ACTION": "hang",
    }
    worker = await asyncio.to_thread(workers.start_ready, env=env)
    try:
        async with LedgerClient(ledger.bootstrap_servers, topic_prefix=ledger.topic_prefix) as c:
            c.send_raw(
                "alice",
                b'{"type":"open_account","command_id":"o1","account":"alice","currency":"USD"}',
            )
            await c.flush()
        partition = partition_of("alice", ledger.partitions)
        line = f"partition {ledger.topic_prefix}commands-{partition} stalled"
        assert await asyncio.to_thread(worker.wait_for_log, line, WAIT_S), worker.log_tail()
        stalled = _stalled(await worker.view("/metrics/"))
        assert stalled[(f"{ledger.topic_prefix}commands", str(partition))] == 1.0
        # the partition's legs have nothing waiting: they are not named (nor do they hide it)
        assert stalled[(f"{ledger.topic_prefix}legs", str(partition))] == 0.0
        assert worker.alive()
    finally:
        worker.kill()
