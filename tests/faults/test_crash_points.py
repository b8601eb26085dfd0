"""A worker that dies at any step of the write path (ledger_stream.faults.POINTS), the n-th
time it gets there with commands in flight, loses nothing and counts nothing twice once it
is restarted without the fault: every command gets its one outcome and the audit is clean.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from ledger_load import (
    QUICK_FAILOVER_ENV,
    Load,
    accounts_on_every_partition,
    assert_ledger_sound,
    client_for,
    finished,
    wait_exit,
)
from worker_harness import Workers

from ledger_stream.faults import EXIT_FAULT, POINTS
from ledger_stream.settings import Settings

AFTER_MAX = 3  # the fault fires the 1st, 2nd or 3rd time the point is reached (seeded)
CHUNKS_AFTER_RESTART = 3
FAULT_WAIT_S = 90.0  # the load keeps the writer busy until the fault fires


@pytest.mark.timeout(180)
@pytest.mark.parametrize("point", POINTS)
async def test_crash_at_a_write_step_then_restart_loses_nothing(
    point: str, ledger: Settings, workers: Workers, rng: random.Random, tmp_path: Path
) -> None:
    after = rng.randint(1, AFTER_MAX)
    load_rng = random.Random(rng.getrandbits(64))
    print(f"schedule: exit at {point!r} the {after}. time")
    workers.env.update(QUICK_FAILOVER_ENV)
    accounts = accounts_on_every_partition(rng, ledger.partitions)
    data_dir = tmp_path / "worker"
    async with client_for(ledger) as client:
        load = Load(ledger, client)
        opener = await asyncio.to_thread(workers.start_ready, data_dir)
        await load.open_accounts(rng, accounts)
        assert await asyncio.to_thread(opener.stop) == 0, workers.logs()

        crashed = asyncio.Event()
        loading = asyncio.create_task(load.run(load_rng, accounts, stop=crashed))
        env = {"LEDGER_FAULT_POINT": point, "LEDGER_FAULT_AFTER": str(after)}
        faulty = workers.start(data_dir, env=env)
        code = await asyncio.to_thread(wait_exit, faulty, FAULT_WAIT_S)
        crashed.set()
        assert code == EXIT_FAULT, (
            f"the worker was to exit with {EXIT_FAULT} at {point!r} (time {after}); "
            f"exit code {code}\n{workers.logs()}"
        )
        assert f"fault injected at {point!r}" in faulty.log_tail(5)

        await asyncio.to_thread(workers.start_ready, data_dir)
        await finished(loading, workers, "the load")
        await load.run(load_rng, accounts, chunks_max=CHUNKS_AFTER_RESTART)
    await assert_ledger_sound(ledger, workers, load, accounts)
