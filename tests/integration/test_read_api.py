"""The read side end to end: the HTTP API of one worker on the embedded broker, its
read models folded from the journal, aliases, the rebuild, and the problem answers.

Reads made right after a command's answer must show it (read-your-writes), so no test here
waits for the read models before reading.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from worker_harness import Workers, rebuild

from ledger_stream.client import LedgerClient
from ledger_stream.codes import Code
from ledger_stream.errors import ReadFailed
from ledger_stream.local import WorkerProcess
from ledger_stream.readmodel import utc_day
from ledger_stream.settings import Settings

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def worker(module_workers: Workers) -> WorkerProcess:
    return module_workers.start_ready()


@pytest.fixture
async def http(worker: WorkerProcess) -> AsyncIterator[Http]:
    async with aiohttp.ClientSession() as session:
        yield Http(session, worker.url)


class Http:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def get(self, path: str, **params: Any) -> tuple[int, str, Any]:
        async with self.session.get(self.url + path, params=params) as response:
            return response.status, response.content_type, await response.json(content_type=None)

    async def post(
        self, path: str, body: Any, key: str | None = None, raw: bytes | None = None
    ) -> tuple[int, str, Any, dict[str, str]]:
        headers = {} if key is None else {"Idempotency-Key": key}
        data = raw if raw is not None else None
        kwargs: dict[str, Any] = {"data": data} if raw is not None else {"json": body}
        async with self.session.post(self.url + path, headers=headers, **kwargs) as response:
            body = await response.json(content_type=None)
            return response.status, response.content_type, body, dict(response.headers)

    async def command(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        status, _, answer, _ = await self.post(path, body, key=uuid.uuid4().hex)
        assert status == 200, answer
        assert answer["status"] == "accepted", answer
        return answer  # type: ignore[no-any-return]


async def opened(http: Http, *accounts: str, funds: int = 0, **fields: Any) -> None:
    for account in accounts:
        await http.command("/v1/accounts", {"account": account, "currency": "USD", **fields})
        if funds:
            await http.command(
                "/v1/deposits", {"account": account, "amount": funds, "currency": "USD"}
            )


async def test_balances_history_and_summary_show_each_write_at_once(
    http: Http, on: Callable[[int, str], str]
) -> None:
    alice, bob, carol = on(0, "alice"), on(0, "bob"), on(1, "carol")
    await opened(http, alice, bob, carol, funds=10_000)
    await http.command(
        "/v1/transfers", {"account": alice, "destination": bob, "amount": 300, "currency": "USD"}
    )
    await http.command(
        "/v1/transfers", {"account": alice, "destination": carol, "amount": 200, "currency": "USD"}
    )
    hold = await http.command(
        "/v1/holds", {"account": alice, "destination": bob, "amount": 1_000, "currency": "USD"}
    )

    status, kind, account = await http.get(f"/v1/accounts/{alice}")
    assert (status, kind) == (200, "application/json"), account
    assert account["balance"] == {
        "posted": 9_500,
        "pending_debits": 1_000,
        "pending_credits": 0,
        "available": 8_500,
    }
    assert account["currency"] == "USD" and account["status"] == "open"
    _, _, bobs = await http.get(f"/v1/accounts/{bob}")
    assert bobs["balance"]["posted"] == 10_300
    assert bobs["balance"]["pending_credits"] == 1_000
    # Across partitions: carol's read models are fed by the credit leg's event.
    _, _, carols = await http.get(f"/v1/accounts/{carol}")
    assert carols["balance"]["posted"] == 10_200

    _, _, history = await http.get(f"/v1/accounts/{alice}/history")
    kinds = [item["kind"] for item in history["items"]]
    assert kinds == ["hold_placed", "transfer_debit", "transfer", "deposit", "account_opened"]
    assert history["items"][0]["command_id"] == hold["command_id"]
    assert [item["balance"] for item in history["items"]] == [9_500, 9_500, 9_700, 10_000, 0]
    assert history["items"][1]["counterparty"] == carol
    assert history["next_cursor"] is None

    day = utc_day(history["items"][0]["timestamp_ms"])
    status, _, summary = await http.get(f"/v1/accounts/{alice}/summary", day=day)
    assert status == 200, summary
    if utc_day(history["items"][-1]["timestamp_ms"]) == day:  # not across midnight
        assert (summary["opening"], summary["closing"]) == (0, 9_500)
        assert summary["actions"]["deposit"] == {"count": 1, "debit": 0, "credit": 10_000}
        assert summary["actions"]["transfer"] == {"count": 1, "debit": 300, "credit": 0}


async def test_history_pages_walk_the_whole_history_without_gaps_or_repeats(
    http: Http, on: Callable[[int, str], str]
) -> None:
    payer, payee = on(2, "payer"), on(2, "payee")
    await opened(http, payer, payee, funds=1_000_000)
    for amount in range(1, 38):
        await http.command(
            "/v1/transfers",
            {"account": payer, "destination": payee, "amount": amount, "currency": "USD"},
        )
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "5"} if cursor is None else {"limit": "5", "cursor": cursor}
        status, _, page = await http.get(f"/v1/accounts/{payer}/history", **params)
        assert status == 200, page
        assert len(page["items"]) <= 5
        seen += [item["seq"] for item in page["items"]]
        pages += 1
        # A write in the middle of the walk comes before the cursor: never on a later page.
        if pages == 2:
            await http.command("/v1/deposits", {"account": payer, "amount": 1, "currency": "USD"})
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 39 == len(set(seen))  # opened, deposited, 37 transfers
    assert seen == sorted(seen, reverse=True)


async def test_balance_as_of_a_journal_time(http: Http, on: Callable[[int, str], str]) -> None:
    saver = on(3, "saver")
    await opened(http, saver)
    stamps = []
    for amount in (100, 200, 400):
        await http.command("/v1/deposits", {"account": saver, "amount": amount, "currency": "USD"})
        _, _, history = await http.get(f"/v1/accounts/{saver}/history", limit="1")
        stamps.append(history["items"][0]["timestamp_ms"])
    _, _, now = await http.get(f"/v1/accounts/{saver}/balance")
    assert now["posted"] == 700
    for stamp, posted in zip(stamps, (100, 300, 700), strict=True):
        status, _, then = await http.get(f"/v1/accounts/{saver}/balance", as_of=str(stamp))
        assert status == 200, then
        # Deposits within one millisecond share a time: the balance at it includes them all.
        assert then["posted"] >= posted
    status, kind, before = await http.get(
        f"/v1/accounts/{saver}/balance", as_of="1970-01-02T00:00:00Z"
    )
    assert (status, kind, before["code"]) == (404, PROBLEM, Code.ACCOUNT_NOT_FOUND)


async def test_aliases_pay_by_email_and_a_taken_alias_is_refused(
    http: Http, on: Callable[[int, str], str]
) -> None:
    bob, eve = on(0, "bob"), on(1, "eve")
    payer = on(2, "payer")
    await opened(http, bob, eve, payer, funds=5_000)
    alias = f"alias:bob-{uuid.uuid4().hex[:6]}@example.com"
    await http.command("/v1/aliases", {"account": alias, "target": bob})
    status, kind, taken, _ = await http.post(
        "/v1/aliases", {"account": alias, "target": eve}, key=uuid.uuid4().hex
    )
    assert (status, kind, taken["code"]) == (409, PROBLEM, Code.ALIAS_TAKEN)

    # An account is never opened under an alias, nor is the account it names opened again.
    status, kind, refused, _ = await http.post(
        "/v1/accounts", {"account": alias, "currency": "USD"}, key=uuid.uuid4().hex
    )
    assert (status, kind, refused["code"]) == (422, PROBLEM, Code.ACCOUNT_RESERVED)
    status, _, named = await http.get(f"/v1/aliases/{alias}")
    assert (status, named) == (200, {"alias": alias, "account": bob})
    paid = await http.command(
        "/v1/transfers",
        {"account": payer, "destination": alias, "amount": 250, "currency": "USD"},
    )
    assert paid["destination"] == bob
    _, _, account = await http.get(f"/v1/accounts/{alias}")
    assert account["account"] == bob and account["balance"]["posted"] == 5_250
    status, kind, missing = await http.get("/v1/aliases/alias:nobody@example.com")
    assert (status, kind, missing["code"]) == (404, PROBLEM, "alias_not_found")


async def test_errors_are_problems_with_the_code(http: Http, on: Callable[[int, str], str]) -> None:
    poor, rich = on(3, "poor"), on(3, "rich")
    await opened(http, poor, rich)
    status, kind, body = await http.get(f"/v1/accounts/{on(3, 'nobody')}")
    assert (status, kind, body["code"]) == (404, PROBLEM, Code.ACCOUNT_NOT_FOUND)

    transfer = {"account": poor, "destination": rich, "amount": 5, "currency": "USD"}
    status, kind, body, _ = await http.post("/v1/transfers", transfer, key=uuid.uuid4().hex)
    assert (status, kind, body["code"]) == (422, PROBLEM, Code.INSUFFICIENT_FUNDS)
    assert body["status"] == 422 and body["detail"]

    bad = {**transfer, "amount": "lots"}
    status, kind, body, _ = await http.post("/v1/transfers", bad, key=uuid.uuid4().hex)
    assert (status, kind, body["code"], body["field"]) == (
        422,
        PROBLEM,
        Code.INVALID_COMMAND,
        "amount",
    )
    status, _, body, _ = await http.post("/v1/transfers", transfer)
    assert (status, body["code"]) == (400, "idempotency_key_required")
    status, _, body, _ = await http.post("/v1/transfers", None, key="k", raw=b"{not json")
    assert (status, body["code"]) == (422, Code.INVALID_COMMAND)

    key = uuid.uuid4().hex
    deposit = {"account": poor, "amount": 10, "currency": "USD"}
    status, _, _, _ = await http.post("/v1/deposits", deposit, key=key)
    assert status == 200
    status, _, again, _ = await http.post("/v1/deposits", deposit, key=key)
    assert (status, again["duplicate"]) == (200, True)
    status, kind, other, _ = await http.post("/v1/deposits", {**deposit, "amount": 11}, key=key)
    assert (status, kind, other["code"]) == (409, PROBLEM, Code.EXISTS_WITH_DIFFERENT_PAYLOAD)

    for path, params in (
        (f"/v1/accounts/{poor}/history", {"limit": "0"}),
        (f"/v1/accounts/{poor}/history", {"cursor": "x"}),
        (f"/v1/accounts/{poor}/summary", {"day": "27-11-2026"}),
        (f"/v1/accounts/{poor}/balance", {"as_of": "yesterday"}),
    ):
        status, kind, body = await http.get(path, **params)
        assert (status, kind, body["field"]) == (422, PROBLEM, next(iter(params))), body

    status, _, polled = await http.get(f"/v1/commands/{key}", account=poor)
    assert (status, polled["amount"]) == (200, 10)
    status, _, pending = await http.get(f"/v1/commands/{uuid.uuid4().hex}", account=poor)
    assert (status, pending["status"]) == (202, "pending")


async def test_rebuild_refolds_the_journal_into_read_models_identical_to_the_live_ones(
    http: Http, module_ledger: Settings, worker: WorkerProcess, on: Callable[[int, str], str]
) -> None:
    one, two = on(0, "one"), on(1, "two")
    await opened(http, one, two, funds=3_000)
    await http.command(
        "/v1/transfers", {"account": one, "destination": two, "amount": 30, "currency": "USD"}
    )
    await http.get(f"/v1/accounts/{two}/history")  # folded here: the rebuild compares it
    done = await rebuild(module_ledger, worker.data_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rebuilt read models identical to the live ones" in done.stdout
    assert done.stdout.count("identical to the live read models") == module_ledger.partitions
    # --replace folds to the journal's end into a directory no worker has open, where the
    # next rebuild finds read models identical to its own fold.
    elsewhere = worker.data_dir.parent / f"replaced-{uuid.uuid4().hex[:6]}"
    for _ in range(2):  # the second time over read models already there
        placed = await rebuild(module_ledger, elsewhere, "--replace")
        assert placed.returncode == 0, placed.stdout + placed.stderr
        assert placed.stdout.count("put in place of the live read models") == (
            module_ledger.partitions
        )
    again = await rebuild(module_ledger, elsewhere, "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    report = orjson.loads(again.stdout.splitlines()[-1])
    assert report["identical"] is True
    assert sum(p["events"] for p in report["partitions"]) > 0
    assert all(p["compared"] for p in report["partitions"])


async def test_the_client_reads_and_pays_an_alias(
    module_ledger: Settings, worker: WorkerProcess, on: Callable[[int, str], str]
) -> None:
    payer, payee = on(1, "payer"), on(2, "payee")
    async with LedgerClient(
        module_ledger.bootstrap_servers,
        topic_prefix=module_ledger.topic_prefix,
        timeout_s=60,
        http_url=worker.url,
    ) as client:
        for account in (payer, payee):
            assert (await client.open_account(account, "USD", low_balance=50)).status == "accepted"
        await client.deposit(payer, 1_000, "USD")
        email = f"alias:{payee}@example.com"
        assert (await client.register_alias(email, payee)).status == "accepted"
        assert await client.resolve_alias(email) == payee
        assert await client.resolve_alias("alias:nobody@example.com") is None
        paid = await client.transfer(payer, email, 120, "USD")
        assert (paid.status, paid.destination) == ("accepted", payee)

        assert (await client.balance(payee))["posted"] == 120
        assert (await client.account(email))["account"] == payee
        kinds = [item["kind"] async for item in client.history_items(payer)]
        assert kinds == ["transfer_debit", "deposit", "account_opened"]
        summary = await client.summary(payer)
        assert summary["account"] == payer
        with pytest.raises(ReadFailed) as failed:
            await client.balance(on(1, "nobody"))
        assert (failed.value.status, failed.value.code) == (404, Code.ACCOUNT_NOT_FOUND)
