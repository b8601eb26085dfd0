"""Anomaly flags end to end: one worker on the embedded broker with small thresholds in
`LEDGER_ANOMALY_RULES`, payments whose record times the test chooses (the rules judge
journal time, so nothing here sleeps), and the flags read back from
`GET /v1/accounts/{id}/flags` and from the flags topic.

Accounts are opened and funded through `LedgerClient` at the time of the run; the payments
judged are stamped an hour on, so they come after those in every account's journal time.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from worker_harness import Workers

from ledger_stream.anomaly import Flag
from ledger_stream.client import LedgerClient
from ledger_stream.kafka.reading import read_topic
from ledger_stream.local import WorkerProcess
from ledger_stream.messages import from_json
from ledger_stream.partitioning import partition_of
from ledger_stream.settings import Settings
from ledger_stream.topics import TopicNames

RULES = {
    "burst": {"count_max": 3, "window_s": 60},
    "large_amount": {"history_min": 3, "multiple": 5, "amount_min": 100},
    "new_counterparty": {"amount_min": 1_000, "history_min": 1},
}
S = 1_000  # ms
HOUR_MS = 3_600 * S
WAIT_S = 120.0  # a generous bound on every wait; nothing is asserted about durations
POLL_S = 0.05


@pytest.fixture(scope="module")
def worker(module_workers: Workers) -> WorkerProcess:
    return module_workers.start_ready(env={"LEDGER_ANOMALY_RULES": json.dumps(RULES)})


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Stamped:
    """Commands sent with record times the test chooses, answered on the client's reply
    partition (the client reads it; `watch_results` hands every answer here)."""

    def __init__(self, settings: Settings, client: LedgerClient, producer: AIOKafkaProducer):
        self.settings, self.client, self.producer = settings, client, producer
        self.results: dict[str, dict[str, Any]] = {}
        client.watch_results(lambda result: self.results.__setitem__(result["command_id"], result))

    async def send(self, timestamp_ms: int, **command: Any) -> str:
        """Send the command stamped `timestamp_ms`; its command id once it was accepted."""
        command_id = command.setdefault("command_id", uuid.uuid4().hex)
        command["reply_partition"] = self.client.reply_partition
        await self.producer.send_and_wait(
            TopicNames.from_settings(self.settings).commands,
            orjson.dumps(command),
            key=command["account"].encode(),
            partition=partition_of(command["account"], self.settings.partitions),
            timestamp_ms=timestamp_ms,
        )
        deadline = time.monotonic() + WAIT_S
        while command_id not in self.results:
            assert time.monotonic() < deadline, f"no answer to {command} within {WAIT_S} s"
            await asyncio.sleep(POLL_S)
        result = self.results[command_id]
        assert result["status"] == "accepted", result
        return command_id

    async def pay(self, timestamp_ms: int, source: str, destination: str, amount: int) -> str:
        return await self.send(
            timestamp_ms,
            type="transfer",
            account=source,
            destination=destination,
            amount=amount,
            currency="USD",
        )

    async def withdraw(self, timestamp_ms: int, account: str, amount: int) -> str:
        return await self.send(
            timestamp_ms, type="withdraw", account=account, amount=amount, currency="USD"
        )


@pytest.fixture
async def stamped(module_ledger: Settings, client: LedgerClient) -> AsyncIterator[Stamped]:
    producer = AIOKafkaProducer(bootstrap_servers=module_ledger.bootstrap_servers, acks="all")
    await producer.start()
    try:
        yield Stamped(module_ledger, client, producer)
    finally:
        await producer.stop()


def later_ms() -> int:
    """A record time after every event of the accounts the test opened just now."""
    return int(time.time() * 1000) + HOUR_MS


async def opened(client: LedgerClient, *accounts: str, funds: int = 100_000) -> None:
    for account in accounts:
        assert (await client.open_account(account, "USD")).status == "accepted"
        if funds:
            assert (await client.deposit(account, funds, "USD")).status == "accepted"


async def flags_page(
    http: aiohttp.ClientSession, worker: WorkerProcess, account: str, **params: str
) -> dict[str, Any]:
    async with http.get(f"{worker.url}/v1/accounts/{account}/flags", params=params) as response:
        body: dict[str, Any] = await response.json(content_type=None)
        assert response.status == 200, body
        return body


async def every_flag(
    http: aiohttp.ClientSession, worker: WorkerProcess, account: str, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """Every flag of `account`, walking pages of `limit`; and how many pages it took."""
    flags: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": str(limit)} | ({} if cursor is None else {"cursor": cursor})
        page = await flags_page(http, worker, account, **params)
        assert page["account"] == account
        assert len(page["flags"]) <= limit
        flags += page["flags"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            return flags, pages
        assert pages <= 100, "the pages do not end"


async def on_topic(settings: Settings, *accounts: str) -> list[Flag]:
    """The flags of `accounts` on the flags topic, each checked to be keyed by its account on
    its account's partition."""
    found = []
    topic = TopicNames.from_settings(settings).flags
    async for records in read_topic(settings.bootstrap_servers, topic):
        for record in records:
            flag = from_json(record.value, Flag)
            assert record.key == flag.account.encode(), record
            assert record.partition == partition_of(flag.account, settings.partitions), record
            if flag.account in accounts:
                found.append(flag)
    return found


def judged(flags: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    """(rule, command, figures) of each flag, as listed."""
    return [(f["rule"], f["command_id"], f["figures"]) for f in flags]


async def assert_on_topic(settings: Settings, account: str, flags: list[dict[str, Any]]) -> None:
    """The flags the API lists are the account's flags on the topic, each there once."""
    topic = await on_topic(settings, account)
    assert Counter(f.id for f in topic) == Counter(f["id"] for f in flags)
    by_id = {f.id: f for f in topic}
    for listed in flags:
        flag = by_id[listed["id"]]
        assert (flag.rule, flag.command_id, flag.figures, flag.amount) == (
            listed["rule"],
            listed["command_id"],
            listed["figures"],
            listed["amount"],
        )


# --- each rule --------------------------------------------------------------------------------


async def test_a_fourth_payment_within_the_window_is_a_burst_flagged_once_a_burst(
    client: LedgerClient,
    stamped: Stamped,
    http: aiohttp.ClientSession,
    worker: WorkerProcess,
    module_ledger: Settings,
    on: Callable[[int, str], str],
) -> None:
    payer, payee = on(0, "payer"), on(0, "payee")
    await opened(client, payer, payee)
    t = later_ms()
    first = [await stamped.pay(t + n * S, payer, payee, 10) for n in range(5)]
    # Past the window of the last one: a burst again, flagged again.
    t += 5 * 60 * S
    second = [await stamped.pay(t + n * S, payer, payee, 10) for n in range(4)]
    # A withdrawal goes out too: one payment a minute apart from the burst is not one.
    quiet = await stamped.withdraw(t + 63 * S, payer, 10)

    page = await flags_page(http, worker, payer)
    burst = {"count": 4, "window_s": 60, "count_max": 3}
    assert judged(page["flags"]) == [("burst", second[3], burst), ("burst", first[3], burst)]
    assert quiet not in {f["command_id"] for f in page["flags"]}
    newest = page["flags"][0]
    assert (newest["id"], newest["entry_id"]) == (f"{second[3]}:0:burst", f"{second[3]}:0")
    assert (newest["account"], newest["counterparty"], newest["amount"]) == (payer, payee, 10)
    assert newest["reason"] == "4 payments out within 60 s, more than the 3 allowed"
    assert page["next_cursor"] is None
    assert (await flags_page(http, worker, payee))["flags"] == []  # money in is not judged
    await assert_on_topic(module_ledger, payer, page["flags"])


async def test_an_amount_above_five_times_the_median_is_flagged_large_amount(
    client: LedgerClient,
    stamped: Stamped,
    http: aiohttp.ClientSession,
    worker: WorkerProcess,
    module_ledger: Settings,
    on: Callable[[int, str], str],
) -> None:
    payer, payee = on(1, "payer"), on(2, "payee")  # across partitions
    await opened(client, payer, payee)
    t = later_ms()
    minute = 61 * S  # apart enough never to be a burst
    for n, amount in enumerate((200, 200, 300)):
        await stamped.pay(t + n * minute, payer, payee, amount)
    at_the_multiple = await stamped.pay(t + 3 * minute, payer, payee, 1_000)  # 5 x 200
    above = await stamped.pay(t + 4 * minute, payer, payee, 1_251)  # median 250 now
    small = await stamped.withdraw(t + 5 * minute, payer, 99)  # under amount_min

    page = await flags_page(http, worker, payer)
    figures = {"amount": 1_251, "median": 250, "multiple": 5.0, "history": 4}
    assert judged(page["flags"]) == [("large_amount", above, figures)]
    assert at_the_multiple not in {f["command_id"] for f in page["flags"]}
    assert small not in {f["command_id"] for f in page["flags"]}
    flag = page["flags"][0]
    assert (flag["amount"], flag["counterparty"]) == (1_251, payee)
    assert flag["reason"] == "1251 is 5.004 times the median 250 of the last 4 payments out"
    await assert_on_topic(module_ledger, payer, page["flags"])


async def test_a_large_first_payment_to_an_account_not_paid_before_is_flagged(
    client: LedgerClient,
    stamped: Stamped,
    http: aiohttp.ClientSession,
    worker: WorkerProcess,
    module_ledger: Settings,
    on: Callable[[int, str], str],
) -> None:
    payer = on(3, "payer")
    first, small, large = on(3, "first"), on(3, "small"), on(0, "large")
    await opened(client, payer, first, small, large)
    t = later_ms()
    minute = 61 * S
    # The account's first payment out: not judged (history_min 1), however large.
    await stamped.pay(t, payer, first, 5_000)
    await stamped.pay(t + minute, payer, small, 999)  # new, under amount_min: now known
    flagged = await stamped.pay(t + 2 * minute, payer, large, 1_000)  # new, at amount_min
    await stamped.pay(t + 3 * minute, payer, small, 1_500)  # known
    await stamped.pay(t + 4 * minute, payer, large, 2_000)  # known now

    page = await flags_page(http, worker, payer)
    figures = {"amount": 1_000, "amount_min": 1_000, "history": 2}
    assert judged(page["flags"]) == [("new_counterparty", flagged, figures)]
    flag = page["flags"][0]
    assert (flag["counterparty"], flag["amount"]) == (large, 1_000)
    assert flag["reason"] == (
        f"first payment to {large}, of 1000 (at least 1000), after 2 payments out"
    )
    await assert_on_topic(module_ledger, payer, page["flags"])


# --- ordinary traffic ----------------------------------------------------------------------------


async def test_ordinary_payments_between_a_few_accounts_raise_no_flag(
    client: LedgerClient,
    stamped: Stamped,
    http: aiohttp.ClientSession,
    worker: WorkerProcess,
    module_ledger: Settings,
    on: Callable[[int, str], str],
) -> None:
    accounts = [on(0, "ann"), on(1, "ben"), on(2, "cat"), on(2, "dan")]
    await opened(client, *accounts, funds=50_000)
    t = later_ms()
    # Payments out every 10 s in turn, so each account pays every 40 s (never three within
    # a minute), to the others and now and then to the world, amounts 150 to 250.
    for slot in range(24):
        payer = accounts[slot % len(accounts)]
        amount = 150 + 25 * (slot % 5)
        if slot % 7 == 6:
            await stamped.withdraw(t + slot * 10 * S, payer, amount)
        else:
            payee = accounts[(slot + 1 + slot // len(accounts)) % len(accounts)]
            if payee == payer:
                payee = accounts[(slot + 1) % len(accounts)]
            await stamped.pay(t + slot * 10 * S, payer, payee, amount)

    for account in accounts:
        page = await flags_page(http, worker, account)
        assert (page["flags"], page["next_cursor"]) == ([], None), account
    assert await on_topic(module_ledger, *accounts) == []


# --- pages ------------------------------------------------------------------------------------


async def test_flag_pages_list_every_flag_once_newest_first(
    client: LedgerClient,
    stamped: Stamped,
    http: aiohttp.ClientSession,
    worker: WorkerProcess,
    module_ledger: Settings,
    on: Callable[[int, str], str],
) -> None:
    payer, known, stranger = on(1, "payer"), on(1, "known"), on(2, "stranger")
    await opened(client, payer, known, stranger)
    t = later_ms()
    for n in range(3):
        await stamped.pay(t + n * S, payer, known, 100)
    # One payment that trips all three rules: three flags of one journal entry.
    everything = await stamped.pay(t + 3 * S, payer, stranger, 5_000)
    bursts = []
    for start in (2, 4, 6):  # minutes on: a burst each time
        times = [t + start * 60 * S + n * S for n in range(4)]
        paid = [await stamped.pay(at, payer, known, 100) for at in times]
        bursts.append(paid[3])

    whole = await flags_page(http, worker, payer, limit="50")
    assert whole["next_cursor"] is None
    listed = [(f["rule"], f["command_id"]) for f in whole["flags"]]
    assert listed == [
        ("burst", bursts[2]),
        ("burst", bursts[1]),
        ("burst", bursts[0]),
        ("new_counterparty", everything),
        ("large_amount", everything),
        ("burst", everything),
    ]
    for limit in (1, 2, 4, 5, 6):
        walked, pages = await every_flag(http, worker, payer, limit)
        assert walked == whole["flags"], limit
        assert pages == -(-len(listed) // limit), limit
    async with http.get(
        f"{worker.url}/v1/accounts/{payer}/flags", params={"cursor": "not-one"}
    ) as response:
        problem = await response.json(content_type=None)
        assert (response.status, problem["field"]) == (422, "cursor"), problem
    await assert_on_topic(module_ledger, payer, whole["flags"])
