"""The `ledger-stream` command as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from ledger_stream.kafka.broker import free_port, probe_metadata

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "agents.cli"]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, **(env or {})},
    )


def test_demo_balances_the_books_and_reports_json() -> None:
    done = run_cli("demo", "--accounts", "30", "--transfers", "600", "--partitions", "4", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["invariants_ok"] is True
    assert all(report["checks"].values())
    assert report["transfers"] == 600
    assert report["accepted"] > 0 and report["rejected"]
    assert report["dead_letters"] == 2
    for currency in report["trial_balance"].values():
        assert currency["total"] == 0 and currency["@transit"] == 0


def test_demo_without_json_prints_a_trial_balance() -> None:
    done = run_cli("demo", "--accounts", "10", "--transfers", "100", "--partitions", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trial balance" in done.stdout
    assert "the books balance" in done.stdout


def test_bad_setting_is_named_in_the_error() -> None:
    done = run_cli("worker", env={"LEDGER_PARTITIONS": "0"})
    assert done.returncode == 2
    assert "LEDGER_PARTITIONS" in done.stderr


def test_bad_bootstrap_flag_is_named_in_the_error() -> None:
    done = run_cli("worker", "--bootstrap", "no-port-here")
    assert done.returncode == 2
    assert "LEDGER_BOOTSTRAP_SERVERS" in done.stderr


def test_worker_retries_with_backoff_then_says_the_broker_is_unreachable() -> None:
    port = free_port()  # nothing listens here
    done = run_cli(
        "worker", "--bootstrap", f"127.0.0.1:{port}", env={"LEDGER_CONNECT_ATTEMPTS_MAX": "2"}
    )
    assert done.returncode == 1
    assert "not reachable" in done.stderr and "retrying" in done.stderr
    assert f"no Kafka broker answered at 127.0.0.1:{port} after 2 attempts" in done.stderr


def test_broker_command_serves_kafka_until_sigterm() -> None:
    port = free_port()
    process = subprocess.Popen(
        [*CLI, "broker", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        while "listening on" not in first:
            first = process.stdout.readline()
            assert first, "broker exited before it was ready"
        assert f"127.0.0.1:{port}" in first
        assert probe_metadata("127.0.0.1", port) >= 1
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


def test_bench_reports_figures_for_every_transfer_it_sent() -> None:
    done = run_cli("bench", "--accounts", "20", "--transfers", "500", "--partitions", "2", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["results"] == {"accepted": 500}
    assert figures["transfers_per_s"] > 0 and figures["partitions"] == 2
