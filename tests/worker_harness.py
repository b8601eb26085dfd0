"""Worker processes for the tests that run a ledger: started with the ledger's settings,
each stopped by pid when the test (or module) that started it ends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from ledger_stream.journal import read_journal
from ledger_stream.local import FAST_GROUP_ENV, WorkerProcess
from ledger_stream.messages import JournalEvent
from ledger_stream.partitioning import partition_of
from ledger_stream.settings import Settings
from ledger_stream.topics import TopicNames

WORKER_READY_TIMEOUT_S = 90.0
REBUILD_TIMEOUT_S = 120.0
POLL_S = 0.25
T = TypeVar("T")


class Workers:
    """Starts worker processes of one ledger; `stop_all` stops each one it started, by pid.

    Every start gets a log file of its own (`wait_for_log` reads the whole file).
    """

    def __init__(self, settings: Settings, root: Path) -> None:
        self.settings = settings
        self.root = root
        self.started: list[WorkerProcess] = []
        self.env = {
            **FAST_GROUP_ENV,
            "LEDGER_TOPIC_PREFIX": settings.topic_prefix,
            "LEDGER_PARTITIONS": str(settings.partitions),
        }

    def start(
        self, data_dir: Path | None = None, *, env: dict[str, str] | None = None
    ) -> WorkerProcess:
        """Start a worker (default data dir `<root>/worker`); do not wait for it."""
        worker = WorkerProcess(
            self.settings.bootstrap_servers,
            data_dir or self.root / "worker",
            log_path=self.root / f"worker-{len(self.started) + 1}.log",
            env={**self.env, **(env or {})},
        )
        self.started.append(worker)
        return worker.start()

    def start_ready(
        self, data_dir: Path | None = None, *, env: dict[str, str] | None = None
    ) -> WorkerProcess:
        """Start a worker and wait until it has restored and claimed its partitions."""
        worker = self.start(data_dir, env=env)
        if not worker.wait_for_log("Worker ready", WORKER_READY_TIMEOUT_S):
            tail = worker.log_tail(60)
            worker.stop()
            pytest.fail(f"worker pid {worker.pid} did not become ready; log tail:\n{tail}")
        return worker

    def any_alive(self) -> bool:
        return any(worker.alive() for worker in self.started)

    def logs(self, lines: int = 40) -> str:
        """The tail of every worker's log, for a failure message."""
        return "\n".join(
            f"--- {w.log_path.name} pid {w.pid} exit {exit_code(w)}\n{w.log_tail(lines)}"
            for w in self.started
        )

    def stop_all(self) -> None:
        for worker in reversed(self.started):
            resume(worker)  # a paused worker cannot act on SIGTERM
            worker.stop()


def exit_code(worker: WorkerProcess) -> int | None:
    return None if worker.process is None else worker.process.poll()


def resume(worker: WorkerProcess) -> None:
    """SIGCONT, by pid; harmless when the worker is not paused."""
    if worker.process is not None and worker.alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.process.pid, signal.SIGCONT)


async def until(condition: Callable[[], bool], workers: Workers, what: str) -> None:
    """Wait for `condition`, failing at once (with the logs) when no worker is left to make
    it come true; pytest-timeout bounds the wait otherwise."""
    while not condition():
        if not workers.any_alive():
            raise AssertionError(f"no worker alive while waiting for {what}\n{workers.logs()}")
        await asyncio.sleep(0.05)


async def polled(
    read: Callable[[], Awaitable[T]], done: Callable[[T], bool], workers: Workers, what: str
) -> T:
    """Call `read` until what it returns is `done`; fails at once when no worker is alive."""
    while True:
        value = await read()
        if done(value):
            return value
        if not workers.any_alive():
            raise AssertionError(f"no worker alive while waiting for {what}\n{workers.logs()}")
        await asyncio.sleep(POLL_S)


async def http_account(worker: WorkerProcess, account: str) -> dict[str, Any] | None:
    """The account's state from the worker's HTTP view, None on 404."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{worker.url}/accounts/{account}/") as response,
    ):
        if response.status == 404:
            return None
        response.raise_for_status()
        body: dict[str, Any] = await response.json(content_type=None)
        return body


async def journal(settings: Settings) -> list[JournalEvent]:
    """Every journal event of the ledger, once each (`ledger_stream.journal.read_journal`)."""
    return await read_journal(
        settings.bootstrap_servers, TopicNames.from_settings(settings).journal
    )


async def owned_partitions(worker: WorkerProcess) -> tuple[str, list[int]]:
    """The worker's writer id and the partitions it writes now, from its `/partitions/` view."""
    body = json.loads(await worker.view("/partitions/"))
    return body["writer"], [int(p) for p in body["partitions"]]


def alias_on(partition: int, stem: str, partitions: int) -> str:
    """The first alias `alias:<stem>-<i>@example.com` that lives on `partition`."""
    i = 0
    while partition_of(alias := f"alias:{stem}-{i}@example.com", partitions) != partition:
        i += 1
    return alias


async def partitions_written(worker: WorkerProcess) -> list[int]:
    """The partitions the worker writes now."""
    return (await owned_partitions(worker))[1]


async def v1_get(
    session: aiohttp.ClientSession, worker: WorkerProcess, path: str, **params: str
) -> tuple[int, Any]:
    """One GET of the worker's /v1 API: the status and the JSON body (a problem or not)."""
    async with session.get(worker.url + path, params=params) as response:
        return response.status, await response.json(content_type=None)


async def v1_read(
    session: aiohttp.ClientSession,
    worker: WorkerProcess,
    path: str,
    workers: Workers,
    **params: str,
) -> Any:
    """The 200 body of a GET of the worker's /v1 API, asked again while it answers 503 (the
    group rebalancing, the owner's map being read, the read models still folding); any other
    status fails the test."""
    status, body = await polled(
        lambda: v1_get(session, worker, path, **params),
        lambda answer: answer[0] != 503,
        workers,
        f"GET {path} of {worker.url} to answer other than 503",
    )
    assert status == 200, (worker.url, path, params, status, body)
    return body


async def rebuild(
    settings: Settings, data_dir: Path, *flags: str
) -> subprocess.CompletedProcess[str]:
    """`ledger-stream rebuild` of the ledger against the live read models in `data_dir`."""
    command = [
        sys.executable,
        "-m",
        "agents.cli",
        "rebuild",
        "--bootstrap",
        settings.bootstrap_servers,
        "--prefix",
        settings.topic_prefix,
        "--partitions",
        str(settings.partitions),
        "--data-dir",
        str(data_dir),
        *flags,
    ]
    return await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=REBUILD_TIMEOUT_S
    )
