"""Holds that expire while their worker is down: killed (SIGKILL) after placing them, its
state kept once and wiped once, the next worker finds the pending holds (in its store, or
restored from the state log) and its timer expires every one of them, once.
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
    command,
    command_id,
)
from worker_harness import Workers, polled

from agents.expiry import expire_command_id
from ledger_stream.journal import read_journal
from ledger_stream.messages import JournalEvent
from ledger_stream.settings import Settings
from ledger_stream.topics import TopicNames

HOLDS_PER_ROUND = 12
TIMEOUT_S = 2


@pytest.mark.timeout(180)
@pytest.mark.parametrize("wipe", [False, True], ids=["state kept", "state wiped"])
async def test_holds_whose_worker_died_expire_once_after_a_restart(
    ledger: Settings, workers: Workers, rng: random.Random, tmp_path: Path, wipe: bool
) -> None:
    workers.env.update({**QUICK_FAILOVER_ENV, "LEDGER_EXPIRY_INTERVAL_S": "0.2"})
    accounts = accounts_on_every_partition(rng, ledger.partitions)
    data_dir = tmp_path / "worker"
    worker = await asyncio.to_thread(workers.start_ready, data_dir)
    async with client_for(ledger) as client:
        load = Load(ledger, client)
        await load.open_accounts(rng, accounts)
        holds = []
        for _ in range(HOLDS_PER_ROUND):
            source, destination = rng.sample(accounts, 2)
            holds.append(
                command(
                    type="hold",
                    command_id=command_id(rng, "hold"),
                    account=source,
                    destination=destination,
                    amount=rng.randint(1, 1_000),
                    currency="USD",
                    timeout_s=TIMEOUT_S,
                )
            )
        results = await load.submit(holds)
        assert {r.status for r in results} == {"accepted"}, results
        await asyncio.to_thread(worker.kill)  # before any deadline has passed
        if wipe:
            shutil.rmtree(data_dir)
        await asyncio.sleep(TIMEOUT_S)
        await asyncio.to_thread(workers.start_ready, data_dir)
        journal = TopicNames.from_settings(ledger).journal
        ids = {hold.command_id for hold in holds}

        def all_expired(events: list[JournalEvent]) -> bool:
            return ids <= {e.hold_id for e in events if e.kind == "hold_expired"}

        events = await polled(
            lambda: read_journal(ledger.bootstrap_servers, journal),
            all_expired,
            workers,
            "every hold expired",
        )
    expired = [e.hold_id for e in events if e.kind == "hold_expired"]
    assert sorted(expired) == sorted(ids)  # each once
    # The timer's commands posted their own entries, which the load did not send.
    load.expected.entry_ids |= {f"{expire_command_id(hold_id)}:0" for hold_id in ids}
    await assert_ledger_sound(ledger, workers, load, accounts)
