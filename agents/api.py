"""The HTTP API under /v1: reads of the read models (answered by the worker that owns the
account, or forwarded to it) and commands (published to Kafka by any worker, answered with
the decision or 202 and a place to poll). Errors are `application/problem+json` (RFC 9457)
carrying the ledger's code. When the worker has API keys (LEDGER_API_KEY_HASHES), every
POST needs one, and with LEDGER_API_READS_REQUIRE_KEY every read of the ledger too.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import hmac
import itertools
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, NamedTuple, TypeVar

import orjson
import rocksdict
from aiohttp import web
from pydantic import ValidationError

from agents.projector import Projector
from agents.routing import CREDENTIAL_HEADERS, ForwardFailed, Owners, is_forwarded
from agents.writer import Writer, stored_outcome
from ledger_stream.client import LedgerClient
from ledger_stream.codes import Code
from ledger_stream.errors import LedgerError
from ledger_stream.messages import (
    ALIAS_PREFIX,
    COMMAND_ADAPTER,
    AccountState,
    Result,
    aliased_fields,
    as_dict,
    from_json,
)
from ledger_stream.partitioning import partition_of
from ledger_stream.readmodel import (
    AccountView,
    DaySummary,
    HistoryItem,
    account_key,
    alias_key,
    day_key,
    flag_prefix,
    history_key,
    history_prefix,
    seq_of,
    time_key,
    time_prefix,
    utc_day,
)
from ledger_stream.settings import Settings
from ledger_stream.state import closing
from ledger_stream.state.readstore import ReadStore

logger = logging.getLogger(__name__)

T = TypeVar("T")
PROBLEM = "application/problem+json"
PAGE_DEFAULT = 50
PAGE_MAX = 500
RETRY_AFTER_S = "1"
API_KEY_HEADER = "X-API-Key"
# GET routes that stay open when reads need a key: the worker's health check and metrics
# (no account in them), and the API's own description.
OPEN_READS = frozenset({"/partitions/", "/metrics/", "/v1/openapi.json", "/v1/docs"})
_CHALLENGE = 'Bearer realm="ledger-stream"'

# A POST's route: the command type it sends, and the path parameter that fills a field.
POSTS: dict[str, tuple[str, str | None]] = {
    "/v1/accounts": ("open_account", None),
    "/v1/accounts/{account}/limits": ("set_limits", "account"),
    "/v1/accounts/{account}/close": ("close_account", "account"),
    "/v1/deposits": ("deposit", None),
    "/v1/withdrawals": ("withdraw", None),
    "/v1/transfers": ("transfer", None),
    "/v1/holds": ("hold", None),
    "/v1/holds/{hold_id}/post": ("post_hold", "hold_id"),
    "/v1/holds/{hold_id}/void": ("void_hold", "hold_id"),
    "/v1/invoice-payments": ("pay_invoice", None),
    "/v1/invoice-payments/confirm": ("confirm_payment", None),
    "/v1/invoice-payments/fail": ("fail_payment", None),
    "/v1/reversals": ("reverse", None),
    "/v1/aliases": ("register_alias", None),
}
_FLAG_CURSOR = re.compile(r"[0-9]{12}-[a-z_]+")
# Fields set by the route, never by the body.
_SET_BY_ROUTE = ("type", "command_id", "reply_partition")

_NOT_FOUND = {
    Code.ALIAS_NOT_FOUND,
    Code.ACCOUNT_NOT_FOUND,
    Code.HOLD_NOT_FOUND,
    Code.PAYMENT_NOT_FOUND,
    Code.ORIGINAL_NOT_FOUND,
}
_CONFLICT = {
    Code.EXISTS_WITH_DIFFERENT_PAYLOAD,
    Code.ACCOUNT_EXISTS,
    Code.ALIAS_TAKEN,
    Code.HOLD_ALREADY_POSTED,
    Code.HOLD_VOIDED,
    Code.HOLD_EXPIRED,
    Code.INVOICE_ALREADY_PAID,
    Code.INVOICE_PAYMENT_PENDING,
    Code.ALREADY_REVERSED,
    Code.TRANSFER_IN_TRANSIT,
}


def http_status(code: Code) -> int:
    """404 for what names nothing, 409 for what clashes with the ledger's state, 422 for
    the rest (the command is understood and refused)."""
    if code in _NOT_FOUND:
        return 404
    if code in _CONFLICT:
        return 409
    return 422


class Problem(Exception):
    """An answer as application/problem+json."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.extra = status, code, detail, extra
        self.headers = dict(headers or {})

    def response(self, request: web.Request) -> web.Response:
        body = {
            "type": f"urn:ledger-stream:problem:{self.code}",
            "title": self.code.replace("_", " "),
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
            "instance": request.path_qs,
            **self.extra,
        }
        headers = {"Retry-After": RETRY_AFTER_S} if self.status == 503 else {}
        headers.update(self.headers)
        return web.Response(
            body=orjson.dumps(body), status=self.status, content_type=PROBLEM, headers=headers
        )


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as problem:
        return problem.response(request)


# The credentials of the request being answered (each is answered in a task of its own),
# for what a worker asks another on its behalf: the account an alias names.
_CALLER: ContextVar[dict[str, str]] = ContextVar("caller", default={})  # noqa: B039 (read only)


class ApiKeys:
    """The keys that may call the API, held as the SHA-256 digests LEDGER_API_KEY_HASHES
    lists, never as keys. A request presents its key as `Authorization: Bearer <key>` or
    `X-API-Key: <key>`. No digests: the API is open.

    A fast hash is the right one here: a key is a random token of 256 bits (README,
    Security), not a password to guess, and every request hashes the key it presents."""

    def __init__(self, digests: Sequence[bytes] = (), *, reads_require_key: bool = False) -> None:
        assert all(len(digest) == hashlib.sha256().digest_size for digest in digests)
        assert digests or not reads_require_key, "reads need a key, and no key is configured"
        self.digests = tuple(digests)
        self.reads_require_key = reads_require_key

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        return cls(settings.api_key_digests, reads_require_key=settings.api_reads_require_key)

    def __bool__(self) -> bool:
        return bool(self.digests)

    def needed(self, request: web.Request) -> bool:
        """Whether `request` must carry a key: every write; a read of the ledger when reads
        need one; nothing when there are no keys, nor for a path with no route (404, 405)."""
        if not self.digests or request.match_info.route.resource is None:
            return False
        if request.method not in ("GET", "HEAD"):
            return True
        return self.reads_require_key and request.match_info.route.resource.canonical not in (
            OPEN_READS
        )

    def check(self, request: web.Request) -> None:
        """Nothing when the request carries one of the keys; 401 otherwise."""
        key = _presented_key(request)
        if key is None:
            raise Problem(
                401,
                "unauthorized",
                "this route needs an API key: send it as 'Authorization: Bearer <key>' or "
                f"'{API_KEY_HEADER}: <key>'",
                headers={"WWW-Authenticate": _CHALLENGE},
            )
        # The bytes as sent (aiohttp decodes headers with surrogateescape).
        presented = hashlib.sha256(key.encode(errors="surrogateescape")).digest()
        # Every digest compared, each in constant time: how long it takes says nothing of
        # which key matched, or of how much of one did.
        matched = False
        for digest in self.digests:
            matched |= hmac.compare_digest(digest, presented)
        if not matched:
            raise Problem(
                401,
                "invalid_api_key",
                "the API key sent is not one of this ledger's keys",
                headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'},
            )


def _presented_key(request: web.Request) -> str | None:
    """The key of `Authorization: Bearer <key>`, else of `X-API-Key`; None when neither
    carries one."""
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get(API_KEY_HEADER, "").strip() or None


class Api:
    def __init__(
        self,
        writer: Writer,
        projector: Projector,
        client: LedgerClient,
        keys: ApiKeys | None = None,
    ) -> None:
        self.writer = writer
        self.projector = projector
        self.client = client
        # The keys of the settings unless given: a worker with keys never serves without them.
        self.keys = ApiKeys.from_settings(writer.settings) if keys is None else keys
        self.owners: Owners | None = None  # once the HTTP port is known (`worker.py`)
        # The writer's event loop, when the API is served from a thread of its own: what
        # waits on the writer, the projector or the client runs there (`_on_main`).
        self.main_loop: asyncio.AbstractEventLoop | None = None
        self.settings = writer.settings
        self.waiting: set[asyncio.Future[Result]] = set()  # decisions answered with 202

    async def _caught_up(self, partition: int, account: str) -> bool:
        if self.projector.shows(partition, account):
            return True
        waited = self.projector.caught_up(partition, account, self.settings.read_wait_s)
        return await self._on_main(waited)

    def _on_main(self, work: Coroutine[Any, Any, T]) -> Awaitable[T]:
        """`work` run on the writer's event loop (its own when the API runs in a thread of
        its own, `worker.py`), awaitable here."""
        loop = self.main_loop
        if loop is None or loop is asyncio.get_running_loop():
            return work
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, loop))

    def _owners(self) -> Owners:
        assert self.owners is not None, "the API answers once the worker is serving"
        return self.owners

    def routes(self, app: web.Application) -> None:
        @web.middleware
        async def authenticated(request: web.Request, handler: Handler) -> web.StreamResponse:
            if self.keys.needed(request):
                self.keys.check(request)
            _CALLER.set({n: request.headers[n] for n in CREDENTIAL_HEADERS if n in request.headers})
            return await handler(request)

        app.middlewares.append(problems)
        app.middlewares.append(authenticated)  # inside `problems`, which answers its 401s
        app.router.add_get("/v1/accounts/{account}", self.account)
        app.router.add_get("/v1/accounts/{account}/history", self.history)
        app.router.add_get("/v1/accounts/{account}/summary", self.summary)
        app.router.add_get("/v1/accounts/{account}/balance", self.balance)
        app.router.add_get("/v1/accounts/{account}/flags", self.flags)
        app.router.add_get("/v1/aliases/{alias}", self.alias)
        app.router.add_get("/v1/commands/{command_id}", self.command)
        for path, (kind, field) in POSTS.items():
            app.router.add_post(path, self._poster(kind, field))

    # -- reads ----------------------------------------------------------------------------

    async def _owned(self, name: str) -> tuple[str, ReadStore | None]:
        """The account `name` names (resolving an alias), and its read models once they show
        what this worker wrote to it; None for them when another worker owns it."""
        account = await self._resolved(name)
        partition = partition_of(account, self.settings.partitions)
        if partition not in self.writer.logs:
            return account, None
        if not await self._caught_up(partition, account):
            raise Problem(
                503,
                "read_models_behind",
                f"the read models of partition {partition} have not yet folded the writes to "
                f"{account} (waited {self.settings.read_wait_s} s); try again",
            )
        return account, self.projector.store(partition)

    async def _forwarded(self, request: web.Request, name: str) -> web.StreamResponse:
        partition = partition_of(name, self.settings.partitions)
        if is_forwarded(request):
            raise Problem(
                503,
                "owner_moved",
                f"partition {partition} moved while this request was forwarded; try again",
            )
        url = await self._owners().owner_url(partition)
        if url is None:
            raise Problem(
                503,
                "owner_unknown",
                f"no worker owns partition {partition} at the moment (a rebalance); try again",
            )
        try:
            return await self._owners().forward(request, url, self.settings.read_wait_s + 5)
        except ForwardFailed as error:
            raise Problem(503, "owner_unreachable", str(error)) from None

    async def _resolved(self, name: str) -> str:
        if not name.startswith(ALIAS_PREFIX):
            return name
        account = await self.resolve_alias(name)
        if account is None:
            raise Problem(404, Code.ALIAS_NOT_FOUND, f"no account is registered as {name!r}")
        return account

    async def resolve_alias(self, alias: str) -> str | None:
        """The account `alias` names, asked of the worker that owns the alias's partition."""
        partition = partition_of(alias, self.settings.partitions)
        if partition in self.writer.logs:
            if not await self._caught_up(partition, alias):
                raise Problem(503, "read_models_behind", f"aliases of partition {partition}")
            store = self.projector.store(partition)
            with _reading():
                raw = None if store is None else store.get(alias_key(alias))
            return None if raw is None else raw.decode()
        url = await self._owners().owner_url(partition)
        if url is None:
            raise Problem(503, "owner_unknown", f"no worker owns partition {partition} now")
        try:
            answer = await self._owners().get_json(f"{url}/v1/aliases/{alias}", _CALLER.get())
        except ForwardFailed as error:
            raise Problem(503, "owner_unreachable", str(error)) from None
        if answer is None:
            return None
        return str(answer["account"])

    async def account(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["account"]
        account = await self._resolved(name)
        state = self._current(account)
        if state is None:
            return await self._forwarded(request, account)
        store = self.projector.store(partition_of(account, self.settings.partitions))
        with _reading():
            raw = None if store is None else store.get(account_key(account))
        view = None if raw is None else from_json(raw, AccountView)
        return _json(_account_body(account, state, view))

    def _current(self, account: str) -> AccountState | None:
        """The account as its writer holds it now (committed: a result returned for it shows),
        None when another worker writes it; 404 when it was never opened."""
        log = self.writer.logs.get(partition_of(account, self.settings.partitions))
        if log is None:
            return None
        with _reading():
            raw = log.store.account(account)
        if raw is None:
            raise Problem(404, Code.ACCOUNT_NOT_FOUND, f"no account {account!r}", account=account)
        return from_json(raw, AccountState)

    async def history(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["account"]
        limit = _int_query(request, "limit", PAGE_DEFAULT, 1, PAGE_MAX)
        cursor = _cursor(request)
        account, store = await self._owned(name)
        if store is None:
            return await self._forwarded(request, account)
        with _reading():
            _view(store, account)
            before = None if cursor is None else history_key(account, cursor)
            page = _page(store, history_prefix(account), before, limit)
        items = [as_dict(from_json(raw, HistoryItem)) for _, raw in page.entries]
        next_cursor = None if page.last is None else str(seq_of(page.last))
        return _json({"account": account, "items": items, "next_cursor": next_cursor})

    async def flags(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["account"]
        limit = _int_query(request, "limit", PAGE_DEFAULT, 1, PAGE_MAX)
        cursor = request.query.get("cursor")
        if cursor is not None and not _FLAG_CURSOR.fullmatch(cursor):
            raise Problem(
                422,
                "invalid_query",
                "cursor must be a next_cursor this API returned",
                field="cursor",
            )
        account, store = await self._owned(name)
        if store is None:
            return await self._forwarded(request, account)
        prefix = flag_prefix(account)
        # A flag's key ends `<seq>|<rule>`; the cursor is that end, `|` written as `-`.
        before = None if cursor is None else prefix + cursor.replace("-", "|")
        with _reading():
            _view(store, account)
            page = _page(store, prefix, before, limit)
        flags = [orjson.loads(raw) for _, raw in page.entries]
        next_cursor = None if page.last is None else page.last[len(prefix) :].replace("|", "-")
        return _json({"account": account, "flags": flags, "next_cursor": next_cursor})

    async def summary(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["account"]
        day = request.query.get("day") or utc_day(int(_now().timestamp() * 1000))
        try:
            start = datetime.datetime.fromisoformat(day).replace(tzinfo=datetime.UTC)
            if len(day) != 10:
                raise ValueError(day)
        except ValueError:
            raise Problem(
                422, "invalid_query", "day must be a date, YYYY-MM-DD", field="day"
            ) from None
        account, store = await self._owned(name)
        if store is None:
            return await self._forwarded(request, account)
        with _reading():
            view = _view(store, account)
            raw = store.get(day_key(account, day))
            if raw is not None:
                summary = from_json(raw, DaySummary)
            else:  # a day without events: the balance it had all day
                before = _as_of(store, account, int(start.timestamp() * 1000) - 1)
                balance = 0 if before is None else before.balance
                summary = DaySummary(day, balance, balance)
        return _json({"account": account, "currency": view.currency, **as_dict(summary)})

    async def balance(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["account"]
        as_of = _time_query(request, "as_of")
        if as_of is None:  # now: from the writer's own state, the freshest there is
            account = await self._resolved(name)
            state = self._current(account)
            if state is None:
                return await self._forwarded(request, account)
            return _json({"account": account, "currency": state.currency, **_balances(state)})
        account, store = await self._owned(name)
        if store is None:
            return await self._forwarded(request, account)
        with _reading():
            view = _view(store, account)
            item = _as_of(store, account, as_of)
        if item is None:
            raise Problem(
                404, Code.ACCOUNT_NOT_FOUND, f"account {account!r} had no events by {as_of}"
            )
        return _json(
            {
                "account": account,
                "currency": view.currency,
                "as_of_ms": as_of,
                "seq": item.seq,
                "timestamp_ms": item.timestamp_ms,
                "posted": item.balance,
                "pending_debits": item.pending_debits,
                "pending_credits": item.pending_credits,
            }
        )

    async def alias(self, request: web.Request) -> web.StreamResponse:
        alias = request.match_info["alias"]
        partition = partition_of(alias, self.settings.partitions)
        if partition not in self.writer.logs:
            return await self._forwarded(request, alias)
        return _json({"alias": alias, "account": await self._resolved(alias)})

    # -- commands -------------------------------------------------------------------------

    def _poster(self, kind: str, field: str | None) -> Handler:
        async def post(request: web.Request) -> web.StreamResponse:
            key = request.headers.get("Idempotency-Key")
            if not key:
                raise Problem(
                    400,
                    "idempotency_key_required",
                    "send the command's id in the Idempotency-Key header: a retry with the "
                    "same key and body is answered with the first decision",
                )
            body = await _json_body(request)
            for name in (*_SET_BY_ROUTE, *(() if field is None else (field,))):
                if name in body:
                    raise Problem(
                        422,
                        Code.INVALID_COMMAND,
                        f"{name!r} is set by the route (path, type, Idempotency-Key header)",
                        field=name,
                        errors=[{"field": name, "message": "not allowed in the body"}],
                    )
            fields = {**body, "type": kind, "command_id": key}
            if field is not None:
                fields[field] = request.match_info[field]
            for name in aliased_fields(kind):
                if isinstance(fields.get(name), str):
                    fields[name] = await self._resolved(fields[name])
            try:
                command = COMMAND_ADAPTER.validate_python(fields)
            except ValidationError as error:
                raise _invalid(error) from None
            return await self._decided(command.command_id, command.account, self._submit(command))

        return post

    def _submit(self, command: Any) -> asyncio.Future[Result]:
        task = asyncio.ensure_future(self._on_main(self.client.submit(command)))
        self.waiting.add(task)
        task.add_done_callback(self.waiting.discard)
        return task

    async def _decided(
        self, command_id: str, account: str, task: asyncio.Future[Result]
    ) -> web.StreamResponse:
        done, _ = await asyncio.wait({task}, timeout=self.settings.http_wait_s)
        if not done:
            return _pending(command_id, f"/v1/commands/{command_id}?account={account}")
        try:
            result = task.result()
        except LedgerError as error:
            raise Problem(503, "not_published", str(error)) from None
        return _decision(result)

    async def command(self, request: web.Request) -> web.StreamResponse:
        command_id = request.match_info["command_id"]
        account = request.query.get("account")
        if not account:
            raise Problem(
                422,
                "invalid_query",
                "account is required: the account the command was sent for",
                field="account",
            )
        log = self.writer.logs.get(partition_of(account, self.settings.partitions))
        if log is None:
            return await self._forwarded(request, account)
        with _reading():
            outcome = stored_outcome(log.store, f"cmd:{command_id}")
        if outcome is None or outcome.result is None:
            return _pending(command_id, request.path_qs)
        return _decision(outcome.result)


@contextlib.contextmanager
def _reading() -> Iterator[None]:
    """Read stores with `closing` held (a store is never closed under a read from this
    thread); one closed just before, its partition given up meanwhile, answers 503."""
    with closing:
        try:
            yield
        except rocksdict.DbClosedError:
            raise Problem(
                503, "owner_moved", "the account's partition moved to another worker; try again"
            ) from None


def _pending(command_id: str, location: str) -> web.Response:
    """202: no decision yet; poll `location`."""
    return _json(
        {"command_id": command_id, "status": "pending", "location": location},
        status=202,
        headers={"Location": location, "Retry-After": RETRY_AFTER_S},
    )


class _Page(NamedTuple):
    entries: list[tuple[str, bytes]]  # keys and values, newest first
    last: str | None  # the key of the last entry, when there are more after it


def _page(store: ReadStore, prefix: str, before: str | None, limit: int) -> _Page:
    """Up to `limit` entries under `prefix`, newest first, below `before`."""
    entries = list(itertools.islice(store.newest(prefix, before), limit + 1))
    if len(entries) <= limit:
        return _Page(entries, None)
    return _Page(entries[:limit], entries[limit - 1][0])


def _decision(result: Result) -> web.Response:
    body = as_dict(result)
    if result.status == "accepted":
        return _json(body)
    assert result.code is not None, "a rejection has a code"
    code = Code(result.code)
    extra = {k: v for k, v in body.items() if k not in ("status", "code", "reason", "type")}
    extra["command_type"] = result.type
    raise Problem(http_status(code), code, result.reason or code.reason, **extra)


def _invalid(error: ValidationError) -> Problem:
    errors = [
        {
            "field": ".".join(str(part) for part in entry["loc"][1:] or entry["loc"]),
            "message": entry["msg"],
        }
        for entry in error.errors()
    ]
    first = errors[0]
    return Problem(
        422,
        Code.INVALID_COMMAND,
        f"{first['field']}: {first['message']}",
        field=first["field"],
        errors=errors,
    )


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError as error:
        raise Problem(422, Code.INVALID_COMMAND, f"the body is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise Problem(422, Code.INVALID_COMMAND, "the body must be a JSON object")
    return body


def _view(store: ReadStore, account: str) -> AccountView:
    raw = store.get(account_key(account))
    if raw is None:
        raise Problem(404, Code.ACCOUNT_NOT_FOUND, f"no account {account!r}", account=account)
    return from_json(raw, AccountView)


def _balances(state: AccountState) -> dict[str, int]:
    return {
        "posted": state.balance,
        "pending_debits": state.debits_pending,
        "pending_credits": state.credits_pending,
        "available": state.available,
    }


def _account_body(account: str, state: AccountState, view: AccountView | None) -> dict[str, Any]:
    return {
        "account": account,
        "currency": state.currency,
        "status": state.status,
        "balance": _balances(state),
        "in_transit": state.debits_in_transit,
        "overdraft_limit": state.overdraft_limit,
        "limits": None if state.limits is None else as_dict(state.limits),
        "low_balance": None if view is None else view.low_balance,
    }


def _as_of(store: ReadStore, account: str, ms: int) -> HistoryItem | None:
    """The history item in force at journal time `ms`: the last event at or before it."""
    found = store.last_at_most(time_prefix(account), time_key(account, ms, 10**12 - 1))
    if found is None:
        return None
    raw = store.get(history_key(account, seq_of(found)))
    assert raw is not None
    return from_json(raw, HistoryItem)


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise Problem(
            422, "invalid_query", f"{name} must be a whole number from {low} to {high}", field=name
        )
    return int(raw)


def _cursor(request: web.Request) -> int | None:
    raw = request.query.get("cursor")
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 12:
        raise Problem(
            422, "invalid_query", "cursor must be a next_cursor this API returned", field="cursor"
        )
    return int(raw)


def _time_query(request: web.Request, name: str) -> int | None:
    """Milliseconds since 1970, given as such or as an ISO 8601 time (UTC unless it says)."""
    raw = request.query.get(name)
    if raw is None:
        return None
    if raw.isdigit() and len(raw) <= 15:
        return int(raw)
    try:
        moment = datetime.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise Problem(
            422,
            "invalid_query",
            f"{name} must be milliseconds since 1970 or an ISO 8601 time",
            field=name,
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp() * 1000)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
