"""`ledger-stream bench`: transfers a second, latency and cost, end to end.

A transfer counts when its result is published; a cross-partition transfer is answered by
its destination's writer once the credit leg has landed, so both legs are applied by then.
Accounts are opened first (with an overdraft limit wide enough that no transfer is refused),
then transfers are published through LedgerClient, either as fast as they are answered
(closed loop: `--in-flight` outstanding at once) or at a fixed offered rate (open loop:
`--rate`, latency counted from each transfer's scheduled time, so queueing shows). It reports
figures, never pass or fail. `--compare` runs the same workload through the ledger, through
the ledger with batching off, and through a row-locking PostgreSQL ledger
(`bench_postgres.py`), and gives the ratios.

While the transfers run, `--readers` readers (4 by default) ask the workers' HTTP API for the
balance and the last 20 history items of random accounts of the workload, one request at a
time each, round-robin over the workers (a worker forwards a read of another's account to
it). Each 200 answer's latency is counted, from sending to the whole body; other answers are
counted by status. The transfer figures keep their meaning (the readers add no transfers);
the workers' CPU per 1,000 transfers then includes serving the reads. Both of the ledger's
runs of `--compare` read alongside (so their ratio compares like with like); PostgreSQL is
not read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from ledger_stream.client import LedgerClient
from ledger_stream.kafka.security import connection_options
from ledger_stream.local import LocalLedger, RunDirectory, start_local_ledger
from ledger_stream.measure import cpu_seconds, peak_rss_mib, percentiles, process_tree, rss_mib
from ledger_stream.workload import HOT_ACCOUNTS, Transfer, Workload, opening

RECORD_COMMANDS_MAX = 500  # commands the client puts in one record, with batching on
SETUP_CHUNK = 20_000  # accounts opened at once
DRAIN_IDLE_S = 30.0  # waiting for the answers ends when none has come for this long
READ_TIMEOUT_S = 15.0  # a read's bound: the worker's read wait (5 s) and a forward's (10 s)
READ_STOP_POLL_S = 0.05
READ_ERROR_PAUSE_S = 0.1  # a reader's pause after an answer other than 200, or none
HISTORY_LIMIT = 20  # history items a read asks for


@dataclass
class Options:
    workload: Workload
    duration_s: float
    rate: float | None  # open loop at this offered rate; None: closed loop
    in_flight: int  # closed loop: transfers outstanding at once
    workers: int
    bootstrap: str | None
    readers: int = 0  # HTTP readers alongside the transfers, one request at a time each


def run_bench(args: argparse.Namespace) -> int:
    options = Options(
        workload=Workload(
            accounts=args.accounts,
            partitions=args.partitions,
            cross=args.cross,
            hot=args.hot,
            seed=args.seed,
        ),
        duration_s=args.duration,
        rate=args.rate,
        in_flight=args.in_flight,
        workers=args.workers,
        bootstrap=args.bootstrap,
        readers=args.readers,
    )
    runs: dict[str, dict[str, Any]] = {"ledger": measure_ledger(options, batching=True)}
    if args.compare:
        runs["ledger_unbatched"] = measure_ledger(options, batching=False)
        runs["postgres"] = measure_postgres(options, clients=args.pg_clients)
    figures: dict[str, Any] = {"machine": machine(), "options": _described(options), **runs}
    if args.compare:
        figures["ratios"] = ratios(runs)
    print_figures(figures)
    if args.json:
        print(json.dumps(figures))
    return 0


# -- the ledger --------------------------------------------------------------------------------


def measure_ledger(options: Options, *, batching: bool) -> dict[str, Any]:
    name = "ledger" if batching else "ledger_unbatched"
    # Batching off: one command per record, and one record per writer batch.
    env = {} if batching else {"LEDGER_BATCH_SIZE_MAX": "1"}
    with contextlib.ExitStack() as stack:
        run = stack.enter_context(RunDirectory("ledger-bench-"))
        workdir = run.path
        ledger = start_local_ledger(
            stack,
            workdir,
            name="bench",
            bootstrap=options.bootstrap,
            partitions=options.workload.partitions,
            workers=options.workers,
            env=env,
        )
        figures = asyncio.run(_drive_ledger(name, options, ledger, batching))
    return {"system": name, **figures}


class _Answers:
    """Watches the results: the latency of each transfer it was told of, once."""

    def __init__(self) -> None:
        self.sent: dict[str, float] = {}  # command id -> when it was published (or due)
        self.latencies: list[float] = []
        self.codes: Counter[str] = Counter()
        self.last_at = 0.0
        self.arrived = asyncio.Event()

    def __call__(self, result: dict[str, Any]) -> None:
        started = self.sent.pop(result.get("command_id", ""), None)
        if started is None:
            return
        self.last_at = time.monotonic()
        self.latencies.append(self.last_at - started)
        self.codes[result.get("code") or result.get("status", "?")] += 1
        self.arrived.set()

    def reset(self) -> None:
        self.latencies, self.codes = [], Counter()

    async def drained(self) -> bool:
        """Wait for the answers to what was sent, as long as they keep coming."""
        while self.sent:
            self.arrived.clear()
            if not await _set_within(self.arrived, DRAIN_IDLE_S):
                return False
        return True


async def _set_within(event: asyncio.Event, timeout_s: float) -> bool:
    """Whether `event` is set within `timeout_s`. Unlike `asyncio.wait_for` before Python
    3.12, never loses a cancellation that comes as the event is set (a SIGTERM during a
    busy run would otherwise be swallowed, and the run go on)."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout_s)
    finally:
        waiter.cancel()
    return event.is_set()


async def _drive_ledger(
    name: str, options: Options, ledger: LocalLedger, batching: bool
) -> dict[str, Any]:
    settings = ledger.settings
    answers = _Answers()
    async with LedgerClient(
        settings.bootstrap_servers,
        topic_prefix=settings.topic_prefix,
        security=connection_options(settings),
        timeout_s=DRAIN_IDLE_S,
        batch_size_max=RECORD_COMMANDS_MAX if batching else 1,
        fetch_wait_ms=settings.fetch_wait_ms,
        connect_attempts_max=20,
    ) as client:
        client.watch_results(answers)
        await _settled(ledger)
        setup_started = time.monotonic()
        await _open_accounts(client, answers, options.workload, name)
        setup_s = time.monotonic() - setup_started
        answers.reset()
        workers = [worker.pid for worker in ledger.workers if worker.pid is not None]
        broker = [] if ledger.broker_pid is None else process_tree(ledger.broker_pid)
        before = (cpu_seconds(workers), cpu_seconds(broker), _own_cpu())
        written_before = await _written(ledger)
        memory: list[float] = []  # the workers' resident memory, a sample a second
        sampler = asyncio.create_task(_sample(lambda: sum(rss_mib(pid) for pid in workers), memory))
        urls = [worker.url for worker in ledger.workers]
        accounts = read_accounts(options.workload)
        async with reading(urls, accounts, options.readers, options.workload.seed) as reads:
            started = time.monotonic()
            published = await _publish(client, answers, options, name, started)
        sampler.cancel()
        drained = await answers.drained()
        elapsed = (answers.last_at or time.monotonic()) - started
        after = (cpu_seconds(workers), cpu_seconds(broker), _own_cpu())
        written = await _written(ledger)
    done = len(answers.latencies)
    per_1000 = 1000 / max(done, 1)
    return {
        "transfers": done,
        "unanswered": 0 if drained else len(answers.sent),
        "elapsed_s": round(elapsed, 2),
        "transfers_per_s": round(done / elapsed, 1) if elapsed > 0 else 0.0,
        "offered_per_s": options.rate,
        "published": published,
        "latency_ms": percentiles(answers.latencies),
        "results": dict(answers.codes),
        "cpu_s_per_1000": {
            "workers": round((after[0] - before[0]) * per_1000, 3),
            "broker": round((after[1] - before[1]) * per_1000, 3),
            "bench_client": round((after[2] - before[2]) * per_1000, 3),
        },
        "worker_rss_mib": {
            "start": memory[0] if memory else 0.0,
            "end": memory[-1] if memory else 0.0,
            "peak": round(sum(peak_rss_mib(pid) for pid in workers), 1),
            "over_the_run": [memory[i * len(memory) // 10] for i in range(10)] if memory else [],
        },
        "written_bytes_per_transfer": {
            topic: round((size - written_before.get(topic, 0)) / max(done, 1), 1)
            for topic, size in sorted(written.items())
        },
        "store_bytes_per_account_and_transfer": round(
            _bytes_under(ledger.workdir) / (options.workload.accounts + done), 1
        ),
        "setup_s": round(setup_s, 1),
        "fetch_wait_ms": settings.fetch_wait_ms,
        **read_figures(options.readers, reads),
    }


async def _settled(ledger: LocalLedger, timeout_s: float = 120.0) -> None:
    """Wait until the workers have split the partitions between them, each some, and the split
    held for a second: a worker joining later would move partitions in the middle of a run."""
    partitions = ledger.settings.partitions
    everyone = min(len(ledger.workers), partitions)
    deadline = time.monotonic() + timeout_s
    previous: list[list[int]] | None = None
    while time.monotonic() < deadline:
        owned = []
        for worker in ledger.workers:
            with contextlib.suppress(aiohttp.ClientError, ValueError):
                owned.append(json.loads(await worker.view("/partitions/")))
        split = sorted(sorted(o["partitions"]) for o in owned if o["partitions"])
        whole = sorted(p for part in split for p in part) == list(range(partitions))
        if whole and len(split) == everyone and split == previous:
            return
        previous = split
        await asyncio.sleep(1.0)
    raise RuntimeError(f"the workers did not split the {partitions} partitions in {timeout_s} s")


async def _written(ledger: LocalLedger) -> dict[str, float]:
    """Bytes the workers have sent so far, by topic (their ledger_written_bytes_total)."""
    totals: dict[str, float] = {}
    for worker in ledger.workers:
        try:
            text = await worker.view("/metrics/")
        except aiohttp.ClientError:
            continue  # a worker not serving (yet): its bytes are not counted
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "ledger_written_bytes_total":
                    topic = sample.labels["topic"]
                    totals[topic] = totals.get(topic, 0.0) + sample.value
    return totals


def _bytes_under(path: Path) -> int:
    """Bytes of the files in the directories under `path`: the workers' RocksDB stores (the
    broker's and workers' logs are in `path` itself)."""
    return sum(f.stat().st_size for f in path.glob("*/**/*") if f.is_file())


async def _open_accounts(
    client: LedgerClient, answers: _Answers, workload: Workload, name: str
) -> None:
    """Open every account, a chunk at a time, with room to overdraw for any transfer."""
    for first in range(0, len(workload.names), SETUP_CHUNK):
        for account in workload.names[first : first + SETUP_CHUNK]:
            command = {**opening(account), "reply_partition": client.reply_partition}
            answers.sent[command["command_id"]] = time.monotonic()
            client.send_raw(account, orjson.dumps(command))
        await client.flush()
        if not await answers.drained():
            raise RuntimeError(
                f"{len(answers.sent)} accounts not opened: no answer for {DRAIN_IDLE_S} s"
            )
        _say(f"{name:17} opened {min(first + SETUP_CHUNK, len(workload.names)):,} accounts")


async def _publish(
    client: LedgerClient, answers: _Answers, options: Options, name: str, started: float
) -> int:
    """Publish transfers for `duration_s`; the count published."""
    transfers = options.workload.transfers()
    end = started + options.duration_s
    reporter = asyncio.create_task(_report(name, answers, started))
    count = 0
    try:
        while (now := time.monotonic()) < end:
            if options.rate is None:  # closed loop: top up what is outstanding
                due = options.in_flight - len(answers.sent)
                for _ in range(due):
                    _send(client, answers, next(transfers), now)
                count += max(due, 0)
                answers.arrived.clear()
                await _set_within(answers.arrived, 1.0)
            else:  # open loop: whatever is due by now, each stamped with its due time
                due_count = int((now - started) * options.rate) + 1
                for number in range(count, due_count):
                    _send(client, answers, next(transfers), started + number / options.rate)
                count = max(count, due_count)
                await asyncio.sleep(0.001)
        await client.flush()
    finally:
        reporter.cancel()
    return count


def _send(client: LedgerClient, answers: _Answers, transfer: Transfer, at: float) -> None:
    command_id = f"t{transfer.number}-{id(answers):x}"
    answers.sent[command_id] = at
    command = {**transfer.command(command_id), "reply_partition": client.reply_partition}
    client.send_raw(transfer.source, orjson.dumps(command))


async def _sample(read: Callable[[], float], samples: list[float]) -> None:
    while True:
        samples.append(round(read(), 1))
        await asyncio.sleep(1.0)


async def _report(name: str, answers: _Answers, started: float) -> None:
    """A progress line a second: answered so far, the last second's rate and p99."""
    done_before, seen = 0, 0
    while True:
        await asyncio.sleep(1.0)
        done = len(answers.latencies)
        p99 = percentiles(answers.latencies[seen:])["p99"]
        seen = done
        _say(
            f"{name:17} {time.monotonic() - started:6.1f} s  {done:>9,} answered  "
            f"{done - done_before:>7,}/s  in flight {len(answers.sent):>6,}  p99 {p99} ms"
        )
        done_before = done


# -- reads alongside the transfers ---------------------------------------------------------------


class Reads:
    """One kind of read: the latency of each 200 answer, and the other answers by what they
    were (`answer_name`)."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()

    def figures(self) -> dict[str, Any]:
        return {
            **percentiles(self.latencies),
            "count": len(self.latencies),
            "errors": dict(sorted(self.errors.items())),
        }


def read_accounts(workload: Workload) -> list[str]:
    """The accounts the transfers write to: the hot ones with `--hot`, else all."""
    return workload.names[:HOT_ACCOUNTS] if workload.hot else workload.names


def read_paths(account: str) -> list[tuple[str, str]]:
    """What a reader asks of one account: (kind of read, path)."""
    return [
        ("balance", f"/v1/accounts/{account}/balance"),
        ("history", f"/v1/accounts/{account}/history?limit={HISTORY_LIMIT}"),
    ]


def answer_name(status: int, body: bytes) -> str:
    """An answer other than 200 as counted: its status, and the problem's code when the body
    is a problem (`503 read_models_behind`)."""
    try:
        problem = orjson.loads(body)
    except orjson.JSONDecodeError:
        return str(status)
    code = problem.get("code") if isinstance(problem, dict) else None
    return f"{status} {code}" if isinstance(code, str) else str(status)


def read_figures(readers: int, reads: dict[str, Reads]) -> dict[str, Any]:
    """The reads' part of a run's figures: none but the count of readers when there were none."""
    if readers <= 0:
        return {"readers": 0}
    return {
        "readers": readers,
        "read_balance_ms": reads["balance"].figures(),
        "read_history_ms": reads["history"].figures(),
    }


@contextlib.asynccontextmanager
async def reading(
    urls: Sequence[str], accounts: Sequence[str], readers: int, seed: int
) -> AsyncIterator[dict[str, Reads]]:
    """`readers` readers run in the body of the `with`, on an event loop of their own in a
    thread of their own (so a read's time is not the time this loop takes to get to it),
    sharing one pool of connections; they stop when it ends (a read cut short then is not
    counted)."""
    reads = {"balance": Reads(), "history": Reads()}
    if readers <= 0:
        yield reads
        return
    stop = threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(_readers(urls, accounts, readers, seed, reads, stop))
        except BaseException as error:  # a reader's bug, raised below on this loop
            failed.append(error)

    thread = threading.Thread(target=run, name="readers", daemon=True)
    thread.start()
    try:
        yield reads
    finally:
        stop.set()
        await asyncio.to_thread(thread.join)
    if failed:  # a reader's bug, not an answer: it would otherwise hide as fewer reads
        raise failed[0]


async def _readers(
    urls: Sequence[str],
    accounts: Sequence[str],
    readers: int,
    seed: int,
    reads: dict[str, Reads],
    stop: threading.Event,
) -> None:
    turns = itertools.count()  # round-robin over the workers, across readers
    choose = random.Random(seed).choice
    connector = aiohttp.TCPConnector(limit=readers)
    timeout = aiohttp.ClientTimeout(total=READ_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [
            asyncio.create_task(_reader(session, urls, lambda: choose(accounts), turns, reads))
            for _ in range(readers)
        ]
        while not stop.is_set() and not any(task.done() for task in tasks):
            await asyncio.sleep(READ_STOP_POLL_S)
        for task in tasks:
            task.cancel()
        ended = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [error for error in ended if isinstance(error, Exception)]
    if failures:
        raise failures[0]


async def _reader(
    session: aiohttp.ClientSession,
    urls: Sequence[str],
    account: Callable[[], str],
    turns: Iterator[int],
    reads: dict[str, Reads],
) -> None:
    """One request at a time, until cancelled: a random account's balance, then its history,
    both from the next worker in turn (turns taken a read at a time would send every balance
    to the same one of two workers)."""
    while True:
        url = urls[next(turns) % len(urls)]
        for kind, path in read_paths(account()):
            if not await _read(session, url + path, reads[kind]):
                await asyncio.sleep(READ_ERROR_PAUSE_S)  # not a tight loop on a failing worker


async def _read(session: aiohttp.ClientSession, url: str, reads: Reads) -> bool:
    """One GET, counted in `reads`; whether it was answered 200."""
    sent = time.monotonic()
    try:
        async with session.get(url) as response:
            body = await response.read()
    except (TimeoutError, aiohttp.ClientError) as error:
        reads.errors[type(error).__name__] += 1
        return False
    if response.status != 200:
        reads.errors[answer_name(response.status, body)] += 1
        return False
    reads.latencies.append(time.monotonic() - sent)
    return True


# -- the PostgreSQL ledger -----------------------------------------------------------------------


def measure_postgres(options: Options, *, clients: int) -> dict[str, Any]:
    from ledger_stream import bench_postgres

    if bench_postgres.postgres_binaries() is None:
        return _skipped("PostgreSQL binaries (initdb, pg_ctl, postgres) not found")
    with tempfile.TemporaryDirectory(prefix="ledger-bench-pg-") as workdir:
        try:
            with bench_postgres.temporary_postgres(Path(workdir)) as server:
                return asyncio.run(
                    bench_postgres.run_postgres_ledger(
                        server,
                        options.workload,
                        duration_s=options.duration_s,
                        clients=clients,
                        rate=options.rate,
                        progress=_say,
                    )
                )
        except bench_postgres.PostgresUnavailable as error:
            return _skipped(str(error))


def _skipped(why: str) -> dict[str, Any]:
    _say(f"postgres: skipped: {why}")
    return {"system": "postgres-row-lock", "skipped": why}


# -- reporting ----------------------------------------------------------------------------------


def ratios(runs: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Throughput and p99 of each run over each other, where both ran."""

    def over(a: str, b: str, key: Callable[[dict[str, Any]], float]) -> float | None:
        if "skipped" in runs[a] or "skipped" in runs[b] or not key(runs[b]):
            return None
        return round(key(runs[a]) / key(runs[b]), 2)

    def rate(run: dict[str, Any]) -> float:
        return float(run["transfers_per_s"])

    def p99(run: dict[str, Any]) -> float:
        return float(run["latency_ms"]["p99"])

    return {
        "ledger_over_postgres": over("ledger", "postgres", rate),
        "unbatched_over_postgres": over("ledger_unbatched", "postgres", rate),
        "ledger_over_unbatched": over("ledger", "ledger_unbatched", rate),
        "p99_ledger_over_postgres": over("ledger", "postgres", p99),
    }


def print_figures(figures: dict[str, Any]) -> None:
    print(f"machine: {figures['machine']}")
    print(f"options: {figures['options']}")
    for name, run in figures.items():
        if not isinstance(run, dict) or "system" not in run:
            continue
        if "skipped" in run:
            print(f"{name:17} skipped: {run['skipped']}")
            continue
        latency = run["latency_ms"]
        print(
            f"{name:17} {run['transfers_per_s']:>10,.0f} transfers/s  "
            f"p50 {latency['p50']} ms  p95 {latency['p95']} ms  p99 {latency['p99']} ms  "
            f"max {latency['max']} ms  cpu s/1000 {run['cpu_s_per_1000']}"
        )
        if "worker_rss_mib" in run:
            print(f"{'':17} worker memory MiB {run['worker_rss_mib']}  results {run['results']}")
        for line in read_lines(run):
            print(f"{'':17} {line}")
    if "ratios" in figures and figures["options"].get("readers"):
        print("ratios: the ledger's runs served reads alongside the transfers, PostgreSQL none")
    for name, value in figures.get("ratios", {}).items():
        print(f"{name:28} {value}")


def read_lines(run: dict[str, Any]) -> list[str]:
    """The reads of a run, a line each kind, after a line saying they ran alongside."""
    if not run.get("readers"):
        return []
    lines = [
        f"reads ran alongside the transfers: {run['readers']} readers over HTTP "
        "(the workers' CPU above includes serving them)"
    ]
    for kind in ("balance", "history"):
        read = run[f"read_{kind}_ms"]
        lines.append(
            f"read {kind:7}  p50 {read['p50']} ms  p95 {read['p95']} ms  p99 {read['p99']} ms  "
            f"max {read['max']} ms  count {read['count']:,}  not 200 {read['errors'] or 'none'}"
        )
    return lines


def _described(options: Options) -> dict[str, Any]:
    workload = options.workload
    return {
        "accounts": workload.accounts,
        "partitions": workload.partitions,
        "cross": "uniform" if workload.cross is None else workload.cross,
        "hot": workload.hot,
        "loop": "closed" if options.rate is None else "open",
        "rate": options.rate,
        "in_flight": options.in_flight if options.rate is None else None,
        "duration_s": options.duration_s,
        "workers": options.workers,
        "readers": options.readers,
    }


def machine() -> str:
    return (
        f"{os.cpu_count()} cores, {platform.machine()}, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}"
    )


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
