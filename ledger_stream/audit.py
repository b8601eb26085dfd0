"""`ledger-stream audit`: read a ledger's topics to their true end and check the books.

`check` is pure: it takes the plain records (partition, offset, key, value bytes) of the
commands, journal, results and state topics and returns an `AuditReport`. `audit` reads the
topics (state before journal, so the journal holds every event the state log has committed)
and hands them to `check`. The checks are exact on a quiet ledger; on one that is writing,
the read may catch a writer between its state commit and its outputs, and a second run
tells a real fault from a passing one.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiokafka.errors import KafkaError

from ledger_stream.codes import Code
from ledger_stream.core import TRANSIT, WORLD
from ledger_stream.errors import BrokerUnavailable, ConfigurationError
from ledger_stream.journal import Books, fold
from ledger_stream.kafka.reading import read_topic
from ledger_stream.kafka.security import connection_options
from ledger_stream.messages import (
    ALIAS_PREFIX,
    COMMAND_BATCH_MAX,
    IDENTIFIER_CHARS_MAX,
    AccountState,
    JournalEvent,
    JournalHead,
    Result,
    StateRecord,
    from_json,
    to_json,
)
from ledger_stream.money import CURRENCY_EXPONENTS, format_amount
from ledger_stream.settings import Settings
from ledger_stream.topics import TopicNames, connected_reader

logger = logging.getLogger(__name__)

NAMES_MAX = 20  # names shown per failure; the count says how many there are


@dataclass(frozen=True)
class LogRecord:
    """One record of a topic, as the audit reads it."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class LedgerRecords:
    """Every record of the topics the audit reads."""

    commands: list[LogRecord] = field(default_factory=list)
    journal: list[LogRecord] = field(default_factory=list)
    results: list[LogRecord] = field(default_factory=list)
    state: list[LogRecord] = field(default_factory=list)


@dataclass(frozen=True)
class Failure:
    """One thing wrong with the books, and what is at fault (at most NAMES_MAX names)."""

    check: str
    what: str
    names: tuple[str, ...]
    count: int

    @classmethod
    def of(cls, check: str, what: str, names: Sequence[str]) -> Failure:
        return cls(check, what, tuple(names[:NAMES_MAX]), len(names))

    def line(self) -> str:
        more = self.count - len(self.names)
        shown = ", ".join(self.names) + (f" and {more} more" if more else "")
        return f"FAIL {self.check}: {self.what} ({self.count}): {shown}"


@dataclass(frozen=True)
class AuditReport:
    figures: dict[str, int]
    currencies: dict[str, dict[str, int]]  # per currency: total, @world, @transit
    failures: list[Failure]

    @property
    def ok(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "figures": self.figures,
            "currencies": self.currencies,
            "failures": [
                {"check": f.check, "what": f.what, "count": f.count, "names": list(f.names)}
                for f in self.failures
            ],
        }

    def text(self) -> str:
        f = self.figures
        lines = [
            f"journal: {f['journal_events']} events in {f['journal_records']} records, "
            f"{f['accounts']} accounts, in transit {f['in_transit']} | "
            f"commands: {f['command_ids']} ids, unreadable records "
            f"{f['command_records_unreadable']} | results: {f['results']}, duplicates "
            f"{f['results_duplicate']} | state: {f['state_records']} records, void "
            f"{f['state_void']}"
        ]
        for currency, sums in sorted(self.currencies.items()):
            amounts = ", ".join(f"{name} {_amount(v, currency)}" for name, v in sums.items())
            lines.append(f"  {currency}: {amounts}")
        if self.ok:
            lines.append("OK: the books balance, the chains hold, every command has one outcome")
        else:
            lines.extend(failure.line() for failure in self.failures)
        return "\n".join(lines)


async def audit(settings: Settings) -> AuditReport:
    """Read the ledger named by `settings` and check it."""
    records = await read_ledger(settings)
    return check(
        commands=records.commands,
        journal=records.journal,
        results=records.results,
        state=records.state,
    )


async def read_ledger(settings: Settings) -> LedgerRecords:
    """Every record of the commands, state, journal and results topics, from the log start to
    the true end of each partition (taken when each topic's read starts)."""
    names = TopicNames.from_settings(settings)
    # State before journal: every event a commit we read has made is in the journal by then.
    topics = {
        "commands": names.commands,
        "state": names.state,
        "journal": names.journal,
        "results": names.results,
    }
    partitions = await _partitions(settings, list(topics.values()))
    read: dict[str, list[LogRecord]] = {}
    try:
        for name, topic in topics.items():
            read[name] = await _read(settings, topic, partitions)
    except KafkaError as error:
        raise BrokerUnavailable(
            f"lost Kafka at {settings.bootstrap_servers} while reading ({error}); "
            "run the audit again once the broker answers"
        ) from error
    return LedgerRecords(**read)


async def _partitions(settings: Settings, topics: list[str]) -> list[int]:
    """The partitions to read; every topic must have `settings.partitions` of them."""

    consumer = await connected_reader(settings)
    try:
        await consumer.topics()
        counts = {topic: len(consumer.partitions_for_topic(topic) or ()) for topic in topics}
    finally:
        await consumer.stop()
    for topic, count in counts.items():
        if count == 0:
            raise ConfigurationError(
                f"topic {topic!r} does not exist; check the topic prefix "
                f"(--prefix, LEDGER_TOPIC_PREFIX is {settings.topic_prefix!r})"
            )
        if count != settings.partitions:
            raise ConfigurationError(
                f"topic {topic!r} has {count} partitions but partitions (LEDGER_PARTITIONS) "
                f"is {settings.partitions}; audit with --partitions {count}"
            )
    return list(range(settings.partitions))


async def _read(settings: Settings, topic: str, partitions: list[int]) -> list[LogRecord]:
    records: list[LogRecord] = []
    security = connection_options(settings)
    reading = read_topic(settings.bootstrap_servers, topic, partitions, security=security)
    async with aclosing(reading) as batches:
        async for batch in batches:
            records.extend(LogRecord(r.partition, r.offset, r.key, r.value) for r in batch)
    logger.info("read %d records of %s", len(records), topic)
    return records


def check(
    *,
    commands: Iterable[LogRecord] = (),
    journal: Iterable[LogRecord] = (),
    results: Iterable[LogRecord] = (),
    state: Iterable[LogRecord] = (),
) -> AuditReport:
    """Check the books from the records of the ledger's topics. Pure: no I/O."""
    entries = _read_entries(journal)
    writers = _read_state(state)
    answers = _read_results(results)
    asked = _read_commands(commands)
    events = entries.folded()
    books = fold(events)
    # The state log is read before the journal, and writers may decide meanwhile (a hold
    # expires on a timer): each partition's state is compared with its journal up to the
    # head the state read ends at (folded again only when the journal goes past one).
    stated = entries.folded(up_to=writers.heads)
    state_books = books if len(stated) == len(events) else fold(stated)
    transit = _in_transit(events)
    failures = [
        *_unreadable(entries, writers, answers),
        *_unbalanced(books),
        *_nonzero_totals(books),
        *_transit_mismatch(books, transit),
        *_once_only(events),
        *_several_contents(entries),
        *_broken_chains(entries, writers.heads),
        *_past_floor(books, entries),
        *_scattered(entries),
        *_several_outcomes(answers.results),
        *_unanswered(asked.ids, answers.results),
        *_state_mismatch(state_books, entries, writers.accounts),
    ]
    figures = {
        "journal_records": entries.records,
        "journal_events": books.events,
        "accounts": len(entries.accounts()),
        "in_transit": len(transit.outstanding),
        "command_records": asked.records,
        "command_records_unreadable": asked.unreadable,
        "command_ids": len(asked.ids),
        "results": len(answers.results),
        "results_duplicate": sum(r.duplicate for r in answers.results),
        "state_records": writers.records,
        "state_void": writers.void,
    }
    currencies = {
        currency: {
            "total": total,
            WORLD: books.balance(WORLD, currency),
            TRANSIT: books.balance(TRANSIT, currency),
        }
        for currency, total in sorted(books.totals().items())
    }
    return AuditReport(figures, currencies, failures)


# Reading the records.


@dataclass(frozen=True)
class _Copy:
    """One content of a journal entry and where it was first read."""

    event: JournalEvent
    chain_hash: str
    offset: int


@dataclass
class _Entries:
    """The journal by (partition, entry id): every distinct content, and the last read."""

    records: int = 0
    contents: dict[tuple[int, str], dict[str, _Copy]] = field(default_factory=dict)
    last: dict[tuple[int, str], _Copy] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)

    def folded(self, up_to: dict[int, JournalHead] | None = None) -> list[JournalEvent]:
        """One event per entry (the last read, as compaction keeps), in chain order; with
        `up_to`, of each partition only the events up to its head there (none without one)."""
        chosen = sorted(
            self.last.items(),
            key=lambda item: (item[0][0], item[1].event.seq or 0, item[1].offset),
        )
        if up_to is not None:
            chosen = [
                (key, copy)
                for key, copy in chosen
                if (copy.event.seq or 0) <= up_to.get(key[0], JournalHead()).seq
            ]
        return [copy.event for _, copy in chosen]

    def accounts(self) -> set[str]:
        """Customer accounts the journal names (opened or posted to): not system accounts,
        nor the aliases `alias_registered` events are about."""
        names = set()
        for copy in self.last.values():
            names.add(copy.event.account)
            names.update(p.account for p in copy.event.postings)
        return {name for name in names if not name.startswith(("@", ALIAS_PREFIX))}

    def opened(self) -> dict[str, JournalEvent]:
        return {
            copy.event.account: copy.event
            for copy in self.last.values()
            if copy.event.kind == "account_opened"
        }


def _read_entries(records: Iterable[LogRecord]) -> _Entries:
    entries = _Entries()
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        entries.records += 1
        where = f"journal/{record.partition}/{record.offset}"
        if record.value is None:
            entries.unreadable.append(f"{where} (no value: a tombstone erases history)")
            continue
        try:
            event = from_json(record.value, JournalEvent)
        except msgspec.DecodeError:
            entries.unreadable.append(where)
            continue
        key = (record.partition, event.entry_id)
        digest = event.chain_hash()
        copies = entries.contents.setdefault(key, {})
        copy = copies.setdefault(digest, _Copy(event, digest, record.offset))
        entries.last[key] = copy
    return entries


@dataclass
class _WriterState:
    """The writers' state: valid commits and snapshots of the state log applied in offset order."""

    records: int = 0
    void: int = 0
    accounts: dict[str, AccountState] = field(default_factory=dict)
    heads: dict[int, JournalHead] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)


def _read_state(records: Iterable[LogRecord]) -> _WriterState:
    state = _WriterState()
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        state.records += 1
        try:
            commit = from_json(record.value or b"", StateRecord)
        except msgspec.DecodeError:
            state.unreadable.append(f"state/{record.partition}/{record.offset}")
            continue
        if commit.expect != record.offset:  # void: it landed where its writer did not own
            state.void += 1
            continue
        if commit.kind == "claim":
            continue
        # A snapshot holds the state as of its base: read in order it changes nothing, and
        # where the log before it was deleted it is where the state begins.
        state.accounts.update(commit.accounts)
        if commit.head is not None:
            state.heads[record.partition] = commit.head
    return state


@dataclass
class _Answers:
    results: list[Result] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def _read_results(records: Iterable[LogRecord]) -> _Answers:
    answers = _Answers()
    for record in records:
        try:
            answers.results.append(from_json(record.value or b"", Result))
        except msgspec.DecodeError:
            answers.unreadable.append(f"results/{record.partition}/{record.offset}")
    return answers


@dataclass
class _Asked:
    records: int = 0
    unreadable: int = 0
    ids: set[str] = field(default_factory=set)


def _read_commands(records: Iterable[LogRecord]) -> _Asked:
    """The command ids the writers can read (and so must answer), as intake reads them."""
    asked = _Asked()
    for record in records:
        asked.records += 1
        try:
            parsed = json.loads(record.value or b"")  # not orjson: NaN must not hide an id
        except ValueError:
            asked.unreadable += 1
            continue
        items = parsed if isinstance(parsed, list) else [parsed]
        if not 1 <= len(items) <= COMMAND_BATCH_MAX:
            asked.unreadable += 1  # intake dead-letters the whole record, answering nobody
            continue
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("command_id"), str):
                # cut as intake cuts it when it answers
                asked.ids.add(item["command_id"][:IDENTIFIER_CHARS_MAX])
    return asked


@dataclass
class _Transit:
    """Cross-partition transfers: what went into @transit and has not come out."""

    outstanding: list[JournalEvent]
    landed_and_refunded: list[str]
    legs_without_debit: list[str]


_LEG_KINDS = ("transfer_credit", "transfer_refund")
# The events whose money may cross partitions: sent into @transit at the source.
_INTO_TRANSIT = ("transfer_debit", "hold_posted", "invoice_payment", "reversal")


def _in_transit(events: Iterable[JournalEvent]) -> _Transit:
    """Money sent into @transit (by a transfer, a hold posted, a payment or a reversal
    across partitions) and the legs that took it out, by command id."""
    debits: list[JournalEvent] = []
    closed: dict[str, set[str]] = defaultdict(set)
    for event in events:
        if event.kind in _LEG_KINDS:
            closed[event.command_id].add(event.kind)
        elif event.kind in _INTO_TRANSIT and any(p.account == TRANSIT for p in event.postings):
            debits.append(event)
    debited = {event.command_id for event in debits}
    return _Transit(
        outstanding=[event for event in debits if event.command_id not in closed],
        landed_and_refunded=sorted(tid for tid, kinds in closed.items() if len(kinds) > 1),
        legs_without_debit=sorted(tid for tid in closed if tid not in debited),
    )


# The checks: each returns its failures, naming what is at fault.


def _failing(check: str, *found: tuple[str, Sequence[str]]) -> list[Failure]:
    """A failure of `check` for each (what, names) that names anything."""
    return [Failure.of(check, what, names) for what, names in found if names]


def _unreadable(entries: _Entries, state: _WriterState, answers: _Answers) -> list[Failure]:
    names = [*entries.unreadable, *state.unreadable, *answers.unreadable]
    return _failing("readable", ("records that cannot be read", names))


def _unbalanced(books: Books) -> list[Failure]:
    return _failing(
        "balanced", ("journal events whose debits and credits differ", books.unbalanced)
    )


def _nonzero_totals(books: Books) -> list[Failure]:
    names = [f"{c} {_amount(t, c)}" for c, t in sorted(books.totals().items()) if t != 0]
    return _failing("total", ("currencies whose balances do not sum to zero", names))


def _transit_mismatch(books: Books, transit: _Transit) -> list[Failure]:
    """@transit holds exactly what transfers debited and neither landed nor refunded."""
    expected: dict[str, int] = defaultdict(int)
    for event in transit.outstanding:
        expected[event.currency] += sum(p.credit for p in event.postings if p.account == TRANSIT)
    currencies = sorted({c for _, c in books.balances} | set(expected))
    names = [
        f"{c}: @transit holds {_amount(books.balance(TRANSIT, c), c)}, "
        f"{_amount(expected[c], c)} in transit"
        for c in currencies
        if books.balance(TRANSIT, c) != expected[c]
    ]
    return _failing(
        "transit",
        ("currencies where @transit is not what is in transit", names),
        ("transfers both credited and refunded", transit.landed_and_refunded),
        ("transfer legs without a debit into @transit", transit.legs_without_debit),
    )


def _once_only(events: Sequence[JournalEvent]) -> list[Failure]:
    """A hold resolves once, releasing what it reserved; an invoice is paid and a command
    reversed at most once (a payment or reversal whose money came back does not count); an
    alias is registered once."""
    refunded = {e.command_id for e in events if e.kind == "transfer_refund"}
    placed = {e.hold_id: e for e in events if e.kind == "hold_placed"}
    resolved: dict[str, list[JournalEvent]] = defaultdict(list)
    paid: dict[tuple[str, str], list[str]] = defaultdict(list)
    reversed_by: dict[str, list[str]] = defaultdict(list)
    registered: dict[str, list[str]] = defaultdict(list)
    for event in events:
        if event.released is not None and event.hold_id is not None:
            resolved[event.hold_id].append(event)
        if event.kind == "alias_registered":
            registered[event.account].append(f"{event.entry_id} to {event.target}")
        if event.command_id in refunded:
            continue
        if event.invoice_id is not None and event.kind in ("invoice_payment", "hold_posted"):
            paid[(event.account, event.invoice_id)].append(event.entry_id)
        if event.reverses is not None:
            reversed_by[event.reverses].append(event.entry_id)
    mismatched = [
        f"{hold_id} (released {_released(done[0])}, placed {_released(placed[hold_id])})"
        for hold_id, done in sorted(resolved.items())
        if hold_id in placed and _released(done[0]) != _released(placed[hold_id])
    ]
    return _failing(
        "once",
        ("holds resolved more than once", sorted(h for h, d in resolved.items() if len(d) > 1)),
        ("holds resolved but never placed", sorted(set(resolved) - set(placed))),
        ("holds that released another amount than they reserved", mismatched),
        (
            "invoices paid more than once",
            [f"{p}|{i} ({', '.join(e)})" for (p, i), e in sorted(paid.items()) if len(e) > 1],
        ),
        (
            "commands reversed more than once",
            [f"{t} ({', '.join(e)})" for t, e in sorted(reversed_by.items()) if len(e) > 1],
        ),
        (
            "aliases registered more than once",
            [f"{a} ({', '.join(e)})" for a, e in sorted(registered.items()) if len(e) > 1],
        ),
    )


def _released(event: JournalEvent) -> int:
    return sum(p.debit for p in (event.pending or event.released or ()))


def _several_contents(entries: _Entries) -> list[Failure]:
    names = [
        f"{entry} (journal/{partition}, {len(copies)} versions)"
        for (partition, entry), copies in sorted(entries.contents.items())
        if len(copies) > 1
    ]
    return _failing("one_content", ("entry ids with more than one content", names))


def _broken_chains(entries: _Entries, heads: dict[int, JournalHead]) -> list[Failure]:
    """Per journal partition, the distinct events by seq must form the chain 1..max."""
    by_partition: dict[int, list[_Copy]] = defaultdict(list)
    for (partition, _), copies in sorted(entries.contents.items()):
        by_partition[partition].extend(copies.values())
    found: dict[str, list[str]] = defaultdict(list)
    for partition in sorted(set(by_partition) | set(heads)):
        for what, names in _chain_faults(partition, by_partition[partition], heads.get(partition)):
            found[what].extend(names)
    return _failing("chain", *found.items())


def _chain_faults(
    partition: int, copies: list[_Copy], head: JournalHead | None
) -> Iterable[tuple[str, list[str]]]:
    where = f"journal/{partition}"
    yield (
        "events without a seq",
        [f"{c.event.entry_id} ({where})" for c in copies if c.event.seq is None],
    )
    by_seq: dict[int, list[_Copy]] = defaultdict(list)
    for copy in copies:
        if copy.event.seq is not None:
            by_seq[copy.event.seq].append(copy)
    top = max(by_seq, default=0)
    yield (
        "seqs missing from a chain (removed events)",
        [
            f"{where} seq {seq}" + _next_entry(by_seq, seq, top)
            for seq in range(1, top + 1)
            if seq not in by_seq
        ],
    )
    yield (
        "seqs held by more than one event",
        [
            f"{where} seq {seq}: " + ", ".join(c.event.entry_id for c in held)
            for seq, held in sorted(by_seq.items())
            if len(held) > 1
        ],
    )
    single = {seq: held[0] for seq, held in by_seq.items() if len(held) == 1}
    broken = []
    for seq, copy in sorted(single.items()):
        before = single.get(seq - 1)
        if seq == 1 and copy.event.prev_hash != "":
            broken.append(f"{copy.event.entry_id} ({where} seq 1: prev_hash is not empty)")
        if before is not None and copy.event.prev_hash != before.chain_hash:
            broken.append(
                f"{copy.event.entry_id} ({where} seq {seq}: does not follow "
                f"{before.event.entry_id} seq {seq - 1})"
            )
    # Order is the chain's, not the offsets': a batch read again after a crash re-sends the
    # events of the commit before it, sometimes after events that follow them in the chain.
    yield (
        "events whose prev_hash is not the chain_hash of the event before (edited or reordered)",
        broken,
    )
    yield "chain ends that differ from the state log's head", _head_faults(where, single, top, head)


def _next_entry(by_seq: dict[int, list[_Copy]], seq: int, top: int) -> str:
    following = next((by_seq[s] for s in range(seq + 1, top + 1) if s in by_seq), [])
    return f" (before {following[0].event.entry_id})" if following else ""


def _head_faults(
    where: str, single: dict[int, _Copy], top: int, head: JournalHead | None
) -> list[str]:
    """The state log's head names the last event its writer committed: the journal must hold
    it, unchanged. This is what catches a removed or edited last event."""
    if head is None or head.seq == 0:
        return []
    if head.seq > top:
        return [f"{where} ends at seq {top}, the state log's head is seq {head.seq}"]
    copy = single.get(head.seq)
    if copy is not None and copy.chain_hash != head.hash:
        return [
            f"{copy.event.entry_id} ({where} seq {head.seq}: not the event the state log committed)"
        ]
    return []


def _past_floor(books: Books, entries: _Entries) -> list[Failure]:
    """No customer account's balance, folded in journal order, went below the floor its
    overdraft limit set at the time (`account_opened`, then `limits_set`)."""
    opened = entries.opened()
    unopened = sorted(
        {account for account, _ in books.balances if not account.startswith("@")} - set(opened)
    )
    below = [
        f"{account} (down to {_amount(balance, c)} after {entry}, floor {_amount(floor, c)})"
        for account, c, entry, balance, floor in books.past_floor
    ]
    return _failing(
        "floor",
        ("balances past their account's overdraft limit", below),
        ("accounts posted to but never opened", unopened),
    )


def _scattered(entries: _Entries) -> list[Failure]:
    """An account lives on one partition: its writer posts all of it, in one order."""
    partitions: dict[str, set[int]] = defaultdict(set)
    for (partition, _), copy in entries.last.items():
        for name in {copy.event.account, *(p.account for p in copy.event.postings)}:
            partitions[name].add(partition)
    names = sorted(n for n, ps in partitions.items() if len(ps) > 1 and not n.startswith("@"))
    return _failing("one_partition", ("accounts in more than one journal partition", names))


def _several_outcomes(results: list[Result]) -> list[Failure]:
    """One command (id and payload) has one outcome: every answer but repeats is the same."""
    groups: dict[tuple[str, str], dict[bytes, Result]] = defaultdict(dict)
    for result in results:
        if result.duplicate or result.code == Code.EXISTS_WITH_DIFFERENT_PAYLOAD:
            continue
        groups[(result.command_id, result.payload_digest or "")][to_json(result)] = result
    names = [
        f"{command_id} ({len(seen)} answers: "
        + ", ".join(sorted(_answer(r) for r in seen.values()))
        + ")"
        for (command_id, _), seen in sorted(groups.items())
        if len(seen) > 1
    ]
    return _failing("one_outcome", ("commands answered differently", names))


def _answer(result: Result) -> str:
    return result.status + (f"/{result.code}" if result.code else "")


def _unanswered(command_ids: set[str], results: list[Result]) -> list[Failure]:
    answered = {result.command_id for result in results}
    return _failing("answered", ("commands without a result", sorted(command_ids - answered)))


def _state_mismatch(
    books: Books, entries: _Entries, accounts: dict[str, AccountState]
) -> list[Failure]:
    """The writers' accounts are the fold of the journal: posted debits and credits agree."""
    journal_accounts = entries.accounts()
    differ = []
    for name, account in sorted(accounts.items()):
        if name not in journal_accounts:
            continue
        key, c = (name, account.currency), account.currency
        state = (
            account.debits_posted,
            account.credits_posted,
            account.debits_pending,
            account.credits_pending,
        )
        folded = tuple(
            table.get(key, 0)
            for table in (books.debits, books.credits, books.debits_pending, books.credits_pending)
        )
        if state != folded:
            differ.append(f"{name} (state {_sides(state, c)}, journal {_sides(folded, c)})")
    return _failing(
        "state",
        ("accounts whose state is not the journal's fold", differ),
        (
            "accounts in the journal but not in the state log",
            sorted(journal_accounts - set(accounts)),
        ),
        (
            "accounts in the state log but not in the journal",
            sorted(set(accounts) - journal_accounts),
        ),
    )


def _sides(amounts: Sequence[int], currency: str) -> str:
    """Posted debits and credits, then pending ones where there are any."""
    names = ("debits", "credits", "pending debits", "pending credits")
    shown = amounts if any(amounts[2:]) else amounts[:2]
    return " ".join(f"{n} {_amount(v, currency)}" for n, v in zip(names, shown, strict=False))


def _amount(minor: int, currency: str) -> str:
    if currency in CURRENCY_EXPONENTS:
        return format_amount(minor, currency)
    return f"{minor} (minor units)"
