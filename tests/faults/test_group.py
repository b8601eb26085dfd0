"""Two workers in one consumer group under load: one leaves and comes back, or stops
responding and comes back after the other has taken its partitions. Either way every
command gets its one outcome, the audit is clean, and the worker that lost its partitions
commits nothing to them afterwards.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from ledger_load import (
    Load,
    StateEntry,
    accounts_on_every_partition,
    assert_ledger_sound,
    client_for,
    finished,
    pause,
    read_state_log,
)
from worker_harness import Workers, exit_code, owned_partitions, polled, resume, until

from agents.writer import EXIT_FENCED
from ledger_stream.local import WorkerProcess
from ledger_stream.settings import Settings

RESTARTS = 3
CHUNKS_AFTER = 3


@pytest.mark.timeout(240)
async def test_worker_leaving_and_rejoining_the_group_under_load_loses_nothing(
    ledger: Settings, workers: Workers, rng: random.Random, tmp_path: Path
) -> None:
    accounts = accounts_on_every_partition(rng, ledger.partitions)
    pauses_s = [(rng.uniform(0.2, 2.0), rng.uniform(0.2, 2.0)) for _ in range(RESTARTS)]
    load_rng = random.Random(rng.getrandbits(64))
    print(f"schedule: (running, away) s {[(round(a, 3), round(b, 3)) for a, b in pauses_s]}")
    await asyncio.to_thread(workers.start_ready, tmp_path / "first")
    second = await asyncio.to_thread(workers.start_ready, tmp_path / "second")
    async with client_for(ledger) as client:
        load = Load(ledger, client)
        await load.open_accounts(rng, accounts)
        stop = asyncio.Event()
        loading = asyncio.create_task(load.run(load_rng, accounts, stop=stop))
        for running_s, away_s in pauses_s:
            await load.chunks(load.chunks_done + 1, workers)
            await asyncio.sleep(running_s)
            assert await asyncio.to_thread(second.stop) == 0, workers.logs()
            await asyncio.sleep(away_s)
            second = await asyncio.to_thread(workers.start_ready, tmp_path / "second")
        await load.chunks(load.chunks_done + CHUNKS_AFTER, workers)
        stop.set()
        await finished(loading, workers, "the load")
    await assert_ledger_sound(ledger, workers, load, accounts)


@pytest.mark.timeout(240)
async def test_paused_worker_commits_nothing_after_another_claimed_its_partitions(
    ledger: Settings, workers: Workers, rng: random.Random, tmp_path: Path
) -> None:
    accounts = accounts_on_every_partition(rng, ledger.partitions)
    running_s = rng.uniform(0.2, 1.5)
    load_rng = random.Random(rng.getrandbits(64))
    print(f"schedule: paused {running_s:.3f} s into the load")
    await asyncio.to_thread(workers.start_ready, tmp_path / "first")
    second = await asyncio.to_thread(workers.start_ready, tmp_path / "second")
    async with client_for(ledger) as client:
        load = Load(ledger, client)
        await load.open_accounts(rng, accounts)
        # Ready means its first assignment was handled; while the first worker's rebalance
        # completes, that assignment can be empty, so wait for the one that gives it partitions.
        paused_writer, its_partitions = await polled(
            lambda: owned_partitions(second),
            lambda owned: bool(owned[1]),
            workers,
            "the second worker to be given partitions",
        )
        claims = _valid_claims(await read_state_log(ledger), paused_writer)
        assert set(its_partitions) <= {e.partition for e in claims}, (paused_writer, claims)

        stop = asyncio.Event()
        loading = asyncio.create_task(load.run(load_rng, accounts, stop=stop))
        await load.chunks(load.chunks_done + 1, workers)
        await asyncio.sleep(running_s)
        rejoins_before = _rejoins(second)
        pause(second)
        try:

            async def taken() -> dict[int, int]:
                return _takeover(await read_state_log(ledger), paused_writer, its_partitions)

            takeover = await polled(
                taken,
                lambda claimed: claimed.keys() == set(its_partitions),
                workers,
                f"another writer to claim partitions {its_partitions}",
            )
        finally:
            resume(second)
        await until(
            lambda: not second.alive() or _rejoins(second) > rejoins_before,
            workers,
            "the paused worker to stop or rejoin the group",
        )

        entries = await read_state_log(ledger)
        late = {
            p: [
                e
                for e in entries
                if e.partition == p and e.offset > at and _valid_by(e, paused_writer)
            ]
            for p, at in takeover.items()
        }
        # Valid records of the paused writer after the takeover may only follow a claim of
        # its own: it rejoined the group, was given the partition again, and restored first.
        assert all(records[0].record.kind == "claim" for records in late.values() if records), late
        code = exit_code(second)
        assert code in (None, EXIT_FENCED), workers.logs()
        print(
            f"paused worker {paused_writer[:8]} (partitions {its_partitions}): "
            + (f"exited with {code} (fenced)" if code is not None else "rejoined the group")
        )

        await load.chunks(load.chunks_done + CHUNKS_AFTER, workers)
        stop.set()
        await finished(loading, workers, "the load")
    await assert_ledger_sound(ledger, workers, load, accounts)


def _rejoins(worker: WorkerProcess) -> int:
    """How many times the worker has been given partitions so far."""
    return worker.log_path.read_text(errors="replace").count("writing partitions")


def _valid_by(entry: StateEntry, writer: str) -> bool:
    return entry.valid and entry.record.writer == writer


def _valid_claims(entries: list[StateEntry], writer: str) -> list[StateEntry]:
    return [e for e in entries if _valid_by(e, writer) and e.record.kind == "claim"]


def _takeover(
    entries: list[StateEntry], paused_writer: str, partitions: list[int]
) -> dict[int, int]:
    """Per partition, the offset of the first valid claim another writer made after the
    paused writer's last valid record there (partitions not taken yet are left out)."""
    takeover = {}
    for p in partitions:
        on_p = [e for e in entries if e.partition == p and e.valid]
        last_own = max(e.offset for e in on_p if e.record.writer == paused_writer)
        taken = [
            e.offset
            for e in on_p
            if e.offset > last_own and e.record.kind == "claim" and e.record.writer != paused_writer
        ]
        if taken:
            takeover[p] = min(taken)
    return takeover
