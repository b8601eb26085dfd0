"""HTTP views of a worker: an account's state (for partitions this worker writes), its
partitions, and Prometheus metrics."""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agents.writer import Writer
from ledger_stream.codes import Code
from ledger_stream.messages import AccountState, as_dict, from_json
from ledger_stream.partitioning import partition_of
from ledger_stream.state import closing

logger = logging.getLogger(__name__)


def create_web_app(writer: Writer) -> web.Application:
    n = writer.settings.partitions

    async def account_view(request: web.Request) -> web.Response:
        account = request.match_info["account"]
        partition = partition_of(account, n)
        log = writer.logs.get(partition)
        if log is None:
            body = {
                "error": "not_owner",
                "account": account,
                "partition": partition,
                "reason": "another worker writes this partition; ask it",
                "partitions": sorted(writer.logs),
            }
            return web.json_response(body, status=421)
        with closing:  # read from the HTTP thread: the store is not closed meanwhile
            raw = log.store.account(account)
        if raw is None:
            return web.json_response(
                {"error": Code.ACCOUNT_NOT_FOUND, "account": account}, status=404
            )
        state = from_json(raw, AccountState)
        body = {"account": account, **as_dict(state)}
        return web.json_response({**body, "balance": state.balance, "available": state.available})

    async def partitions_view(request: web.Request) -> web.Response:
        return web.json_response({"writer": writer.writer_id, "partitions": sorted(writer.logs)})

    async def metrics_view(request: web.Request) -> web.Response:
        # aiohttp takes the charset separately from the content type
        return web.Response(body=generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    app = web.Application()
    app.router.add_get("/accounts/{account}/", account_view)
    app.router.add_get("/partitions/", partitions_view)
    app.router.add_get("/metrics/", metrics_view)
    return app
