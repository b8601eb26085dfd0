"""`ledger-stream soak`: load, crashes and rebalances for a while, then an audit of the books.

Two workers share the ledger. While a client keeps every kind of command flowing (transfers,
deposits, withdrawals, holds posted in part, voided or left to expire, invoice payments
through the ledger and by card, confirmed or failed and some paid twice, and reversals), a
seeded schedule hits the workers: SIGKILL (restarted with its state kept or wiped), SIGTERM
and restart (a rebalance), SIGSTOP past the session timeout and SIGCONT. When time is up the
faults stop, every worker is brought back, every command is waited for (re-submitted with
the same id after a timeout, which is safe), and `audit` reads the books.
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
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ledger_stream.audit import audit
from ledger_stream.client import LedgerClient
from ledger_stream.errors import ResultTimeout, SendFailed
from ledger_stream.kafka.security import connection_options
from ledger_stream.local import LocalLedger, RunDirectory, WorkerProcess, start_local_ledger
from ledger_stream.messages import COMMAND_ADAPTER, Result

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
        run = stack.enter_context(RunDirectory("ledger-soak-", keep_interrupted=True))
        workdir = run.path
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
        ok = report["audit_ok"] and not report["unanswered"]
        run.failed = not ok
    report["seed"] = seed
    if args.json:
        print(json.dumps(report))
    else:
        say(json.dumps(report, indent=2))
    return 0 if ok else 1


async def _soak(
    ledger: LocalLedger, duration_s: float, rng: random.Random, say: Callable[[str], None]
) -> dict[str, Any]:
    settings = ledger.settings
    tally = Tally()
    accounts = [f"soak-{i:04d}" for i in range(ACCOUNTS)]
    async with LedgerClient(
        settings.bootstrap_servers,
        topic_prefix=settings.topic_prefix,
        security=connection_options(settings),
        timeout_s=RESULT_TIMEOUT_S,
        in_flight_max=IN_FLIGHT_MAX,
        fetch_wait_ms=settings.fetch_wait_ms,
    ) as client:
        say(f"opening and funding {len(accounts)} accounts")
        opening = {"type": "open_account", "currency": CURRENCY}
        await asyncio.gather(*(_submit(client, tally, a, opening) for a in accounts))
        funding = {"type": "deposit", "amount": OPENING_BALANCE, "currency": CURRENCY}
        await asyncio.gather(*(_submit(client, tally, a, funding) for a in accounts))
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
        task = asyncio.create_task(_scenario(client, tally, rng, source, destination))
        pending.add(task)
        task.add_done_callback(pending.discard)
        if len(pending) >= IN_FLIGHT_MAX:
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    if pending:
        await asyncio.wait(pending)


async def _scenario(
    client: LedgerClient, tally: Tally, rng: random.Random, source: str, destination: str
) -> None:
    """One command, or a few that follow each other (a hold and its end, a payment and its
    gateway's answer, a transfer and its reversal), each waiting for the one before."""
    usd = {"currency": CURRENCY}
    roll = rng.random()
    if roll < 0.6:
        move = {"type": "transfer", "destination": destination, **usd}
        await _submit(client, tally, source, {**move, "amount": rng.randint(1, 50_000)})
    elif roll < 0.7:
        await _submit(
            client, tally, source, {"type": "withdraw", "amount": rng.randint(1, 20_000), **usd}
        )
    elif roll < 0.78:
        await _submit(
            client, tally, source, {"type": "deposit", "amount": rng.randint(1, 20_000), **usd}
        )
    elif roll < 0.86:
        amount = rng.randint(1, 50_000)
        hold = {"type": "hold", "destination": destination, "amount": amount, "timeout_s": 3, **usd}
        held = await _submit(client, tally, source, hold)
        end = rng.random()
        if held is None or end < 0.2:  # left to expire, by the worker's timer
            return
        if end < 0.7:
            post = {
                "type": "post_hold",
                "hold_id": held.command_id,
                "amount": rng.randint(1, amount),
            }
            await _submit(client, tally, source, post)
        else:
            await _submit(client, tally, source, {"type": "void_hold", "hold_id": held.command_id})
    elif roll < 0.95:
        invoice = f"inv-{uuid.uuid4().hex[:12]}"
        pay: dict[str, Any] = {"type": "pay_invoice", "destination": destination, **usd}
        pay |= {"invoice_id": invoice, "amount": rng.randint(1, 30_000)}
        if rng.random() < 0.5:
            await _submit(client, tally, source, pay)
            if rng.random() < 0.3:  # paid again: refused, moves nothing
                await _submit(client, tally, source, pay)
            return
        if await _submit(client, tally, source, {**pay, "channel": "card"}) is None:
            return
        answer = "confirm_payment" if rng.random() < 0.7 else "fail_payment"
        await _submit(client, tally, source, {"type": answer, "invoice_id": invoice})
    else:
        move = {"type": "transfer", "destination": destination, **usd}
        sent = await _submit(client, tally, source, {**move, "amount": rng.randint(1, 20_000)})
        if sent is not None and sent.status == "accepted":
            await _submit(
                client, tally, destination, {"type": "reverse", "target": sent.command_id}
            )


async def _submit(
    client: LedgerClient, tally: Tally, account: str, fields: dict[str, Any]
) -> Result | None:
    """Submit one command until it is answered; its result (None if it never was)."""
    command_id = f"soak-{uuid.uuid4().hex}"
    tally.sent += 1
    command = COMMAND_ADAPTER.validate_python(
        {**fields, "command_id": command_id, "account": account}
    )
    try:
        # After a timeout the same command (same id, same payload) is sent again: safe.
        result = await client.submit(command, attempts_max=ATTEMPTS_MAX)
    except (ResultTimeout, SendFailed):
        tally.unanswered.append(command_id)
        return None
    tally.results[result.code or result.status] += 1
    return result


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
