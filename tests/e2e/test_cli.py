"""The `ledger-stream` command as a user runs it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from ledger_stream.client import LedgerClient
from ledger_stream.journal import read_journal
from ledger_stream.kafka.broker import free_port, probe_metadata
from ledger_stream.local import EMBEDDED_FETCH_WAIT_MS, start_local_ledger
from ledger_stream.messages import replaced, to_json
from ledger_stream.partitioning import partition_of
from ledger_stream.settings import Settings
from ledger_stream.topics import TopicNames

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
    assert report["checks"]["audit_clean"] is True
    assert report["checks"]["rules_as_documented"] is True
    assert report["checks"]["read_models_match_the_books"] is True
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


def test_a_setting_refused_while_starting_exits_2_naming_it(
    ledger: Settings, tmp_path: Path
) -> None:
    """Settings can be refused after the worker has read them (the HTTP port is taken): the
    exit code is still 2, as for a setting refused on reading."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli(
            "worker",
            "--bootstrap",
            ledger.bootstrap_servers,
            "--data-dir",
            str(tmp_path / "worker"),
            "--web-port",
            str(port),
            "--partitions",
            str(ledger.partitions),
            env={"LEDGER_TOPIC_PREFIX": ledger.topic_prefix, "LEDGER_WEB_HOST": "127.0.0.1"},
        )
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"cannot serve HTTP on 127.0.0.1:{port}" in done.stderr
    assert "LEDGER_WEB_PORT" in done.stderr


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
        # How to run a worker against it, with the fetch wait the local ledger uses there.
        assert f"LEDGER_FETCH_WAIT_MS={EMBEDDED_FETCH_WAIT_MS} ledger-stream worker" in (
            process.stdout.readline()
        )
        assert probe_metadata("127.0.0.1", port) >= 1
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


def test_broker_command_terminated_while_its_broker_starts_stops_that_broker() -> None:
    """The broker runs in a session of its own, so only the command can stop it: a SIGTERM
    sent as soon as the broker process exists, before it answers, must not leave it running."""
    process = subprocess.Popen(
        [*CLI, "broker", "--port", str(free_port())],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    children: list[int] = []
    try:
        while not children and process.poll() is None:
            children = _children(process.pid)
        assert children, "the command exited before it started a broker"
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        for pid in children:
            assert not _running(pid), f"broker pid {pid} was left running"
    finally:
        _kill_left([process.pid, *children])


def _children(parent: int) -> list[int]:
    """The pids of `parent`'s child processes, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(stat.parent.name))
    return found


def test_a_bad_broker_port_is_named_in_the_error() -> None:
    done = run_cli("broker", "--port", "0")
    assert done.returncode == 2
    assert "--port: expected a port from 1 to 65535, got 0" in done.stderr


def test_bench_compare_measures_the_ledger_unbatched_and_postgres_on_one_workload() -> None:
    done = run_cli(
        *("bench", "--accounts", "50", "--partitions", "2", "--duration", "3"),
        *("--in-flight", "200", "--compare", "--pg-clients", "4", "--json"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("ledger", "ledger_unbatched"):
        run = figures[name]
        assert run["transfers"] == run["published"] > 0, name  # every one answered
        assert run["unanswered"] == 0
        assert set(run["results"]) == {"accepted"}  # no transfer overdraws in the workload
        latency = run["latency_ms"]
        assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
        assert run["cpu_s_per_1000"]["workers"] > 0 and run["worker_rss_mib"]["peak"] > 0
    postgres = figures["postgres"]
    if "skipped" in postgres:  # no PostgreSQL binaries here: said, not failed
        assert postgres["skipped"]
        assert figures["ratios"]["ledger_over_postgres"] is None
    else:
        assert postgres["books_ok"] is True and postgres["transfers"] > 0
        assert figures["ratios"]["ledger_over_postgres"] > 0
    assert figures["ratios"]["ledger_over_unbatched"] > 0
    assert figures["options"]["loop"] == "closed"
    assert "answered" in done.stderr  # the progress line


def test_bench_open_loop_offers_its_rate_and_answers_every_transfer() -> None:
    done = run_cli(
        *("bench", "--accounts", "30", "--partitions", "2", "--duration", "2"),
        *("--rate", "150", "--hot", "--cross", "0", "--json"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    run = figures["ledger"]
    assert 250 <= run["published"] <= 310  # 150 a second for 2 seconds, by the schedule
    assert run["transfers"] == run["published"] and run["unanswered"] == 0
    assert (
        figures["options"] | {"loop": "open", "rate": 150.0, "hot": True, "cross": 0.0}
        == (figures["options"])
    )
    assert "postgres" not in figures


def test_bench_writer_only_answers_every_transfer_without_a_broker() -> None:
    done = run_cli(
        *("bench", "--writer-only", "--accounts", "200", "--partitions", "4"),
        *("--batches", "3", "--json"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    # The legs went round: every transfer measured has its one answer, and none was refused.
    assert figures["transfers"] == 3 * 2_000
    assert figures["answered"] == {"accepted": figures["decided"]}
    assert figures["cpu_s_per_1000"] > 0


def test_a_terminated_bench_stops_the_broker_and_workers_it_started() -> None:
    process = subprocess.Popen(
        [*CLI, "bench", "--accounts", "20", "--partitions", "2", "--duration", "600"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    started: list[int] = []
    try:
        for line in process.stderr:  # until the load runs: broker and worker are up by then
            if "(pid " in line or "started worker pid" in line:
                started.append(int(line.rsplit("pid ", 1)[1].split()[0].rstrip(")")))
            if "answered" in line:
                break
        assert len(started) == 2, started  # the embedded broker and one worker
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)  # reads on, so a full pipe never holds it up
        assert process.returncode == 128 + signal.SIGTERM
        for pid in started:
            assert not _running(pid), f"pid {pid} was left running"
    finally:
        _kill_left([process.pid, *started])


def _kill_left(pids: list[int]) -> None:
    """SIGKILL whichever of `pids` a failed test left running."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_audit_passes_a_clean_ledger_and_names_an_edited_journal_event(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        ledger = start_local_ledger(
            stack, tmp_path, name="audit", bootstrap=None, partitions=2, workers=1
        )
        settings = ledger.settings
        flags = ["--bootstrap", settings.bootstrap_servers, "--prefix", settings.topic_prefix]
        flags += ["--partitions", "2"]
        asyncio.run(_open_and_fund(settings, "alice"))

        clean = run_cli("audit", *flags)
        assert clean.returncode == 0, clean.stdout + clean.stderr[-3000:]
        assert "OK" in clean.stdout

        edited = asyncio.run(_edit_a_journal_event(settings))
        tampered = run_cli("audit", *flags, "--json")
        assert tampered.returncode == 1, tampered.stdout + tampered.stderr[-3000:]
        report = json.loads(tampered.stdout.strip().splitlines()[-1])
        failing = {failure["check"]: failure["names"] for failure in report["failures"]}
        assert any(edited in name for name in failing["one_content"])


async def _open_and_fund(settings: Settings, account: str) -> None:
    async with LedgerClient(
        settings.bootstrap_servers, topic_prefix=settings.topic_prefix, timeout_s=90
    ) as client:
        assert (await client.open_account(account, "USD")).status == "accepted"
        assert (await client.deposit(account, 500, "USD")).status == "accepted"


async def _edit_a_journal_event(settings: Settings) -> str:
    """Publish a second, different content under the entry id of a deposit; its id."""
    journal = TopicNames.from_settings(settings).journal
    events = await read_journal(settings.bootstrap_servers, journal)
    deposit = next(event for event in events if event.kind == "deposit")
    forged = replaced(deposit, metadata={"edited": "yes"})
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await producer.start()
    try:
        partition = partition_of(deposit.account, settings.partitions)
        value = to_json(forged)
        await producer.send_and_wait(
            journal, value, key=deposit.entry_id.encode(), partition=partition
        )
    finally:
        await producer.stop()
    return deposit.entry_id
