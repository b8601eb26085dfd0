"""Log lines an operator can read while Kafka is away: aiokafka retries every 100 ms and
logs each failure, so repeats of one message are folded into one line per interval."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

REPEAT_INTERVAL_S = 5.0


class RepeatFolder(logging.Filter):
    """Passes a message once per `interval_s`; the next one passed says how many were folded.

    >>> folder = RepeatFolder(interval_s=60)
    >>> record = logging.makeLogRecord({"name": "aiokafka", "msg": "Unable to connect"})
    >>> [folder.filter(record) for _ in range(3)]
    [True, False, False]
    """

    def __init__(
        self,
        interval_s: float = REPEAT_INTERVAL_S,
        prefix: str = "aiokafka",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.prefix = prefix
        self.clock = clock
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefix):
            return True
        key = (record.name, str(record.msg))
        now = self.clock()
        last, folded = self._seen.get(key, (float("-inf"), 0))
        if now - last < self.interval_s:
            self._seen[key] = (last, folded + 1)
            return False
        self._seen[key] = (now, 0)
        if folded:
            record.msg = f"{record.msg} (and {folded} more like it in {self.interval_s:.0f} s)"
        return True


def fold_repeats(logger: logging.Logger) -> None:
    """Fold repeated aiokafka messages on every handler of `logger` (the root, usually)."""
    folder = RepeatFolder()
    for handler in logger.handlers:
        handler.addFilter(folder)
