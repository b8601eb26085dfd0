"""Restarting a ledger worker on the embedded broker: after a clean stop (local state kept or
wiped) and after a crash mid-load, every account's balance over HTTP equals both the fold
of the journal and what the accepted results say, and no command is counted twice.

The load is a seeded mix of deposits, withdrawals and transfers over accounts on every
partition, submitted concurrently, so transfers cross partitions and some run out of funds.
Outcomes depend on the order the writer sees commands, so the expected balances are computed
from the results the client receives (a sum of accepted movements does not depend on order).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from ledger_stream.client import LedgerClient
from ledger_stream.journal import Books, fold, read_journal
from ledger_stream.local import WorkerProcess
from ledger_stream.messages import COMMAND_ADAPTER, Command, Deposit, Result, Transfer, Withdraw
from ledger_stream.partitioning import partition_of
from ledger_stream.settings import Settings
from ledger_stream.topics import TopicNames

ACCOUNTS_PER_PARTITION = 3
OPENING_FUNDS = 40_000
CURRENCY = "USD"
COMMANDS_BEFORE = 300
COMMANDS_AFTER = 150
CLIENT_TIMEOUT_S = 90.0  # answers to commands in flight during a crash wait for the restart
TRANSIT = "@transit"

WorkerStarter = Callable[[Path], WorkerProcess]


def accounts_of(settings: Settings) -> list[str]:
    """`ACCOUNTS_PER_PARTITION` account names on each partition."""
    stem = uuid.uuid4().hex[:6]
    names: dict[int, list[str]] = {p: [] for p in range(settings.partitions)}
    for i in itertools.count():
        name = f"acct-{stem}-{i}"
        on = names[partition_of(name, settings.partitions)]
        if len(on) < ACCOUNTS_PER_PARTITION:
            on.append(name)
        if all(len(on) == ACCOUNTS_PER_PARTITION for on in names.values()):
            return sorted(itertools.chain.from_iterable(names.values()))
    raise AssertionError("unreachable")


def random_commands(rng: random.Random, accounts: Sequence[str], count: int) -> list[Command]:
    commands = []
    for _ in range(count):
        source, destination = rng.sample(accounts, 2)
        roll = rng.random()
        fields: dict[str, object] = {
            "command_id": f"load-{uuid.uuid4().hex}",
            "account": source,
            "currency": CURRENCY,
        }
        if roll < 0.6:
            fields |= {
                "type": "transfer",
                "destination": destination,
                "amount": rng.randint(1, 12_000),
            }
        elif roll < 0.8:
            fields |= {"type": "withdraw", "amount": rng.randint(1, 8_000)}
        else:
            fields |= {"type": "deposit", "amount": rng.randint(1, 8_000)}
        commands.append(COMMAND_ADAPTER.validate_python(fields))
    return commands


@dataclass
class Expected:
    """What the accepted results add up to: balances, and the journal entries they post."""

    settings: Settings
    balances: Counter[str] = field(default_factory=Counter)
    entry_ids: set[str] = field(default_factory=set)

    def apply(self, command: Command, result: Result) -> None:
        assert result.command_id == command.command_id
        assert result.status == "accepted" or result.code == "insufficient_funds", result
        if result.status != "accepted" or not isinstance(command, (Deposit, Withdraw, Transfer)):
            return
        self.entry_ids.add(f"{command.command_id}:0")
        if isinstance(command, Deposit):
            self.balances[command.account] += command.amount
        elif isinstance(command, Withdraw):
            self.balances[command.account] -= command.amount
        elif isinstance(command, Transfer):
            self.balances[command.account] -= command.amount
            self.balances[command.destination] += command.amount
            if self.crosses(command):
                self.entry_ids.add(f"{command.command_id}:1")

    def crosses(self, transfer: Transfer) -> bool:
        n = self.settings.partitions
        return partition_of(transfer.account, n) != partition_of(transfer.destination, n)


async def submit(
    client: LedgerClient, commands: Sequence[Command], expected: Expected
) -> list[Result]:
    """Submit `commands` together and fold their results into `expected`."""
    results = await asyncio.gather(*(client.submit(command) for command in commands))
    for command, result in zip(commands, results, strict=True):
        expected.apply(command, result)
    return list(results)


async def open_accounts(client: LedgerClient, accounts: Sequence[str], expected: Expected) -> None:
    commands = []
    for account in accounts:
        common = {"account": account, "currency": CURRENCY}
        opening = {"type": "open_account", "command_id": f"open-{account}", **common}
        funding = {"type": "deposit", "command_id": f"fund-{account}", "amount": OPENING_FUNDS}
        commands.append(COMMAND_ADAPTER.validate_python(opening))
        commands.append(COMMAND_ADAPTER.validate_python({**funding, **common}))
    results = await submit(client, commands, expected)
    assert [r.status for r in results] == ["accepted"] * len(results), results


async def http_balances(worker: WorkerProcess, accounts: Sequence[str]) -> dict[str, int | None]:
    balances: dict[str, int | None] = {}
    async with aiohttp.ClientSession() as session:
        for account in accounts:
            async with session.get(f"{worker.url}/accounts/{account}/") as response:
                if response.status == 404:
                    balances[account] = None
                    continue
                response.raise_for_status()
                balances[account] = int((await response.json(content_type=None))["balance"])
    return balances


async def assert_consistent(
    settings: Settings, worker: WorkerProcess, accounts: Sequence[str], expected: Expected
) -> Books:
    """HTTP balances == journal fold == accepted results, the books balance, and the journal
    holds exactly the entries the accepted results posted (none twice, none missing)."""
    events = await read_journal(
        settings.bootstrap_servers, TopicNames.from_settings(settings).journal
    )
    books = fold(events)
    from_results = {account: expected.balances[account] for account in accounts}
    from_journal = {account: books.balance(account, CURRENCY) for account in accounts}
    over_http = await http_balances(worker, accounts)
    assert from_journal == from_results
    assert over_http == from_results
    assert books.unbalanced == []
    assert books.totals() == {CURRENCY: 0}
    assert books.balance(TRANSIT, CURRENCY) == 0
    movements = {e.entry_id for e in events if e.kind != "account_opened"}
    assert movements == expected.entry_ids, (
        f"missing: {sorted(expected.entry_ids - movements)[:5]}, "
        f"unexpected: {sorted(movements - expected.entry_ids)[:5]}"
    )
    return books


def pick_repeats(
    commands: Sequence[Command], results: Sequence[Result], expected: Expected
) -> list[tuple[Command, Result]]:
    """One decided command of each sort, to send again: deposit, withdrawal, same- and
    cross-partition transfer, and a rejection."""
    sorts: dict[str, tuple[Command, Result]] = {}
    for command, result in zip(commands, results, strict=True):
        if result.status == "rejected":
            sort = "rejected"
        elif isinstance(command, Transfer):
            sort = "cross" if expected.crosses(command) else "same"
        else:
            sort = command.type
        sorts.setdefault(sort, (command, result))
    assert {"deposit", "withdraw", "same", "cross"} <= sorts.keys(), sorts.keys()
    return list(sorts.values())


def client_for(settings: Settings) -> LedgerClient:
    return LedgerClient(
        settings.bootstrap_servers, topic_prefix=settings.topic_prefix, timeout_s=CLIENT_TIMEOUT_S
    )


async def submit_repeats(
    client: LedgerClient, repeats: Sequence[tuple[Command, Result]]
) -> list[tuple[Result, Result]]:
    """Send decided commands again; pairs of (first answer, answer to the repeat)."""
    again = await asyncio.gather(*(client.submit(command) for command, _ in repeats))
    return [(first, second) for (_, first), second in zip(repeats, again, strict=True)]


def assert_answered_as_duplicates(pairs: Sequence[tuple[Result, Result]]) -> None:
    for first, second in pairs:
        assert (second.command_id, second.status, second.code) == (
            first.command_id,
            first.status,
            first.code,
        )
        assert second.duplicate is True, second


async def test_worker_restarted_with_kept_then_wiped_state_matches_the_journal(
    ledger: Settings, workers: WorkerStarter, tmp_path: Path
) -> None:
    """Two restarts after a clean stop (SIGTERM): first with the local RocksDB state kept,
    then with it wiped, so every table is recovered from its changelog."""
    rng = random.Random(7)
    accounts = accounts_of(ledger)
    expected = Expected(ledger)
    data_dir = tmp_path / "worker"
    worker = await asyncio.to_thread(workers, data_dir)
    async with client_for(ledger) as client:
        await open_accounts(client, accounts, expected)
        before = random_commands(rng, accounts, COMMANDS_BEFORE)
        repeats = pick_repeats(before, await submit(client, before, expected), expected)
        await assert_consistent(ledger, worker, accounts, expected)

        for wipe in (False, True):
            assert await asyncio.to_thread(worker.stop) == 0, worker.log_tail()
            if wipe:
                shutil.rmtree(data_dir)
            worker = await asyncio.to_thread(workers, data_dir)

            await assert_consistent(ledger, worker, accounts, expected)
            await submit(client, random_commands(rng, accounts, COMMANDS_AFTER), expected)
            assert_answered_as_duplicates(await submit_repeats(client, repeats))
            await assert_consistent(ledger, worker, accounts, expected)


async def test_worker_killed_mid_load_recovers_without_counting_a_command_twice(
    ledger: Settings, workers: WorkerStarter, tmp_path: Path
) -> None:
    rng = random.Random(11)
    accounts = accounts_of(ledger)
    expected = Expected(ledger)
    data_dir = tmp_path / "worker"
    worker = await asyncio.to_thread(workers, data_dir)
    async with client_for(ledger) as client:
        await open_accounts(client, accounts, expected)
        chunks = [random_commands(rng, accounts, 50) for _ in range(6)]
        chunks_done = 0

        async def load() -> list[Result]:
            nonlocal chunks_done
            results = []
            for chunk in chunks:
                results += await submit(client, chunk, expected)
                chunks_done += 1
            return results

        loading = asyncio.create_task(load())
        while chunks_done < 3 and not loading.done():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the fourth chunk is on its way to the writer
        await asyncio.to_thread(worker.kill)
        assert not loading.done(), "the load ended before the crash; nothing was in flight"
        worker = await asyncio.to_thread(workers, data_dir)
        results = await loading

        assert len(results) == sum(len(chunk) for chunk in chunks)
        await assert_consistent(ledger, worker, accounts, expected)
        commands = list(itertools.chain.from_iterable(chunks))
        repeats = pick_repeats(commands, results, expected)
        assert_answered_as_duplicates(await submit_repeats(client, repeats))
        await assert_consistent(ledger, worker, accounts, expected)
