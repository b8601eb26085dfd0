"""A command id is decided once. Repeats, sent at once with the original or later in any
order (even when deciding them again would now give another answer), get the first outcome
and move nothing; the same id with another payload is rejected and moves nothing.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
from ledger_load import (
    CURRENCY,
    Load,
    accounts_on_every_partition,
    assert_ledger_sound,
    beside,
    client_for,
    command,
    command_id,
    finished,
    new_command,
    random_commands,
)
from worker_harness import Workers

from ledger_stream.messages import Command, Result
from ledger_stream.partitioning import partition_of
from ledger_stream.settings import Settings


def _answer(result: Result) -> tuple[str, str | None]:
    return result.status, result.code


@pytest.mark.timeout(120)
async def test_repeats_in_any_order_get_the_first_outcome_and_move_nothing(
    ledger: Settings, workers: Workers, rng: random.Random
) -> None:
    accounts = accounts_on_every_partition(rng, ledger.partitions)
    await asyncio.to_thread(workers.start_ready)
    async with client_for(ledger) as client:
        load = Load(ledger, client)
        await load.open_accounts(rng, accounts, funds=5_000)
        # Spent to nothing, then refilled: a repeat decided again would flip both answers.
        spender = accounts[0]
        spend = new_command(rng, "withdraw", spender, amount=5_000)
        short = new_command(rng, "withdraw", spender, amount=1)
        assert _answer((await load.submit([spend]))[0]) == ("accepted", None)
        assert _answer((await load.submit([short]))[0]) == ("rejected", "insufficient_funds")
        refill = new_command(rng, "deposit", spender, amount=9_000)
        await load.submit([refill])

        # Sent twice at once: one decision, the other copy answered as its duplicate.
        doubled = random_commands(rng, accounts, 40)
        pairs = await asyncio.gather(
            *(asyncio.gather(client.submit(c), client.submit(c)) for c in doubled)
        )
        for one, (first, second) in zip(doubled, pairs, strict=True):
            assert _answer(first) == _answer(second), (one, first, second)
            assert sorted([first.duplicate, second.duplicate]) == [False, True], (first, second)
            load.track(one, first)

        # Everything again, twice each, shuffled: later commands before earlier ones.
        repeats = list(load.commands.values()) * 2
        rng.shuffle(repeats)
        again = await asyncio.gather(*(client.submit(c) for c in repeats))
        for one, result in zip(repeats, again, strict=True):
            assert _answer(result) == _answer(load.results[one.command_id]), (one, result)
            assert result.duplicate, result
    await assert_ledger_sound(ledger, workers, load, accounts)


@pytest.mark.timeout(120)
async def test_same_id_with_another_payload_is_rejected_and_moves_nothing(
    ledger: Settings, workers: Workers, rng: random.Random
) -> None:
    accounts = accounts_on_every_partition(rng, ledger.partitions, per_partition=2)
    a, *others = accounts
    local = next(o for o in others if _partition(ledger, o) == _partition(ledger, a))
    remote = next(o for o in others if _partition(ledger, o) != _partition(ledger, a))
    busy = accounts_on_every_partition(rng, ledger.partitions)
    await asyncio.to_thread(workers.start_ready)
    async with client_for(ledger) as client:
        load = Load(ledger, client)
        await load.open_accounts(rng, [*accounts, *busy], funds=10_000)
        loading = beside(load, rng, busy)

        def pair(original: dict[str, object], other: dict[str, object]) -> tuple[Command, Command]:
            same = {"command_id": command_id(rng, "reused"), "currency": CURRENCY}
            return command(**original, **same), command(**other, **same)

        pairs = [
            pair(
                {"type": "deposit", "account": a, "amount": 100},
                {"type": "deposit", "account": a, "amount": 200},
            ),
            pair(
                {"type": "withdraw", "account": a, "amount": 100},
                {"type": "transfer", "account": a, "destination": local, "amount": 100},
            ),
            pair(
                {"type": "transfer", "account": a, "destination": remote, "amount": 300},
                {"type": "transfer", "account": a, "destination": remote, "amount": 301},
            ),
            pair(
                {"type": "transfer", "account": a, "destination": local, "amount": 400},
                {"type": "transfer", "account": a, "destination": remote, "amount": 400},
            ),
        ]
        # One after the other: the first is decided, the second is the conflict.
        for original, other in pairs:
            assert _answer((await load.submit([original]))[0]) == ("accepted", None)
            conflict = await client.submit(other)
            assert _answer(conflict) == ("rejected", "exists_with_different_payload"), conflict
            again = await client.submit(original)
            assert _answer(again) == ("accepted", None) and again.duplicate, again

        # Both at once: whichever the writer reads first is decided, the other refused.
        racing = [
            pair(
                {"type": "withdraw", "account": a, "amount": 10 + n},
                {"type": "withdraw", "account": a, "amount": 20 + n},
            )
            for n in range(10)
        ]
        answers = await asyncio.gather(
            *(asyncio.gather(client.submit(one), client.submit(other)) for one, other in racing)
        )
        for (one, other), (first, second) in zip(racing, answers, strict=True):
            codes = Counter([first.code, second.code])
            assert codes == Counter([None, "exists_with_different_payload"]), (first, second)
            winner, result = (one, first) if first.code is None else (other, second)
            load.track(winner, result)
        await finished(loading, workers, "the load beside")
    await assert_ledger_sound(ledger, workers, load, [*accounts, *busy])


def _partition(ledger: Settings, account: str) -> int:
    return partition_of(account, ledger.partitions)
