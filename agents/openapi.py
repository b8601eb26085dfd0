"""The OpenAPI 3.1 document of the HTTP API under /v1 (agents/api.py), and a page that shows it
with no network. Both are built from what the API itself uses: its POST table, its HTTP statuses
of the ledger's codes, the command models (pydantic) and the read models (msgspec), so a route
or a field added there shows here. Pure, but for `routes`, which serves them.
"""

from __future__ import annotations

import html
import inspect
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import msgspec
import orjson
from aiohttp import web
from pydantic import BaseModel

from agents.api import API_KEY_HEADER, PAGE_DEFAULT, PAGE_MAX, POSTS, PROBLEM, http_status
from ledger_stream.anomaly import Flag
from ledger_stream.codes import Code
from ledger_stream.messages import (
    ALIAS_PREFIX,
    COMMAND_MODELS,
    IDENTIFIER_CHARS,
    IDENTIFIER_CHARS_MAX,
    IDENTIFIER_PATTERN,
    Result,
)
from ledger_stream.readmodel import AccountView, DaySummary, HistoryItem
from ledger_stream.schemas import code_schema
from ledger_stream.settings import Settings

logger = logging.getLogger(__name__)

OPENAPI_VERSION = "3.1.0"
OPENAPI_PATH = "/v1/openapi.json"
DOCS_PATH = "/v1/docs"
VERSION_FALLBACK = "0.1.0"
REF = "#/components/schemas/{name}"
JSON = "application/json"

# Fields of a command the route sets (agents/api.py `_SET_BY_ROUTE`; a test keeps them equal):
# never in a request body.
SET_BY_ROUTE = ("type", "command_id", "reply_partition")

# The API's own problem codes (beside the ledger's `Code`): status, and when it is answered.
API_PROBLEMS: dict[str, tuple[int, str]] = {
    "idempotency_key_required": (400, "the POST has no Idempotency-Key header"),
    "unauthorized": (
        401,
        "no API key was sent, and the route needs one (every POST when the worker has keys, "
        "LEDGER_API_KEY_HASHES; reads too with LEDGER_API_READS_REQUIRE_KEY)",
    ),
    "invalid_api_key": (401, "the API key sent is not one of the worker's keys"),
    "invalid_query": (422, "a query parameter is missing, out of range or malformed"),
    "read_models_behind": (
        503,
        "the read models have not yet folded the writes answered for the account "
        "(waited LEDGER_READ_WAIT_S); try again",
    ),
    "owner_unknown": (503, "no worker owns the partition at the moment (a rebalance); try again"),
    "owner_moved": (503, "the partition moved while the request was forwarded; try again"),
    "owner_unreachable": (503, "the worker owning the partition did not answer in time"),
    "not_published": (
        503,
        "the command could not be published to Kafka; retry with the same Idempotency-Key",
    ),
}

TAGS = {
    "Accounts": "Open, configure and close accounts; read their balances, history and days.",
    "Commands": "Move money (deposits, withdrawals, transfers, holds, invoice payments, "
    "reversals), and ask for a command's decision.",
    "Aliases": "Names for accounts (`alias:<name>`), usable wherever an account is named.",
    "Flags": "Anomalies flagged on an account's movements of money out.",
    "Docs": "This document, as JSON and as a page.",
}

_STATUS_TEXT = {
    400: "Bad request",
    401: "No API key, or not one of the worker's keys",
    404: "Not found",
    409: "Conflict with the ledger's state",
    422: "Refused",
    503: "Not answerable now; try again after Retry-After",
}
_FORWARDING = ("owner_unknown", "owner_moved", "owner_unreachable")
_AUTHENTICATION = ("unauthorized", "invalid_api_key")
SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key as a bearer token: `Authorization: Bearer <key>`",
    },
    "apiKey": {
        "type": "apiKey",
        "in": "header",
        "name": API_KEY_HEADER,
        "description": f"An API key in a header of its own: `{API_KEY_HEADER}: <key>`",
    },
}
# Either scheme; a read takes none unless the worker says so (LEDGER_API_READS_REQUIRE_KEY).
_WRITE_SECURITY: list[dict[str, list[str]]] = [{name: []} for name in SECURITY_SCHEMES]
_READ_SECURITY: list[dict[str, list[str]]] = [{}, *_WRITE_SECURITY]

_IDENTIFIER = {
    "type": "string",
    "minLength": 1,
    "maxLength": IDENTIFIER_CHARS_MAX,
    "pattern": IDENTIFIER_PATTERN,
}
_ALIAS = {
    "type": "string",
    "maxLength": IDENTIFIER_CHARS_MAX,
    "pattern": rf"^{ALIAS_PREFIX}[{IDENTIFIER_CHARS}]+$",
}
_ACCOUNT_PARAMETER = {
    "description": f"An account id, or an alias of one ({ALIAS_PREFIX}<name>)",
    "schema": _IDENTIFIER,
    "example": "alice",
}
_PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "account": _ACCOUNT_PARAMETER,
    "alias": {
        "description": "An alias",
        "schema": _ALIAS,
        "example": f"{ALIAS_PREFIX}alice@example.com",
    },
    "command_id": {
        "description": "The command's id: the Idempotency-Key it was sent with",
        "schema": _IDENTIFIER,
        "example": "deposit-0001",
    },
}
_QUERY_PARAMETERS: dict[str, dict[str, Any]] = {
    "limit": {
        "description": "Items per page",
        "schema": {"type": "integer", "minimum": 1, "maximum": PAGE_MAX, "default": PAGE_DEFAULT},
    },
    "cursor": {
        "description": "The `next_cursor` of the previous page: continues with older items",
        "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"},
    },
    "day": {
        "description": "A UTC day, YYYY-MM-DD; absent: today (UTC)",
        "schema": {"type": "string", "format": "date", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
        "example": "2026-01-31",
    },
    "as_of": {
        "description": "A journal time: milliseconds since 1970, or ISO 8601 (UTC unless it "
        "says); absent: the balance now",
        "schema": {"type": "string"},
        "example": "2026-01-31T12:00:00Z",
    },
    "account": {
        "description": "The account the command was sent for (its `account`): it names the "
        "partition that decided it",
        "required": True,
        "schema": _IDENTIFIER,
        "example": "alice",
    },
}

# What a request body's example gives each field the command requires (then by kind).
_FIELD_EXAMPLES: dict[str, Any] = {
    "account": "alice",
    "destination": "bob",
    "currency": "USD",
    "amount": "12.50",
    "target": "alice",
    "invoice_id": "invoice-0001",
    "hold_id": "hold-0001",
}
_KIND_EXAMPLES: dict[str, dict[str, Any]] = {
    "set_limits": {
        "limits": {"transaction_amount_max": 500_000, "daily_count_max": {"withdrawal": 10}},
        "low_balance": 1_000,
    },
    "reverse": {"target": "deposit-0001"},
    "register_alias": {"account": f"{ALIAS_PREFIX}alice@example.com"},
}
_SUMMARIES = {
    "open_account": "Open an account",
    "set_limits": "Set an account's limits",
    "close_account": "Close an account",
    "deposit": "Deposit money into an account",
    "withdraw": "Withdraw money from an account",
    "transfer": "Transfer money between accounts",
    "hold": "Place a hold: reserve money for a destination",
    "post_hold": "Post a hold: move what it reserved",
    "void_hold": "Void a hold: release what it reserved",
    "pay_invoice": "Pay an invoice",
    "confirm_payment": "Confirm an invoice payment made through a channel",
    "fail_payment": "Fail an invoice payment made through a channel",
    "reverse": "Reverse an accepted command",
    "register_alias": "Register an alias for an account",
}


@dataclass(frozen=True)
class _Read:
    """A GET route of `Api.routes`: what it answers with, and which problems."""

    path: str
    operation_id: str
    summary: str
    description: str
    answer: str  # component of its 200 answer
    query: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()  # codes besides the forwarding ones
    decision: bool = False  # answers a command's decision: 202, or a problem with its code


_ACCOUNT_PROBLEMS = (Code.ACCOUNT_NOT_FOUND, Code.ALIAS_NOT_FOUND, "read_models_behind")
READS = (
    _Read(
        "/v1/accounts/{account}",
        "get_account",
        "An account",
        "Balances posted and pending, what a debit may take, limits and status, as the "
        "account's journal events say.",
        "Account",
        problems=_ACCOUNT_PROBLEMS,
    ),
    _Read(
        "/v1/accounts/{account}/history",
        "get_account_history",
        "An account's history",
        "The journal events that touched the account, newest first, a page at a time; "
        "`next_cursor` continues with older ones.",
        "History",
        ("limit", "cursor"),
        (*_ACCOUNT_PROBLEMS, "invalid_query"),
    ),
    _Read(
        "/v1/accounts/{account}/summary",
        "get_account_summary",
        "An account's day",
        "The posted balance at the start and end of a UTC day, and per event kind how many "
        "events and how much they debited and credited. A day without events shows the "
        "balance the account had all day.",
        "Summary",
        ("day",),
        (*_ACCOUNT_PROBLEMS, "invalid_query"),
    ),
    _Read(
        "/v1/accounts/{account}/balance",
        "get_account_balance",
        "An account's balance, now or as of a time",
        "Now: posted, pending and available. As of a journal time (`as_of`): as the last event "
        "at or before it left it, without `available` (it needs the overdraft limit of then); "
        "404 account_not_found when the account had no events by then.",
        "Balance",
        ("as_of",),
        (*_ACCOUNT_PROBLEMS, "invalid_query"),
    ),
    _Read(
        "/v1/accounts/{account}/flags",
        "get_account_flags",
        "An account's anomaly flags",
        "Anomalies flagged on the account's movements out, newest first, a page at a time.",
        "Flags",
        ("limit", "cursor"),
        (*_ACCOUNT_PROBLEMS, "invalid_query"),
    ),
    _Read(
        "/v1/aliases/{alias}",
        "get_alias",
        "The account an alias names",
        "Answered by the worker owning the alias's partition.",
        "Alias",
        problems=(Code.ALIAS_NOT_FOUND, "read_models_behind"),
    ),
    _Read(
        "/v1/commands/{command_id}",
        "get_command",
        "A command's decision",
        "200 with its result when it was accepted, a problem with its code when it was "
        "rejected, 202 while it is not decided yet (ask the Location again after Retry-After).",
        "Result",
        ("account",),
        ("invalid_query",),
        decision=True,
    ),
)


def document(partitions: int | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route under /v1; `partitions`, when given, is said
    in its description."""
    schemas = _components()
    paths: dict[str, dict[str, Any]] = {}
    for read in READS:
        paths.setdefault(read.path, {})["get"] = _read_operation(read)
    for path, (kind, _) in POSTS.items():
        paths.setdefault(path, {})["post"] = _post_operation(path, kind, schemas)
    paths[OPENAPI_PATH] = {"get": _document_operation("get_openapi", "This document", JSON)}
    paths[DOCS_PATH] = {
        "get": _document_operation("get_docs", "This document as a page", "text/html")
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": _info(partitions),
        "servers": _servers(),
        "tags": [{"name": name, "description": text} for name, text in TAGS.items()],
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": SECURITY_SCHEMES},
    }


def _info(partitions: int | None) -> dict[str, Any]:
    spread = (
        ""
        if partitions is None
        else f" This ledger's accounts are spread over {partitions} partitions by a hash of "
        "their id."
    )
    description = (
        "A double-entry ledger whose system of record is a Kafka log. Any worker answers "
        "every route." + spread + "\n\n"
        "Reads are answered by the worker that owns the account's partition; any other worker "
        "forwards them to it. A read shows every write whose answer was returned before it "
        "was made (read-your-writes): the owner waits until its read models have folded them "
        "(at most LEDGER_READ_WAIT_S), or answers 503 `read_models_behind`.\n\n"
        "Commands are POSTs: the worker that takes one publishes it to Kafka, and the owner "
        "of the account's partition decides it. The Idempotency-Key header is the command's "
        "id: a retry with the same key and body is answered with the first decision. The "
        "answer is the decision (200 with the result when accepted, a problem with the "
        "ledger's code when rejected), or 202 with a Location to poll when the decision "
        "takes longer than LEDGER_HTTP_WAIT_S.\n\n"
        "When the worker has API keys (LEDGER_API_KEY_HASHES), every POST needs one, sent as "
        f"`Authorization: Bearer <key>` or `{API_KEY_HEADER}: <key>`; with "
        "LEDGER_API_READS_REQUIRE_KEY every read does too, but this document and its page. "
        "Without a key the answer is 401 `unauthorized`, with another key 401 "
        "`invalid_api_key`, both with `WWW-Authenticate: Bearer`. Without keys the API is "
        "open.\n\n"
        "Amounts are integers of minor units (a command's `amount` may also be a decimal "
        "string in the currency's units). Problems are application/problem+json (RFC 9457) "
        "with a `code`."
    )
    info: dict[str, Any] = {
        "title": "ledger_stream HTTP API",
        "version": _version(),
        "description": description,
        "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
    }
    if partitions is not None:
        info["x-partitions"] = partitions
    return info


def _version() -> str:
    try:
        return metadata.version("ledger-stream")
    except metadata.PackageNotFoundError:
        return VERSION_FALLBACK


def _servers() -> list[dict[str, str]]:
    host = Settings.model_fields["web_host"].default
    port = Settings.model_fields["web_port"].default
    return [
        {"url": "/", "description": "The worker that served this document"},
        {
            "url": f"http://{host}:{port}",
            "description": "A worker with the default LEDGER_WEB_HOST and LEDGER_WEB_PORT",
        },
    ]


# -- schemas ------------------------------------------------------------------------------


def _components() -> dict[str, Any]:
    schemas = _struct_components()
    view = schemas.pop("AccountView")["properties"]
    day = schemas.pop("DaySummary")
    schemas.update(_answers(view, day))
    schemas["Problem"] = _problem(schemas["Result"])
    for kind, field in POSTS.values():
        for name, schema in _body_components(kind, field).items():
            assert schemas.get(name, schema) == schema, f"two schemas named {name}"
            schemas[name] = schema
    return dict(sorted(schemas.items()))


def _struct_components() -> dict[str, Any]:
    """The msgspec structs the API answers with. Each is written with every field (`as_dict`,
    or a struct without defaults), so every field is required and none has a default."""
    _, schemas = msgspec.json.schema_components(
        (Result, HistoryItem, DaySummary, Flag, AccountView), ref_template=REF
    )
    for schema in schemas.values():
        if "description" in schema:
            schema["description"] = inspect.cleandoc(schema["description"])
        properties = schema.get("properties")
        if properties is not None:
            schema["required"] = list(properties)
            for value in properties.values():
                value.pop("default", None)
    schemas["Code"] = {"title": "Code", **code_schema()}
    return schemas


def _object(description: str, properties: dict[str, Any]) -> dict[str, Any]:
    """An answer the API writes whole: every property required."""
    return {
        "type": "object",
        "description": description,
        "properties": properties,
        "required": list(properties),
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(name=name)}


def _answers(view: dict[str, Any], day: dict[str, Any]) -> dict[str, Any]:
    """The read routes' answers, as `_account_body`, `history`, `summary`, `balance`,
    `flags` and `alias` of agents/api.py build them."""
    account = {"type": "string", "description": "The account (an alias in the path resolved)"}
    next_cursor = {
        "anyOf": [{"type": "string"}, {"type": "null"}],
        "description": "Pass as `cursor` for the next (older) page; null on the last page",
    }
    posted = {"type": "integer", "description": "Posted balance: credits less debits posted"}
    pending_debits = {"type": "integer", "description": "Reserved by holds on the account"}
    pending_credits = {"type": "integer", "description": "Reserved for it by holds of others"}
    balances = {
        "posted": posted,
        "pending_debits": pending_debits,
        "pending_credits": pending_credits,
        "available": {
            "type": "integer",
            "description": "What a debit may take: posted less pending debits plus the "
            "overdraft limit",
        },
    }
    return {
        "Balances": _object("An account's balances, in minor units", balances),
        "Account": _object(
            "An account as its writer holds it now (the low-balance threshold as the read "
            "models hold it)",
            {
                "account": account,
                "currency": view["currency"],
                "status": view["status"],
                "balance": _ref("Balances"),
                "in_transit": {
                    "type": "integer",
                    "description": "Sent to accounts of other partitions, not landed yet",
                },
                "overdraft_limit": view["overdraft_limit"],
                "limits": view["limits"],
                "low_balance": view["low_balance"],
            },
        ),
        "History": _object(
            "A page of an account's history, newest first",
            {
                "account": account,
                "items": {"type": "array", "items": _ref("HistoryItem")},
                "next_cursor": next_cursor,
            },
        ),
        "Summary": _object(
            day["description"],
            {"account": account, "currency": view["currency"], **day["properties"]},
        ),
        "Balance": {
            "description": "The balance now, or as of a journal time (`as_of`)",
            "oneOf": [_ref("BalanceNow"), _ref("BalanceAsOf")],
        },
        "BalanceNow": _object(
            "The balance now", {"account": account, "currency": view["currency"], **balances}
        ),
        "BalanceAsOf": _object(
            "The balance as the last event at or before `as_of_ms` left it",
            {
                "account": account,
                "currency": view["currency"],
                "as_of_ms": {"type": "integer", "description": "The time asked, in ms"},
                "seq": {"type": "integer", "description": "Journal seq of that event"},
                "timestamp_ms": {"type": "integer", "description": "Its journal time"},
                "posted": posted,
                "pending_debits": pending_debits,
                "pending_credits": pending_credits,
            },
        ),
        "Flags": _object(
            "A page of an account's anomaly flags, newest first",
            {
                "account": account,
                "flags": {"type": "array", "items": _ref("Flag")},
                "next_cursor": next_cursor,
            },
        ),
        "Alias": _object(
            "An alias and the account it names",
            {"alias": _ALIAS, "account": {"type": "string", "description": "The account"}},
        ),
        "Pending": _object(
            "The command is not decided yet: ask `location` again",
            {
                "command_id": {"type": "string"},
                "status": {"const": "pending"},
                "location": {"type": "string", "description": "Where its decision is answered"},
            },
        ),
    }


def _problem(result: dict[str, Any]) -> dict[str, Any]:
    """RFC 9457 problem details with the ledger's code; a rejection carries its result's
    fields too (`_decision` in agents/api.py), an invalid command the fields at fault."""
    codes = [code.value for code in Code] + list(API_PROBLEMS)
    extras = {
        name: {**schema, "description": f"A rejection's: {schema.get('description', name)}"}
        for name, schema in result["properties"].items()
        if name not in ("status", "code", "reason", "type")
    }
    return {
        "type": "object",
        "description": "A problem (RFC 9457), answered as application/problem+json",
        "properties": {
            "type": {
                "type": "string",
                "format": "uri",
                "pattern": "^urn:ledger-stream:problem:",
                "description": "urn:ledger-stream:problem:<code>",
            },
            "title": {"type": "string", "description": "The code in words"},
            "status": {"type": "integer", "description": "The HTTP status"},
            "detail": {"type": "string", "description": "What went wrong, for people"},
            "code": {
                "type": "string",
                "enum": codes,
                "description": "A rejection code of the ledger (Code) or one of the API's own",
            },
            "instance": {"type": "string", "description": "The request's path and query"},
            "field": {
                "type": "string",
                "description": "The body field or query parameter at fault",
            },
            "errors": {
                "type": "array",
                "description": "An invalid command: every field at fault",
                "items": {
                    "type": "object",
                    "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                    "required": ["field", "message"],
                },
            },
            **extras,
            "command_type": {
                "anyOf": [{"type": "string"}, {"type": "null"}],
                "description": "A rejection's: the type of the command refused",
            },
        },
        "required": ["type", "title", "status", "detail", "code", "instance"],
    }


_PYDANTIC_REF = REF.replace("{name}", "{model}")


def _body_name(kind: str) -> str:
    return f"{COMMAND_MODELS[kind].__name__}Body"


def _body_components(kind: str, field: str | None) -> dict[str, Any]:
    """The request body of `kind` and the schemas it refers to: the command without what
    the route sets (a path parameter fills `field`, and the body must not carry it)."""
    schema = COMMAND_MODELS[kind].model_json_schema(ref_template=_PYDANTIC_REF)
    components: dict[str, Any] = schema.pop("$defs", {})
    left_out = {*SET_BY_ROUTE, *([field] if field else [])}
    schema["properties"] = {k: v for k, v in schema["properties"].items() if k not in left_out}
    schema["required"] = [name for name in schema.get("required", ()) if name not in left_out]
    schema["title"] = _body_name(kind)
    components[_body_name(kind)] = schema
    return components


# -- operations ---------------------------------------------------------------------------


def _tag(path: str) -> str:
    if path.endswith("/flags"):
        return "Flags"
    if path.startswith("/v1/accounts"):
        return "Accounts"
    if path.startswith("/v1/aliases"):
        return "Aliases"
    return "Commands"


def _path_names(path: str) -> list[str]:
    return re.findall(r"{(\w+)}", path)


def _parameter(name: str, where: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path", **spec}


def _read_operation(read: _Read) -> dict[str, Any]:
    parameters = [
        _parameter(name, "path", _PATH_PARAMETERS[name]) for name in _path_names(read.path)
    ]
    parameters += [_parameter(name, "query", _QUERY_PARAMETERS[name]) for name in read.query]
    responses = {"200": _json_response(read.summary, read.answer)}
    if read.decision:
        responses["202"] = _pending_response()
    named = (*_AUTHENTICATION, *read.problems, *_FORWARDING)
    responses.update(_by_status(named, ledger_codes=read.decision))
    return {
        "tags": [_tag(read.path)],
        "operationId": read.operation_id,
        "summary": read.summary,
        "description": read.description,
        "parameters": parameters,
        "security": _READ_SECURITY,
        "responses": responses,
    }


def _post_operation(path: str, kind: str, schemas: dict[str, Any]) -> dict[str, Any]:
    body = schemas[_body_name(kind)]
    command = COMMAND_MODELS[kind]
    parameters = []
    for name in _path_names(path):
        spec = _command_field(command, name)
        parameters.append(_parameter(name, "path", spec))
    parameters.append(_idempotency_key(kind))
    resolved = _aliases_resolved(kind, command)
    doc = command.__doc__
    description = f"{inspect.cleandoc(doc)}\n\n" if doc else ""
    responses = {
        "200": _json_response("Accepted: the command's result", "Result"),
        "202": _pending_response(),
        **_by_status(
            (
                "idempotency_key_required",
                *_AUTHENTICATION,
                Code.ALIAS_NOT_FOUND,
                "read_models_behind",
                "owner_unknown",
                "not_published",
            ),
            ledger_codes=True,
        ),
    }
    return {
        "tags": [_tag(path)],
        "operationId": kind,
        "summary": _SUMMARIES.get(kind, kind.replace("_", " ").capitalize()),
        "description": description + f"Sends a `{kind}` command." + resolved,
        "parameters": parameters,
        "security": _WRITE_SECURITY,
        "requestBody": {
            "required": bool(body["required"]),
            "content": {JSON: {"schema": _ref(_body_name(kind)), "example": _example(kind, body)}},
        },
        "responses": responses,
    }


def _aliases_resolved(kind: str, command: type[BaseModel]) -> str:
    """What the API says of aliases in the fields it resolves (`account`, `destination`; not
    the alias a registration names)."""
    fields = [
        f"`{name}`"
        for name in ("account", "destination")
        if name in command.model_fields and not (kind == "register_alias" and name == "account")
    ]
    if not fields:
        return ""
    return (
        f" {' and '.join(fields)} may name an alias ({ALIAS_PREFIX}<name>): the command is "
        "sent with the account it names."
    )


def _command_field(command: type[BaseModel], name: str) -> dict[str, Any]:
    """A path parameter that fills the command's field `name`: its schema and description."""
    field = command.model_json_schema(ref_template=_PYDANTIC_REF)["properties"][name]
    description = field.pop("description", None) or name.replace("_", " ").capitalize()
    field.pop("title", None)
    example = _FIELD_EXAMPLES.get(name, "example")
    return {"description": description, "schema": field, "example": example}


def _idempotency_key(kind: str) -> dict[str, Any]:
    return {
        "name": "Idempotency-Key",
        "in": "header",
        "required": True,
        "description": "The command's id (`command_id`): a retry with the same key and body is "
        "answered with the first decision; the same key with another body is refused "
        "(exists_with_different_payload)",
        "schema": _IDENTIFIER,
        "example": f"{kind.replace('_', '-')}-0001",
    }


def _example(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """A body the API accepts: every required field, and those `_KIND_EXAMPLES` names."""
    example = {name: _FIELD_EXAMPLES.get(name, "example") for name in body["required"]}
    return {**example, **_KIND_EXAMPLES.get(kind, {})}


def _json_response(description: str, name: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref(name)}}}


def _retry_after() -> dict[str, Any]:
    return {
        "description": "Seconds to wait before asking again",
        "schema": {"type": "integer", "minimum": 0},
    }


def _pending_response() -> dict[str, Any]:
    return {
        "description": "Not decided yet: ask the Location (GET /v1/commands/{command_id}) "
        "after Retry-After",
        "headers": {
            "Location": {
                "description": "Where the decision is answered",
                "schema": {"type": "string"},
            },
            "Retry-After": _retry_after(),
        },
        "content": {JSON: {"schema": _ref("Pending")}},
    }


def _status(code: str) -> int:
    return API_PROBLEMS[code][0] if code in API_PROBLEMS else http_status(Code(code))


def _by_status(named: tuple[str, ...], ledger_codes: bool) -> dict[str, Any]:
    """Problem responses, by status, naming the codes each may carry: those `named`, and
    with `ledger_codes` every rejection code (at its status, `http_status`)."""
    every = [*named, *(code.value for code in Code if ledger_codes and code.value not in named)]
    codes: dict[int, list[str]] = {}
    for code in every:
        codes.setdefault(_status(code), []).append(code)
    return {str(status): _problem_response(status, codes[status]) for status in sorted(codes)}


def _problem_response(status: int, codes: list[str]) -> dict[str, Any]:
    named = "; ".join(
        f"`{code}`" + (f": {API_PROBLEMS[code][1]}" if code in API_PROBLEMS else "")
        for code in codes
    )
    response: dict[str, Any] = {
        "description": f"{_STATUS_TEXT.get(status, 'A problem')}. Codes: {named}",
        "content": {PROBLEM: {"schema": _ref("Problem")}},
    }
    if status == 503:
        response["headers"] = {"Retry-After": _retry_after()}
    if status == 401:
        response["headers"] = {
            "WWW-Authenticate": {
                "description": 'The scheme to authenticate with: `Bearer realm="ledger-stream"`',
                "schema": {"type": "string"},
            }
        }
    return response


def _document_operation(operation_id: str, summary: str, media: str) -> dict[str, Any]:
    schema = {"type": "object"} if media == JSON else {"type": "string"}
    return {
        "tags": ["Docs"],
        "operationId": operation_id,
        "summary": summary,
        "responses": {"200": {"description": summary, "content": {media: {"schema": schema}}}},
    }


# -- the page -----------------------------------------------------------------------------

_METHODS = ("get", "post", "put", "patch", "delete")
_CSS = """
body { font: 15px/1.5 system-ui, sans-serif; margin: 0; color: #1d2330; background: #fafbfc; }
header, main, nav { max-width: 64rem; margin: 0 auto; padding: 0 1rem; }
header { padding-top: 1rem; }
h1 small { font-weight: normal; color: #667; font-size: 60%; }
nav ul { columns: 2; padding-left: 1rem; }
section.operation { background: #fff; border: 1px solid #d8dde6; border-radius: 6px;
  padding: 0.5rem 1rem; margin: 1rem 0; }
.method { display: inline-block; min-width: 3.5rem; text-align: center; border-radius: 4px;
  color: #fff; font: bold 13px monospace; padding: 2px 6px; text-transform: uppercase; }
.get { background: #2b6cb0; } .post { background: #2f855a; }
table { border-collapse: collapse; width: 100%; margin: 0.5rem 0; font-size: 14px; }
th, td { border: 1px solid #e2e6ee; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f1f4f8; }
code, pre { font-family: ui-monospace, monospace; font-size: 13px; }
pre { background: #1d2330; color: #e8ecf3; padding: 0.75rem; overflow-x: auto;
  border-radius: 4px; }
.muted { color: #667; }
"""


def docs_page(document: dict[str, Any]) -> str:
    """`document` as one HTML page with no script and nothing fetched: routes by tag, each
    with its parameters, body fields, responses and, for a POST, a curl example; then every
    schema. Every string from the document is escaped."""
    info = document.get("info", {})
    title = f"{info.get('title', 'API')} {info.get('version', '')}".strip()
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<header><h1>{_esc(info.get('title', 'API'))} <small>{_esc(info.get('version', ''))}"
        f" · OpenAPI {_esc(document.get('openapi', ''))}</small></h1>",
        _text(info.get("description", "")),
        f'<p class="muted">The document as JSON: <a href="{_esc(OPENAPI_PATH)}">'
        f"{_esc(OPENAPI_PATH)}</a></p></header>",
    ]
    grouped = _by_tag(document)
    parts.append("<nav><h2>Routes</h2>")
    for tag, operations in grouped.items():
        parts.append(f"<h3>{_esc(tag)}</h3><ul>")
        for method, path, operation in operations:
            parts.append(
                f'<li><a href="#{_anchor(method, path)}"><span class="method {_esc(method)}">'
                f"{_esc(method)}</span> <code>{_esc(path)}</code></a> "
                f"{_esc(operation.get('summary', ''))}</li>"
            )
        parts.append("</ul>")
    parts.append("</nav><main>")
    descriptions = {tag["name"]: tag.get("description", "") for tag in document.get("tags", [])}
    base = _curl_base(document)
    for tag, operations in grouped.items():
        parts.append(f"<h2>{_esc(tag)}</h2>{_text(descriptions.get(tag, ''))}")
        for method, path, operation in operations:
            parts.append(_operation_html(document, method, path, operation, base))
    parts.append("<h2>Schemas</h2>")
    for name, schema in document.get("components", {}).get("schemas", {}).items():
        parts.append(_schema_html(name, schema))
    parts.append("</main></body></html>")
    return "\n".join(parts)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _text(value: str) -> str:
    """Paragraphs of escaped text, `code` shown as code."""
    paragraphs = [p for p in str(value).split("\n\n") if p.strip()]
    return "".join(
        "<p>" + re.sub(r"`([^`]+)`", r"<code>\1</code>", _esc(p)) + "</p>" for p in paragraphs
    )


def _anchor(*parts: str) -> str:
    return _esc(re.sub(r"[^A-Za-z0-9]+", "-", "-".join(parts)).strip("-"))


def _by_tag(document: dict[str, Any]) -> dict[str, list[tuple[str, str, dict[str, Any]]]]:
    grouped: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
        tag["name"]: [] for tag in document.get("tags", [])
    }
    for method, path, operation in operations(document):
        for tag in operation.get("tags") or ["Other"]:
            grouped.setdefault(tag, []).append((method, path, operation))
    return {tag: operations for tag, operations in grouped.items() if operations}


def _operation_html(
    document: dict[str, Any], method: str, path: str, operation: dict[str, Any], base: str
) -> str:
    parts = [
        f'<section class="operation" id="{_anchor(method, path)}">',
        f'<h3><span class="method {_esc(method)}">{_esc(method)}</span> <code>{_esc(path)}</code>'
        "</h3>",
        f"<p><strong>{_esc(operation.get('summary', ''))}</strong></p>",
        _text(operation.get("description", "")),
    ]
    parameters = operation.get("parameters", [])
    if parameters:
        parts.append(
            "<h4>Parameters</h4><table><tr><th>Name</th><th>In</th><th>Type</th>"
            "<th>Required</th><th>Description</th></tr>"
        )
        for parameter in parameters:
            schema = parameter.get("schema", {})
            parts.append(
                f"<tr><td><code>{_esc(parameter.get('name', ''))}</code></td>"
                f"<td>{_esc(parameter.get('in', ''))}</td><td>{_type_html(schema)}</td>"
                f"<td>{'yes' if parameter.get('required') else 'no'}</td>"
                f"<td>{_text(parameter.get('description', ''))}{_constraints(schema)}</td></tr>"
            )
        parts.append("</table>")
    body = operation.get("requestBody")
    if body is not None:
        parts.append(_body_html(document, body))
    parts.append(
        "<h4>Responses</h4><table><tr><th>Status</th><th>Body</th><th>Headers</th>"
        "<th>Description</th></tr>"
    )
    for status, response in operation.get("responses", {}).items():
        bodies = ", ".join(
            f"{_type_html(media.get('schema', {}))} {_media_html(kind)}"
            for kind, media in response.get("content", {}).items()
        )
        headers = ", ".join(f"<code>{_esc(h)}</code>" for h in response.get("headers", {}))
        parts.append(
            f"<tr><td>{_esc(status)}</td><td>{bodies}</td><td>{headers}</td>"
            f"<td>{_text(response.get('description', ''))}</td></tr>"
        )
    parts.append("</table>")
    if method == "post":
        parts.append(
            f"<h4>Example</h4><pre><code>{_esc(_curl(base, path, operation))}</code></pre>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def _body_html(document: dict[str, Any], body: dict[str, Any]) -> str:
    parts = [f"<h4>Request body{'' if body.get('required') else ' (optional)'}</h4>"]
    for kind, media in body.get("content", {}).items():
        schema = media.get("schema", {})
        parts.append(f"<p>{_type_html(schema)} {_media_html(kind)}</p>")
        parts.append(_fields_html(_resolved(document, schema)))
    return "\n".join(parts)


def _media_html(kind: str) -> str:
    return f'<span class="muted">({_esc(kind)})</span>'


def _resolved(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    found: Any = document
    for part in ref[2:].split("/"):
        found = found.get(part, {}) if isinstance(found, dict) else {}
    return found if isinstance(found, dict) else {}


def _fields_html(schema: dict[str, Any]) -> str:
    properties = schema.get("properties")
    if not properties:
        return ""
    required = set(schema.get("required", ()))
    rows = ["<table><tr><th>Field</th><th>Type</th><th>Required</th><th>Description</th></tr>"]
    for name, field in properties.items():
        rows.append(
            f"<tr><td><code>{_esc(name)}</code></td><td>{_type_html(field)}</td>"
            f"<td>{'yes' if name in required else 'no'}</td>"
            f"<td>{_text(field.get('description', ''))}{_constraints(field)}</td></tr>"
        )
    rows.append("</table>")
    return "\n".join(rows)


def _schema_html(name: str, schema: dict[str, Any]) -> str:
    parts = [
        f'<section class="operation" id="schema-{_anchor(name)}"><h3>{_esc(name)}</h3>',
        _text(schema.get("description", "")),
        _fields_html(schema),
    ]
    choices = schema.get("oneOf", [])
    if choices and all("const" in choice for choice in choices):
        parts.append("<table><tr><th>Value</th><th>Description</th></tr>")
        for choice in choices:
            parts.append(
                f"<tr><td><code>{_esc(choice['const'])}</code></td>"
                f"<td>{_text(choice.get('description', ''))}</td></tr>"
            )
        parts.append("</table>")
    elif "properties" not in schema:
        parts.append(f"<p>{_type_html(schema)}</p>")
    parts.append("</section>")
    return "\n".join(parts)


def _type_html(schema: Any) -> str:
    """A schema's type in a few words, a referred schema as a link to it."""
    if not isinstance(schema, dict):
        return "any"
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        return f'<a href="#schema-{_anchor(name)}">{_esc(name)}</a>'
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " | ".join(_type_html(choice) for choice in schema[key])
    if "const" in schema:
        return f"<code>{_esc(json.dumps(schema['const']))}</code>"
    if "enum" in schema:
        return "one of " + ", ".join(f"<code>{_esc(value)}</code>" for value in schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(_esc(each) for each in kind)
    if kind == "array":
        return f"array of {_type_html(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        keys = schema.get("propertyNames", {})
        key = _type_html(keys) if "enum" in keys else "string"
        return f"map of {key} to {_type_html(schema['additionalProperties'])}"
    if kind is None:
        return "any"
    text = _esc(kind)
    return f"{text} ({_esc(schema['format'])})" if "format" in schema else text


_CONSTRAINTS = {
    "default": "default",
    "minimum": "at least",
    "exclusiveMinimum": "more than",
    "maximum": "at most",
    "minLength": "characters at least",
    "maxLength": "characters at most",
    "maxProperties": "entries at most",
    "pattern": "matches",
    "example": "e.g.",
}


def _constraints(schema: dict[str, Any]) -> str:
    found = [
        f"{words} <code>{_esc(json.dumps(schema[key]))}</code>"
        for key, words in _CONSTRAINTS.items()
        if key in schema
    ]
    return f'<p class="muted">{"; ".join(found)}</p>' if found else ""


def _curl_base(document: dict[str, Any]) -> str:
    for server in document.get("servers", []):
        url = str(server.get("url", ""))
        if url.startswith(("http://", "https://")):
            return url.rstrip("/")
    return "http://127.0.0.1:6066"


def _curl(base: str, path: str, operation: dict[str, Any]) -> str:
    """A curl command that sends the operation's example, with its parameters' examples."""
    url = path
    headers = ["Content-Type: application/json"]
    if operation.get("security") == _WRITE_SECURITY:
        headers.append("Authorization: Bearer <api key>")
    for parameter in operation.get("parameters", []):
        example = str(parameter.get("example", parameter.get("name", "")))
        if parameter.get("in") == "path":
            url = url.replace("{" + str(parameter.get("name")) + "}", example)
        elif parameter.get("in") == "header":
            headers.append(f"{parameter.get('name')}: {example}")
    lines = [f"curl -i -X POST {_quoted(base + url)}"]
    lines += [f"  -H {_quoted(header)}" for header in headers]
    for media in operation.get("requestBody", {}).get("content", {}).values():
        if media.get("example"):
            lines.append(f"  -d {_quoted(json.dumps(media['example']))}")
    return " \\\n".join(lines)


def _quoted(text: str) -> str:
    """`text` as one shell word."""
    return "'" + text.replace("'", "'\\''") + "'"


# -- serving ------------------------------------------------------------------------------


def routes(app: web.Application, *, partitions: int | None = None) -> None:
    """Serve the document at GET /v1/openapi.json and the page at GET /v1/docs, both made
    once, here."""
    spec = document(partitions)
    body = orjson.dumps(spec)
    page = docs_page(spec)

    async def openapi_json(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=JSON)

    async def docs(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    app.router.add_get(OPENAPI_PATH, openapi_json)
    app.router.add_get(DOCS_PATH, docs)


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Every (method, path, operation) of a document."""
    for path, item in spec.get("paths", {}).items():
        for method in _METHODS:
            if method in item:
                yield method, path, item[method]
