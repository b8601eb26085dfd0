"""The read models across SIGKILLs of their worker under load, once with them kept and once
with their directory deleted: after the audit, a fresh fold of the journal equals the live
read models key for key, and the API's balances (now, from the writer's state; as of a
later time, from the read models) equal the journal's.

What this covers: the read models' position is written with the fold in one RocksDB batch,
so a kill can only lose a fold not yet written, which the restarted worker folds again from
the position; events re-sent by a restarted writer are skipped by their seq. A difference
between the live read models and `ledger-stream rebuild` means an event folded twice or
lost; a balance that differs from the journal's fold means the same, or a read answered
before its writes were folded. With the directory deleted, everything is folded again from
offset 0.

What it does not: notifications and flags (a whole poll's) are published before the folds
are written, so a kill between the two publishes them again after the restart unless the
restarted worker's read-back mark skips them; this test reads neither topic. Kills land at
seeded moments of the load, not at chosen steps of the projector (the crash points of
ledger_stream/faults.py are on the write path only). `rebuild --replace`, and read models
moving between workers (tests/integration/test_read_routing.py), are not exercised here.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
from pathlib import Path

import aiohttp
import pytest
from aiokafka import TopicPartition
from ledger_load import (
    CURRENCY,
    QUICK_FAILOVER_ENV,
    Load,
    accounts_on_every_partition,
    assert_ledger_sound,
    client_for,
    finished,
)
from worker_harness import Workers, journal, polled, rebuild, v1_read

from ledger_stream.journal import fold
from ledger_stream.kafka.reading import reader, true_ends
from ledger_stream.messages import RegisterAlias
from ledger_stream.settings import Settings
from ledger_stream.topics import TopicNames

# Kept, then deleted: the second restart folds the whole journal again.
READ_MODELS_DELETED = (False, True)
CHUNKS_AFTER_LAST_RESTART = 3
LATER_MS = "4102444800000"  # 2100-01-01: after every event, a balance from the read models


async def journal_ends(settings: Settings) -> dict[int, int]:
    """The end offset of each journal partition."""
    topic = TopicNames.from_settings(settings).journal
    consumer = reader(settings.bootstrap_servers)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        return {tp.partition: end for tp, end in (await true_ends(consumer, tps)).items()}
    finally:
        await consumer.stop()


@pytest.mark.timeout(240)
async def test_read_models_after_sigkills_equal_a_fresh_fold_of_the_journal(
    ledger: Settings, workers: Workers, rng: random.Random, tmp_path: Path
) -> None:
    workers.env.update(QUICK_FAILOVER_ENV)
    accounts = accounts_on_every_partition(rng, ledger.partitions)
    moments_s = [rng.uniform(0.1, 2.0) for _ in READ_MODELS_DELETED]  # after the load resumes
    load_rng = random.Random(rng.getrandbits(64))
    print(f"schedule: kills {[round(m, 3) for m in moments_s]} s into the load")
    data_dir = tmp_path / "worker"
    worker = await asyncio.to_thread(workers.start_ready, data_dir)
    async with client_for(ledger) as client:
        load = Load(ledger, client)
        await load.open_accounts(rng, accounts)
        stop = asyncio.Event()
        loading = asyncio.create_task(load.run(load_rng, accounts, stop=stop))
        for moment_s, deleted in zip(moments_s, READ_MODELS_DELETED, strict=True):
            await load.chunks(load.chunks_done + 1, workers)
            await asyncio.sleep(moment_s)
            assert not loading.done(), "the load ended before the kill"
            await asyncio.to_thread(worker.kill)
            if deleted:
                shutil.rmtree(data_dir / "read")
            worker = await asyncio.to_thread(workers.start_ready, data_dir)
        await load.chunks(load.chunks_done + CHUNKS_AFTER_LAST_RESTART, workers)
        stop.set()
        await finished(loading, workers, "the load")
    assert [w.process.returncode for w in workers.started[:-1]] == [-9] * len(moments_s)
    await assert_ledger_sound(ledger, workers, load, accounts)

    # (b) Each account's balances as the journal folds them, as the API answers them now
    # (from the writer's state) and as of a time after every event (from the read models,
    # once they show its writes: read-your-writes); each alias the load registered names
    # the account its accepted registration did (the read models' aliases).
    books = fold(await journal(ledger))
    async with aiohttp.ClientSession() as session:
        for account in accounts:
            key = (account, CURRENCY)
            folded = {
                "posted": books.balance(account, CURRENCY),
                "pending_debits": books.debits_pending[key],
                "pending_credits": books.credits_pending[key],
            }
            view = await v1_read(session, worker, f"/v1/accounts/{account}", workers)
            assert {name: view["balance"][name] for name in folded} == folded, (view, folded)
            path = f"/v1/accounts/{account}/balance"
            later = await v1_read(session, worker, path, workers, as_of=LATER_MS)
            assert {name: later[name] for name in folded} == folded, (later, folded)
        aliases = {
            command.account: command.target
            for command_id, command in load.commands.items()
            if isinstance(command, RegisterAlias) and load.results[command_id].status == "accepted"
        }
        print(f"{len(aliases)} aliases registered")
        for alias, target in aliases.items():
            named = await v1_read(session, worker, f"/v1/aliases/{alias}", workers)
            assert named == {"alias": alias, "account": target}

    # (a) Once the live read models have folded every journal partition to its end, a fresh
    # fold from offset 0 equals them.
    ends = await journal_ends(ledger)

    async def compared() -> dict[str, object]:
        done = await rebuild(ledger, data_dir, "--json")
        assert done.returncode in (0, 1), done.stdout + done.stderr
        report: dict[str, object] = json.loads(done.stdout)
        return report

    def folded_to_the_end(report: dict[str, object]) -> bool:
        partitions = report["partitions"]
        assert isinstance(partitions, list)
        return all(p["compared"] and p["end"] >= ends[p["partition"]] for p in partitions)

    await polled(compared, folded_to_the_end, workers, "the read models to fold the journal")
    done = await rebuild(ledger, data_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("identical to the live read models") == ledger.partitions, done.stdout
    print(done.stdout)
