"""`ledger-stream soak`: load, crashes and rebalances for a while, then an audit of the books.

Two workers share the ledger. While a client keeps transfers, deposits and withdrawals
flowing, a seeded schedule hits the workers: SIGKILL (restarted with its state kept or
wiped), SIGTERM and restart (a rebalance), SIGSTOP past the session timeout and SIGCONT.
When time is up the faults stop, every worker is brought back, every command is waited for
(re-submitted with the same id after a timeout, which is safe), and `audit` reads the books.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger_stream.audit import audit
from ledger_stream.client import LedgerClient
from ledger_stream.errors import ResultTimeout, SendFailed
from ledger_stream.local import LocalLedger, WorkerProcess, start_local_ledger
from ledger_stream.messages import COMMAND_ADAPTER

ACCOUNTS = 200
OPENING_BALANCE = 1_000_000
CURRENCY = "USD"
FAULT_INTERVAL_S = (5.0, 15.0)
PAUSE_S = 10.0  # past the 6 s session timeout the local workers run with
IN_FLIGHT_MAX = 2_000
RESULT_TIMEOUT_S = 60.0
ATTEMPTS_MAX = 10


@dataclass
class Tally:
    sent: int = 0
    results: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    unanswered: list[str] = field(default_factory=list)
    exits: list[str] = field(default_factory=list)  # the last log line of each worker that exited


def run_soak(args: argparse.Namespace) -> int:
    say: Callable[[str], None] = (lambda line: None) if args.json else print
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    say(f"soak: {args.minutes} min, seed {seed} (--seed {seed} replays the fault schedule)")
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ledger-soak-")))
        ledger = start_local_ledger(
            stack,
            workdir,
            name="soak",
            bootstrap=args.bootstrap,
            partitions=args.partitions,
            workers=2,
            say=say,
        )
        report = asyncio.run(_soak(ledger, args.minutes * 60, random.Random(seed), say))
    report["seed"] = seed
    if args.json:
        print(json.dumps(report))
    else:
        say(json.dumps(report, indent=2))
    return 0 if report["audit_ok"] and not report["unanswered"] else 1


async def _soak(
    ledger: LocalLedger, duration_s: float, rng: random.Random, say: Callable[[str], None]
) -> dict[str, Any]:
    settings = ledger.settings
    tally = Tally()
    accounts = [f"soak-{i:04d}" for i in range(ACCOUNTS)]
    async with LedgerClient(
        settings.bootstrap_servers,
        topic_prefix=settings.topic_prefix,
        timeout_s=RESULT_TIMEOUT_S,
        in_flight_max=IN_FLIGHT_MAX,
        fetch_wait_ms=settings.fetch_wait_ms,
    ) as client:
        say(f"opening and funding {len(accounts)} accounts")
        await asyncio.gather(*(_submit(client, tally, "open_account", a) for a in accounts))
        await asyncio.gather(*(_submit(client, tally, "deposit", a) for a in accounts))
        deadline = time.monotonic() + duration_s
        load = asyncio.create_task(_load(client, tally, accounts, rng, deadline))
        await _faults(ledger, tally, rng, deadline, say)
        say("faults over; every worker back; waiting for every result")
        await load
    say("auditing")
    report = await audit(settings)
    return {
        "minutes": round(duration_s / 60, 2),
        "commands": tally.sent,
        "results": dict(tally.results),
        "faults": dict(tally.faults),
        "unanswered": tally.unanswered[:20],
        "exits": tally.exits,
        "audit_ok": report.ok,
        "audit": report.as_dict(),
    }


async def _load(
    client: LedgerClient,
    tally: Tally,
    accounts: list[str],
    rng: random.Random,
    deadline: float,
) -> None:
    """Commands at the pace the ledger takes them (the client bounds what is in flight)."""
    pending: set[asyncio.Task[None]] = set()
    while time.monotonic() < deadline:
        source, destination = rng.sample(accounts, 2)
        roll = rng.random()
        if roll < 0.7:
            work = _submit(client, tally, "transfer", source, destination, rng.randint(1, 50_000))
        elif roll < 0.85:
            work = _submit(client, tally, "withdraw", source, None, rng.randint(1, 20_000))
        else:
            work = _submit(client, tally, "deposit", source, None, rng.randint(1, 20_000))
        task = asyncio.create_task(work)
        pending.add(task)
        task.add_done_callback(pending.discard)
        if len(pending) >= IN_FLIGHT_MAX:
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    if pending:
        await asyncio.wait(pending)


async def _submit(
    client: LedgerClient,
    tally: Tally,
    kind: str,
    account: str,
    destination: str | None = None,
    amount: int = OPENING_BALANCE,
) -> None:
    command_id = f"soak-{uuid.uuid4().hex}"
    tally.sent += 1
    fields: dict[str, Any] = {"type": kind, "command_id": command_id, "account": account}
    if kind == "open_account":
        fields["currency"] = CURRENCY
    else:
        fields |= {"amount": amount, "currency": CURRENCY}
    if destination is not None:
        fields["destination"] = destination
    command = COMMAND_ADAPTER.validate_python(fields)
    try:
        # After a timeout the same command (same id, same payload) is sent again: safe.
        result = await client.submit(command, attempts_max=ATTEMPTS_MAX)
    except (ResultTimeout, SendFailed):
        tally.unanswered.append(command_id)
        return
    tally.results[result.code or result.status] += 1


async def _faults(
    ledger: LocalLedger,
    tally: Tally,
    rng: random.Random,
    deadline: float,
    say: Callable[[str], None],
) -> None:
    """One fault at a time, at seeded intervals, until `deadline`; then every worker runs."""
    starts = Counter[int]()

    def restart(number: int, wipe: bool) -> None:
        worker = ledger.workers[number]
        if wipe:
            shutil.rmtree(worker.data_dir, ignore_errors=True)
        starts[number] += 1
        log = ledger.workdir / f"worker{number}-{starts[number]}.log"
        ledger.workers[number] = ledger.start_worker(number, log_path=log)

    while time.monotonic() < deadline:
        await asyncio.sleep(rng.uniform(*FAULT_INTERVAL_S))
        if time.monotonic() >= deadline:
            break
        number = rng.randrange(len(ledger.workers))
        worker = ledger.workers[number]
        fault = rng.choice(("kill", "kill-wipe", "restart", "pause"))
        tally.faults[fault] += 1
        say(f"  {time.strftime('%H:%M:%S')} {fault} worker {number} (pid {worker.pid})")
        if fault in ("kill", "kill-wipe"):
            worker.kill()
            restart(number, wipe=fault == "kill-wipe")
        elif fault == "restart":
            await asyncio.to_thread(worker.stop)
            restart(number, wipe=False)
        else:
            _signal(worker, signal.SIGSTOP)
            await asyncio.sleep(PAUSE_S)
            _signal(worker, signal.SIGCONT)
        for other, running in enumerate(ledger.workers):
            if not running.alive():  # fenced (exit 76) after a pause, or any exit
                code = running.process.returncode if running.process else None
                tally.faults[f"exited {code}"] += 1
                tally.exits.append(f"worker {other} exit {code}: {running.log_tail(1)}")
                restart(other, wipe=False)
    for other, running in enumerate(ledger.workers):
        if not running.alive():
            restart(other, wipe=False)


def _signal(worker: WorkerProcess, signum: int) -> None:
    if worker.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signum)
