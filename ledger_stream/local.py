"""A ledger on this machine (embedded broker, worker processes), for the demo, the benchmark
and the tests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import aiohttp

from ledger_stream.kafka.broker import EmbeddedBroker, free_port
from ledger_stream.settings import Settings
from ledger_stream.topics import ensure_topics

logger = logging.getLogger(__name__)


class WorkerProcess:
    """`ledger-stream worker` as a child process, stopped by its pid."""

    def __init__(
        self,
        bootstrap: str,
        data_dir: Path,
        *,
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.data_dir = data_dir
        self.web_port = free_port()
        self.log_path = log_path or data_dir.with_suffix(".log")
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self) -> WorkerProcess:
        command = [
            sys.executable,
            "-m",
            "agents.cli",
            "worker",
            "--bootstrap",
            self.bootstrap,
            "--data-dir",
            str(self.data_dir),
            "--web-port",
            str(self.web_port),
        ]
        env = {**os.environ, **self.env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        logger.info("started worker pid %d (log %s)", self.process.pid, self.log_path)
        return self

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM (the worker finishes its batch and leaves its group), then SIGKILL after
        `timeout_s`. Returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("worker pid %d ignored SIGTERM; killing it", self.process.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout_s)
        return self.process.returncode

    async def view(self, path: str) -> str:
        """The body of one of the worker's HTTP views (`/partitions/`, `/metrics/`, ...)."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}{path}") as response,
        ):
            response.raise_for_status()
            return await response.text()

    def kill(self) -> None:
        """SIGKILL at once: a crash, for tests of recovery."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_for_log(self, text: str, timeout_s: float = 120.0) -> bool:
        """Wait until the worker's log contains `text` (e.g. "Worker ready")."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.log_path.read_text(errors="replace"):
                return True
            if not self.alive():
                return False
            time.sleep(0.2)
        return False

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# Short group timeouts: a worker joins the embedded broker's group in seconds.
FAST_GROUP_ENV = {
    "LEDGER_REBALANCE_TIMEOUT_S": "5",
    "LEDGER_SESSION_TIMEOUT_S": "6",
    "LEDGER_HEARTBEAT_INTERVAL_S": "1",
}
# The embedded broker answers a waiting fetch only when its wait is over, and a fetch that
# scans a long partition for longer than its wait comes back empty (Settings.fetch_wait_ms).
EMBEDDED_FETCH_WAIT_MS = 50


@dataclass
class LocalLedger:
    """A ledger started on this machine: its settings and the worker processes running it."""

    settings: Settings
    workdir: Path
    workers: list[WorkerProcess]
    env: dict[str, str]
    broker_pid: int | None = None  # the embedded broker's, when this run started one

    def start_worker(self, number: int, log_path: Path | None = None) -> WorkerProcess:
        """Start worker `number` (its data directory is `<workdir>/worker<number>`)."""
        worker = WorkerProcess(
            self.settings.bootstrap_servers,
            self.workdir / f"worker{number}",
            env=self.env,
            log_path=log_path,
        )
        return worker.start()


class RunDirectory:
    """The working directory of a demo, bench or soak run (the broker's and workers' logs,
    the workers' stores): removed when the run ends well, kept and named when it raises or
    is marked `failed`, so what went wrong can be read. An interrupted run (Ctrl-C,
    SIGTERM) keeps it only with `keep_interrupted`: a soak stopped by hand is most often
    one that stopped answering."""

    def __init__(self, prefix: str, *, keep_interrupted: bool = False) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
        self.failed = False
        self.keep_interrupted = keep_interrupted

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        interrupted = kind is not None and issubclass(kind, KeyboardInterrupt)
        if not self.failed and (kind is None or (interrupted and not self.keep_interrupted)):
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            logger.warning("kept %s: this run's logs and stores, to see what went wrong", self.path)


def start_local_ledger(
    stack: contextlib.ExitStack,
    workdir: Path,
    *,
    name: str,
    bootstrap: str | None,
    partitions: int | None,
    workers: int,
    env: dict[str, str] | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> LocalLedger:
    """Start what a run needs (the embedded broker unless `bootstrap` is given, fresh topics
    under a prefix of their own, `workers` worker processes); `stack` stops them all, the
    workers started later through `LocalLedger.workers` included. `env` adds to the workers'
    environment."""
    broker_pid = None
    if bootstrap is None:
        broker = EmbeddedBroker(log_path=workdir / "broker.log")
        broker.start()
        stack.callback(broker.stop)
        bootstrap, broker_pid = broker.bootstrap, broker.pid
        say(f"embedded broker (Tansu) on {bootstrap}, pid {broker.pid}")
    settings = Settings(
        bootstrap_servers=bootstrap,
        partitions=partitions or Settings().partitions,
        topic_prefix=f"{name}{int(time.time())}.",
        fetch_wait_ms=EMBEDDED_FETCH_WAIT_MS if broker_pid else Settings().fetch_wait_ms,
    )
    asyncio.run(ensure_topics(settings))
    worker_env = {
        **FAST_GROUP_ENV,
        "LEDGER_TOPIC_PREFIX": settings.topic_prefix,
        "LEDGER_PARTITIONS": str(settings.partitions),
        "LEDGER_FETCH_WAIT_MS": str(settings.fetch_wait_ms),
        **(env or {}),
    }
    ledger = LocalLedger(settings, workdir, [], worker_env, broker_pid)
    stack.callback(lambda: [worker.stop() for worker in reversed(ledger.workers)])
    for number in range(workers):
        worker = ledger.start_worker(number)
        ledger.workers.append(worker)
        say(f"worker {number} pid {worker.pid}, log {worker.log_path}")
    return ledger
