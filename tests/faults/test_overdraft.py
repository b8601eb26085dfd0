"""Many debits of one account at once, from several clients, adding up to far more than its
balance: the writer accepts exactly the ones the balance affords in the order it reads them,
and the account never goes below zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random

import pytest
from ledger_load import (
    Load,
    accounts_on_every_partition,
    assert_ledger_sound,
    beside,
    client_for,
    new_command,
)
from worker_harness import Workers

from ledger_stream.kafka.reading import read_topic
from ledger_stream.partitioning import partition_of
from ledger_stream.settings import Settings
from ledger_stream.topics import TopicNames

FUNDS = 10_000
DEBITS = 60  # of 100 to 1,000 each: about three times the balance
CLIENTS = 3


@pytest.mark.timeout(120)
async def test_concurrent_debits_past_the_balance_accept_exactly_what_it_affords(
    ledger: Settings, workers: Workers, rng: random.Random
) -> None:
    payer, *others = accounts_on_every_partition(rng, ledger.partitions, per_partition=2)
    busy = accounts_on_every_partition(rng, ledger.partitions)
    debits = []
    for _ in range(DEBITS):
        amount = rng.randint(100, 1_000)
        if rng.random() < 0.5:
            debits.append(new_command(rng, "withdraw", payer, amount=amount))
        else:
            to = rng.choice(others)
            debits.append(new_command(rng, "transfer", payer, destination=to, amount=amount))
    amounts = {d.command_id: d.amount for d in debits}
    await asyncio.to_thread(workers.start_ready)
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(client_for(ledger)) for _ in range(CLIENTS)]
        load = Load(ledger, clients[0])
        await load.open_accounts(rng, busy)
        await load.open_accounts(rng, [payer], funds=FUNDS)
        await load.open_accounts(rng, others, funds=0)
        shares = [load.submit(debits[n::CLIENTS], via=client) for n, client in enumerate(clients)]
        await asyncio.gather(beside(load, rng, busy), *shares)

    answers = {load.results[i].code for i in amounts}
    assert answers <= {None, "insufficient_funds"}, answers
    accepted = {i for i in amounts if load.results[i].status == "accepted"}
    # What the balance affords, deciding the debits in the order the writer read them.
    left, affordable = FUNDS, set()
    for command_id in await _read_order(ledger, payer):
        if amounts[command_id] <= left:
            affordable.add(command_id)
            left -= amounts[command_id]
    assert accepted == affordable
    assert FUNDS - sum(amounts[i] for i in accepted) == left >= 0
    await assert_ledger_sound(ledger, workers, load, [payer, *others, *busy])


async def _read_order(ledger: Settings, payer: str) -> list[str]:
    """The ids of the payer's debits in the order of its commands partition (a command
    record holds one command or an array of them), each at its first occurrence."""
    order: list[str] = []
    topic = TopicNames.from_settings(ledger).commands
    partition = partition_of(payer, ledger.partitions)
    async for records in read_topic(ledger.bootstrap_servers, topic, [partition]):
        for record in records:
            parsed = json.loads(record.value)
            for item in parsed if isinstance(parsed, list) else [parsed]:
                debit = item["type"] in ("withdraw", "transfer") and item["account"] == payer
                if debit and item["command_id"] not in order:
                    order.append(item["command_id"])
    return order
