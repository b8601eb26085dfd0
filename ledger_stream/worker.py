"""Running a ledger worker: create the topics, then hand the Faust app to a Faust Worker."""

from __future__ import annotations

import asyncio
import logging
import shutil

import faust

from ledger_stream.app import create_app
from ledger_stream.logs import fold_repeats
from ledger_stream.settings import Settings
from ledger_stream.topics import ensure_topics

logger = logging.getLogger(__name__)


def run_worker(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT. Blocks; exits the process when Faust's worker stops."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    created = loop.run_until_complete(ensure_topics(settings))
    if created and settings.data_dir.exists() and any(settings.data_dir.iterdir()):
        # The ledger's topics are new (a new cluster, or the embedded broker restarted
        # with its memory storage empty): local tables from an older log would be wrong.
        logger.warning("topics are new; wiping stale local state in %s", settings.data_dir)
        shutil.rmtree(settings.data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    worker = Worker(app, loglevel=settings.log_level, loop=loop, quiet=True)
    worker.execute_from_commandline()


class Worker(faust.Worker):
    """Faust's worker, with aiokafka's repeated connection errors folded (see logs.py)."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        fold_repeats(logger)
