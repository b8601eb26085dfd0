"""What the benchmark reads about processes and latencies (Linux /proc; zero elsewhere)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p95, p99 and max of `seconds`, in milliseconds (nearest rank)."""
    if not seconds:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(seconds)

    def rank(share: float) -> float:
        index = min(len(ordered) - 1, max(0, int(share * len(ordered) + 0.999999) - 1))
        return round(ordered[index] * 1000, 2)

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99), "max": rank(1.0)}


def process_tree(pid: int) -> list[int]:
    """`pid` and every process descended from it that is alive now."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = _stat_fields(int(entry.name))
        except (OSError, ValueError):
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def cpu_seconds(pids: Iterable[int]) -> float:
    """User plus system CPU time the processes have used, counting their reaped children."""
    total = 0.0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except (OSError, ValueError):
            continue
        # utime, stime, cutime, cstime: fields 14 to 17 of /proc/<pid>/stat
        total += sum(int(value) for value in fields[11:15]) / _TICKS
    return total


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory (VmHWM), in MiB."""
    return _status_mib(pid, "VmHWM:")


def rss_mib(pid: int) -> float:
    """The process's resident memory now (VmRSS), in MiB."""
    return _status_mib(pid, "VmRSS:")


def _status_mib(pid: int, key: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name (which may hold spaces): state is [0]."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()
