"""A worker killed (SIGKILL) at seeded moments under load, restarted each time, alternately
with its local state kept and wiped: every command gets its one outcome and the audit is
clean.
"""

from __future__ import annotations

import asyncio
import random
import shutil
from pathlib import Path

import pytest
from ledger_load import (
    QUICK_FAILOVER_ENV,
    Load,
    accounts_on_every_partition,
    assert_ledger_sound,
    client_for,
    finished,
)
from worker_harness import Workers

from ledger_stream.settings import Settings

KILLS = 3
CHUNKS_AFTER_LAST_RESTART = 3


@pytest.mark.timeout(180)
async def test_sigkill_under_load_with_state_kept_then_wiped_loses_nothing(
    ledger: Settings, workers: Workers, rng: random.Random, tmp_path: Path
) -> None:
    workers.env.update(QUICK_FAILOVER_ENV)
    accounts = accounts_on_every_partition(rng, ledger.partitions)
    moments_s = [rng.uniform(0.1, 2.0) for _ in range(KILLS)]  # after the load resumes
    wipes = [kill % 2 == 1 for kill in range(KILLS)]  # kept, wiped, kept
    load_rng = random.Random(rng.getrandbits(64))  # the load's own, so timing cannot mix them
    print(f"schedule: kills {[round(m, 3) for m in moments_s]} s into the load, wipes {wipes}")
    data_dir = tmp_path / "worker"
    worker = await asyncio.to_thread(workers.start_ready, data_dir)
    async with client_for(ledger) as client:
        load = Load(ledger, client)
        await load.open_accounts(rng, accounts)
        stop = asyncio.Event()
        loading = asyncio.create_task(load.run(load_rng, accounts, stop=stop))
        for moment_s, wipe in zip(moments_s, wipes, strict=True):
            await load.chunks(load.chunks_done + 1, workers)  # the load is running again
            await asyncio.sleep(moment_s)
            assert not loading.done(), "the load ended before the kill"
            await asyncio.to_thread(worker.kill)
            if wipe:
                shutil.rmtree(data_dir)
            worker = await asyncio.to_thread(workers.start_ready, data_dir)
        await load.chunks(load.chunks_done + CHUNKS_AFTER_LAST_RESTART, workers)
        stop.set()
        await finished(loading, workers, "the load")
    assert [w.process.returncode for w in workers.started[:-1]] == [-9] * KILLS
    await assert_ledger_sound(ledger, workers, load, accounts)
