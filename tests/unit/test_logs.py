"""Repeated aiokafka errors while Kafka is away become one line per interval, with a count."""

import logging

from ledger_stream.logs import RepeatFolder


def record(name: str, msg: str) -> logging.LogRecord:
    return logging.makeLogRecord({"name": name, "msg": msg})


def test_repeats_are_folded_and_counted_in_the_next_line_passed() -> None:
    now = [0.0]
    folder = RepeatFolder(interval_s=5, clock=lambda: now[0])
    passed = [folder.filter(record("aiokafka.conn", "Unable connect")) for _ in range(4)]
    assert passed == [True, False, False, False]
    now[0] = 5.0
    later = record("aiokafka.conn", "Unable connect")
    assert folder.filter(later)
    assert later.getMessage() == "Unable connect (and 3 more like it in 5 s)"


def test_other_messages_and_other_loggers_pass() -> None:
    folder = RepeatFolder(interval_s=5, clock=lambda: 0.0)
    assert folder.filter(record("aiokafka.conn", "one"))
    assert folder.filter(record("aiokafka.conn", "two"))
    assert all(folder.filter(record("ledger_stream.worker", "same")) for _ in range(3))
