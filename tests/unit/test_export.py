"""The journal export without Kafka: events shaped into one row per posting that sum to the
journal's fold, repeats and times filtered out, CSV and Parquet written and read back with
their integer money intact, the DuckDB recipe run on both, and the progress shown."""

from __future__ import annotations

import csv
import datetime
import doctest
import io
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from agents.cli import main
from ledger_stream import export as export_module
from ledger_stream.export import (
    COLUMN_NAMES,
    CsvSink,
    ExportError,
    JournalExport,
    ParquetSink,
    ParquetUnavailable,
    Progress,
    Row,
    TimeRange,
    UnreadableEvent,
    open_sink,
    parse_time,
    rows_of,
    write_rows,
)
from ledger_stream.journal import fold
from ledger_stream.messages import JournalEvent, Limits, Posting, to_json

README = Path(__file__).resolve().parents[2] / "README.md"
DAY = 86_400_000
T0 = 1_795_000_000_000  # 2026-11-18T11:06:40Z
T0_DAY = 1_794_960_000_000  # 2026-11-18T00:00:00Z


def pair(debit: str, credit: str, amount: int) -> list[Posting]:
    return [Posting(account=debit, debit=amount), Posting(account=credit, credit=amount)]


def event(entry_id: str, kind: Any, account: str, ms: int, **fields: Any) -> JournalEvent:
    fields.setdefault("currency", "USD")
    fields.setdefault("postings", [])
    return JournalEvent(
        entry_id=entry_id,
        command_id=entry_id.split(":")[0],
        kind=kind,
        account=account,
        timestamp_ms=ms,
        **fields,
    )


# A small journal of two partitions over three UTC days: every shape of event there is.
PARTITION_0 = [
    event(
        "open-a:0",
        "account_opened",
        "alice",
        T0,
        overdraft_limit=500,
        limits=Limits(transaction_amount_max=100_000),
        low_balance=1_000,
    ),
    event(
        "dep-a:0",
        "deposit",
        "alice",
        T0 + 1,
        postings=pair("@world", "alice", 10_000),
        metadata={"order": "o-1", "channel": "wire"},
    ),
    event(
        "t-1:0",
        "transfer",
        "alice",
        T0 + 2,
        postings=pair("alice", "bob", 2_500),
        counterparty="bob",
    ),
    event(
        "t-2:0",
        "transfer_debit",
        "alice",
        T0 + DAY,
        postings=pair("alice", "@transit", 1_000),
        counterparty="carol",
    ),
    event(
        "h-1:0",
        "hold_placed",
        "alice",
        T0 + DAY + 1,
        hold_id="h-1",
        pending=pair("alice", "bob", 3_000),
        counterparty="bob",
    ),
    event(
        "p-1:0",
        "hold_posted",
        "alice",
        T0 + DAY + 2,
        hold_id="h-1",
        postings=pair("alice", "bob", 1_200),
        released=pair("alice", "bob", 3_000),
        counterparty="bob",
    ),
    event(
        "h-2:0",
        "hold_placed",
        "alice",
        T0 + DAY + 3,
        hold_id="h-2",
        pending=pair("alice", "bob", 400),
    ),
    event(
        "alias-b:0",
        "alias_registered",
        "alias:bob@example.com",
        T0 + DAY + 4,
        currency="",
        target="bob",
    ),
]
PARTITION_1 = [
    event(
        "t-2:1",
        "transfer_credit",
        "carol",
        T0 + DAY,
        postings=pair("@transit", "carol", 1_000),
        counterparty="alice",
    ),
    event(
        "rev-1:0",
        "reversal",
        "carol",
        T0 + 2 * DAY,
        postings=pair("carol", "alice", 300),
        reverses="t-2",
        counterparty="alice",
    ),
    event(
        "dep-d:0",
        "deposit",
        "dave",
        T0 + 2 * DAY,
        currency="JPY",
        postings=pair("@world", "dave", 7),
    ),
    event(
        "dep-k:0",
        "deposit",
        "kim",
        T0 + 2 * DAY + 1,
        currency="KWD",
        postings=pair("@world", "kim", 1_234),
    ),
    event("close-e:0", "account_closed", "erin", T0 + 2 * DAY + 2),
]
# Each partition is one chain: `seq` 1, 2, ...
JOURNAL = [
    (partition, msgspec.structs.replace(e, seq=seq))
    for partition, events in enumerate([PARTITION_0, PARTITION_1])
    for seq, e in enumerate(events, start=1)
]
EVENTS = [e for _, e in JOURNAL]


def all_rows() -> list[Row]:
    return [row for partition, e in JOURNAL for row in rows_of(partition, e)]


def sums(rows: list[Row], column: str) -> dict[tuple[str, str], int]:
    """`column` summed by (account, currency), over rows with an account, zeros left out."""
    total: dict[tuple[str, str], int] = defaultdict(int)
    for row in rows:
        if row["account"] is not None:
            total[(row["account"], row["currency"])] += int(row[column])
    return {key: value for key, value in total.items() if value}


def nonzero(amounts: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    return {key: value for key, value in amounts.items() if value}


# -- rows -------------------------------------------------------------------------------------


def test_rows_sum_to_the_journals_fold_balances_debits_credits_and_pending() -> None:
    rows, books = all_rows(), fold(EVENTS)
    assert sums(rows, "amount") == nonzero(books.balances)
    assert sums(rows, "debit") == nonzero(books.debits)
    assert sums(rows, "credit") == nonzero(books.credits)
    assert sums(rows, "pending_debit") == nonzero(books.debits_pending) == {("alice", "USD"): 400}
    assert sums(rows, "pending_credit") == nonzero(books.credits_pending) == {("bob", "USD"): 400}
    by_currency: dict[str, int] = defaultdict(int)
    for row in rows:
        by_currency[row["currency"]] += row["amount"]
    assert all(total == 0 for total in by_currency.values())


def test_every_event_has_rows_and_partition_entry_id_and_line_name_one_row() -> None:
    rows = all_rows()
    keys = [(row["partition"], row["entry_id"], row["line"]) for row in rows]
    assert len(keys) == len(set(keys))
    assert {(row["partition"], row["entry_id"]) for row in rows} == {
        (p, e.entry_id) for p, e in JOURNAL
    }
    assert all(set(row) == set(COLUMN_NAMES) for row in rows)


@pytest.mark.parametrize(
    ("entry_id", "expected"),
    [
        # (posting_type, account, debit, credit, amount, pending_debit, pending_credit)
        ("dep-a:0", [("posted", "@world", 10_000, 0, -10_000, 0, 0),
                     ("posted", "alice", 0, 10_000, 10_000, 0, 0)]),
        ("h-1:0", [("pending", "alice", 0, 0, 0, 3_000, 0),
                   ("pending", "bob", 0, 0, 0, 0, 3_000)]),
        ("p-1:0", [("posted", "alice", 1_200, 0, -1_200, 0, 0),
                   ("posted", "bob", 0, 1_200, 1_200, 0, 0),
                   ("released", "alice", 0, 0, 0, -3_000, 0),
                   ("released", "bob", 0, 0, 0, 0, -3_000)]),
        ("open-a:0", [(None, None, 0, 0, 0, 0, 0)]),
        ("alias-b:0", [(None, None, 0, 0, 0, 0, 0)]),
        ("close-e:0", [(None, None, 0, 0, 0, 0, 0)]),
    ],
)  # fmt: skip
def test_posted_pending_and_released_postings_and_events_without_any(
    entry_id: str, expected: list[tuple[Any, ...]]
) -> None:
    columns = ("posting_type", "account", "debit", "credit", "amount")
    columns += ("pending_debit", "pending_credit")
    rows = [row for row in all_rows() if row["entry_id"] == entry_id]
    assert [tuple(row[c] for c in columns) for row in rows] == expected
    assert [row["line"] for row in rows] == list(range(len(expected)))


def test_event_columns_repeat_on_each_row_with_json_text_and_utc_time() -> None:
    deposit = rows_of(*JOURNAL[1])
    assert {row["metadata"] for row in deposit} == {'{"channel":"wire","order":"o-1"}'}
    assert {(row["event_account"], row["seq"]) for row in deposit} == {("alice", 2)}
    assert deposit[0]["timestamp"] == datetime.datetime(2026, 11, 18, 11, 6, 40, 1000, datetime.UTC)
    opened = rows_of(*JOURNAL[0])[0]
    assert json.loads(opened["limits"]) == {"transaction_amount_max": 100_000}
    assert (opened["overdraft_limit"], opened["low_balance"], opened["metadata"]) == (
        500,
        1_000,
        None,
    )
    alias = rows_of(*JOURNAL[7])[0]
    assert (alias["currency"], alias["exponent"], alias["amount_decimal"], alias["target"]) == (
        None, None, None, "bob",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("entry_id", "account", "exponent", "decimal"),
    [
        ("dep-a:0", "@world", 2, "-100.00"),
        ("t-1:0", "bob", 2, "25.00"),
        ("dep-d:0", "dave", 0, "7"),
        ("dep-k:0", "kim", 3, "1.234"),
        ("h-1:0", "alice", 2, "0.00"),  # a reservation posts nothing
    ],
)
def test_amount_decimal_shows_minor_units_in_the_currencys_exponent(
    entry_id: str, account: str, exponent: int, decimal: str
) -> None:
    row = next(r for r in all_rows() if (r["entry_id"], r["account"]) == (entry_id, account))
    assert (row["exponent"], row["amount_decimal"]) == (exponent, decimal)


# -- records: repeats, tombstones, times ------------------------------------------------------


def test_a_repeat_on_its_partition_is_dropped_the_same_entry_id_elsewhere_is_kept() -> None:
    export = JournalExport()
    deposit = to_json(JOURNAL[1][1])
    assert len(export.take(0, 10, deposit)) == 2
    assert export.take(0, 11, deposit) == []  # re-sent after a crash
    assert export.take(0, 12, None) == []  # a tombstone
    assert len(export.take(1, 3, deposit)) == 2
    assert export.summary() == {
        "records": 4,
        "events": 2,
        "rows": 4,
        "repeats": 1,
        "outside_time_range": 0,
    }


def test_only_events_from_the_start_up_to_before_the_end_of_the_range_are_taken() -> None:
    export = JournalExport(TimeRange(T0 + DAY, T0 + 2 * DAY))
    taken = [e.entry_id for p, e in JOURNAL if export.take(p, 0, to_json(e))]
    assert taken == ["t-2:0", "h-1:0", "p-1:0", "h-2:0", "alias-b:0", "t-2:1"]
    assert (export.events, export.outside) == (6, len(JOURNAL) - 6)


def test_a_record_that_is_not_a_journal_event_stops_the_export_naming_where_it_is() -> None:
    with pytest.raises(UnreadableEvent, match="partition 3 offset 17"):
        JournalExport().take(3, 17, b'{"entry_id": "x"}')


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1795000000000", T0),
        ("0", 0),
        ("2026-11-18T11:06:40Z", T0),
        ("2026-11-18T11:06:40.001Z", T0 + 1),
        ("2026-11-18T11:06:40.001", T0 + 1),  # UTC unless it says
        ("2026-11-18T12:06:40+01:00", T0),
        ("2026-11-18", T0_DAY),
    ],
)
def test_times_are_epoch_milliseconds_or_iso_8601_in_utc(text: str, ms: int) -> None:
    assert parse_time(text) == ms


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "1.5e12", ""])
def test_a_time_that_is_neither_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time(text)


def test_a_range_that_ends_before_it_starts_is_refused() -> None:
    with pytest.raises(ValueError, match="must be before"):
        TimeRange(T0, T0)
    assert TimeRange(None, T0).holds(T0 - 1) and not TimeRange(None, T0).holds(T0)


def test_docstring_examples_hold() -> None:
    failed, attempted = doctest.testmod(export_module)
    assert attempted > 0 and failed == 0


# -- files ------------------------------------------------------------------------------------


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def test_csv_has_a_header_integer_money_empty_nulls_and_iso_times(tmp_path: Path) -> None:
    path = tmp_path / "journal.csv"
    write_rows(open_sink("csv", str(path)), all_rows())
    with path.open(encoding="utf-8") as file:
        assert file.readline().strip() == ",".join(COLUMN_NAMES)
    read = read_csv(path)
    assert len(read) == len(all_rows())
    assert sums([{**r, "account": r["account"] or None} for r in read], "amount") == nonzero(
        fold(EVENTS).balances
    )
    opened = read[0]
    assert (opened["posting_type"], opened["account"], opened["seq"]) == ("", "", "1")
    assert opened["timestamp"] == "2026-11-18T11:06:40.000Z"
    assert json.loads(read[1]["metadata"]) == {"channel": "wire", "order": "o-1"}
    assert not list(tmp_path.glob("*.partial"))


def test_parquet_keeps_money_in_int64_and_time_as_utc_milliseconds(tmp_path: Path) -> None:
    path = tmp_path / "journal.parquet"
    write_rows(open_sink("parquet", str(path)), all_rows())
    table = pq.read_table(path)
    assert table.column_names == list(COLUMN_NAMES)
    for name in ("debit", "credit", "amount", "pending_debit", "pending_credit", "timestamp_ms"):
        assert table.schema.field(name).type == pa.int64()
    assert table.schema.field("timestamp").type == pa.timestamp("ms", tz="UTC")
    assert table.to_pylist() == all_rows()
    # Summed with pyarrow: the same balances as the journal's fold.
    posted = table.filter(pc.equal(table["posting_type"], "posted"))
    grouped = posted.group_by(["account", "currency"]).aggregate([("amount", "sum")])
    balances = {
        (r["account"], r["currency"]): r["amount_sum"]
        for r in grouped.to_pylist()
        if r["amount_sum"]
    }
    assert balances == nonzero(fold(EVENTS).balances)


def test_parquet_row_groups_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_module, "ROWS_PER_GROUP_MAX", 4)
    path = tmp_path / "journal.parquet"
    sink = ParquetSink(path)
    for row in all_rows():
        sink.write([row])
    sink.close()
    metadata = pq.ParquetFile(path).metadata
    assert metadata.num_rows == len(all_rows())
    assert {metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)} <= {1, 2, 3, 4}
    assert metadata.num_row_groups == -(-len(all_rows()) // 4)


@pytest.mark.parametrize("file_format", ["csv", "parquet"])
def test_a_failed_export_leaves_no_file_behind(tmp_path: Path, file_format: str) -> None:
    path = tmp_path / f"journal.{file_format}"
    path.write_text("the previous export")

    def failing() -> Any:
        yield from all_rows()
        raise RuntimeError("lost the broker")

    with pytest.raises(RuntimeError):
        write_rows(open_sink(file_format, str(path)), failing())
    assert path.read_text() == "the previous export"
    assert not list(tmp_path.glob("*.partial"))


def test_csv_goes_to_standard_output_and_parquet_cannot(tmp_path: Path) -> None:
    out = io.StringIO()
    write_rows(CsvSink(None, out), all_rows()[:2])
    assert out.getvalue().count("\n") == 3
    with pytest.raises(ExportError, match="only --format csv"):
        open_sink("parquet", "-")
    with pytest.raises(ExportError, match="does not exist"):
        open_sink("csv", str(tmp_path / "missing" / "journal.csv"))


def test_parquet_without_pyarrow_names_the_extra_before_reaching_kafka(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ParquetUnavailable, match=re.escape("ledger-stream[export]")):
        open_sink("parquet", str(tmp_path / "journal.parquet"))
    output = str(tmp_path / "journal.parquet")
    code = main(
        ["export", "journal", "--format", "parquet", "-o", output, "--bootstrap", "localhost:1"]
    )
    assert code == 2
    assert "ledger-stream[export]" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--from", "yesterday"], "ISO 8601"),
        (["--from", "2026-11-20", "--to", "2026-11-19"], "must be before"),
        (["--format", "xlsx"], "invalid choice"),
    ],
)
def test_the_command_refuses_bad_flags_with_exit_2(
    flags: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["export", "journal", "--format", "csv", "--bootstrap", "localhost:1", *flags]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse refuses
        code = int(exit_.code or 0)
    assert code == 2
    assert says in capsys.readouterr().err


# -- the README's DuckDB recipe ---------------------------------------------------------------

BALANCES_BY_DAY = """\
SET TimeZone = 'UTC';
SELECT account, currency, day,
       SUM(net) OVER (PARTITION BY account, currency ORDER BY day) AS balance
FROM (
    SELECT account, currency, CAST(timestamp AS DATE) AS day, SUM(amount) AS net
    FROM 'journal.parquet'
    WHERE posting_type = 'posted'
    GROUP BY account, currency, day
)
ORDER BY account, currency, day;
"""

TOP_ACCOUNTS = """\
SELECT account, currency, COUNT(*) AS postings,
       SUM(debit) AS debits, SUM(credit) AS credits, SUM(debit + credit) AS volume
FROM 'journal.parquet'
WHERE posting_type = 'posted' AND account NOT LIKE '@%'
GROUP BY account, currency
QUALIFY row_number() OVER (PARTITION BY currency ORDER BY volume DESC, account) <= 10
ORDER BY currency, volume DESC, account;
"""


def query(sql: str, file_name: str) -> list[tuple[Any, ...]]:
    connection = duckdb.connect()
    statements = [s for s in sql.replace("journal.parquet", file_name).split(";") if s.strip()]
    for statement in statements[:-1]:
        connection.execute(statement)
    return connection.execute(statements[-1]).fetchall()


def expected_balances_by_day() -> list[tuple[Any, ...]]:
    """Each account's balance at the end of each UTC day it moved: the journal folded up to
    the end of that day, independently of the export's rows."""
    moved = {(p.account, e.currency, e.timestamp_ms // DAY) for e in EVENTS for p in e.postings}
    expected = []
    for account, currency, day in sorted(moved):
        books = fold(e for e in EVENTS if e.timestamp_ms < (day + 1) * DAY)
        date = datetime.date(1970, 1, 1) + datetime.timedelta(days=day)
        expected.append((account, currency, date, books.balance(account, currency)))
    return expected


def expected_top_accounts() -> list[tuple[Any, ...]]:
    volume: Counter[tuple[str, str]] = Counter()
    postings: Counter[tuple[str, str]] = Counter()
    books = fold(EVENTS)
    for e in EVENTS:
        for p in e.postings:
            if not p.account.startswith("@"):
                volume[(p.account, e.currency)] += p.debit + p.credit
                postings[(p.account, e.currency)] += 1
    ranked = sorted(volume, key=lambda key: (key[1], -volume[key], key[0]))
    return [
        (a, c, postings[(a, c)], books.debits[(a, c)], books.credits[(a, c)], volume[(a, c)])
        for a, c in ranked
    ]


@pytest.mark.parametrize("file_format", ["parquet", "csv"])
def test_the_duckdb_recipe_gives_balances_by_day_and_top_accounts(
    file_format: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_rows(open_sink(file_format, f"journal.{file_format}"), all_rows())
    by_day = query(BALANCES_BY_DAY, f"journal.{file_format}")
    assert by_day == expected_balances_by_day()
    # alice: 10,000 in and 2,500 out the first day; 1,000 and 1,200 out the second
    assert ("alice", "USD", datetime.date(2026, 11, 19), 5_300) in by_day
    assert query(TOP_ACCOUNTS, f"journal.{file_format}") == expected_top_accounts()


def readme_recipe() -> list[str]:
    """The SQL blocks of the README's 'Exporting the journal' section."""
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^### Exporting the journal\n(.*?)(?=^##+ )", text, re.S | re.M)
    if section is None:
        pytest.skip("the README has no 'Exporting the journal' section yet")
    return re.findall(r"```sql\n(.*?)```", section.group(1), re.S)


def test_the_readme_recipe_is_the_sql_tested_here() -> None:
    blocks = readme_recipe()
    tested = {BALANCES_BY_DAY, TOP_ACCOUNTS}
    # The README may carry comments; the statements must be the ones run above.
    uncommented = {
        "\n".join(line for line in b.splitlines() if not line.startswith("--")) + "\n"
        for b in blocks
    }
    assert tested <= uncommented


# -- progress ---------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_bar_is_redrawn_in_place_with_the_share_read() -> None:
    stream, clock = io.StringIO(), Clock()
    progress = Progress(stream, bar=True, clock=clock)
    progress.start(200)
    clock.now = 1.0
    progress.advance(50, 80)
    clock.now = 1.01  # too soon to redraw
    progress.advance(50, 70)
    progress.finish()
    frames = stream.getvalue().split("\r")[1:]
    assert len(frames) == 3 and frames[-1].endswith("\n")
    assert "  0%" in frames[0] and "[" + "." * 30 + "]" in frames[0]
    assert " 25%  50/200 records  80 rows" in frames[1]
    assert "[" + "#" * 15 + "." * 15 + "]" in frames[2]
    assert " 50%  100/200 records  150 rows" in frames[2]


def test_without_a_terminal_a_plain_line_comes_every_few_seconds() -> None:
    stream, clock = io.StringIO(), Clock()
    progress = Progress(stream, bar=False, clock=clock)
    progress.start(1_000)
    for second in range(1, 12):
        clock.now = float(second)
        progress.advance(10, 10)
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines == [
        "export: read   5%  50/1,000 records  50 rows",
        "export: read  10%  100/1,000 records  100 rows",
    ]
