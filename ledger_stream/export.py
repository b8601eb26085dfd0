"""Exporting the journal for analysts: every event from offset 0 to each partition's true end,
as rows of a CSV or Parquet file, one row per posting, money in integer minor units.

Shaping rows (`rows_of`, `JournalExport.take`) and writing them (`CsvSink`, `ParquetSink`) do
no Kafka I/O; `export_journal` reads the topic and hands each batch of records on.
"""

from __future__ import annotations

import csv
import datetime
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from ledger_stream.errors import BrokerUnavailable, ConfigurationError, LedgerError
from ledger_stream.kafka.reading import read_range, true_ends
from ledger_stream.messages import JournalEvent, Posting, from_json
from ledger_stream.money import CURRENCY_EXPONENTS, format_amount
from ledger_stream.topics import TopicNames, connected_reader

if TYPE_CHECKING:
    from ledger_stream.settings import Settings

logger = logging.getLogger(__name__)

FORMATS = ("parquet", "csv")
# Rows a Parquet row group holds (and a CSV write takes) at most: bounds the memory an export
# holds, whatever the journal's size.
ROWS_PER_GROUP_MAX = 65_536
PROGRESS_BAR_WIDTH = 30
PROGRESS_REDRAW_S = 0.1
PROGRESS_LINE_EVERY_S = 5.0

Row = dict[str, Any]

# Every column, in file order, with its Parquet type (CSV writes the same columns as text).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("partition", "int32"),
    ("seq", "int64"),
    ("entry_id", "string"),
    ("line", "int32"),
    ("command_id", "string"),
    ("kind", "string"),
    ("event_account", "string"),
    ("posting_type", "string"),
    ("account", "string"),
    ("currency", "string"),
    ("exponent", "int32"),
    ("debit", "int64"),
    ("credit", "int64"),
    ("amount", "int64"),
    ("amount_decimal", "string"),
    ("pending_debit", "int64"),
    ("pending_credit", "int64"),
    ("timestamp", "timestamp"),
    ("timestamp_ms", "int64"),
    ("counterparty", "string"),
    ("hold_id", "string"),
    ("invoice_id", "string"),
    ("reverses", "string"),
    ("target", "string"),
    ("overdraft_limit", "int64"),
    ("low_balance", "int64"),
    ("limits", "string"),
    ("metadata", "string"),
)
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)

_SORTED_JSON = msgspec.json.Encoder(order="sorted")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MILLISECOND = datetime.timedelta(milliseconds=1)


class ExportError(LedgerError):
    """The export could not be made; the message says why and what to do."""


class ParquetUnavailable(ExportError):
    """`--format parquet` without pyarrow installed."""


class UnreadableEvent(LedgerError):
    """A journal record that is not a journal event: the journal, not the export, is wrong."""


# -- times ------------------------------------------------------------------------------------


def parse_time(text: str) -> int:
    """Milliseconds since 1970 (UTC), from epoch milliseconds or an ISO 8601 time or date
    (UTC unless it says otherwise).

    >>> parse_time("1764264502840"), parse_time("2025-11-27T17:28:22.840Z")
    (1764264502840, 1764264502840)
    >>> parse_time("2025-11-27")
    1764201600000
    """
    raw = text.strip()
    if raw.lstrip("-").isdigit() and len(raw) <= 16:
        return int(raw)
    try:
        moment = datetime.datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither milliseconds since 1970 nor an ISO 8601 time "
            "(2026-11-27, 2026-11-27T17:28:22Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return (moment - _EPOCH) // _MILLISECOND


def utc_time(ms: int) -> datetime.datetime:
    return _EPOCH + ms * _MILLISECOND


def iso_time(moment: datetime.datetime) -> str:
    """`2026-11-27T17:28:22.840Z`: UTC to the millisecond, as the ledger's other tools show."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class TimeRange:
    """Events whose `timestamp_ms` is at or after `from_ms` and before `to_ms` (either open)."""

    from_ms: int | None = None
    to_ms: int | None = None

    def __post_init__(self) -> None:
        if self.from_ms is not None and self.to_ms is not None and self.from_ms >= self.to_ms:
            raise ValueError(
                f"--from ({iso_time(utc_time(self.from_ms))}) must be before --to "
                f"({iso_time(utc_time(self.to_ms))})"
            )

    def holds(self, timestamp_ms: int) -> bool:
        return (self.from_ms is None or timestamp_ms >= self.from_ms) and (
            self.to_ms is None or timestamp_ms < self.to_ms
        )


# -- rows -------------------------------------------------------------------------------------


def rows_of(partition: int, event: JournalEvent) -> list[Row]:
    """The rows of one journal event: one per posting, posted ones first, then what a hold
    reserves (`pending`) or releases (`released`); one row without a posting for an event
    that has none of these (account_opened, account_closed, limits_set, alias_registered).

    `debit`, `credit` and `amount` (credit - debit) count posted money only, so summing
    `amount` by account and currency gives balances; `pending_debit` and `pending_credit`
    count reservations (+ reserved, - released), so summing them gives what holds still
    reserve. Every other column repeats the event's.
    """
    shared = _event_columns(partition, event)
    postings: list[tuple[str, Posting]] = [
        *(("posted", p) for p in event.postings),
        *(("pending", p) for p in event.pending or ()),
        *(("released", p) for p in event.released or ()),
    ]
    if not postings:
        return [{**shared, **_no_posting(shared["currency"]), "line": 0}]
    return [
        {**shared, **_posting_columns(posting_type, posting, event.currency), "line": line}
        for line, (posting_type, posting) in enumerate(postings)
    ]


def _event_columns(partition: int, event: JournalEvent) -> Row:
    currency = event.currency or None  # alias_registered has none
    return {
        "partition": partition,
        "seq": event.seq,
        "entry_id": event.entry_id,
        "command_id": event.command_id,
        "kind": event.kind,
        "event_account": event.account,
        "currency": currency,
        "exponent": None if currency is None else CURRENCY_EXPONENTS.get(currency),
        "timestamp": utc_time(event.timestamp_ms),
        "timestamp_ms": event.timestamp_ms,
        "counterparty": event.counterparty,
        "hold_id": event.hold_id,
        "invoice_id": event.invoice_id,
        "reverses": event.reverses,
        "target": event.target,
        "overdraft_limit": event.overdraft_limit,
        "low_balance": event.low_balance,
        "limits": None if event.limits is None else _SORTED_JSON.encode(event.limits).decode(),
        "metadata": None if not event.metadata else _SORTED_JSON.encode(event.metadata).decode(),
    }


def _posting_columns(posting_type: str, posting: Posting, currency: str) -> Row:
    posted = posting_type == "posted"
    sign = -1 if posting_type == "released" else 1
    amount = posting.credit - posting.debit if posted else 0
    return {
        "posting_type": posting_type,
        "account": posting.account,
        "debit": posting.debit if posted else 0,
        "credit": posting.credit if posted else 0,
        "amount": amount,
        "amount_decimal": _decimal(amount, currency),
        "pending_debit": 0 if posted else sign * posting.debit,
        "pending_credit": 0 if posted else sign * posting.credit,
    }


def _no_posting(currency: str | None) -> Row:
    return {
        "posting_type": None,
        "account": None,
        "debit": 0,
        "credit": 0,
        "amount": 0,
        "amount_decimal": None if currency is None else _decimal(0, currency),
        "pending_debit": 0,
        "pending_credit": 0,
    }


def _decimal(amount: int, currency: str) -> str | None:
    return format_amount(amount, currency) if currency in CURRENCY_EXPONENTS else None


@dataclass
class JournalExport:
    """An export's progress through the journal's records (a pure step: records in, rows out).

    A re-sent event has the entry id, bytes and partition of the first copy: copies are
    recognised by (partition, entry id), as `read_journal` recognises them, and the first one
    read is kept (the same bytes as the last, which compaction keeps).
    """

    time_range: TimeRange = field(default_factory=TimeRange)
    seen: set[tuple[int, str]] = field(default_factory=set)
    records: int = 0
    events: int = 0
    repeats: int = 0
    outside: int = 0
    rows: int = 0

    def take(self, partition: int, offset: int, value: bytes | None) -> list[Row]:
        """The rows of one journal record: none for a tombstone, a repeat, or an event
        outside the time range."""
        self.records += 1
        if value is None:
            return []
        try:
            event = from_json(value, JournalEvent)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            raise UnreadableEvent(
                f"the journal record at partition {partition} offset {offset} is not a journal "
                f"event ({error}); nothing was exported. `ledger-stream audit` checks the journal"
            ) from error
        key = (partition, event.entry_id)
        if key in self.seen:
            self.repeats += 1
            return []
        self.seen.add(key)
        if not self.time_range.holds(event.timestamp_ms):
            self.outside += 1
            return []
        self.events += 1
        rows = rows_of(partition, event)
        self.rows += len(rows)
        return rows

    def summary(self) -> dict[str, int]:
        return {
            "records": self.records,
            "events": self.events,
            "rows": self.rows,
            "repeats": self.repeats,
            "outside_time_range": self.outside,
        }


# -- files ------------------------------------------------------------------------------------


class Sink(Protocol):
    """Where rows go. Written to a `.partial` file that `close` renames into place, so a
    failed export leaves no file that looks complete."""

    def write(self, rows: Sequence[Row]) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


class CsvSink:
    """RFC 4180 CSV with a header row; an empty field is null; times as
    `2026-11-27T17:28:22.840Z`. `path` None writes to `stream` (standard output)."""

    def __init__(self, path: Path | None, stream: IO[str] | None = None) -> None:
        self.path = path
        if path is None:
            self._file = stream or sys.stdout
        else:
            self._file = open(_partial(path), "w", newline="", encoding="utf-8")  # noqa: SIM115
        self._writer = csv.writer(self._file, lineterminator="\n")
        self._writer.writerow(COLUMN_NAMES)

    def write(self, rows: Sequence[Row]) -> None:
        self._writer.writerows([_csv_field(row[name]) for name in COLUMN_NAMES] for row in rows)

    def close(self) -> None:
        if self.path is None:
            self._file.flush()
            return
        self._file.close()
        os.replace(_partial(self.path), self.path)

    def abort(self) -> None:
        if self.path is not None:
            self._file.close()
            _partial(self.path).unlink(missing_ok=True)


def _csv_field(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, datetime.datetime):
        return iso_time(value)
    return value


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as error:
        raise ParquetUnavailable(
            "--format parquet needs pyarrow, which is not installed: install the export "
            "extra (pip install 'ledger-stream[export]'), or use --format csv"
        ) from error
    return pyarrow


def parquet_schema() -> Any:
    """The Parquet schema of an export (needs pyarrow)."""
    pa = _pyarrow()
    types = {
        "int32": pa.int32(),
        "int64": pa.int64(),
        "string": pa.string(),
        "timestamp": pa.timestamp("ms", tz="UTC"),
    }
    return pa.schema([pa.field(name, types[kind]) for name, kind in COLUMNS])


class ParquetSink:
    """A Parquet file (zstd), one row group per `ROWS_PER_GROUP_MAX` rows at most."""

    def __init__(self, path: Path) -> None:
        pa = _pyarrow()
        self.path = path
        self._pa = pa
        self._schema = parquet_schema()
        self._pending: list[Row] = []
        self._writer = pa.parquet.ParquetWriter(
            str(_partial(path)), self._schema, compression="zstd"
        )

    def write(self, rows: Sequence[Row]) -> None:
        self._pending.extend(rows)
        while len(self._pending) >= ROWS_PER_GROUP_MAX:
            self._flush(self._pending[:ROWS_PER_GROUP_MAX])
            del self._pending[:ROWS_PER_GROUP_MAX]

    def _flush(self, rows: list[Row]) -> None:
        self._writer.write_table(self._pa.Table.from_pylist(rows, schema=self._schema))

    def close(self) -> None:
        if self._pending:
            self._flush(self._pending)
            self._pending = []
        self._writer.close()
        os.replace(_partial(self.path), self.path)

    def abort(self) -> None:
        self._writer.close()
        _partial(self.path).unlink(missing_ok=True)


def open_sink(file_format: str, output: str) -> Sink:
    """The sink of `file_format` writing `output` (`-`: standard output, CSV only)."""
    if file_format not in FORMATS:
        raise ExportError(f"unknown format {file_format!r}; expected one of {FORMATS}")
    if output == "-":
        if file_format != "csv":
            raise ExportError("only --format csv can be written to standard output (-o -)")
        return CsvSink(None)
    path = Path(output)
    if not path.parent.is_dir():
        raise ExportError(f"cannot write {path}: the directory {path.parent} does not exist")
    return ParquetSink(path) if file_format == "parquet" else CsvSink(path)


def write_rows(sink: Sink, rows: Iterable[Row]) -> None:
    """Write `rows` to `sink` and close it; on any failure the partial file is removed."""
    try:
        batch: list[Row] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= ROWS_PER_GROUP_MAX:
                sink.write(batch)
                batch = []
        sink.write(batch)
    except BaseException:
        sink.abort()
        raise
    sink.close()


# -- progress ---------------------------------------------------------------------------------


class Progress:
    """How far an export has read, on `stream` (standard error): a bar redrawn in place when
    `bar` (a terminal, or --progress), else a plain line every `PROGRESS_LINE_EVERY_S`."""

    def __init__(
        self,
        stream: IO[str],
        *,
        bar: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.bar = bar
        self.clock = clock
        self.total = 0
        self.done = 0
        self.rows = 0
        self._shown_at: float | None = None

    def start(self, total: int) -> None:
        self.total = total
        self._shown_at = self.clock()
        if self.bar:
            self._draw()

    def advance(self, records: int, rows: int) -> None:
        self.done += records
        self.rows += rows
        now = self.clock()
        every = PROGRESS_REDRAW_S if self.bar else PROGRESS_LINE_EVERY_S
        if self._shown_at is None or now - self._shown_at >= every:
            self._shown_at = now
            self._draw()

    def finish(self) -> None:
        if self.bar:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

    def text(self) -> str:
        share = self.done / self.total if self.total else 1.0
        figures = f"{share:4.0%}  {self.done:,}/{self.total:,} records  {self.rows:,} rows"
        if not self.bar:
            return f"export: read {figures}"
        filled = round(share * PROGRESS_BAR_WIDTH)
        return f"journal [{'#' * filled}{'.' * (PROGRESS_BAR_WIDTH - filled)}] {figures}"

    def _draw(self) -> None:
        self.stream.write(f"\r{self.text()}" if self.bar else f"{self.text()}\n")
        self.stream.flush()


# -- reading ----------------------------------------------------------------------------------


async def export_journal(
    settings: Settings, sink: Sink, export: JournalExport, progress: Progress
) -> JournalExport:
    """Read every journal partition from its log start to its true end (taken when the read
    starts) and write the rows of its events to `sink`, closing it; on failure the partial
    file is removed and nothing is left at the output path."""
    try:
        await _read_into(settings, sink, export, progress)
    except BaseException:
        sink.abort()
        raise
    sink.close()
    progress.finish()
    return export


async def _read_into(
    settings: Settings, sink: Sink, export: JournalExport, progress: Progress
) -> None:
    topic = TopicNames.from_settings(settings).journal

    consumer = await connected_reader(settings)
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in _partitions(consumer, topic, settings)]
        ends = await true_ends(consumer, tps)
        starts = await consumer.beginning_offsets(tps)
        progress.start(sum(ends[tp] - starts[tp] for tp in tps))
        async for records in read_range(consumer, starts, ends):
            rows = [row for r in records for row in export.take(r.partition, r.offset, r.value)]
            sink.write(rows)
            progress.advance(len(records), len(rows))
    except KafkaError as error:
        raise BrokerUnavailable(
            f"lost Kafka at {settings.bootstrap_servers} while reading {topic} ({error}); "
            "run the export again once the broker answers"
        ) from error
    finally:
        await consumer.stop()
    logger.debug("exported %s", export.summary())


def _partitions(consumer: AIOKafkaConsumer, topic: str, settings: Settings) -> list[int]:
    numbers = sorted(consumer.partitions_for_topic(topic) or ())
    if not numbers:
        raise ConfigurationError(
            f"topic {topic!r} does not exist; check the topic prefix (--prefix, "
            f"LEDGER_TOPIC_PREFIX is {settings.topic_prefix!r})"
        )
    return numbers
