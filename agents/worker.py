"""Running a ledger worker: create the topics, then run the writer and its HTTP views until
SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from agents.views import create_web_app
from agents.writer import Writer
from ledger_stream.logs import fold_repeats
from ledger_stream.settings import Settings
from ledger_stream.topics import ensure_topics

logger = logging.getLogger(__name__)


def run_worker(settings: Settings) -> None:
    """Blocks until the worker is told to stop; a fatal error exits the process."""
    fold_repeats(logging.getLogger())
    asyncio.run(_serve(settings))


async def _serve(settings: Settings) -> None:
    await ensure_topics(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    writer = Writer(settings)
    runner: web.AppRunner | None = None
    if settings.web_enabled:
        runner = web.AppRunner(create_web_app(writer), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, settings.web_host, settings.web_port).start()
        logger.info("HTTP on http://%s:%d", settings.web_host, settings.web_port)
    try:
        await writer.run(stopping)
    finally:
        if runner is not None:
            await runner.cleanup()
    logger.info("worker stopped")
