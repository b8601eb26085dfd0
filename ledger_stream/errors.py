"""The exceptions an operator or a client can meet, each saying what to do about it."""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every error ledger_stream raises on purpose."""


class ConfigurationError(LedgerError):
    """A setting is wrong; the message names it (and its LEDGER_* variable)."""


class BrokerUnavailable(LedgerError):
    """Kafka could not be reached within the retry budget."""


class ResultTimeout(LedgerError):
    """A command's result did not arrive in time; it may still be decided later.

    Re-submitting the same command (same command_id and payload) is safe: the writer
    answers a repeat with the original outcome.
    """
