"""Reads of the ledger's HTTP API (agents/api.py) for `LedgerClient`: an account, its
balance (now or as of a time), a page of its history or all of it, a day's summary, its
anomaly flags, and the account an alias names. Any worker answers: it forwards a read to the
worker that owns the account, and the answer shows every command whose result was returned.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp

from ledger_stream.errors import ConfigurationError, ReadFailed

READ_TIMEOUT_S = 15.0
PAGE_MAX = 500


class HttpReads:
    def __init__(
        self, base_url: str, timeout_s: float = READ_TIMEOUT_S, *, api_key: str | None = None
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigurationError(f"http_url must be http(s)://host:port, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        # Sent with every read: workers with LEDGER_API_READS_REQUIRE_KEY answer 401 without.
        self.headers = {} if api_key is None else {"Authorization": f"Bearer {api_key}"}
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, path: str, **params: str | int | None) -> dict[str, Any]:
        """The JSON answer to a GET; a problem answer raises `ReadFailed`."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout, headers=self.headers)
        query = {name: str(value) for name, value in params.items() if value is not None}
        async with self._session.get(self.base_url + path, params=query) as response:
            body: dict[str, Any] = await response.json(content_type=None)
            if response.status != 200:
                raise ReadFailed(response.status, body)
            return body

    async def account(self, account: str) -> dict[str, Any]:
        return await self.get(f"/v1/accounts/{quote(account, safe='@:')}")

    async def balance(self, account: str, as_of: int | str | None = None) -> dict[str, Any]:
        return await self.get(f"/v1/accounts/{quote(account, safe='@:')}/balance", as_of=as_of)

    async def history(
        self, account: str, limit: int = 50, cursor: str | None = None
    ) -> dict[str, Any]:
        path = f"/v1/accounts/{quote(account, safe='@:')}/history"
        return await self.get(path, limit=limit, cursor=cursor)

    async def history_items(self, account: str, page: int = PAGE_MAX) -> AsyncIterator[Any]:
        """Every history item of `account`, newest first, a page at a time."""
        cursor = None
        while True:
            answer = await self.history(account, page, cursor)
            for item in answer["items"]:
                yield item
            cursor = answer["next_cursor"]
            if cursor is None:
                return

    async def summary(self, account: str, day: str | None = None) -> dict[str, Any]:
        return await self.get(f"/v1/accounts/{quote(account, safe='@:')}/summary", day=day)

    async def flags(
        self, account: str, limit: int = 50, cursor: str | None = None
    ) -> dict[str, Any]:
        path = f"/v1/accounts/{quote(account, safe='@:')}/flags"
        return await self.get(path, limit=limit, cursor=cursor)

    async def alias(self, alias: str) -> str | None:
        """The account `alias` names, None when none does."""
        try:
            answer = await self.get(f"/v1/aliases/{quote(alias, safe='@:')}")
        except ReadFailed as error:
            if error.status == 404:
                return None
            raise
        return str(answer["account"])
