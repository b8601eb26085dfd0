"""The classic row-locking PostgreSQL ledger that `ledger-stream bench --compare` measures side
by side with ours, on the same workload (`ledger_stream.workload`).

One database transaction per transfer, the way such ledgers are usually written:

    BEGIN
    SELECT id, balance FROM accounts WHERE id = ANY($1) ORDER BY id FOR UPDATE
    -- check funds in the client; reject (ROLLBACK) when the source cannot pay
    UPDATE accounts SET balance = balance + CASE ... END WHERE id = ANY($1)
    INSERT INTO entries (transfer_id, ...) VALUES (...)   -- transfer_id unique: idempotency
    COMMIT

Both rows are locked in id order, so two transfers between the same accounts wait for each other
instead of deadlocking. asyncpg prepares (and caches) each statement on every connection.

The server is started with `synchronous_commit=off` (and `fsync=on`): a commit returns before
its WAL reaches the disk, so a crash may lose the last fraction of a second of commits, though
never leave the books inconsistent. That is the fair comparison here, because the embedded Kafka
broker our ledger runs on keeps everything in memory. `temporary_postgres(synchronous_commit=
"on")` measures the durable setting instead. The returned figures say which was used.

PostgreSQL refuses to run as root. When this process is root, initdb, postgres and pg_ctl run as
the `postgres` user (or `nobody`) by way of `subprocess`'s `user=`/`group=`; the data directory
is made theirs, and put under the system's temporary directory instead of `workdir` when they
cannot reach `workdir`.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from ledger_stream.kafka.broker import free_port
from ledger_stream.measure import cpu_seconds, peak_rss_mib, percentiles, process_tree
from ledger_stream.workload import Transfer, Workload

SYSTEM = "postgres-row-lock"
OPENING_BALANCE = 10**12
CURRENCY = "USD"
#: Settings passed to the server (besides synchronous_commit, a parameter).
SERVER_SETTINGS = {"fsync": "on", "shared_buffers": "256MB", "max_connections": "100"}
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
_SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes, "/.s.PGSQL.65535" included
_BINARIES = ("initdb", "pg_ctl", "postgres")
_RUN_AS = ("postgres", "nobody")

SCHEMA = """
DROP TABLE IF EXISTS entries;
DROP TABLE IF EXISTS accounts;
CREATE TABLE accounts (
    id text PRIMARY KEY,
    balance bigint NOT NULL,
    currency text NOT NULL
);
CREATE TABLE entries (
    id bigserial PRIMARY KEY,
    transfer_id text UNIQUE NOT NULL,
    debit text NOT NULL,
    credit text NOT NULL,
    amount bigint NOT NULL,
    created_at timestamptz DEFAULT now()
);
"""
LOCK_ROWS = "SELECT id, balance FROM accounts WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE"
MOVE = (
    "UPDATE accounts SET balance = balance + CASE WHEN id = $1 THEN -$3::bigint ELSE $3::bigint"
    " END WHERE id = ANY(ARRAY[$1, $2]::text[])"
)
RECORD = "INSERT INTO entries (transfer_id, debit, credit, amount) VALUES ($1, $2, $3, $4)"
#: Accounts whose balance is not the opening balance less what they paid plus what they got.
UNEXPLAINED = """
SELECT count(*) FROM accounts a
LEFT JOIN (SELECT debit AS id, sum(amount) AS n FROM entries GROUP BY debit) d USING (id)
LEFT JOIN (SELECT credit AS id, sum(amount) AS n FROM entries GROUP BY credit) c USING (id)
WHERE a.balance <> $1::bigint - coalesce(d.n, 0) + coalesce(c.n, 0)
"""


class PostgresUnavailable(Exception):
    """PostgreSQL cannot be used here; the message says why."""


@dataclass
class PostgresServer:
    dsn: str
    pid: int  # the postmaster's
    log_path: Path = field(default=Path(os.devnull))


def postgres_binaries() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres (the newest Debian-style install first,
    then PATH), or None."""

    def complete(directory: Path) -> bool:
        return all(os.access(directory / name, os.X_OK) for name in _BINARIES)

    def version(directory: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", directory.parent.name))

    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for directory in installed:
        if complete(directory):
            return directory
    found = shutil.which("initdb")
    if found:
        for directory in (Path(found).parent, Path(found).resolve().parent):
            if complete(directory):
                return directory
    return None


@dataclass
class _RunAs:
    """Whom the PostgreSQL processes run as: None (this process's user) or another user."""

    uid: int | None = None
    gid: int | None = None
    name: str = ""

    def popen_kwargs(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def can_reach(self, path: Path) -> bool:
        """Whether the user may reach a directory made for it in `path`: search every directory
        down to `path` (mode bits only; ACLs are not read). Root makes that directory."""
        if self.uid is None:
            return os.access(path, os.W_OK | os.X_OK)
        groups = {self.gid} | {g.gr_gid for g in grp.getgrall() if self.name in g.gr_mem}
        for directory in [path, *path.parents]:
            info = directory.stat()
            if info.st_uid == self.uid:
                search = stat.S_IXUSR
            elif info.st_gid in groups:
                search = stat.S_IXGRP
            else:
                search = stat.S_IXOTH
            if not info.st_mode & search:
                return False
        return True


def _run_as() -> _RunAs:
    if os.geteuid() != 0:
        return _RunAs()
    for name in _RUN_AS:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return _RunAs(entry.pw_uid, entry.pw_gid, name)
    raise PostgresUnavailable(
        "PostgreSQL refuses to run as root, and there is neither a `postgres` nor a `nobody` "
        "user to run it as"
    )


@contextlib.contextmanager
def temporary_postgres(
    workdir: Path, *, synchronous_commit: str = "off"
) -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server: initdb into a fresh directory in `workdir`, start it on a
    free port of 127.0.0.1 (and on a unix socket in the data directory when its path is short
    enough), yield it, then stop it (`pg_ctl stop -m fast`, then signals by pid) and remove
    the data directory, whatever happens. Its log stays in `workdir`.

    Raises PostgresUnavailable when the binaries are missing or the server does not start."""
    bindir = postgres_binaries()
    if bindir is None:
        raise PostgresUnavailable(
            "no PostgreSQL binaries (initdb, pg_ctl, postgres) in /usr/lib/postgresql/*/bin "
            "or on PATH"
        )
    owner = _run_as()
    workdir.mkdir(parents=True, exist_ok=True)
    base = workdir if owner.can_reach(workdir) else Path(tempfile.gettempdir())
    datadir = Path(tempfile.mkdtemp(prefix="pgdata-", dir=base))
    log_path = workdir / f"postgres-{datadir.name.removeprefix('pgdata-')}.log"
    process: subprocess.Popen[bytes] | None = None
    try:
        if owner.uid is not None:
            assert owner.gid is not None
            os.chown(datadir, owner.uid, owner.gid)
        os.chmod(datadir, 0o700)
        _initdb(bindir, datadir, owner, log_path)
        settings = {**SERVER_SETTINGS, "synchronous_commit": synchronous_commit}
        for attempt in range(3):
            port, since = free_port(), log_path.stat().st_size
            process = _start(bindir, datadir, owner, log_path, port, settings)
            problem = _wait_ready(process, datadir, log_path, since)
            if problem is None:
                break
            _stop(bindir, datadir, owner, process)
            process = None
            if "could not bind" not in problem or attempt == 2:
                raise PostgresUnavailable(f"postgres did not start: {problem}")
        assert process is not None
        dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        yield PostgresServer(dsn=dsn, pid=process.pid, log_path=log_path)
    finally:
        if process is not None:
            _stop(bindir, datadir, owner, process)
        shutil.rmtree(datadir, ignore_errors=True)


def _initdb(bindir: Path, datadir: Path, owner: _RunAs, log_path: Path) -> None:
    command = [
        str(bindir / "initdb"),
        "--pgdata", str(datadir),
        "--username", "postgres",
        "--auth", "trust",
        "--encoding", "UTF8",
        "--no-locale",
        "--no-sync",
    ]  # fmt: skip
    with log_path.open("ab") as log:
        log.write(f"$ {' '.join(command)}\n".encode())
        log.flush()
        try:
            done = subprocess.run(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=datadir,
                timeout=START_TIMEOUT_S,
                check=False,
                **owner.popen_kwargs(),
            )
        except (OSError, subprocess.SubprocessError) as error:
            raise PostgresUnavailable(f"initdb could not run: {error}") from error
    if done.returncode != 0:
        raise PostgresUnavailable(
            f"initdb failed (exit {done.returncode}); log {log_path}:\n{_tail(log_path)}"
        )


def _start(
    bindir: Path,
    datadir: Path,
    owner: _RunAs,
    log_path: Path,
    port: int,
    settings: dict[str, str],
) -> subprocess.Popen[bytes]:
    sockets = str(datadir) if len(str(datadir)) <= _SOCKET_PATH_MAX else ""
    listen = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": sockets,
        **settings,
    }
    command = [str(bindir / "postgres"), "-D", str(datadir)]
    for name, value in listen.items():
        command += ["-c", f"{name}={value}"]
    with log_path.open("ab") as log:
        log.write(f"$ {' '.join(command)}\n".encode())
        log.flush()
        try:
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=datadir,
                start_new_session=True,  # a Ctrl-C at the terminal is ours to handle
                **owner.popen_kwargs(),
            )
        except (OSError, subprocess.SubprocessError) as error:
            raise PostgresUnavailable(f"postgres could not run: {error}") from error


def _wait_ready(
    process: subprocess.Popen[bytes], datadir: Path, log_path: Path, since: int
) -> str | None:
    """None once the postmaster accepts connections, else what went wrong (with the log)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    pidfile = datadir / "postmaster.pid"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"it exited with {process.returncode}; log {log_path}:\n{_tail(log_path, since)}"
        with contextlib.suppress(OSError):
            lines = pidfile.read_text().splitlines()
            if len(lines) >= 8 and lines[7].strip() == "ready":
                return None
        time.sleep(0.05)
    return f"not ready after {START_TIMEOUT_S:.0f} s; log {log_path}:\n{_tail(log_path, since)}"


def _stop(bindir: Path, datadir: Path, owner: _RunAs, process: subprocess.Popen[bytes]) -> None:
    """Fast shutdown by pg_ctl; failing that, SIGINT, SIGQUIT, then SIGKILL to its process group."""
    if process.poll() is None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [str(bindir / "pg_ctl"), "stop", "-D", str(datadir), "-m", "fast", "-w",
                 "-t", str(int(STOP_TIMEOUT_S))],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=datadir,
                timeout=STOP_TIMEOUT_S + 5,
                check=False,
                **owner.popen_kwargs(),
            )  # fmt: skip
    for how, wait_s in ((signal.SIGINT, 10.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
        if process.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            if how == signal.SIGKILL:
                os.killpg(process.pid, how)  # the postmaster and any backend it left behind
            else:
                os.kill(process.pid, how)  # SIGINT: fast shutdown, SIGQUIT: immediate
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait_s)


def _tail(path: Path, since: int = 0, lines: int = 30) -> str:
    """The last `lines` lines of the log, from byte `since` on."""
    try:
        with path.open("rb") as log:
            log.seek(since)
            text = log.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _Rejected(Exception):
    """The source account cannot pay: the transaction is rolled back."""


@dataclass
class _Tally:
    committed: int = 0
    rejected: int = 0
    retried: int = 0  # deadlocks or serialization failures (none expected: rows lock in order)
    latencies: list[float] = field(default_factory=list)


async def _transfer(connection: asyncpg.Connection, transfer: Transfer, tally: _Tally) -> bool:
    """Run one transfer as one transaction; True if it committed, False if it was rejected."""
    source, destination, amount = transfer.source, transfer.destination, transfer.amount
    while True:
        try:
            async with connection.transaction():
                rows = await connection.fetch(LOCK_ROWS, [source, destination])
                balances = {row["id"]: row["balance"] for row in rows}
                if len(balances) != 2 or balances[source] < amount:
                    raise _Rejected
                await connection.execute(MOVE, source, destination, amount)
                await connection.execute(
                    RECORD, f"t-{transfer.number}", source, destination, amount
                )
            return True
        except _Rejected:
            return False
        except asyncpg.exceptions.TransactionRollbackError:
            tally.retried += 1


async def _load(connection: asyncpg.Connection, workload: Workload) -> None:
    await connection.execute(SCHEMA)
    await connection.copy_records_to_table(
        "accounts",
        records=[(name, OPENING_BALANCE, CURRENCY) for name in workload.names],
        columns=["id", "balance", "currency"],
    )
    await connection.execute("ANALYZE accounts; ANALYZE entries")
    await connection.execute("CHECKPOINT")  # the run starts without the load's dirty pages


async def _server_settings(connection: asyncpg.Connection) -> dict[str, Any]:
    names = ["synchronous_commit", "fsync", "shared_buffers", "max_connections", "wal_level"]
    settings: dict[str, Any] = {name: await connection.fetchval(f"SHOW {name}") for name in names}
    settings["server_version"] = await connection.fetchval("SHOW server_version")
    settings["isolation"] = await connection.fetchval("SHOW transaction_isolation")
    settings["why_synchronous_commit_off"] = (
        "the embedded Kafka broker the ledger runs on keeps everything in memory, so commits "
        "here need not wait for the WAL to reach the disk either"
    )
    return settings


async def run_postgres_ledger(
    server: PostgresServer,
    workload: Workload,
    *,
    duration_s: float,
    clients: int = 20,
    rate: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Load `workload`'s accounts, then run its transfers for `duration_s` from `clients`
    connections, one transaction each; the figures, and whether the books still balance.

    Closed loop when `rate` is None (each client runs the next transfer as soon as its last one
    committed); else open loop: transfer i is due `i / rate` seconds after the start, whichever
    client is free runs it, and its latency counts from when it was due."""
    if clients < 1:
        raise ValueError("clients: at least 1")
    if rate is not None and rate <= 0:
        raise ValueError("rate: transfers a second, more than 0")
    admin = await asyncpg.connect(server.dsn)
    connections: list[asyncpg.Connection] = []
    try:
        await _load(admin, workload)
        settings = await _server_settings(admin)
        connections = list(
            await asyncio.gather(*(asyncpg.connect(server.dsn) for _ in range(clients)))
        )
        tally = _Tally()
        transfers = workload.transfers()
        next_number = 0  # open loop: the next transfer to start (one thread: no lock needed)

        async def closed_loop(connection: asyncpg.Connection, deadline: float) -> None:
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                if await _transfer(connection, next(transfers), tally):
                    tally.latencies.append(time.perf_counter() - began)
                    tally.committed += 1
                else:
                    tally.rejected += 1

        async def open_loop(connection: asyncpg.Connection, start: float, offered: int) -> None:
            nonlocal next_number
            assert rate is not None
            while next_number < offered:
                due = start + next_number / rate
                next_number += 1
                transfer = next(transfers)
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                if await _transfer(connection, transfer, tally):
                    tally.latencies.append(time.perf_counter() - due)
                    tally.committed += 1
                else:
                    tally.rejected += 1

        async def report(start: float) -> None:
            assert progress is not None
            seen, then = 0, start
            while True:
                await asyncio.sleep(1.0)
                now = time.perf_counter()
                recent = tally.latencies[seen:]
                seen += len(recent)
                p99 = percentiles(recent)["p99"]
                progress(
                    f"postgres {now - start:5.1f} s  {len(recent) / (now - then):,.0f}/s"
                    f"  p99 {p99:.1f} ms"
                )
                then = now

        tree_before = process_tree(server.pid)
        cpu_before = cpu_seconds(tree_before)
        client_before = sum(os.times()[:2])
        start = time.perf_counter()
        reporter = asyncio.ensure_future(report(start)) if progress is not None else None
        try:
            if rate is None:
                deadline = start + duration_s
                await asyncio.gather(*(closed_loop(c, deadline) for c in connections))
            else:
                offered = max(1, int(rate * duration_s))
                await asyncio.gather(*(open_loop(c, start, offered) for c in connections))
            elapsed = time.perf_counter() - start
        finally:
            if reporter is not None:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
        # Still connected: every backend is alive and its CPU time is its own, not yet (and
        # maybe not ever, when read) folded into the postmaster's cutime.
        tree = process_tree(server.pid)
        cpu = cpu_seconds(tree) - cpu_before
        client_cpu = sum(os.times()[:2]) - client_before
        peak_rss = round(sum(peak_rss_mib(pid) for pid in tree), 1)

        total, entries, unexplained = await admin.fetchrow(
            "SELECT (SELECT sum(balance) FROM accounts), (SELECT count(*) FROM entries),"
            f" ({UNEXPLAINED})",
            OPENING_BALANCE,
        )
        books_ok = (
            total == OPENING_BALANCE * len(workload.names)
            and entries == tally.committed
            and unexplained == 0
        )
    finally:
        await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)
        await admin.close()

    per_1000 = 1000 / tally.committed if tally.committed else 0.0
    return {
        "system": SYSTEM,
        "clients": clients,
        "mode": "closed" if rate is None else "open",
        "offered_per_s": rate,
        "transfers": tally.committed,
        "rejected": tally.rejected,
        "retried": tally.retried,
        "elapsed_s": round(elapsed, 3),
        "transfers_per_s": round(tally.committed / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_ms": percentiles(tally.latencies),
        "cpu_s_per_1000": round(cpu * per_1000, 4),
        "client_cpu_s_per_1000": round(client_cpu * per_1000, 4),
        "peak_rss_mib": peak_rss,
        "postgres_processes": len(tree),
        "books_ok": books_ok,
        "settings": settings,
    }
