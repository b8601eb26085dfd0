"""The OpenAPI document of /v1 (agents/openapi.py): valid OpenAPI 3.1, the same routes as the
app aiohttp builds from `Api.routes`, and the answers of the real handlers (over fakes of the
writer, the projector and the client, and a real read store) valid against what it says they
are; and the page that shows it."""

from __future__ import annotations

import ast
import asyncio
import copy
import datetime
import hashlib
import inspect
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from agents import api as api_module
from agents import openapi
from agents.api import POSTS, PROBLEM, Api, ApiKeys
from ledger_stream.anomaly import Flag
from ledger_stream.codes import Code
from ledger_stream.errors import BrokerUnavailable
from ledger_stream.messages import COMMAND_ADAPTER, AccountState, Limits, Outcome, Result, to_json
from ledger_stream.readmodel import (
    SEQ_DIGITS,
    AccountView,
    ActionTotals,
    DaySummary,
    HistoryItem,
    account_key,
    alias_key,
    day_key,
    flag_prefix,
    history_key,
    time_key,
)
from ledger_stream.state.readstore import ReadStore
from ledger_stream.state.store import StoredOutcome

ALIAS = "alias:alice@example.com"
API_KEY = "a-key-of-this-test-only"
OPENED_MS = int(datetime.datetime(2026, 1, 31, 9, tzinfo=datetime.UTC).timestamp() * 1000)
DEPOSITED_MS = OPENED_MS + 3_600_000


SPEC = openapi.document(partitions=1)


@pytest.fixture
def spec() -> dict[str, Any]:
    return SPEC


def registered_routes() -> set[tuple[str, str]]:
    """(method, path) of every route of an app built as the worker builds it."""
    app = web.Application()
    api = object.__new__(Api)  # `routes` only registers handlers
    api.settings = SimpleNamespace(partitions=1)  # type: ignore[assignment]
    api.routes(app)
    paths = {route.resource.canonical for route in app.router.routes() if route.resource}
    if openapi.OPENAPI_PATH not in paths:  # until Api.routes serves the document itself
        openapi.routes(app)
    return {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"  # aiohttp's, with each GET
    }


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def pointed(spec: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = spec
    for part in ref[2:].split("/"):
        assert isinstance(node, dict) and part in node, f"{ref} points at nothing"
        node = node[part]
    return node


def schema_validator(
    spec: dict[str, Any], schema: dict[str, Any], closed: bool = False
) -> jsonschema.Validator:
    """A validator of `schema` whose `#/components/...` refs resolve in `spec`; `closed`:
    an object with a field its schema does not name is invalid too."""
    components = copy.deepcopy(spec["components"])
    if closed:
        for node in objects(components):
            node.setdefault("additionalProperties", False)
    return jsonschema.Draft202012Validator({**schema, "components": components})


def objects(node: Any) -> Iterator[dict[str, Any]]:
    """Every schema below `node` that names its properties."""
    if isinstance(node, dict):
        if isinstance(node.get("properties"), dict) and node.get("type") == "object":
            yield node
        for value in node.values():
            yield from objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from objects(value)


def problem_codes_of_api() -> dict[str, int]:
    """Every `Problem(status, "code", ...)` agents/api.py raises with a code of its own."""
    tree = ast.parse(Path(inspect.getfile(api_module)).read_text())
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Problem":
            status, code = node.args[0], node.args[1]
            if isinstance(code, ast.Constant) and isinstance(code.value, str):
                assert isinstance(status, ast.Constant), ast.unparse(node)
                assert isinstance(status.value, int), ast.unparse(node)
                found[code.value] = status.value
    return found


# -- the document --------------------------------------------------------------------------


@pytest.mark.parametrize("partitions", [None, 8])
def test_document_is_valid_openapi_3_1(partitions: int | None) -> None:
    document = openapi.document(partitions)
    validate(document)
    assert document["openapi"] == "3.1.0"
    assert (f"{partitions} partitions" in document["info"]["description"]) is (
        partitions is not None
    )


def test_document_names_every_route_the_app_registers_with_its_method_and_no_other(
    spec: dict[str, Any],
) -> None:
    documented = {(method, path) for method, path, _ in openapi.operations(spec)}
    registered = registered_routes()
    assert registered - documented == set(), "routes the document leaves out"
    assert documented - registered == set(), "routes the app does not have"
    assert {("post", path) for path in POSTS} <= documented


def test_every_ref_resolves_to_a_component(spec: dict[str, Any]) -> None:
    found = list(refs(spec))
    assert found
    for ref in found:
        assert ref.startswith("#/components/schemas/"), ref
        assert isinstance(pointed(spec, ref), dict)
    assert "$defs" not in json.dumps(spec)


def test_every_post_takes_an_idempotency_key_and_answers_result_pending_or_problem(
    spec: dict[str, Any],
) -> None:
    for path in POSTS:
        operation = spec["paths"][path]["post"]
        keys = [p for p in operation["parameters"] if p["name"] == "Idempotency-Key"]
        assert [(p["in"], p["required"]) for p in keys] == [("header", True)], path
        responses = operation["responses"]
        assert responses["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Result"
        }
        assert responses["202"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Pending"
        }
        assert set(responses["202"]["headers"]) == {"Location", "Retry-After"}
        for status in ("400", "404", "409", "422", "503"):
            assert responses[status]["content"][PROBLEM]["schema"] == {
                "$ref": "#/components/schemas/Problem"
            }, (path, status)


def test_post_path_parameters_are_the_fields_posts_fills(spec: dict[str, Any]) -> None:
    for path, (_, field) in POSTS.items():
        operation = spec["paths"][path]["post"]
        in_path = [p["name"] for p in operation["parameters"] if p["in"] == "path"]
        assert in_path == ([] if field is None else [field]), path


def test_request_bodies_leave_out_what_the_route_sets(spec: dict[str, Any]) -> None:
    assert openapi.SET_BY_ROUTE == api_module._SET_BY_ROUTE
    for path, (_, field) in POSTS.items():
        content = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        body = pointed(spec, content["schema"]["$ref"])
        set_by_route = {*openapi.SET_BY_ROUTE, *([field] if field else [])}
        assert set(body["properties"]) & set_by_route == set(), path
        assert set(body["required"]) <= set(body["properties"]), path


def test_every_post_example_is_a_command_the_api_accepts(spec: dict[str, Any]) -> None:
    for path, (kind, field) in POSTS.items():
        operation = spec["paths"][path]["post"]
        content = operation["requestBody"]["content"]["application/json"]
        schema_validator(spec, content["schema"]).validate(content["example"])
        examples = {p["name"]: p["example"] for p in operation["parameters"]}
        fields = {**content["example"], "type": kind, "command_id": examples["Idempotency-Key"]}
        if field is not None:
            fields[field] = examples[field]
        assert COMMAND_ADAPTER.validate_python(fields).type == kind


def test_problem_codes_are_the_ledgers_and_every_one_the_api_raises(spec: dict[str, Any]) -> None:
    enum = spec["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
    assert len(enum) == len(set(enum))
    assert {code.value for code in Code} <= set(enum)
    raised = problem_codes_of_api()
    assert raised, "found no Problem(...) in agents/api.py"
    for code, status in raised.items():
        assert code in enum, code
        assert openapi.API_PROBLEMS[code][0] == status, code
    assert set(openapi.API_PROBLEMS) <= set(enum)


def test_every_route_is_tagged_with_a_declared_tag(spec: dict[str, Any]) -> None:
    declared = {tag["name"] for tag in spec["tags"]}
    for method, path, operation in openapi.operations(spec):
        assert operation["tags"] and set(operation["tags"]) <= declared, (method, path)
    assert {"Accounts", "Commands", "Aliases", "Flags"} <= declared


# -- the answers of the handlers ---------------------------------------------------------------


class FakeProjector:
    def __init__(self, store: ReadStore) -> None:
        self._store = store

    def shows(self, partition: int, account: str) -> bool:
        return True

    async def caught_up(self, partition: int, account: str, timeout_s: float) -> bool:
        return True

    def store(self, partition: int) -> ReadStore:
        return self._store


class FakeStateStore:
    """The writer's store, as the API reads it: alice, and the outcomes given."""

    def __init__(self, outcomes: dict[str, Outcome]) -> None:
        self.outcomes = outcomes

    def outcome(self, key: str) -> StoredOutcome | None:
        found = self.outcomes.get(key)
        return None if found is None else StoredOutcome(to_json(found), compact=False)

    def account(self, name: str) -> bytes | None:
        if name != "alice":
            return None
        return to_json(AccountState(currency="USD", credits_posted=1250, limits=Limits()))


class FakeClient:
    """Decides by command id: a result, an error, or never (`None`)."""

    def __init__(self, decisions: dict[str, Result | Exception | None]) -> None:
        self.decisions = decisions

    async def submit(self, command: Any) -> Result:
        decision = self.decisions.get(command.command_id, "accepted")
        if decision is None:
            await asyncio.Event().wait()
        if isinstance(decision, Exception):
            raise decision
        if isinstance(decision, Result):
            return decision
        return Result(
            command_id=command.command_id,
            status="accepted",
            type=command.type,
            account=command.account,
            payload_digest="d1",
            amount=getattr(command, "amount", None),
        )


def rejected(command_id: str, code: Code) -> Result:
    return Result(
        command_id=command_id, status="rejected", code=code, type="withdraw", account="alice"
    )


def fill(store: ReadStore) -> None:
    """alice: opened, then a deposit of 12.50 USD flagged large; her alias."""
    opened = HistoryItem(
        seq=1,
        entry_id="open-0001:0",
        command_id="open-0001",
        kind="account_opened",
        timestamp_ms=OPENED_MS,
    )
    deposited = HistoryItem(
        seq=2,
        entry_id="deposit-0001:0",
        command_id="deposit-0001",
        kind="deposit",
        timestamp_ms=DEPOSITED_MS,
        credit=1250,
        balance=1250,
        metadata={"note": "hi"},
    )
    view = AccountView(
        currency="USD",
        limits=Limits(transaction_amount_max=500_000, daily_count_max={"withdrawal": 10}),
        low_balance=1_000,
        credits_posted=1250,
        opened_ms=OPENED_MS,
        seq=2,
        timestamp_ms=DEPOSITED_MS,
    )
    day = DaySummary(
        "2026-01-31",
        0,
        1250,
        {"account_opened": ActionTotals(1), "deposit": ActionTotals(1, 0, 1250)},
    )
    flag = Flag(
        id="deposit-0001:0:large_amount",
        rule="large_amount",
        account="alice",
        entry_id="deposit-0001:0",
        command_id="deposit-0001",
        timestamp_ms=DEPOSITED_MS,
        amount=1250,
        counterparty=None,
        figures={"median": 10, "multiple": 5.0},
        reason="1250 is 125.0 times the median 10",
    )
    writes = {account_key("alice"): to_json(view), day_key("alice", "2026-01-31"): to_json(day)}
    for item in (opened, deposited):
        writes[history_key("alice", item.seq)] = to_json(item)
        writes[time_key("alice", item.timestamp_ms, item.seq)] = b""
    writes[f"{flag_prefix('alice')}{2:0{SEQ_DIGITS}d}|large_amount"] = to_json(flag)
    writes[alias_key(ALIAS)] = b"alice"
    store.write(writes, {})


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async for test_client in served(tmp_path, ApiKeys()):
        yield test_client


@pytest.fixture
async def keyed_client(tmp_path: Path) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The API of a worker with one key, reads restricted too."""
    keys = ApiKeys([hashlib.sha256(API_KEY.encode()).digest()], reads_require_key=True)
    async for test_client in served(tmp_path, keys):
        yield test_client


async def served(
    tmp_path: Path, keys: ApiKeys
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    store = ReadStore(tmp_path / "read", "test")
    fill(store)
    settings = SimpleNamespace(partitions=1, read_wait_s=0.1, http_wait_s=0.05)
    accepted = Result(
        command_id="deposit-0001", status="accepted", type="deposit", account="alice", amount=1250
    )
    outcomes = {
        "cmd:deposit-0001": Outcome(fingerprint="f", result=accepted),
        "cmd:withdraw-0009": Outcome(
            fingerprint="f", result=rejected("withdraw-0009", Code.INSUFFICIENT_FUNDS)
        ),
    }
    writer = SimpleNamespace(
        logs={0: SimpleNamespace(store=FakeStateStore(outcomes))},
        settings=settings,
    )
    decisions: dict[str, Result | Exception | None] = {
        "slow-0001": None,
        "down-0001": BrokerUnavailable("the broker is down"),
        "withdraw-0009": rejected("withdraw-0009", Code.INSUFFICIENT_FUNDS),
    }
    api = Api(writer, FakeProjector(store), FakeClient(decisions), keys)  # type: ignore[arg-type]
    app = web.Application()
    api.routes(app)
    if openapi.OPENAPI_PATH not in {
        r.resource.canonical for r in app.router.routes() if r.resource
    }:
        openapi.routes(app, partitions=1)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client
    for task in api.waiting:
        task.cancel()
    store.close()


def example(path: str, **fields: Any) -> dict[str, Any]:
    """The document's example body of the POST at `path`, with `fields` changed."""
    operation = SPEC["paths"][path]["post"]
    return {**operation["requestBody"]["content"]["application/json"]["example"], **fields}


@dataclass(frozen=True)
class Case:
    method: str
    url: str
    route: str  # as the document names it
    status: int
    code: str | None = None  # a problem's
    json: Any = None
    key: str | None = None  # Idempotency-Key
    auth: tuple[str, str] | None = None  # a header carrying an API key

    def __str__(self) -> str:
        return f"{self.method} {self.url} {self.status}"


ACCOUNT, ALIASES = "/v1/accounts/{account}", "/v1/aliases/{alias}"
COMMANDS = "/v1/commands/{command_id}"
HISTORY, SUMMARY = f"{ACCOUNT}/history", f"{ACCOUNT}/summary"
BALANCE, FLAGS = f"{ACCOUNT}/balance", f"{ACCOUNT}/flags"
DEPOSIT = example("/v1/deposits")
ANSWERS = [
    Case("get", "/v1/accounts/alice", ACCOUNT, 200),
    Case("get", f"/v1/accounts/{ALIAS}", ACCOUNT, 200),
    Case("get", "/v1/accounts/nobody", ACCOUNT, 404, "account_not_found"),
    Case("get", "/v1/accounts/alias:nobody", ACCOUNT, 404, "alias_not_found"),
    Case("get", "/v1/accounts/alice/history?limit=1", HISTORY, 200),
    Case("get", "/v1/accounts/alice/history?cursor=2", HISTORY, 200),
    Case("get", "/v1/accounts/alice/history?limit=0", HISTORY, 422, "invalid_query"),
    Case("get", "/v1/accounts/alice/summary?day=2026-01-31", SUMMARY, 200),
    Case("get", "/v1/accounts/alice/summary?day=2026-02-01", SUMMARY, 200),  # no events
    Case("get", "/v1/accounts/alice/summary?day=someday", SUMMARY, 422, "invalid_query"),
    Case("get", "/v1/accounts/alice/balance", BALANCE, 200),
    Case("get", "/v1/accounts/alice/balance?as_of=2026-01-31T12:00:00Z", BALANCE, 200),
    Case("get", "/v1/accounts/alice/balance?as_of=0", BALANCE, 404, "account_not_found"),
    Case("get", "/v1/accounts/alice/balance?as_of=then", BALANCE, 422, "invalid_query"),
    Case("get", "/v1/accounts/alice/flags", FLAGS, 200),
    Case("get", "/v1/accounts/alice/flags?limit=501", FLAGS, 422, "invalid_query"),
    Case("get", f"/v1/aliases/{ALIAS}", ALIASES, 200),
    Case("get", "/v1/aliases/alias:nobody", ALIASES, 404, "alias_not_found"),
    Case("get", "/v1/commands/deposit-0001?account=alice", COMMANDS, 200),
    Case("get", "/v1/commands/later-0001?account=alice", COMMANDS, 202),
    Case("get", "/v1/commands/deposit-0001", COMMANDS, 422, "invalid_query"),
    Case("post", "/v1/deposits", "/v1/deposits", 200, json=DEPOSIT, key="deposit-0002"),
    Case("post", "/v1/accounts/alice/close", "/v1/accounts/{account}/close", 200, key="close-1"),
    Case("post", "/v1/deposits", "/v1/deposits", 400, "idempotency_key_required", json=DEPOSIT),
    Case(
        "post",
        "/v1/deposits",
        "/v1/deposits",
        422,
        "invalid_command",
        json={**DEPOSIT, "amount": 1.5},
        key="deposit-0003",
    ),
    Case(
        "post",
        "/v1/deposits",
        "/v1/deposits",
        422,
        "invalid_command",
        json={**DEPOSIT, "command_id": "x"},
        key="deposit-0004",
    ),
    Case(
        "post",
        "/v1/transfers",
        "/v1/transfers",
        404,
        "alias_not_found",
        json=example("/v1/transfers", destination="alias:nobody"),
        key="transfer-0001",
    ),
    Case("post", "/v1/deposits", "/v1/deposits", 202, json=DEPOSIT, key="slow-0001"),
    Case(
        "post", "/v1/deposits", "/v1/deposits", 503, "not_published", json=DEPOSIT, key="down-0001"
    ),
]
# Rejections: agents/api.py `_decision` copies the result's `type` (the command type) over
# the problem's `type` (urn:ledger-stream:problem:<code>).
REJECTIONS = [
    Case("get", "/v1/commands/withdraw-0009?account=alice", COMMANDS, 422, "insufficient_funds"),
    Case(
        "post",
        "/v1/withdrawals",
        "/v1/withdrawals",
        422,
        "insufficient_funds",
        json=example("/v1/withdrawals"),
        key="withdraw-0009",
    ),
]


BEARER = ("Authorization", f"Bearer {API_KEY}")
# A worker with a key that reads need too: what a request with it, with another, and
# without any is answered.
KEYED = [
    Case("post", "/v1/deposits", "/v1/deposits", 401, "unauthorized", DEPOSIT, "deposit-0005"),
    Case(
        "post",
        "/v1/deposits",
        "/v1/deposits",
        401,
        "invalid_api_key",
        DEPOSIT,
        "deposit-0005",
        ("Authorization", "Bearer another-key"),
    ),
    Case(
        "post",
        "/v1/deposits",
        "/v1/deposits",
        401,
        "unauthorized",
        DEPOSIT,
        "deposit-0005",
        ("Authorization", f"Basic {API_KEY}"),
    ),
    Case("post", "/v1/deposits", "/v1/deposits", 200, None, DEPOSIT, "deposit-0005", BEARER),
    Case(
        "post",
        "/v1/deposits",
        "/v1/deposits",
        200,
        None,
        DEPOSIT,
        "deposit-0006",
        ("X-API-Key", API_KEY),
    ),
    Case("get", "/v1/accounts/alice", ACCOUNT, 401, "unauthorized"),
    Case("get", "/v1/accounts/alice", ACCOUNT, 401, "invalid_api_key", auth=("X-API-Key", "x")),
    Case("get", "/v1/accounts/alice", ACCOUNT, 200, auth=BEARER),
    Case("get", "/v1/aliases/alias:nobody", ALIASES, 401, "unauthorized"),
    Case("get", "/v1/commands/deposit-0001?account=alice", COMMANDS, 200, auth=BEARER),
]


async def check_answer(client: TestClient[web.Request, web.Application], case: Case) -> None:
    headers = {} if case.key is None else {"Idempotency-Key": case.key}
    if case.auth is not None:
        headers[case.auth[0]] = case.auth[1]
    async with client.request(case.method, case.url, json=case.json, headers=headers) as response:
        answer = await response.json(content_type=None)
        assert response.status == case.status, answer
        documented = SPEC["paths"][case.route][case.method]["responses"].get(str(case.status))
        assert documented is not None, f"{case} is not documented"
        assert response.content_type in documented["content"], response.content_type
        schema = documented["content"][response.content_type]["schema"]
        schema_validator(SPEC, schema, closed=True).validate(answer)
        for header in documented.get("headers", {}):
            assert header in response.headers, header
    if case.code is not None:
        assert answer["code"] == case.code
        assert f"`{case.code}`" in documented["description"], "a code the response does not name"


@pytest.mark.parametrize("case", ANSWERS, ids=str)
async def test_handlers_answer_as_the_document_says(
    client: TestClient[web.Request, web.Application], case: Case
) -> None:
    await check_answer(client, case)


@pytest.mark.parametrize("case", KEYED, ids=lambda case: f"{case} {case.auth and case.auth[0]}")
async def test_a_worker_with_keys_answers_as_the_document_says(
    keyed_client: TestClient[web.Request, web.Application], case: Case
) -> None:
    await check_answer(keyed_client, case)


async def test_a_worker_with_keys_serves_its_document_and_page_without_one(
    keyed_client: TestClient[web.Request, web.Application],
) -> None:
    for path in (openapi.OPENAPI_PATH, openapi.DOCS_PATH):
        async with keyed_client.get(path) as response:
            assert response.status == 200, path


def test_every_post_names_its_security_and_its_401s(spec: dict[str, Any]) -> None:
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    for method, path, operation in openapi.operations(spec):
        if path in (openapi.OPENAPI_PATH, openapi.DOCS_PATH):
            assert "security" not in operation and "401" not in operation["responses"]
            continue
        optional = {} in operation["security"]
        assert optional is (method == "get"), (method, path)
        assert {"bearer": []} in operation["security"] and {"apiKey": []} in operation["security"]
        described = operation["responses"]["401"]["description"]
        assert "`unauthorized`" in described and "`invalid_api_key`" in described, path
        assert "WWW-Authenticate" in operation["responses"]["401"]["headers"], path


@pytest.mark.parametrize("case", REJECTIONS, ids=str)
async def test_rejections_answer_as_the_document_says(
    client: TestClient[web.Request, web.Application], case: Case
) -> None:
    await check_answer(client, case)


async def test_worker_serves_the_document_and_the_page(
    client: TestClient[web.Request, web.Application],
) -> None:
    async with client.get(openapi.OPENAPI_PATH) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.json() == json.loads(json.dumps(SPEC))
    async with client.get(openapi.DOCS_PATH) as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert "/v1/accounts/{account}/history" in await response.text()


# -- the page --------------------------------------------------------------------------------


def test_page_shows_every_route_with_a_curl_per_post(spec: dict[str, Any]) -> None:
    page = openapi.docs_page(spec)
    for method, path, operation in openapi.operations(spec):
        assert f'<span class="method {method}">{method}</span> <code>{path}</code>' in page
        assert operation["summary"] in page.replace("&#x27;", "'")
    assert page.count("curl -i -X POST") == len(POSTS)
    assert page.count("-H &#x27;Idempotency-Key: ") == len(POSTS)
    for name in spec["components"]["schemas"]:
        assert f'id="schema-{name}"' in page


def test_page_loads_nothing_and_runs_nothing(spec: dict[str, Any]) -> None:
    page = openapi.docs_page(spec).lower()
    for needle in ("<script", "<link", "src=", "@import", "url(", 'href="http', "href='http"):
        assert needle not in page, needle


def test_page_escapes_what_the_document_says(spec: dict[str, Any]) -> None:
    hostile = copy.deepcopy(spec)
    script = "<script>alert('owned')</script>"
    hostile["info"]["description"] = script
    hostile["paths"]["/v1/deposits"]["post"]["summary"] = script
    hostile["components"]["schemas"]["DepositBody"]["properties"]["amount"]["description"] = script
    hostile["paths"]["/v1/deposits"]["post"]["requestBody"]["content"]["application/json"][
        "example"
    ]["account"] = f"a'b{script}"
    page = openapi.docs_page(hostile)
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;owned&#x27;)&lt;/script&gt;" in page
