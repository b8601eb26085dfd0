"""`ledger-stream bench`: how many transfers a second the writers decide.

Accounts are opened and funded through LedgerClient; then transfers, serialised beforehand,
go through the same client without waiting per command (it batches them per partition),
and the results are counted as they arrive. It reports figures, never pass or fail.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from ledger_stream.client import LedgerClient
from ledger_stream.local import start_local_ledger
from ledger_stream.settings import Settings
from ledger_stream.topics import TopicNames

COMMANDS_PER_RECORD = 500


def run_bench(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ledger-bench-")))
        settings = start_local_ledger(
            stack,
            workdir,
            name="bench",
            bootstrap=args.bootstrap,
            partitions=args.partitions,
            workers=args.workers,
        ).settings
        figures = asyncio.run(_measure(args, settings))
    figures["machine"] = _machine()
    if args.json:
        print(json.dumps(figures))
    else:
        for name, value in figures.items():
            print(f"{name:28} {value}")
    return 0


async def _measure(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    rng = random.Random(args.seed)
    accounts = [f"bench-{i:06d}" for i in range(args.accounts)]
    topics = TopicNames.from_settings(settings)
    run = f"b{rng.randrange(1 << 30):x}-"
    async with LedgerClient(
        settings.bootstrap_servers,
        topic_prefix=settings.topic_prefix,
        timeout_s=120,
        batch_size_max=COMMANDS_PER_RECORD,
    ) as client:
        await asyncio.gather(*(client.open_account(a, "USD") for a in accounts))
        await asyncio.gather(*(client.deposit(a, 10**12, "USD") for a in accounts))
        transfers = _transfers(rng, accounts, args.transfers, run, client.reply_partition)
        reply = TopicPartition(topics.results, client.reply_partition)
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
        await consumer.start()
        try:
            consumer.assign([reply])
            await consumer.seek_to_end(reply)
            await consumer.position(reply)
            started = time.monotonic()
            for source, value in transfers:  # pre-serialised; no waiting per command
                client.send_raw(source, value)
            await client.flush()
            produced = time.monotonic()
            codes = await _count_results(consumer, reply, run, args.transfers)
            finished = time.monotonic()
        finally:
            await consumer.stop()
    elapsed = finished - started
    return {
        "transfers": args.transfers,
        "accounts": args.accounts,
        "partitions": settings.partitions,
        "workers": args.workers,
        "produce_s": round(produced - started, 3),
        "elapsed_s": round(elapsed, 3),
        "transfers_per_s": round(args.transfers / elapsed, 1),
        "results": dict(codes),
    }


def _transfers(
    rng: random.Random, accounts: list[str], count: int, run: str, reply_partition: int
) -> list[tuple[str, bytes]]:
    """(source account, JSON command) of each transfer, answered on `reply_partition`."""
    transfers = []
    for number in range(count):
        source, destination = rng.sample(accounts, 2)
        command = {
            "type": "transfer",
            "command_id": f"{run}{number}",
            "account": source,
            "destination": destination,
            "amount": rng.randint(1, 10_000),
            "currency": "USD",
            "reply_partition": reply_partition,
        }
        transfers.append((source, orjson.dumps(command)))
    return transfers


async def _count_results(
    consumer: AIOKafkaConsumer, reply: TopicPartition, prefix: str, expected: int
) -> Counter[str]:
    """Results of this run's transfers (the reply partition may hold older ones too)."""
    codes: Counter[str] = Counter()
    seen: set[str] = set()
    while len(seen) < expected:
        batches = await consumer.getmany(reply, timeout_ms=1000)
        for record in batches.get(reply, []):
            result = orjson.loads(record.value)
            command_id = result["command_id"]
            if command_id.startswith(prefix) and command_id not in seen:
                seen.add(command_id)
                codes[result.get("code") or "accepted"] += 1
    return codes


def _machine() -> str:
    import os
    import platform

    return f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"
