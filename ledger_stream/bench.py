"""`ledger-stream bench`: how many transfers a second the writers decide.

Accounts are opened and funded through LedgerClient; then transfers are produced as fast as
Kafka takes them (pre-serialised, batched per partition, no waiting per command) and the
results are counted as they arrive. It reports figures, never pass or fail.
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
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ledger_stream.client import LedgerClient
from ledger_stream.local import start_local_ledger
from ledger_stream.partitioning import partition_of
from ledger_stream.settings import Settings
from ledger_stream.topics import TopicNames

COMMANDS_PER_RECORD = 500
REPLY_PARTITION = 0


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
        )
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
    async with LedgerClient(
        settings.bootstrap_servers, topic_prefix=settings.topic_prefix, timeout_s=120
    ) as client:
        await asyncio.gather(*(client.open_account(a, "USD") for a in accounts))
        await asyncio.gather(*(client.deposit(a, 10**12, "USD") for a in accounts))
    topics = TopicNames.from_settings(settings)
    run = f"{rng.randrange(1 << 30):x}"
    records = _transfer_records(rng, accounts, args.transfers, settings.partitions, run)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
    await consumer.start()
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        linger_ms=5,
        max_request_size=8 << 20,
        max_batch_size=1 << 20,
    )
    await producer.start()
    try:
        reply = TopicPartition(topics.results, REPLY_PARTITION)
        consumer.assign([reply])
        await consumer.seek_to_end(reply)
        await consumer.position(reply)
        started = time.monotonic()
        sends = [
            await producer.send(topics.commands, value, key=key, partition=partition)
            for partition, key, value in records
        ]
        await asyncio.gather(*sends)
        produced = time.monotonic()
        codes = await _count_results(consumer, reply, f"b{run}-", args.transfers)
        finished = time.monotonic()
    finally:
        await producer.stop()
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


def _transfer_records(
    rng: random.Random, accounts: list[str], count: int, partitions: int, run: str
) -> list[tuple[int, bytes, bytes]]:
    """Transfers as (partition, key, JSON array value), COMMANDS_PER_RECORD per record."""
    pending: dict[int, list[bytes]] = {}
    keys: dict[int, bytes] = {}
    records: list[tuple[int, bytes, bytes]] = []
    for number in range(count):
        source, destination = rng.sample(accounts, 2)
        partition = partition_of(source, partitions)
        command = {
            "type": "transfer",
            "command_id": f"b{run}-{number}",
            "account": source,
            "destination": destination,
            "amount": rng.randint(1, 10_000),
            "currency": "USD",
            "reply_partition": REPLY_PARTITION,
        }
        pending.setdefault(partition, []).append(orjson.dumps(command))
        keys.setdefault(partition, source.encode())
        if len(pending[partition]) == COMMANDS_PER_RECORD:
            records.append((partition, keys.pop(partition), _array(pending.pop(partition))))
    records += [(p, keys[p], _array(values)) for p, values in pending.items()]
    return records


def _array(values: list[bytes]) -> bytes:
    return b"[" + b",".join(values) + b"]"


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
