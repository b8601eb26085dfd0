"""Commands that name an unknown or closed account, the same account on both sides, or
another currency are rejected with their code and move nothing, whichever writer finds the
fault; an account closed while money is on its way to it sends the money back.
"""

from __future__ import annotations

import asyncio
import json
import random

import pytest
from ledger_load import (
    Load,
    accounts_on_every_partition,
    assert_ledger_sound,
    beside,
    client_for,
    finished,
    new_command,
)
from worker_harness import Workers

from ledger_stream.journal import read_journal
from ledger_stream.messages import Command
from ledger_stream.partitioning import partition_of
from ledger_stream.settings import Settings
from ledger_stream.topics import TopicNames

FUNDS = 10_000


@pytest.mark.timeout(120)
async def test_unknown_closed_same_or_other_currency_accounts_get_their_rejection_code(
    ledger: Settings, workers: Workers, rng: random.Random
) -> None:
    names = accounts_on_every_partition(rng, ledger.partitions, per_partition=4)
    here = [n for n in names if partition_of(n, ledger.partitions) == 0]
    there = [n for n in names if partition_of(n, ledger.partitions) == 1]
    payer, closed_here, euros_here, unknown_here = here
    closed_there, euros_there, unknown_there, _ = there
    busy = accounts_on_every_partition(rng, ledger.partitions)
    await asyncio.to_thread(workers.start_ready)
    async with client_for(ledger) as client:
        load = Load(ledger, client)
        await load.open_accounts(rng, busy)
        loading = beside(load, rng, busy)
        await load.open_accounts(rng, [payer], funds=FUNDS)
        await load.open_accounts(rng, [closed_here, closed_there], funds=0)
        await load.open_accounts(rng, [euros_here, euros_there], funds=0, currency="EUR")
        closing = [new_command(rng, "close_account", a) for a in (closed_here, closed_there)]
        assert {r.status for r in await load.submit(closing)} == {"accepted"}

        def deposit(account: str, currency: str = "USD") -> Command:
            return new_command(rng, "deposit", account, currency, amount=100)

        def withdraw(account: str) -> Command:
            return new_command(rng, "withdraw", account, amount=100)

        def transfer(source: str, destination: str) -> Command:
            return new_command(rng, "transfer", source, destination=destination, amount=100)

        cases = [
            (deposit(unknown_here), "account_not_found"),
            (withdraw(unknown_here), "account_not_found"),
            (transfer(unknown_here, payer), "account_not_found"),
            (transfer(payer, unknown_here), "account_not_found"),
            (transfer(payer, unknown_there), "account_not_found"),  # refunded
            (deposit(closed_here), "account_closed"),
            (withdraw(closed_here), "account_closed"),
            (transfer(closed_here, payer), "account_closed"),
            (transfer(payer, closed_here), "account_closed"),
            (transfer(payer, closed_there), "account_closed"),  # refunded
            (transfer(payer, payer), "accounts_must_be_different"),
            (deposit(payer, "EUR"), "currency_mismatch"),
            (transfer(euros_here, payer), "currency_mismatch"),
            (transfer(payer, euros_here), "currency_mismatch"),
            (transfer(payer, euros_there), "currency_mismatch"),  # refunded
        ]
        results = await load.submit([one for one, _ in cases])
        answers = [(r.status, r.code) for r in results]
        assert answers == [("rejected", code) for _, code in cases]
        await finished(loading, workers, "the load beside")
    await assert_ledger_sound(ledger, workers, load, [payer, closed_here, closed_there, *busy])


@pytest.mark.timeout(120)
async def test_account_closed_between_the_legs_of_a_transfer_gets_the_money_back(
    ledger: Settings, workers: Workers, rng: random.Random
) -> None:
    sender, receiver, *_ = accounts_on_every_partition(rng, ledger.partitions, per_partition=1)
    busy = accounts_on_every_partition(rng, ledger.partitions)
    worker = await asyncio.to_thread(workers.start_ready)
    async with client_for(ledger) as client:
        load = Load(ledger, client)
        await load.open_accounts(rng, busy)
        loading = beside(load, rng, busy)
        await load.open_accounts(rng, [sender], funds=FUNDS)
        await load.open_accounts(rng, [receiver], funds=0)
        close = new_command(rng, "close_account", receiver)
        transfer = new_command(rng, "transfer", sender, destination=receiver, amount=3_000)
        closing = asyncio.create_task(load.submit([close]))
        await asyncio.sleep(0)  # the close is queued in the client...
        await client.flush()  # ...and on Kafka before the transfer is published
        transferring = asyncio.create_task(load.submit([transfer]))
        [closed], [refused] = await asyncio.gather(closing, transferring)

        assert (closed.status, closed.code) == ("accepted", None)
        assert (refused.status, refused.code) == ("rejected", "account_closed")
        state = json.loads(await worker.view(f"/accounts/{sender}/"))
        assert (state["balance"], state["debits_in_transit"]) == (FUNDS, 0)
        await finished(loading, workers, "the load beside")
    journal = TopicNames.from_settings(ledger).journal
    events = await read_journal(ledger.bootstrap_servers, journal)
    kinds = {e.entry_id: e.kind for e in events if e.command_id == transfer.command_id}
    assert kinds == {
        f"{transfer.command_id}:0": "transfer_debit",
        f"{transfer.command_id}:2": "transfer_refund",
    }
    await assert_ledger_sound(ledger, workers, load, [sender, receiver, *busy])
