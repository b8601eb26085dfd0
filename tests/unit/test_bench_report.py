"""The benchmark's reads alongside the transfers: the option, how answers are counted, the
figures and their lines, and the readers against fake workers (no broker, no timed asserts)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from agents.cli import _parser
from ledger_stream.bench import (
    HISTORY_LIMIT,
    Reads,
    answer_name,
    print_figures,
    read_accounts,
    read_figures,
    reading,
)
from ledger_stream.workload import HOT_ACCOUNTS, Workload

WAIT_BOUND_S = 20.0  # only a bound on a test that hangs; nothing is asserted about time


def test_bench_reads_with_four_readers_unless_told() -> None:
    assert _parser().parse_args(["bench"]).readers == 4
    assert _parser().parse_args(["bench", "--readers", "0"]).readers == 0
    assert _parser().parse_args(["bench", "--readers", "9"]).readers == 9


@pytest.mark.parametrize(
    ("status", "body", "counted_as"),
    [
        (503, b'{"status": 503, "code": "read_models_behind"}', "503 read_models_behind"),
        (404, b'{"status": 404, "code": "account_not_found"}', "404 account_not_found"),
        (502, b"<html>bad gateway</html>", "502"),
        (500, b"[1, 2]", "500"),
        (500, b'{"code": 7}', "500"),
        (503, b"", "503"),
    ],
)
def test_an_answer_other_than_200_is_counted_by_status_and_problem_code(
    status: int, body: bytes, counted_as: str
) -> None:
    assert answer_name(status, body) == counted_as


def test_readers_read_the_accounts_the_transfers_write_to() -> None:
    assert read_accounts(Workload(accounts=300)) == Workload(accounts=300).names
    hot = Workload(accounts=300, hot=True)
    assert read_accounts(hot) == hot.names[:HOT_ACCOUNTS]


def test_read_figures_are_percentiles_count_and_errors_by_status() -> None:
    balance, history = Reads(), Reads()
    balance.latencies = [n / 1000 for n in range(1, 101)]
    history.latencies = [0.002]
    history.errors = Counter({"503 read_models_behind": 3, "ServerDisconnectedError": 1})
    figures = read_figures(4, {"balance": balance, "history": history})
    assert figures == {
        "readers": 4,
        "read_balance_ms": {
            "p50": 50.0,
            "p95": 95.0,
            "p99": 99.0,
            "max": 100.0,
            "count": 100,
            "errors": {},
        },
        "read_history_ms": {
            "p50": 2.0,
            "p95": 2.0,
            "p99": 2.0,
            "max": 2.0,
            "count": 1,
            "errors": {"503 read_models_behind": 3, "ServerDisconnectedError": 1},
        },
    }
    assert orjson.loads(orjson.dumps(figures)) == figures  # as --json prints it


def test_without_readers_a_run_has_no_read_figures() -> None:
    assert read_figures(0, {"balance": Reads(), "history": Reads()}) == {"readers": 0}


def run_figures(**reads: Any) -> dict[str, Any]:
    latency = {"p50": 400.0, "p95": 600.0, "p99": 650.0, "max": 700.0}
    return {
        "machine": "2 cores",
        "options": {"readers": reads.get("readers", 0)},
        "ledger": {
            "system": "ledger",
            "transfers_per_s": 9000.0,
            "latency_ms": latency,
            "cpu_s_per_1000": {"workers": 0.1},
            **reads,
        },
    }


def test_the_text_report_has_a_line_for_each_kind_of_read_and_says_they_ran_alongside(
    capsys: pytest.CaptureFixture[str],
) -> None:
    history = Reads()
    history.latencies = [0.004, 0.006]
    history.errors["503 read_models_behind"] = 2
    balance = Reads()
    balance.latencies = [0.001] * 1500
    print_figures(run_figures(**read_figures(4, {"balance": balance, "history": history})))
    lines = capsys.readouterr().out.splitlines()
    assert any("transfers/s" in line and "p99 650.0 ms" in line for line in lines)
    assert any("reads ran alongside the transfers: 4 readers" in line for line in lines)
    [balance_line] = [line for line in lines if "read balance" in line]
    assert "p50 1.0 ms" in balance_line and "p99 1.0 ms" in balance_line
    assert "count 1,500" in balance_line and "not 200 none" in balance_line
    [history_line] = [line for line in lines if "read history" in line]
    assert "p99 6.0 ms" in history_line and "max 6.0 ms" in history_line
    assert "count 2" in history_line and "'503 read_models_behind': 2" in history_line


def test_without_readers_the_text_report_has_no_read_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print_figures(run_figures(readers=0))
    assert "read" not in capsys.readouterr().out.replace("readers", "")


class FakeWorker:
    """A worker's read API: balances answered, histories answered 503 when `behind`."""

    def __init__(self, behind: bool) -> None:
        self.behind = behind
        self.asked: Counter[str] = Counter()
        self.limits: set[str] = set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/accounts/{account}/balance", self.balance)
        app.router.add_get("/v1/accounts/{account}/history", self.history)
        return app

    async def balance(self, request: web.Request) -> web.Response:
        self.asked["balance"] += 1
        return web.json_response({"account": request.match_info["account"], "posted": 0})

    async def history(self, request: web.Request) -> web.Response:
        self.asked["history"] += 1
        self.limits.add(request.query.get("limit", ""))
        if self.behind:
            problem = {"status": 503, "code": "read_models_behind"}
            return web.json_response(problem, status=503, content_type="application/problem+json")
        return web.json_response({"items": [], "next_cursor": None})


async def test_readers_time_200s_count_503s_by_code_and_take_the_workers_in_turn() -> None:
    fresh, behind = FakeWorker(behind=False), FakeWorker(behind=True)
    servers = [TestServer(fresh.app()), TestServer(behind.app())]
    for server in servers:
        await server.start_server()
    urls = [str(server.make_url("")).rstrip("/") for server in servers]
    try:
        async with reading(urls, ["acct-0000001", "acct-0000002"], 2, seed=5) as reads:
            deadline = time.monotonic() + WAIT_BOUND_S
            while reads["history"].errors["503 read_models_behind"] < 3:
                assert time.monotonic() < deadline, "the readers stopped reading"
                await asyncio.sleep(0.01)
    finally:
        for server in servers:
            await server.close()
    assert fresh.asked["balance"] > 0 and behind.asked["balance"] > 0  # both workers asked
    assert fresh.asked["history"] > 0 and behind.asked["history"] > 0
    assert fresh.limits == behind.limits == {str(HISTORY_LIMIT)}
    balance, history = reads["balance"].figures(), reads["history"].figures()
    assert balance["count"] > 0 and balance["errors"] == {}  # every balance answered 200
    assert all(latency > 0 for latency in reads["balance"].latencies)
    assert history["count"] > 0  # the fresh worker's histories, timed
    assert set(history["errors"]) == {"503 read_models_behind"}  # not timed, counted
    assert history["count"] + sum(history["errors"].values()) <= sum(
        worker.asked["history"] for worker in (fresh, behind)
    )


async def test_readers_count_a_worker_that_does_not_answer_and_keep_reading() -> None:
    gone = "http://127.0.0.1:9"  # the discard port: nothing listens there
    async with reading([gone], ["acct-0000001"], 1, seed=1) as reads:
        deadline = time.monotonic() + WAIT_BOUND_S
        while sum(reads["balance"].errors.values()) < 2:
            assert time.monotonic() < deadline, "the reader stopped after a refused connection"
            await asyncio.sleep(0.01)
    assert reads["balance"].latencies == []
    assert set(reads["balance"].errors) == {"ClientConnectorError"}


def test_compare_says_its_ratios_set_a_read_ledger_beside_an_unread_postgres(
    capsys: pytest.CaptureFixture[str],
) -> None:
    reads = {"balance": Reads(), "history": Reads()}
    figures = run_figures(**read_figures(4, reads))
    figures["postgres"] = {"system": "postgres-row-lock", "skipped": "no binaries"}
    figures["ratios"] = {"ledger_over_postgres": None}
    print_figures(figures)
    assert "PostgreSQL none" in capsys.readouterr().out
    figures["options"]["readers"] = 0
    figures["ledger"] = run_figures(readers=0)["ledger"]
    print_figures(figures)
    assert "PostgreSQL none" not in capsys.readouterr().out
