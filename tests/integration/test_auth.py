"""API keys on a real worker (embedded broker): a POST needs one of the worker's keys (401
without, 401 with another, and the command is not published then); reads stay open unless
the worker restricts them, and then need a key too, but for the health check, the metrics
and the API's document. LedgerClient sends its key with its reads."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from worker_harness import Workers

from ledger_stream.client import LedgerClient
from ledger_stream.errors import ReadFailed
from ledger_stream.local import WorkerProcess
from ledger_stream.settings import Settings

KEY = "ledger-test-key-" + uuid.uuid4().hex
OTHER_KEY = "ledger-test-other-key-" + uuid.uuid4().hex
UNAUTHENTICATED = "write routes (every POST under /v1) are unauthenticated"
PROBLEM = "application/problem+json"


def hashes(*keys: str) -> str:
    return ",".join(f"sha256:{hashlib.sha256(key.encode()).hexdigest()}" for key in keys)


@pytest.fixture(scope="module")
def worker(module_workers: Workers) -> WorkerProcess:
    """A worker with two keys; reads open."""
    return module_workers.start_ready(env={"LEDGER_API_KEY_HASHES": hashes(KEY, OTHER_KEY)})


@pytest.fixture
async def http(worker: WorkerProcess) -> AsyncIterator[Http]:
    async with aiohttp.ClientSession() as session:
        yield Http(session, worker.url)


class Http:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def post(
        self, path: str, body: dict[str, Any], command_id: str, auth: dict[str, str]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        headers = {"Idempotency-Key": command_id, **auth}
        async with self.session.post(self.url + path, json=body, headers=headers) as response:
            answer = await response.json(content_type=None)
            return response.status, answer, dict(response.headers)

    async def get(self, path: str, auth: dict[str, str] | None = None) -> tuple[int, Any]:
        async with self.session.get(self.url + path, headers=auth or {}) as response:
            return response.status, await response.json(content_type=None)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def new_account() -> str:
    return f"auth-{uuid.uuid4().hex[:10]}"


async def test_a_post_without_a_key_is_refused_and_not_published(http: Http) -> None:
    account, command_id = new_account(), uuid.uuid4().hex
    body = {"account": account, "currency": "USD"}
    status, answer, headers = await http.post("/v1/accounts", body, command_id, {})
    assert status == 401, answer
    assert answer["code"] == "unauthorized"
    assert headers["Content-Type"].startswith(PROBLEM)
    assert headers["WWW-Authenticate"].startswith("Bearer")
    # The same command with a key is its first decision: the refused one never reached Kafka.
    status, answer, _ = await http.post("/v1/accounts", body, command_id, bearer(KEY))
    assert status == 200, answer
    assert (answer["status"], answer["duplicate"]) == ("accepted", False)


async def test_a_post_with_another_key_is_refused_and_not_published(http: Http) -> None:
    account, command_id = new_account(), uuid.uuid4().hex
    body = {"account": account, "currency": "USD"}
    for wrong in (bearer("not-" + KEY), {"X-API-Key": KEY[:-1]}):
        status, answer, headers = await http.post("/v1/accounts", body, command_id, wrong)
        assert status == 401, answer
        assert answer["code"] == "invalid_api_key"
        assert "invalid_token" in headers["WWW-Authenticate"]
    status, answer, _ = await http.post("/v1/accounts", body, command_id, {"X-API-Key": KEY})
    assert status == 200, answer
    assert (answer["status"], answer["duplicate"]) == ("accepted", False)


async def test_with_either_key_commands_are_decided_and_reads_stay_open(http: Http) -> None:
    account = new_account()
    opened = {"account": account, "currency": "USD"}
    status, answer, _ = await http.post("/v1/accounts", opened, uuid.uuid4().hex, bearer(KEY))
    assert (status, answer["status"]) == (200, "accepted"), answer
    deposit = {"account": account, "amount": 1250, "currency": "USD"}
    for key in (KEY, OTHER_KEY):
        status, answer, _ = await http.post("/v1/deposits", deposit, uuid.uuid4().hex, bearer(key))
        assert (status, answer["status"]) == (200, "accepted"), answer
    status, answer = await http.get(f"/v1/accounts/{account}")  # no key
    assert status == 200, answer
    assert answer["balance"]["posted"] == 2500
    status, answer = await http.get(f"/v1/accounts/{account}/history")
    assert status == 200, answer
    assert [item["kind"] for item in answer["items"]] == ["deposit", "deposit", "account_opened"]


def test_a_worker_with_keys_does_not_warn_of_unauthenticated_writes(
    worker: WorkerProcess,
) -> None:
    assert "Worker ready" in worker.log_tail(10_000)
    assert UNAUTHENTICATED not in worker.log_tail(10_000)


async def test_restricted_reads_need_a_key_but_health_metrics_and_docs(
    ledger: Settings, workers: Workers
) -> None:
    worker = workers.start_ready(
        env={"LEDGER_API_KEY_HASHES": hashes(KEY), "LEDGER_API_READS_REQUIRE_KEY": "true"}
    )
    account = new_account()
    async with aiohttp.ClientSession() as session:
        http = Http(session, worker.url)
        body = {"account": account, "currency": "USD"}
        status, answer, _ = await http.post("/v1/accounts", body, uuid.uuid4().hex, bearer(KEY))
        assert (status, answer["status"]) == (200, "accepted"), answer
        for path in (f"/v1/accounts/{account}", f"/v1/accounts/{account}/history"):
            status, answer = await http.get(path)
            assert (status, answer["code"]) == (401, "unauthorized"), path
            status, answer = await http.get(path, {"X-API-Key": OTHER_KEY})
            assert (status, answer["code"]) == (401, "invalid_api_key"), path
            status, answer = await http.get(path, bearer(KEY))
            assert status == 200, (path, answer)
        async with session.get(f"{worker.url}/accounts/{account}/") as response:
            assert response.status == 401  # the account view outside /v1 too
        for path in ("/partitions/", "/metrics/", "/v1/openapi.json", "/v1/docs"):
            async with session.get(worker.url + path) as response:
                assert response.status == 200, path

    async with LedgerClient(
        ledger.bootstrap_servers,
        topic_prefix=ledger.topic_prefix,
        http_url=worker.url,
        api_key=KEY,
        timeout_s=60,
    ) as keyed:
        assert (await keyed.account(account))["account"] == account
    async with LedgerClient(
        ledger.bootstrap_servers, topic_prefix=ledger.topic_prefix, http_url=worker.url
    ) as keyless:
        with pytest.raises(ReadFailed) as refused:
            await keyless.account(account)
        assert (refused.value.status, refused.value.code) == (401, "unauthorized")


def test_a_worker_without_keys_warns_once_that_writes_are_unauthenticated(
    workers: Workers,
) -> None:
    worker = workers.start_ready()
    log = worker.log_tail(10_000)
    assert log.count(UNAUTHENTICATED) == 1, log
    assert "LEDGER_API_KEY_HASHES" in log
