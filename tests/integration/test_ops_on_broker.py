"""The operators' commands on the embedded broker: `topics describe` and `topics create` on a
running ledger's topics and on topics made wrong by hand, `tail` keeping one account's records
and stopping on SIGTERM, and `lag` counted to each partition's true end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from worker_harness import Workers, journal, polled

from agents.cli import main
from ledger_stream.client import LedgerClient
from ledger_stream.kafka.broker import EmbeddedBroker
from ledger_stream.local import EMBEDDED_FETCH_WAIT_MS, WorkerProcess
from ledger_stream.ops import PartitionLag, Shown, consumer_lag, tail
from ledger_stream.settings import Settings
from ledger_stream.topics import TopicNames, ensure_topics

TOPICS = 11


@pytest.fixture(scope="module")
def worker(module_workers: Workers) -> WorkerProcess:
    """The module's one worker (stopped by pid by `module_workers` when the module ends)."""
    return module_workers.start_ready()


@pytest.fixture
def tails() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Starts `ledger-stream tail` processes; any still running is killed by pid at the end."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "agents.cli", "tail", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "LEDGER_FETCH_WAIT_MS": str(EMBEDDED_FETCH_WAIT_MS)},
            start_new_session=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
        process.communicate()


def flags(settings: Settings) -> list[str]:
    return ["--bootstrap", settings.bootstrap_servers, "--topic-prefix", settings.topic_prefix]


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    """`ledger-stream <args> --json` in this process: its exit status and its JSON."""
    capsys.readouterr()
    code = main([*args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def writers_lag(lags: list[PartitionLag], settings: Settings) -> list[PartitionLag]:
    return [lag for lag in lags if lag.group == settings.app_id]


async def caught_up(settings: Settings, workers: Workers) -> list[PartitionLag]:
    """The ledger's lag once the writers have acknowledged every input there is: the last step
    of a batch, after its outputs (journal, results, legs) are acked."""
    _, lags = await polled(
        lambda: consumer_lag(settings),
        lambda read: all(lag.lag == 0 for lag in writers_lag(read[1], settings)),
        workers,
        "the writers to acknowledge every input",
    )
    return lags


# -- topics -----------------------------------------------------------------------------------


def test_describe_finds_a_running_ledgers_topics_as_it_expects(
    module_ledger: Settings, worker: WorkerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = run_json(
        capsys, "topics", "describe", *flags(module_ledger), "--partitions", "4"
    )
    assert (code, report["differences"], report["unreported"]) == (0, [], [])
    assert len(report["topics"]) == TOPICS
    journal_topic = report["topics"][2]
    assert journal_topic["topic"] == f"{module_ledger.topic_prefix}journal"
    # The embedded broker reports the configs set when the topic was created.
    assert journal_topic["configs"] == {"cleanup.policy": "compact", "retention.ms": "-1"}
    assert (journal_topic["partitions"], journal_topic["replication_factor"]) == (4, 1)


async def test_describe_names_a_wrong_partition_count_and_wrong_configs(
    broker: EmbeddedBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(
        bootstrap_servers=broker.bootstrap, topic_prefix=f"w{uuid.uuid4().hex[:8]}.", partitions=4
    )
    names = TopicNames.from_settings(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(names.journal, 2, 1, topic_configs={"cleanup.policy": "delete"}),
                NewTopic(
                    names.results,
                    4,
                    1,
                    topic_configs={"cleanup.policy": "delete", "retention.ms": "1000"},
                ),
            ]
        )
    finally:
        await admin.close()

    code, report = await asyncio.to_thread(
        run_json, capsys, "topics", "describe", *flags(settings), "--partitions", "4"
    )
    assert code == 1
    wrong = {
        names.journal: [
            f"{names.journal}: partitions 2, expected 4",
            f"{names.journal}: cleanup.policy delete, expected compact",
        ],
        names.results: [f"{names.results}: retention.ms 1000, expected 604800000"],
    }
    assert report["differences"] == [
        line for name in vars(names).values() for line in wrong.get(name, [f"{name}: missing"])
    ]
    # Not set when the journal was made by hand, so the embedded broker does not report it.
    assert report["unreported"] == [f"{names.journal}: retention.ms"]

    # Creating refuses to go on over a partition count the ledger did not choose.
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["topics", "create", *flags(settings)]) == 2
    assert "LEDGER_PARTITIONS" in capsys.readouterr().err


async def test_create_makes_the_missing_topics_once_and_then_they_match(
    broker: EmbeddedBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(
        bootstrap_servers=broker.bootstrap, topic_prefix=f"c{uuid.uuid4().hex[:8]}."
    )
    names = sorted(vars(TopicNames.from_settings(settings)).values())
    created = await asyncio.to_thread(run_json, capsys, "topics", "create", *flags(settings))
    assert created[0] == 0
    assert (sorted(created[1]["created"]), created[1]["existing"]) == (names, [])
    again = await asyncio.to_thread(run_json, capsys, "topics", "create", *flags(settings))
    assert (again[1]["created"], sorted(again[1]["existing"])) == ([], names)
    described = await asyncio.to_thread(run_json, capsys, "topics", "describe", *flags(settings))
    assert (described[0], described[1]["differences"]) == (0, [])


# -- tail -------------------------------------------------------------------------------------


async def test_tail_with_an_account_shows_only_the_records_naming_it(
    module_ledger: Settings,
    module_workers: Workers,
    client: LedgerClient,
    on: Callable[[int, str], str],
) -> None:
    alice, bob, carol = on(0, "alice"), on(1, "bob"), on(0, "carol")
    for account in (alice, bob, carol):
        await client.open_account(account, "USD")
    await client.deposit(alice, 1000, "USD")
    await client.deposit(carol, 1000, "USD")
    await client.transfer(alice, bob, 300, "USD")  # across partitions: a debit and a credit
    await client.transfer(carol, alice, 20, "USD")  # within one: one event, alice its counterparty
    await client.transfer(carol, bob, 5, "USD")
    await caught_up(module_ledger, module_workers)
    events = await journal(module_ledger)
    naming = {e.entry_id for e in events if alice in (e.account, e.counterparty)}
    assert len(naming) == 5 and len(events) > len(naming)

    shown: list[Shown] = []
    count = await tail(
        module_ledger, "journal", shown.append, account=alice, from_beginning=True, limit=5
    )
    assert count == 5
    assert {item.value["entry_id"] for item in shown} == naming


async def test_tail_shows_only_new_records_and_stops_on_sigterm(
    module_ledger: Settings,
    client: LedgerClient,
    on: Callable[[int, str], str],
    tails: Callable[..., subprocess.Popen[str]],
) -> None:
    dave = on(2, "dave")
    opened = await client.open_account(dave, "USD")
    process = tails("results", *flags(module_ledger), "--account", dave, "--json")
    assert process.stdout is not None and process.stderr is not None
    while "following" not in (line := await asyncio.to_thread(process.stderr.readline)):
        assert line, f"tail exited {process.poll()} before following"

    deposited = await client.deposit(dave, 500, "USD")
    first = json.loads(await asyncio.to_thread(process.stdout.readline))
    assert (first["key"], first["value"]["account"]) == (deposited.command_id, dave)
    assert first["topic"] == f"{module_ledger.topic_prefix}results"

    os.kill(process.pid, signal.SIGTERM)
    rest, errors = await asyncio.to_thread(process.communicate)
    assert process.returncode == 0, errors
    assert rest == ""  # nothing else: the result of opening the account came before the tail
    assert opened.command_id != first["key"]


# -- lag --------------------------------------------------------------------------------------


async def test_lag_is_zero_once_the_writers_caught_up_and_counts_what_no_notifier_read(
    module_ledger: Settings,
    module_workers: Workers,
    client: LedgerClient,
    on: Callable[[int, str], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    erin, frank = on(3, "erin"), on(1, "frank")
    for account in (erin, frank):
        await client.open_account(account, "USD")
    await client.deposit(erin, 1000, "USD")
    await client.transfer(erin, frank, 400, "USD")
    lags = await caught_up(module_ledger, module_workers)

    names = TopicNames.from_settings(module_ledger)
    writers = writers_lag(lags, module_ledger)
    assert {(lag.topic, lag.partition) for lag in writers} == {
        (topic, p) for topic in (names.commands, names.legs) for p in range(4)
    }
    assert all(lag.committed == lag.end for lag in writers if lag.end > 0)
    assert next(lag for lag in writers if (lag.topic, lag.partition) == (names.commands, 3)).end > 0
    assert next(lag for lag in writers if (lag.topic, lag.partition) == (names.legs, 1)).end > 0

    # No notifier runs here (no webhooks): its group never committed, and the notifications
    # the deposits and the transfer brought wait for it.
    notifier = [lag for lag in lags if lag.group == f"{module_ledger.topic_prefix}notifier"]
    assert all(lag.committed is None and lag.lag == lag.end - lag.start for lag in notifier)
    assert sum(lag.lag for lag in notifier) > 0

    code, report = await asyncio.to_thread(run_json, capsys, "lag", *flags(module_ledger))
    assert code == 0
    by_group = {group["group"]: group for group in report["groups"]}
    assert by_group[module_ledger.app_id]["lag"] == 0
    assert by_group[f"{module_ledger.topic_prefix}notifier"]["committed_any"] is False


async def test_lag_counts_to_the_true_end_of_a_partition_the_broker_lists_short(
    broker: EmbeddedBroker,
) -> None:
    settings = Settings(
        bootstrap_servers=broker.bootstrap, topic_prefix=f"e{uuid.uuid4().hex[:8]}.", partitions=4
    )
    await ensure_topics(settings)
    tp = TopicPartition(TopicNames.from_settings(settings).notifications, 0)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=500)
    await producer.start()
    try:
        # Five records in one record batch: the embedded broker's ListOffsets ends the
        # partition at the batch's base offset + 1.
        sent = [await producer.send(tp.topic, b"{}", key=b"k", partition=0) for _ in range(5)]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    group = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=f"{settings.topic_prefix}notifier",
        enable_auto_commit=False,
    )
    await group.start()
    try:
        group.assign([tp])
        await group.commit({tp: 2})
    finally:
        await group.stop()

    _, lags = await consumer_lag(settings)
    (read,) = [lag for lag in lags if (lag.topic, lag.partition) == (tp.topic, tp.partition)]
    assert (read.committed, read.end, read.lag) == (2, 5, 3)
