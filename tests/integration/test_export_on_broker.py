"""`ledger-stream export journal` against a running ledger on the embedded broker: the CSV and
the Parquet file it writes sum, account by account, to the balances the worker reports and to
the fold of the journal."""

from __future__ import annotations

import asyncio
import csv
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from worker_harness import Workers, journal, polled

from agents.cli import main
from ledger_stream.client import LedgerClient
from ledger_stream.journal import fold
from ledger_stream.local import WorkerProcess
from ledger_stream.ops import consumer_lag
from ledger_stream.settings import Settings

CLIENT_TIMEOUT_S = 60.0

Sums = dict[tuple[str, str], int]


@pytest.fixture(scope="module")
def worker(module_workers: Workers) -> WorkerProcess:
    """The module's one worker (stopped by pid by `module_workers` when the module ends)."""
    return module_workers.start_ready()


async def writers_caught_up(settings: Settings, workers: Workers) -> None:
    """Wait until the writers have acknowledged every input: the last step of a batch,
    after its journal events are acked."""
    await polled(
        lambda: consumer_lag(settings),
        lambda read: all(lag.lag == 0 for lag in read[1] if lag.group == settings.app_id),
        workers,
        "the writers to acknowledge every input",
    )


def summed(rows: list[dict[str, object]], column: str) -> Sums:
    """`column` summed by (account, currency) over every row with an account (no filter on
    the posting type: the money columns of the other rows are 0), zeros left out."""
    total: Sums = defaultdict(int)
    for row in rows:
        if row["account"] not in (None, ""):
            total[(str(row["account"]), str(row["currency"]))] += int(str(row[column]))
    return {key: value for key, value in total.items() if value}


async def test_the_exported_rows_sum_to_the_workers_balances_and_the_journal_fold(
    module_ledger: Settings,
    module_workers: Workers,
    worker: WorkerProcess,
    on: Callable[[int, str], str],
    tmp_path: Path,
) -> None:
    alice, bob, carol = on(0, "alice"), on(1, "bob"), on(0, "carol")
    async with LedgerClient(
        module_ledger.bootstrap_servers,
        topic_prefix=module_ledger.topic_prefix,
        timeout_s=CLIENT_TIMEOUT_S,
        http_url=worker.url,
    ) as client:
        results = [await client.open_account(a, "USD") for a in (alice, bob, carol)]
        results += [
            await client.deposit(alice, 10_000, "USD", metadata={"order": "o-1"}),
            await client.deposit(carol, 5_000, "USD"),
            await client.transfer(alice, bob, 2_500, "USD"),  # across partitions
            await client.transfer(carol, alice, 700, "USD"),  # within one partition
            await client.hold(alice, carol, 1_000, "USD", command_id=f"{alice}-h1"),
            await client.post_hold(alice, f"{alice}-h1", amount=400),  # frees the 1,000
            await client.hold(alice, bob, 300, "USD"),  # stays pending
        ]
        assert [r.status for r in results] == ["accepted"] * len(results)
        await writers_caught_up(module_ledger, module_workers)
        reported = {a: (await client.account(a))["balance"] for a in (alice, bob, carol)}

        flags = ["--bootstrap", module_ledger.bootstrap_servers]
        flags += ["--topic-prefix", module_ledger.topic_prefix]
        for file_format in ("csv", "parquet"):
            output = str(tmp_path / f"journal.{file_format}")
            argv = ["export", "journal", "--format", file_format, "-o", output, *flags]
            assert await asyncio.to_thread(main, argv) == 0

    with (tmp_path / "journal.csv").open(newline="", encoding="utf-8") as file:
        csv_rows: list[dict[str, object]] = list(csv.DictReader(file))
    parquet_rows = pq.read_table(tmp_path / "journal.parquet").to_pylist()
    assert len(csv_rows) == len(parquet_rows)

    books = fold(await journal(module_ledger))
    assert books.events == len({(r["partition"], r["entry_id"]) for r in parquet_rows})
    for rows in (csv_rows, parquet_rows):
        balances = summed(rows, "amount")
        assert balances == {key: value for key, value in books.balances.items() if value}
        for account, balance in reported.items():
            assert balances.get((account, "USD"), 0) == balance["posted"]
            assert (
                summed(rows, "pending_debit").get((account, "USD"), 0)
                == (balance["pending_debits"])
            )
    assert (reported[alice]["posted"], reported[alice]["pending_debits"]) == (7_800, 300)
    assert {r["kind"] for r in parquet_rows} >= {
        "account_opened",
        "deposit",
        "transfer_debit",
        "transfer_credit",
        "transfer",
        "hold_placed",
        "hold_posted",
    }
