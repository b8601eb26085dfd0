"""The `ledger-stream` command: broker, worker, demo, bench, audit, rebuild, topics, tail, lag,
export, soak."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from ledger_stream.errors import ConfigurationError, LedgerError
from ledger_stream.settings import Settings

logger = logging.getLogger(__name__)

EXIT_CONFIG = 2
T = TypeVar("T")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    try:
        return int(args.run(args) or 0)
    except ValidationError as error:
        print(f"configuration error: {_describe_settings_error(error)}", file=sys.stderr)
        return EXIT_CONFIG
    except (_CouldNotRun, ConfigurationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except LedgerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 128 + (_terminated[0] if _terminated else signal.SIGINT)


class _CouldNotRun(Exception):
    """A command that could not run (Kafka away, a bad setting, a topic missing): not a
    verdict, so it exits 2, and 1 keeps meaning a check failed or a difference was found."""


def _ran(work: Coroutine[Any, Any, T], *also: type[Exception]) -> T:
    """`asyncio.run(work)`, Kafka out of reach (and `also`) raised as `_CouldNotRun`; a bad
    setting is answered by `main` for every command alike."""
    import asyncio

    from ledger_stream.errors import BrokerUnavailable

    errors: tuple[type[Exception], ...] = (BrokerUnavailable, *also)
    try:
        return asyncio.run(work)
    except errors as error:
        raise _CouldNotRun(str(error)) from error


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ledger-stream", description="A double-entry ledger on Kafka."
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    broker = commands.add_parser("broker", help="run the embedded Kafka-compatible broker")
    broker.add_argument("--port", type=_port, default=None, help="port (default: a free one)")
    broker.set_defaults(run=_broker)

    worker = commands.add_parser("worker", help="run a ledger worker (creates missing topics)")
    worker.add_argument("--bootstrap", help="Kafka bootstrap servers (LEDGER_BOOTSTRAP_SERVERS)")
    worker.add_argument("--data-dir", type=Path, help="local state directory (LEDGER_DATA_DIR)")
    worker.add_argument(
        "--web-port", type=int, help="HTTP port, 0 for a free one (LEDGER_WEB_PORT)"
    )
    worker.add_argument("--partitions", type=int, help="partition count (LEDGER_PARTITIONS)")
    worker.set_defaults(run=_worker)

    demo = commands.add_parser(
        "demo", help="run a broker, workers and a load, then check the books"
    )
    demo.add_argument("--accounts", type=int, default=200)
    demo.add_argument("--transfers", type=int, default=20_000)
    demo.add_argument("--workers", type=int, default=1)
    demo.add_argument("--bootstrap", help="use this Kafka instead of starting the embedded broker")
    demo.add_argument("--partitions", type=int, default=None)
    demo.add_argument("--json", action="store_true", help="last line: one JSON object of figures")
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(run=_demo)

    bench = commands.add_parser(
        "bench",
        help="measure transfers a second, latency and cost, end to end (figures, not pass/fail)",
        description="Open the accounts, then publish transfers for --duration seconds and "
        "report transfers a second, latency from publish to result (p50, p95, p99, max), CPU "
        "seconds per 1,000 transfers of the workers and the broker, and the workers' memory. "
        "Closed loop (as fast as answered, --in-flight outstanding) unless --rate is given.",
    )
    bench.add_argument("--accounts", type=int, default=10_000)
    bench.add_argument(
        "--hot", action="store_true", help="10 accounts take all the traffic (contention)"
    )
    bench.add_argument(
        "--cross",
        type=float,
        default=None,
        help="share of transfers across partitions, 0 to 1 (default: accounts paired at "
        "random, so 7 in 8 cross with 8 partitions)",
    )
    bench.add_argument(
        "--rate", type=float, default=None, help="open loop: offer this many transfers a second"
    )
    bench.add_argument(
        "--in-flight",
        type=int,
        default=5000,
        help="closed loop: transfers outstanding at once (1: one at a time, for latency)",
    )
    bench.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    bench.add_argument(
        "--readers",
        type=int,
        default=4,
        help="readers of balances and histories over HTTP while the transfers run, one request "
        "at a time each (0: no reads)",
    )
    bench.add_argument("--workers", type=int, default=1)
    bench.add_argument("--partitions", type=int, default=8)
    bench.add_argument(
        "--compare",
        action="store_true",
        help="also run the workload with batching off and on a row-locking PostgreSQL ledger",
    )
    bench.add_argument(
        "--pg-clients", type=int, default=20, help="--compare: PostgreSQL client connections"
    )
    bench.add_argument("--bootstrap", help="use this Kafka instead of starting the embedded broker")
    bench.add_argument("--json", action="store_true", help="last line: one JSON object of figures")
    bench.add_argument("--seed", type=int, default=11)
    bench.add_argument(
        "--writer-only",
        action="store_true",
        help="the writer's own CPU per transfer, without Kafka: its batch path fed in memory "
        "(repeatable; compare versions of the writer with it)",
    )
    bench.add_argument(
        "--batches", type=int, default=100, help="--writer-only: batches of 2,000 transfers"
    )
    bench.set_defaults(run=_bench)

    audit = commands.add_parser(
        "audit",
        help="read every topic of a ledger to its end and check the books",
        description="Read the commands, state, journal and results topics from the start to "
        "their true end and check the books: every event balances, each currency sums to "
        "zero, @transit holds what is in transit, the journal chains hold, no account went "
        "past its floor, every command has one outcome, and the writers' state is the fold "
        "of the journal. Exact on a quiet ledger; on a busy one, run it again before "
        "believing a failure.",
        epilog="exit status: 0 the books hold, 1 a check failed, 2 the audit could not run",
    )
    audit.add_argument("--bootstrap", help="Kafka bootstrap servers (LEDGER_BOOTSTRAP_SERVERS)")
    audit.add_argument("--prefix", help="topic name prefix (LEDGER_TOPIC_PREFIX)")
    audit.add_argument("--partitions", type=int, help="partition count (LEDGER_PARTITIONS)")
    audit.add_argument("--json", action="store_true", help="print one JSON object")
    audit.set_defaults(run=_audit)

    rebuild = commands.add_parser(
        "rebuild",
        help="fold the journal again into fresh read models and compare them with the live ones",
        description="Fold every journal partition from offset 0 into fresh read models "
        "(balances, history, daily summaries, aliases, flags) up to the offset the live read "
        "models of this data directory have reached, and compare the two key for key. The "
        "live ones are read as they are written (a RocksDB secondary): the worker goes on. "
        "With --replace (worker stopped), the fresh ones take their place.",
        epilog="exit status: 0 identical, 1 a difference (listed), 2 could not run",
    )
    rebuild.add_argument("--bootstrap", help="Kafka bootstrap servers (LEDGER_BOOTSTRAP_SERVERS)")
    rebuild.add_argument("--prefix", help="topic name prefix (LEDGER_TOPIC_PREFIX)")
    rebuild.add_argument("--partitions", type=int, help="partition count (LEDGER_PARTITIONS)")
    rebuild.add_argument("--data-dir", type=Path, help="the worker's directory (LEDGER_DATA_DIR)")
    rebuild.add_argument(
        "--into", type=Path, default=None, help="keep the fresh fold in this directory"
    )
    rebuild.add_argument(
        "--replace", action="store_true", help="put the fresh fold in place of the live one"
    )
    rebuild.add_argument("--json", action="store_true", help="print one JSON object")
    rebuild.set_defaults(run=_rebuild)

    topics = commands.add_parser(
        "topics",
        help="create the ledger's topics, or compare them with what the ledger expects",
    )
    topic_commands = topics.add_subparsers(required=True, metavar="ACTION")
    create = topic_commands.add_parser(
        "create",
        help="create the missing topics with their layouts (as a worker does at start)",
        epilog="exit status: 0 created or already there, 2 could not (an existing topic with "
        "another partition count is refused)",
    )
    describe = topic_commands.add_parser(
        "describe",
        help="each topic as the broker reports it, against what the ledger expects",
        description="For each topic the ledger expects: whether it exists, its partitions, "
        "replication factor and the configs its layout sets (cleanup.policy, retention.ms, "
        "...), as the broker reports them, against what the ledger expects; each difference "
        "named. A config the broker does not report is shown as such, and not checked.",
        epilog="exit status: 0 every topic as expected, 1 a difference (listed), 2 could not run",
    )
    for action, run in ((create, _topics_create), (describe, _topics_describe)):
        _add_ledger_flags(action)
        action.add_argument(
            "--partitions", type=int, help="partitions expected (LEDGER_PARTITIONS)"
        )
        action.add_argument("--json", action="store_true", help="print one JSON object")
        action.set_defaults(run=run)

    tail = commands.add_parser(
        "tail",
        help="print a topic's records as they come, one line each",
        description="Print the records of one of the ledger's topics, one line each: "
        "partition, offset, record time (UTC), key and the value (JSON compacted). From the "
        "end of each partition on (only new records) unless --from-beginning; Ctrl-C or "
        "SIGTERM stops it (exit 0).",
    )
    tail.add_argument(
        "topic",
        metavar="TOPIC",
        help="short name of a ledger topic: commands, legs, journal, results, deadletter, "
        "state, outcomes, receipts, notifications, undelivered, flags",
    )
    _add_ledger_flags(tail)
    tail.add_argument(
        "--account",
        help="only records naming this account (the key, or account, destination, source, "
        "counterparty, payer or payee in the value)",
    )
    tail.add_argument(
        "--from-beginning", action="store_true", help="from the start of each partition"
    )
    tail.add_argument("--limit", type=_positive, help="stop after this many records shown")
    tail.add_argument("--json", action="store_true", help="one JSON object a record")
    tail.set_defaults(run=_tail)

    lag = commands.add_parser(
        "lag",
        help="per consumer group of the ledger and partition: committed offset, end, lag",
        description="For the writers' group (commands, legs) and the notifier's "
        "(notifications), per partition: the committed offset, the partition's true end (the "
        "high watermark of a Fetch, exact on the embedded broker too) and the records between.",
    )
    _add_ledger_flags(lag)
    lag.add_argument("--json", action="store_true", help="print one JSON object")
    lag.set_defaults(run=_lag)

    export = commands.add_parser(
        "export",
        help="write the journal to a file for analysts (Parquet or CSV, one row per posting)",
    )
    exports = export.add_subparsers(required=True, metavar="WHAT")
    journal = exports.add_parser(
        "journal",
        help="every journal event, one row per posting, as Parquet or CSV",
        description="Read the journal from offset 0 to each partition's true end, once each "
        "event (deduplicated by partition and entry id), and write one row per posting: "
        "posted ones (debit, credit, amount = credit - debit, in integer minor units), what "
        "holds reserve or release (pending_debit, pending_credit), and one row without a "
        "posting for an event that has none. Summing amount by account and currency gives "
        "the balances. Progress goes to stderr.",
        epilog="exit status: 0 exported, 1 the journal holds a record that is not an event, "
        "2 could not run (settings, broker, pyarrow missing for parquet)",
    )
    journal.add_argument("--format", required=True, choices=("parquet", "csv"))
    journal.add_argument(
        "--from",
        dest="from_time",
        metavar="TIME",
        type=_time,
        help="only events at or after TIME: ISO 8601 (UTC unless it says) or ms since 1970",
    )
    journal.add_argument(
        "--to",
        dest="to_time",
        metavar="TIME",
        type=_time,
        help="only events before TIME: ISO 8601 (UTC unless it says) or ms since 1970",
    )
    journal.add_argument(
        "--output",
        "-o",
        metavar="PATH",
        help="the file to write (default journal.parquet or journal.csv; - : stdout, csv only)",
    )
    journal.add_argument(
        "--progress",
        action="store_true",
        help="draw the progress bar even when stderr is not a terminal",
    )
    _add_ledger_flags(journal)
    journal.set_defaults(run=_export_journal)

    soak = commands.add_parser(
        "soak",
        help="keep load, crashes and rebalances going on a local ledger, then audit it",
    )
    soak.add_argument("--minutes", type=float, default=10.0)
    soak.add_argument("--partitions", type=int, default=None)
    soak.add_argument("--bootstrap", help="use this Kafka instead of starting the embedded broker")
    soak.add_argument("--seed", type=int, default=None, help="replays a fault schedule")
    soak.add_argument("--json", action="store_true", help="print one JSON object of figures")
    soak.set_defaults(run=_soak)
    return parser


def _add_ledger_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (LEDGER_BOOTSTRAP_SERVERS)")
    parser.add_argument(
        "--topic-prefix", "--prefix", dest="prefix", help="topic name prefix (LEDGER_TOPIC_PREFIX)"
    )


def _positive(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {number}")
    return number


def _port(text: str) -> int:
    number = int(text)
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {number}")
    return number


def _time(text: str) -> int:
    from ledger_stream.export import parse_time

    try:
        return parse_time(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def settings_from(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Settings from the environment, with the flags that were given on top."""
    flags = {
        "bootstrap_servers": getattr(args, "bootstrap", None),
        "data_dir": getattr(args, "data_dir", None),
        "web_port": getattr(args, "web_port", None),
        "partitions": getattr(args, "partitions", None),
        **overrides,
    }
    return Settings(**{name: value for name, value in flags.items() if value is not None})


def _broker(args: argparse.Namespace) -> int:
    from ledger_stream.kafka.broker import EmbeddedBroker
    from ledger_stream.local import EMBEDDED_FETCH_WAIT_MS

    # Set before the broker starts, so that a signal while it starts stops it too: the
    # broker runs in a session of its own and gets no signal sent to this process.
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    broker = EmbeddedBroker(port=args.port)
    try:
        broker.start()
        print(
            f"embedded broker (Tansu, memory storage) listening on {broker.bootstrap}", flush=True
        )
        print(
            f"  LEDGER_FETCH_WAIT_MS={EMBEDDED_FETCH_WAIT_MS} ledger-stream worker "
            f"--bootstrap {broker.bootstrap}",
            flush=True,
        )
        stopped.wait()
    finally:
        broker.stop()
    return 0


def _worker(args: argparse.Namespace) -> int:
    from agents.worker import run_worker
    from ledger_stream.kafka.broker import free_port

    settings = settings_from(args)
    if settings.web_port == 0:
        settings = settings.model_copy(update={"web_port": free_port(settings.web_host)})
    run_worker(settings)
    return 0


def _exit_on_sigterm() -> None:
    """For the commands that start a broker and workers: SIGTERM unwinds like Ctrl-C (asyncio
    cancels the running job the same way), so they stop what they started instead of leaving
    it running, and exit with 143."""

    def interrupt(signum: int, frame: Any) -> None:
        _terminated.append(signum)
        on_ctrl_c = signal.getsignal(signal.SIGINT)
        if callable(on_ctrl_c):  # asyncio's (cancels its main task) or Python's
            on_ctrl_c(signal.SIGINT, frame)
        else:  # ignored, as in a job a shell started in the background: interrupt anyway
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


_terminated: list[int] = []


def _soak(args: argparse.Namespace) -> int:
    from ledger_stream.soak import run_soak

    _exit_on_sigterm()
    return run_soak(args)


def _demo(args: argparse.Namespace) -> int:
    from ledger_stream.demo import run_demo

    _exit_on_sigterm()
    return run_demo(args)


def _bench(args: argparse.Namespace) -> int:
    if args.writer_only:
        from agents.bench_writer import report, run_writer_bench

        figures = run_writer_bench(
            args.accounts, args.partitions, args.cross, args.hot, args.batches, args.seed
        )
        report(figures, args.json)
        return 0
    from ledger_stream.bench import run_bench

    _exit_on_sigterm()
    return run_bench(args)


def _audit(args: argparse.Namespace) -> int:
    import json

    from ledger_stream.audit import audit

    report = _ran(audit(settings_from(args, topic_prefix=args.prefix)))
    print(json.dumps(report.as_dict()) if args.json else report.text(), flush=True)
    return 0 if report.ok else 1


def _rebuild(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from ledger_stream.rebuild import rebuild

    settings = settings_from(args, topic_prefix=args.prefix)
    rebuilt = _ran(rebuild(settings, args.into, args.replace))
    same = all(not r.differences for r in rebuilt)
    if args.json:
        print(
            json.dumps({"identical": same, "partitions": [dataclasses.asdict(r) for r in rebuilt]})
        )
        return 0 if same else 1
    for r in rebuilt:
        verdict = (
            "put in place of the live read models (not compared)"
            if args.replace
            else "no live read models here to compare"
            if not r.compared
            else "identical to the live read models"
            if not r.differences
            else f"{len(r.differences)}+ differences from the live read models:"
        )
        print(
            f"partition {r.partition}: {r.events:,} events to offset {r.end:,}, "
            f"{r.keys:,} keys; {verdict}"
        )
        for line in r.differences:
            print(f"  {line}")
    print("rebuilt read models identical to the live ones" if same else "rebuild differs")
    return 0 if same else 1


def _topics_create(args: argparse.Namespace) -> int:
    import json

    from ledger_stream.ops import create_topics

    created = _ran(create_topics(settings_from(args, topic_prefix=args.prefix)))
    print(json.dumps(created.as_dict()) if args.json else created.text(), flush=True)
    return 0


def _topics_describe(args: argparse.Namespace) -> int:
    import json

    from ledger_stream.ops import describe_topics, topics_dict, topics_text

    checks = _ran(describe_topics(settings_from(args, topic_prefix=args.prefix)))
    report = topics_dict(checks)
    print(json.dumps(report) if args.json else topics_text(checks), flush=True)
    return 0 if report["ok"] else 1


def _tail(args: argparse.Namespace) -> int:
    import asyncio
    import json
    import os

    from ledger_stream.ops import Shown, tail, tail_dict, tail_line

    settings = settings_from(args, topic_prefix=args.prefix)

    def show(item: Shown) -> None:
        print(json.dumps(tail_dict(item)) if args.json else tail_line(item), flush=True)

    async def follow() -> None:
        # Ctrl-C and SIGTERM are how a tail ends: cancelled, it stops its consumer and exits 0.
        following = asyncio.current_task()
        assert following is not None
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(signum, following.cancel)
        try:
            await tail(
                settings,
                args.topic,
                show,
                account=args.account,
                from_beginning=args.from_beginning,
                limit=args.limit,
            )
        except asyncio.CancelledError:
            logger.info("stopped")

    try:
        _ran(follow())
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _lag(args: argparse.Namespace) -> int:
    import json

    from ledger_stream.ops import consumer_lag, lag_dict, lag_text

    groups, lags = _ran(consumer_lag(settings_from(args, topic_prefix=args.prefix)))
    print(json.dumps(lag_dict(groups, lags)) if args.json else lag_text(groups, lags), flush=True)
    return 0


def _export_journal(args: argparse.Namespace) -> int:
    import os

    from ledger_stream.export import (
        ExportError,
        JournalExport,
        Progress,
        TimeRange,
        export_journal,
        open_sink,
    )

    settings = settings_from(args, topic_prefix=args.prefix)
    output = args.output or f"journal.{args.format}"
    try:
        export = JournalExport(TimeRange(args.from_time, args.to_time))
        sink = open_sink(args.format, output)
    except (ValueError, ExportError) as error:
        raise _CouldNotRun(str(error)) from error
    progress = Progress(sys.stderr, bar=args.progress or sys.stderr.isatty())
    try:
        # Could not run: exit 2; an unreadable journal record is exit 1, as `main` answers.
        _ran(export_journal(settings, sink, export, progress), ExportError)
    except BrokenPipeError:  # the reader of `-o -` went away (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    print(
        f"exported {export.events:,} journal events as {export.rows:,} rows to {output} "
        f"({export.records:,} records read, {export.repeats:,} repeats, "
        f"{export.outside:,} events outside the time range)",
        file=sys.stderr,
        flush=True,
    )
    return 0


def _describe_settings_error(error: ValidationError) -> str:
    problems = []
    for issue in error.errors():
        name = str(issue["loc"][0]) if issue["loc"] else "settings"
        problems.append(f"{name} (LEDGER_{name.upper()}): {issue['msg']}")
    return "; ".join(problems)


if __name__ == "__main__":
    sys.exit(main())
