"""Crash points on the write path, for the fault suite: a worker started with
`LEDGER_FAULT_POINT=<point>` (and `LEDGER_FAULT_AFTER=<n>`, default 1) exits at once, the
n-th time it reaches that point, as if it had been killed there; with
`LEDGER_FAULT_ACTION=hang` its writer stops there instead, for good, while the rest of the
process (HTTP, metrics, the progress watch) goes on. Unset, nothing happens.
"""

from __future__ import annotations

import asyncio
import logging
import os

logger = logging.getLogger(__name__)

# In the order a batch reaches them; `claimed` is on the way in, after a restore.
POINTS = (
    "claimed",  # a new owner's claim is acked, before it decides anything
    "decided",  # a batch is decided, nothing written
    "commit-sent",  # the first state commit is handed to the producer, not yet acked
    "between-commits",  # one partition's commit is acked, the next not yet sent
    "committed",  # every commit is acked, the local store not yet written
    "applied",  # the local store is written, no output sent
    "outputs-partly-sent",  # some outputs are acked, not all
    "outputs-sent",  # every output is acked, the input not yet acknowledged
    "snapshot-part-archived",  # a part of a snapshot's outcomes is archived and made compact
    "snapshot-part-written",  # a record of a snapshot is acked, not its last
)
EXIT_FAULT = 86
ACTIONS = ("exit", "hang")


class Faults:
    def __init__(self, point: str | None = None, after: int = 1, action: str = "exit") -> None:
        if point is not None and point not in POINTS:
            raise ValueError(f"unknown fault point {point!r}; one of {', '.join(POINTS)}")
        self.point = point
        self.remaining = after
        self.action = action

    def reached(self, point: str) -> None:
        """Exit here if this is the point and its turn (a hang waits for `passed`)."""
        if point != self.point or self.action != "exit":
            return
        self.remaining -= 1
        if self.remaining <= 0:
            logger.critical("fault injected at %r: exiting with code %d", point, EXIT_FAULT)
            logging.shutdown()
            os._exit(EXIT_FAULT)

    async def passed(self, point: str) -> None:
        """`reached`, or with the hang action, never return from the point's turn."""
        if point == self.point and self.action == "hang":
            self.remaining -= 1
            if self.remaining <= 0:
                logger.critical("fault injected at %r: the writer hangs here", point)
                await asyncio.Event().wait()
        self.reached(point)
