"""Running a ledger worker: create the topics, then run the writer, the read side (the
projector folding the journal, and the notifier delivering webhooks when configured) and
the HTTP API until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from collections.abc import Coroutine
from typing import Any

from aiohttp import web
from aiokafka.errors import KafkaError
from prometheus_client import Gauge

from agents import openapi
from agents.api import Api
from agents.notifier import Notifier
from agents.projector import Projector
from agents.routing import Owners
from agents.views import create_web_app
from agents.writer import EXIT_BROKER_GONE, EXIT_BUG, Writer, stop_worker
from ledger_stream.client import LedgerClient
from ledger_stream.errors import BrokerUnavailable, ConfigurationError
from ledger_stream.kafka.security import connection_options
from ledger_stream.logs import fold_repeats
from ledger_stream.settings import Settings
from ledger_stream.state.store import memory
from ledger_stream.topics import ensure_topics

logger = logging.getLogger(__name__)

# How long a command sent through the HTTP API may take before its waiting task gives up
# (the POST itself answers 202 after `http_wait_s`).
HTTP_COMMAND_TIMEOUT_S = 120.0
HTTP_THREAD_TIMEOUT_S = 30.0
HTTP_SWITCH_INTERVAL_S = 0.001
ROCKSDB_MEMORY = Gauge(
    "ledger_rocksdb_memory_bytes",
    "RocksDB memory of the worker's stores: `cache` is the block cache with the memtables "
    "charged to it (at most LEDGER_ROCKSDB_MEMORY_MIB), `memtables` the memtables alone",
    ["kind"],
)


def run_worker(settings: Settings) -> None:
    """Blocks until the worker is told to stop; a fatal error exits the process."""
    fold_repeats(logging.getLogger())
    asyncio.run(_serve(settings))


async def _serve(settings: Settings) -> None:
    await ensure_topics(settings)
    budget = memory(settings.rocksdb_memory_mib * 1024 * 1024)
    ROCKSDB_MEMORY.labels("cache").set_function(budget.cache.get_usage)
    ROCKSDB_MEMORY.labels("memtables").set_function(budget.memtables.get_usage)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    writer = Writer(settings)
    projector = Projector(settings, lambda: list(writer.logs), writer.freshness)
    client = LedgerClient(
        settings.bootstrap_servers,
        topic_prefix=settings.topic_prefix,
        timeout_s=HTTP_COMMAND_TIMEOUT_S,
        fetch_wait_ms=settings.fetch_wait_ms,
        connect_attempts_max=settings.connect_attempts_max,
        security=connection_options(settings),
    )
    api = Api(writer, projector, client)
    api.main_loop = loop
    http: _HttpThread | None = None
    background: list[asyncio.Task[None]] = []
    try:
        if settings.web_enabled:
            app = create_web_app(writer)
            api.routes(app)
            openapi.routes(app, partitions=settings.partitions)
            # A thread waiting for the interpreter gets it after this long at most (Python's
            # default is 5 ms): a read waits less behind a batch. Costs nothing while no
            # request is being served (the HTTP thread then waits outside the interpreter).
            sys.setswitchinterval(HTTP_SWITCH_INTERVAL_S)
            server = _HttpThread(app, settings.web_host, settings.web_port)
            host, port = server.start()
            http = server  # serving: stopped on the way out
            own_url = settings.web_advertised_url or f"http://{host}:{port}"
            api.owners = Owners(settings, own_url)
            writer.client_id = api.owners.client_id
            if not settings.api_key_digests:
                logger.warning(
                    "the HTTP API's write routes (every POST under /v1) are unauthenticated: "
                    "anyone who reaches %s can move money. Set LEDGER_API_KEY_HASHES to the "
                    "hashes of the keys that may write (README, Security)",
                    own_url,
                )
            await client.start()
            logger.info("HTTP on %s (API under /v1, docs at /v1/docs)", own_url)
        background.append(_watched(projector.run(stopping), "the read models' projector"))
        if settings.webhooks:
            background.append(_watched(Notifier(settings).run(stopping), "the notifier"))
        await writer.run(stopping)
    finally:
        stopping.set()
        await asyncio.gather(*background, return_exceptions=True)
        if http is not None:
            await http.stop(api.owners)
            await client.stop()
    logger.info("worker stopped")


class _HttpThread:
    """The HTTP server, on an event loop of its own in a thread of its own: a read is answered
    while the writer decides a batch (Python switches threads every few milliseconds),
    instead of after it. What it needs of the writer's loop it asks there (`Api._on_main`)."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app, self.host, self.port = app, host, port
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app, access_log=None)
        self.thread = threading.Thread(target=self.loop.run_forever, name="http", daemon=True)

    def start(self) -> tuple[str, int]:
        self.thread.start()
        started = asyncio.run_coroutine_threadsafe(self._start(), self.loop)
        try:
            return started.result(timeout=HTTP_THREAD_TIMEOUT_S)
        except OSError as error:
            self.loop.call_soon_threadsafe(self.loop.stop)
            raise ConfigurationError(
                f"cannot serve HTTP on {self.host}:{self.port} ({error.strerror}); choose "
                "another port (LEDGER_WEB_PORT, --web-port; 0 picks a free one) or host "
                "(LEDGER_WEB_HOST)"
            ) from error

    async def _start(self) -> tuple[str, int]:
        await self.runner.setup()
        await web.TCPSite(self.runner, self.host, self.port).start()
        host, port = self.runner.addresses[0][:2]
        return str(host), int(port)

    async def stop(self, owners: Owners | None) -> None:
        """Stop serving (from the writer's loop, which goes on meanwhile: requests in flight
        may wait on it)."""

        async def stop() -> None:
            await self.runner.cleanup()
            if owners is not None:
                await owners.close()

        try:
            stopped = asyncio.run_coroutine_threadsafe(stop(), self.loop)
            await asyncio.wait_for(asyncio.wrap_future(stopped), HTTP_THREAD_TIMEOUT_S)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            await asyncio.to_thread(self.thread.join, HTTP_THREAD_TIMEOUT_S)


def _watched(work: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
    """Run `work` beside the writer; if it fails, the worker stops (a supervisor restarts
    it) rather than go on without it."""

    def done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            logger.error("%s failed", what, exc_info=error)
            gone = isinstance(error, (KafkaError, BrokerUnavailable))
            stop_worker(EXIT_BROKER_GONE if gone else EXIT_BUG, f"{what} failed: {error}")

    task = asyncio.create_task(work)
    task.add_done_callback(done)
    return task
