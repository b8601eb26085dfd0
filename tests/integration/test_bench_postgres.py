"""The row-locking PostgreSQL ledger `ledger-stream bench --compare` sets beside ours: it runs,
keeps its books, and its throwaway server goes away afterwards."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger_stream.bench_postgres import (
    PostgresServer,
    PostgresUnavailable,
    postgres_binaries,
    run_postgres_ledger,
    temporary_postgres,
)
from ledger_stream.workload import Workload

pytestmark = pytest.mark.timeout(60)


@contextlib.contextmanager
def postgres(workdir: Path) -> Iterator[PostgresServer]:
    """A temporary server, or a skipped test saying why there is none."""
    if postgres_binaries() is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl, postgres) on this machine")
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(temporary_postgres(workdir))
        except PostgresUnavailable as why:
            pytest.skip(f"PostgreSQL cannot run here: {why}")
        yield server


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def test_closed_loop_run_keeps_the_books_and_the_server_goes_away(tmp_path: Path) -> None:
    lines: list[str] = []
    with postgres(tmp_path) as server:
        result = asyncio.run(
            run_postgres_ledger(
                server,
                Workload(accounts=200, seed=3),
                duration_s=2.0,
                clients=4,
                progress=lines.append,
            )
        )
        assert not gone(server.pid)
    assert gone(server.pid), f"postmaster {server.pid} still runs after the context"

    assert result["system"] == "postgres-row-lock"
    assert result["clients"] == 4
    assert result["transfers"] > 0
    assert result["books_ok"] is True
    assert set(result["latency_ms"]) == {"p50", "p95", "p99", "max"}
    assert result["cpu_s_per_1000"] > 0
    assert result["settings"]["synchronous_commit"] == "off"
    assert lines and lines[0].startswith("postgres ")


def test_open_loop_run_offers_transfers_at_the_rate(tmp_path: Path) -> None:
    with postgres(tmp_path) as server:
        result = asyncio.run(
            run_postgres_ledger(
                server, Workload(accounts=200, seed=4), duration_s=2.0, clients=4, rate=200.0
            )
        )
    assert gone(server.pid)
    assert result["mode"] == "open"
    assert result["transfers"] + result["rejected"] >= 100  # 400 offered
    assert result["transfers"] <= 400
    assert result["books_ok"] is True
