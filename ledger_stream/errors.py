"""The exceptions an operator or a client can meet, each saying what to do about it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ledger_stream.messages import Command

# How many command ids a message names before it says how many more there are.
NAMED_IDS_MAX = 5

RESUBMIT_ADVICE = (
    "Re-submitting the same command is safe (same command_id and payload): the writer "
    "answers a repeat with the original outcome."
)


class LedgerError(Exception):
    """Base of every error ledger_stream raises on purpose."""


class ConfigurationError(LedgerError):
    """A setting is wrong; the message names it (and its LEDGER_* variable)."""


class BrokerUnavailable(LedgerError):
    """Kafka could not be reached within the retry budget."""


class ResultTimeout(LedgerError):
    """A command's result did not arrive in time; it may still be decided later.

    Re-submitting the same command (same command_id and payload) is safe: the writer
    answers a repeat with the original outcome. `error.command` is that command, as sent.
    """

    def __init__(self, command: Command, timeout_s: float, *, attempts: int = 1) -> None:
        self.command = command
        self.command_id = command.command_id
        self.attempts = attempts
        each = f" on each of {attempts} attempts" if attempts > 1 else ""
        super().__init__(
            f"no result for command {command.command_id!r} within {timeout_s} s{each}; "
            f"is a worker running? {RESUBMIT_ADVICE}"
        )


class SendFailed(LedgerError):
    """Kafka did not confirm a record of commands: each may or may not have reached it.

    `command_ids` names the commands the record carried, and `records` counts everything it
    carried (values queued with `send_raw` have no id the client knows). On the error a `submit`
    raises, `command` is the one command it waited for, as sent, and `command_id` its id.
    Re-submitting the same command (same command_id and payload) is safe: the writer
    answers a repeat with the original outcome.
    """

    def __init__(
        self,
        command_ids: Sequence[str],
        cause: BaseException,
        *,
        records: int | None = None,
        command: Command | None = None,
    ) -> None:
        self.command_ids = tuple(command_ids)
        self.cause = cause
        self.records = len(self.command_ids) if records is None else records
        self.command = command
        self.command_id = self.command_ids[0] if len(self.command_ids) == 1 else None
        super().__init__(
            f"sending {_what(self.command_ids, self.records)} to Kafka failed ({cause!r}); "
            f"{'it' if self.records == 1 else 'each'} may or may not have reached Kafka. "
            f"{RESUBMIT_ADVICE}"
        )
        self.__cause__ = cause


def _what(command_ids: tuple[str, ...], records: int) -> str:
    """Names what a failed record carried: `command 'a'`, `commands 'a', 'b' and 1 raw record`."""
    named = ", ".join(repr(command_id) for command_id in command_ids[:NAMED_IDS_MAX])
    parts = []
    if command_ids:
        more = len(command_ids) - NAMED_IDS_MAX
        plural = "s" if len(command_ids) > 1 else ""
        parts.append(f"command{plural} {named}" + (f" and {more} more" if more > 0 else ""))
    raw = records - len(command_ids)
    if raw > 0:
        parts.append(f"{raw} raw record{'s' if raw > 1 else ''}")
    return " and ".join(parts)


class ReadFailed(LedgerError):
    """A read of the HTTP API was answered with a problem (application/problem+json):
    `status` is the HTTP status, `code` the ledger's or the API's code, `problem` the body."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.code = str(problem.get("code", "")) or None
        super().__init__(f"HTTP {status} {self.code}: {problem.get('detail', '')}")
