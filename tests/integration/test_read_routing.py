"""The read side across two workers of one group: a read of an account answers the same from
either worker (its partition's writer answers, the other forwards the request to it), an
alias resolves through both, and once one worker stops, the other answers every read itself
from the read models it folded of the partitions it took over.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from worker_harness import Workers, alias_on, partitions_written, polled, v1_get, v1_read
from yarl import URL

from ledger_stream.local import WorkerProcess
from ledger_stream.partitioning import name_on
from ledger_stream.settings import Settings

CURRENCY = "USD"
FUNDS = 1_000  # times the partition number + 1: each account's own balance
MOVED = 100  # from the account on the first partition to the one on the last
PAID = 250  # to the alias
# A journal time after every event of the test: the balance as of it comes from the read
# models (the balance now comes from the writer's state).
LATER_MS = "4102444800000"  # 2100-01-01


def reads(account: str, day: str) -> list[tuple[str, dict[str, str]]]:
    """Every read of one account: its view, history, a day's summary, its balance as of a
    later time (those three from the read models) and its balance now, last."""
    return [
        (f"/v1/accounts/{account}", {}),
        (f"/v1/accounts/{account}/history", {}),
        (f"/v1/accounts/{account}/summary", {"day": day}),
        (f"/v1/accounts/{account}/balance", {"as_of": LATER_MS}),
        (f"/v1/accounts/{account}/balance", {}),
    ]


async def accepted(
    session: aiohttp.ClientSession,
    worker: WorkerProcess,
    path: str,
    body: dict[str, Any],
    workers: Workers,
) -> dict[str, Any]:
    """POST a command through `worker` until it is decided: sent again with the same
    Idempotency-Key while the worker answers 503, its location polled while it answers 202.
    The decision must be `accepted`."""
    key = uuid.uuid4().hex

    async def post() -> tuple[int, Any]:
        headers = {"Idempotency-Key": key}
        async with session.post(worker.url + path, json=body, headers=headers) as response:
            return response.status, await response.json(content_type=None)

    status, answer = await polled(post, lambda a: a[0] != 503, workers, f"POST {path}")
    if status == 202:
        location = URL(answer["location"])
        status, answer = await polled(
            lambda: v1_get(session, worker, location.path, **location.query),
            lambda a: a[0] not in (202, 503),
            workers,
            f"the decision of {key} ({path})",
        )
    assert status == 200 and answer["status"] == "accepted", (path, body, status, answer)
    return answer  # type: ignore[no-any-return]


async def same_from_both(
    session: aiohttp.ClientSession,
    pair: tuple[WorkerProcess, WorkerProcess],
    path: str,
    params: dict[str, str],
    workers: Workers,
) -> Any:
    """The 200 body of a read, which both workers must answer alike."""
    one, other = [await v1_read(session, w, path, workers, **params) for w in pair]
    assert one == other, (path, params, one, other)
    return one


async def settled(
    session: aiohttp.ClientSession, worker: WorkerProcess, accounts: list[str], workers: Workers
) -> None:
    """Wait until no money of `accounts` is in transit: a transfer across partitions is
    answered once its credit lands, and its source learns so a moment later."""

    async def view(account: str) -> Any:
        return await v1_read(session, worker, f"/v1/accounts/{account}", workers)

    for account in accounts:
        await polled(
            functools.partial(view, account),
            lambda body: body["in_transit"] == 0,
            workers,
            f"nothing of {account} in transit",
        )


@pytest.mark.timeout(300)
async def test_reads_answer_alike_from_either_worker_and_from_the_one_left(
    ledger: Settings, workers: Workers, tmp_path: Path
) -> None:
    n = ledger.partitions
    first = await asyncio.to_thread(workers.start_ready, tmp_path / "first")
    second = await asyncio.to_thread(workers.start_ready, tmp_path / "second")
    pair = (first, second)

    async def written() -> tuple[list[int], list[int]]:
        return await partitions_written(first), await partitions_written(second)

    def split(owned: tuple[list[int], list[int]]) -> bool:
        ones, others = owned
        return bool(ones) and bool(others) and sorted(ones + others) == list(range(n))

    firsts, seconds = await polled(written, split, workers, "each worker to write some partitions")
    print(f"first writes {firsts}, second writes {seconds}")

    test = uuid.uuid4().hex[:8]
    day = datetime.datetime.now(datetime.UTC).date().isoformat()  # fixed for the test
    holders = [name_on(p, f"holder-{test}", n) for p in range(n)]
    payer = holders[seconds[0]]
    payee = name_on(seconds[-1], f"payee-{test}", n)
    alias = alias_on(seconds[0], f"pay-{test}", n)
    expected = {holder: FUNDS * (p + 1) for p, holder in enumerate(holders)}
    expected[payee] = 0

    async with aiohttp.ClientSession() as session:
        # Each command through one worker or the other, whichever writes its account.
        for i, account in enumerate([*holders, payee]):
            opener, funder = pair[i % 2], pair[(i + 1) % 2]
            await accepted(
                session, opener, "/v1/accounts", {"account": account, "currency": CURRENCY}, workers
            )
            if expected[account]:
                deposit = {"account": account, "amount": expected[account], "currency": CURRENCY}
                await accepted(session, funder, "/v1/deposits", deposit, workers)
        across = {
            "account": holders[0],
            "destination": holders[-1],
            "amount": MOVED,
            "currency": CURRENCY,
        }
        await accepted(session, second, "/v1/transfers", across, workers)
        expected[holders[0]] -= MOVED
        expected[holders[-1]] += MOVED
        await settled(session, first, holders, workers)

        for account in holders:
            for path, params in reads(account, day):
                await same_from_both(session, pair, path, params, workers)
            for params in ({}, {"as_of": LATER_MS}):
                path = f"/v1/accounts/{account}/balance"
                balance = await v1_read(session, first, path, workers, **params)
                assert balance["posted"] == expected[account], (account, params, balance)

        # The alias, the payer and the payee are all on the second's partitions; the first
        # registers the alias and takes the payment.
        registration = {"account": alias, "target": payee}
        await accepted(session, first, "/v1/aliases", registration, workers)
        named = await same_from_both(session, pair, f"/v1/aliases/{alias}", {}, workers)
        assert named == {"alias": alias, "account": payee}
        by_alias = await same_from_both(session, pair, f"/v1/accounts/{alias}", {}, workers)
        assert by_alias == await v1_read(session, second, f"/v1/accounts/{payee}", workers)

        payment = {"account": payer, "destination": alias, "amount": PAID, "currency": CURRENCY}
        paid = await accepted(session, first, "/v1/transfers", payment, workers)
        assert paid["destination"] == payee, paid
        expected[payer] -= PAID
        expected[payee] += PAID
        await settled(session, first, [payer], workers)

        answers: list[tuple[str, dict[str, str], Any]] = []
        for account in [*holders, payee]:
            for path, params in reads(account, day):
                body = await same_from_both(session, pair, path, params, workers)
                answers.append((path, params, body))
            for _, params, balance in answers[-2:]:  # as of later, and now
                assert balance["posted"] == expected[account], (account, params, balance)
        history = await v1_read(session, first, f"/v1/accounts/{payee}/history", workers)
        assert history["items"][0]["counterparty"] == payer, history

        assert await asyncio.to_thread(second.stop) == 0, workers.logs()
        await polled(
            lambda: partitions_written(first),
            lambda owned: owned == list(range(n)),
            workers,
            "the first worker to write every partition",
        )
        # Every read now answered by the first alone, from the read models it folded of the
        # second's partitions (the alias's among them): the same bodies as before.
        for path, params, body in answers:
            assert await v1_read(session, first, path, workers, **params) == body, path
        named = await v1_read(session, first, f"/v1/aliases/{alias}", workers)
        assert named == {"alias": alias, "account": payee}
        by_alias = await v1_read(session, first, f"/v1/accounts/{alias}", workers)
        assert by_alias["balance"]["posted"] == expected[payee] == PAID
