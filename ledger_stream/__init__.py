"""ledger_stream: a double-entry ledger whose system of record is a Kafka log."""

__version__ = "0.1.0"
