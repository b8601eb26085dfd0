"""The audit's checks over hand-built topic records: a clean ledger passes, and each defect
is caught and named.

`build` turns journal events into the records of all four topics, consistent with each
other: chained journal partitions, one command and one result per command id, and state
commits whose accounts come from a reference sum of the postings written here (not from
`journal.fold`, which the audit itself uses).
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import orjson

from ledger_stream.audit import NAMES_MAX, AuditReport, Failure, LedgerRecords, LogRecord, check
from ledger_stream.messages import (
    AccountState,
    JournalEvent,
    JournalHead,
    Posting,
    Result,
    StateRecord,
    from_json,
    replaced,
    to_json,
)

WORLD, TRANSIT = "@world", "@transit"


def event(
    entry_id: str, kind: str, account: str, *moves: tuple[str, str, int], **extra: Any
) -> JournalEvent:
    """An event moving `amount` from a debited account to a credited one, per move."""
    postings = []
    for debited, credited, amount in moves:
        postings += [
            Posting(account=debited, debit=amount),
            Posting(account=credited, credit=amount),
        ]
    return JournalEvent(
        entry_id=entry_id,
        command_id=entry_id.rsplit(":", 1)[0],
        kind=kind,  # type: ignore[arg-type]
        account=account,
        currency="EUR",
        postings=postings,
        timestamp_ms=1_700_000_000_000,
        **extra,
    )


def opened(account: str, overdraft_limit: int = 0) -> JournalEvent:
    return event(f"{account}-open:0", "account_opened", account, overdraft_limit=overdraft_limit)


def clean_events() -> dict[int, list[JournalEvent]]:
    """Two partitions: local moves on 0, a transfer from alice (0) to carol (1)."""
    return {
        0: [
            opened("alice"),
            opened("bob", overdraft_limit=50),
            opened("dave"),
            event("dep-1:0", "deposit", "alice", (WORLD, "alice", 1000)),
            event("tr-1:0", "transfer", "alice", ("alice", "bob", 300)),
            event("dave-close:0", "account_closed", "dave"),
            event("wd-1:0", "withdrawal", "bob", ("bob", WORLD, 350)),
            event("tx-1:0", "transfer_debit", "alice", ("alice", TRANSIT, 200)),
        ],
        1: [
            opened("carol"),
            event("tx-1:1", "transfer_credit", "carol", (TRANSIT, "carol", 200)),
        ],
    }


def chained(events: list[JournalEvent]) -> list[JournalEvent]:
    """Stamp events with seq and prev_hash as a writer does."""
    out: list[JournalEvent] = []
    for seq, unstamped in enumerate(events, start=1):
        prev_hash = out[-1].chain_hash() if out else ""
        out.append(replaced(unstamped, seq=seq, prev_hash=prev_hash))
    return out


def as_bytes(message: Any) -> bytes:
    return to_json(message)


def records(partition: int, values: list[bytes], first_offset: int = 0) -> list[LogRecord]:
    return [
        LogRecord(partition, offset, None, value)
        for offset, value in enumerate(values, start=first_offset)
    ]


def reference_accounts(events: list[JournalEvent]) -> dict[str, AccountState]:
    """What a writer holds after these events: posted sums of its customer accounts."""
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for e in events:
        if e.kind == "account_opened":
            sums.setdefault(e.account, [0, 0])
        for p in e.postings:
            if not p.account.startswith("@"):
                sums[p.account][0] += p.debit
                sums[p.account][1] += p.credit
    return {
        name: AccountState(currency="EUR", debits_posted=debits, credits_posted=credits)
        for name, (debits, credits) in sums.items()
    }


def commit(offset: int, accounts: dict[str, AccountState], head: JournalHead | None) -> bytes:
    return as_bytes(
        StateRecord(kind="commit", expect=offset, writer="w1", accounts=accounts, head=head)
    )


def accepted(command_id: str, **extra: Any) -> Result:
    return Result(
        command_id=command_id, status="accepted", payload_digest=f"d-{command_id}", **extra
    )


def build(events: dict[int, list[JournalEvent]]) -> LedgerRecords:
    """All four topics of a ledger that wrote these events, with the noise a real one has:
    a re-sent journal event, a duplicate answer, a conflicting repeat, a dead letter."""
    ledger = LedgerRecords()
    command_ids: dict[str, int] = {}
    for partition, unstamped in events.items():
        chain = chained(unstamped)
        values = [as_bytes(e) for e in chain]
        if len(chain) > 4:
            values.append(values[4])  # re-sent after a crash: identical bytes
        ledger.journal.extend(records(partition, values))
        head = JournalHead(seq=len(chain), hash=chain[-1].chain_hash())
        claim = as_bytes(StateRecord(kind="claim", expect=0, writer="w1"))
        state = [claim, commit(1, reference_accounts(chain), head)]
        ledger.state.extend(records(partition, state))
        for e in chain:
            command_ids.setdefault(e.command_id, partition)
    for command_id, partition in command_ids.items():
        command = {"type": "x", "command_id": command_id, "account": "a"}
        ledger.commands.extend(records(partition, [orjson.dumps(command)]))
        ledger.results.append(result_record(accepted(command_id)))
    ledger.commands.extend(records(0, [b"{not json", b'[{"command_id": "bad-1"}]'], 100))
    ledger.results.extend(
        result_record(r)
        for r in [
            Result(command_id="bad-1", status="rejected", code="invalid_command"),
            accepted("dep-1", duplicate=True),
            Result(
                command_id="tr-1",
                status="rejected",
                code="exists_with_different_payload",
                payload_digest="d-other",
            ),
        ]
    )
    return ledger


def result_record(result: Result) -> LogRecord:
    return LogRecord(0, 0, result.command_id.encode(), as_bytes(result))


def audited(ledger: LedgerRecords) -> AuditReport:
    return check(
        commands=ledger.commands,
        journal=ledger.journal,
        results=ledger.results,
        state=ledger.state,
    )


def failed(report: AuditReport, check_name: str) -> list[Failure]:
    return [f for f in report.failures if f.check == check_name]


def failing_checks(report: AuditReport) -> set[str]:
    return {f.check for f in report.failures}


def named(report: AuditReport, check_name: str) -> str:
    return "\n".join(f.line() for f in failed(report, check_name))


def replace_journal(ledger: LedgerRecords, entry_id: str, edited: JournalEvent) -> None:
    """Overwrite every copy of an entry in place (same partition and offset)."""
    for i, record in enumerate(ledger.journal):
        if from_json(record.value or b"", JournalEvent).entry_id == entry_id:
            ledger.journal[i] = LogRecord(record.partition, record.offset, None, as_bytes(edited))


def stored(ledger: LedgerRecords, entry_id: str) -> JournalEvent:
    for record in ledger.journal:
        e = from_json(record.value or b"", JournalEvent)
        if e.entry_id == entry_id:
            return e
    raise AssertionError(entry_id)


def test_a_clean_ledger_passes_with_its_figures() -> None:
    report = audited(build(clean_events()))

    assert report.failures == []
    assert report.ok
    assert report.figures["journal_records"] == 11  # 8 + 2 events and one re-send
    assert report.figures["journal_events"] == 10
    assert report.figures["accounts"] == 4
    assert report.figures["in_transit"] == 0
    assert report.figures["command_ids"] == 10  # 9 command ids and bad-1
    assert report.figures["command_records_unreadable"] == 1
    assert report.figures["results_duplicate"] == 1
    assert report.figures["state_void"] == 0
    assert report.currencies == {"EUR": {"total": 0, "@world": -650, "@transit": 0}}
    text = report.text()
    assert text.splitlines()[0].startswith("journal: 10 events in 11 records, 4 accounts")
    assert text.splitlines()[-1].startswith("OK")
    assert json.loads(json.dumps(report.as_dict()))["ok"] is True


def test_a_transfer_still_in_transit_is_counted_not_failed() -> None:
    events = clean_events()
    events[1].pop()  # the credit leg has not landed yet

    report = audited(build(events))

    assert report.figures["in_transit"] == 1
    assert report.currencies["EUR"]["@transit"] == 200
    assert failing_checks(report) == set()


def test_an_unbalanced_event_is_named() -> None:
    events = clean_events()
    lopsided = event("dep-2:0", "deposit", "alice", (WORLD, "alice", 100))
    lopsided = replaced(
        lopsided, postings=[*lopsided.postings[:1], Posting(account="alice", credit=90)]
    )
    events[0].append(lopsided)

    report = audited(build(events))

    assert failing_checks(report) == {"balanced", "total"}
    assert "dep-2:0" in named(report, "balanced")
    assert "EUR -0.10" in named(report, "total")


def test_transit_holding_money_no_transfer_owes_is_caught() -> None:
    events = clean_events()
    events[0].append(event("dep-2:0", "deposit", "alice", (WORLD, TRANSIT, 50)))

    report = audited(build(events))

    assert failing_checks(report) == {"transit"}
    assert "EUR: @transit holds 0.50, 0.00 in transit" in named(report, "transit")


def test_a_transfer_both_credited_and_refunded_is_named() -> None:
    events = clean_events()
    events[0].append(event("tx-1:2", "transfer_refund", "alice", (TRANSIT, "alice", 200)))

    report = audited(build(events))

    assert failing_checks(report) == {"transit"}
    assert "transfers both credited and refunded (1): tx-1" in named(report, "transit")


def test_an_edited_event_breaks_the_chain_after_it() -> None:
    ledger = build(clean_events())
    original = stored(ledger, "dep-1:0")
    replace_journal(ledger, "dep-1:0", replaced(original, metadata={"x": "y"}))

    report = audited(ledger)

    assert failing_checks(report) == {"chain"}
    assert "tr-1:0 (journal/0 seq 5: does not follow dep-1:0 seq 4)" in named(report, "chain")


def test_an_edited_last_event_differs_from_the_state_head() -> None:
    ledger = build(clean_events())
    original = stored(ledger, "tx-1:1")
    replace_journal(ledger, "tx-1:1", replaced(original, metadata={"x": "y"}))

    report = audited(ledger)

    assert failing_checks(report) == {"chain"}
    assert "tx-1:1 (journal/1 seq 2: not the event the state log committed)" in named(
        report, "chain"
    )


def test_a_removed_event_leaves_a_gap_named_by_seq() -> None:
    ledger = build(clean_events())
    gone = stored(ledger, "dave-close:0")
    ledger.journal[:] = [r for r in ledger.journal if r.value != as_bytes(gone)]

    report = audited(ledger)

    assert failing_checks(report) == {"chain"}
    assert "journal/0 seq 6 (before wd-1:0)" in named(report, "chain")


def test_a_removed_last_event_is_caught_by_the_state_head() -> None:
    ledger = build(clean_events())
    ledger.journal[:] = [r for r in ledger.journal if not (r.partition == 1 and r.offset == 1)]

    report = audited(ledger)

    assert "journal/1 ends at seq 1, the state log's head is seq 2" in named(report, "chain")
    assert "carol" in named(report, "state")


def test_reordered_events_are_named() -> None:
    ledger = build(clean_events())
    # Exchange the places of seq 5 and seq 6 in partition 0's chain.
    fifth, sixth = stored(ledger, "tr-1:0"), stored(ledger, "dave-close:0")
    swapped = {
        fifth.entry_id: replaced(fifth, seq=6),
        sixth.entry_id: replaced(sixth, seq=5),
    }
    ledger.journal[:] = [
        LogRecord(r.partition, r.offset, r.key, as_bytes(swapped[event.entry_id]))
        if r.partition == 0
        and (event := from_json(r.value or b"{}", JournalEvent))
        and event.entry_id in swapped
        else r
        for r in ledger.journal
    ]

    report = audited(ledger)

    assert "chain" in failing_checks(report)
    assert "tr-1:0 (journal/0 seq 6: does not follow dave-close:0 seq 5)" in named(report, "chain")


def test_an_entry_id_with_two_contents_is_named() -> None:
    ledger = build(clean_events())
    other = replaced(stored(ledger, "wd-1:0"), metadata={"x": "y"})
    ledger.journal.append(LogRecord(0, 99, None, as_bytes(other)))

    report = audited(ledger)

    assert "wd-1:0 (journal/0, 2 versions)" in named(report, "one_content")
    assert "journal/0 seq 7: wd-1:0, wd-1:0" in named(report, "chain")


def test_an_account_past_its_floor_is_named() -> None:
    events = clean_events()
    # bob holds 300 - 350 = -50 (his floor); then goes 10 further.
    events[0].append(event("wd-2:0", "withdrawal", "bob", ("bob", WORLD, 10)))

    report = audited(build(events))

    assert failing_checks(report) == {"floor"}
    assert "bob (down to -0.60 after wd-2:0, floor -0.50)" in named(report, "floor")


def test_an_account_posted_to_but_never_opened_is_named() -> None:
    events = clean_events()
    events[0].append(event("dep-2:0", "deposit", "erin", (WORLD, "erin", 10)))

    report = audited(build(events))

    assert "accounts posted to but never opened (1): erin" in named(report, "floor")


def test_a_command_answered_two_ways_is_named() -> None:
    ledger = build(clean_events())
    ledger.results.append(
        result_record(
            Result(
                command_id="wd-1",
                status="rejected",
                code="insufficient_funds",
                payload_digest="d-wd-1",
            )
        )
    )

    report = audited(ledger)

    assert failing_checks(report) == {"one_outcome"}
    assert "wd-1 (2 answers: accepted, rejected/insufficient_funds)" in named(report, "one_outcome")


def test_a_command_without_result_is_named() -> None:
    ledger = build(clean_events())
    ledger.results[:] = [
        r for r in ledger.results if from_json(r.value or b"", Result).command_id != "wd-1"
    ]

    report = audited(ledger)

    assert failing_checks(report) == {"answered"}
    assert "commands without a result (1): wd-1" in named(report, "answered")


def test_a_failure_line_names_at_most_a_bounded_number() -> None:
    ledger = build(clean_events())
    lost = [orjson.dumps({"command_id": f"lost-{n:02}"}) for n in range(NAMES_MAX + 10)]
    ledger.commands.extend(records(2, lost))

    [failure] = audited(ledger).failures

    assert failure.count == NAMES_MAX + 10 and len(failure.names) == NAMES_MAX
    assert failure.line().endswith("lost-19 and 10 more")


def test_state_that_is_not_the_journal_fold_is_named() -> None:
    ledger = build(clean_events())
    wrong = AccountState(currency="EUR", debits_posted=300, credits_posted=300)
    ledger.state.append(LogRecord(0, 2, None, commit(2, {"bob": wrong}, None)))

    report = audited(ledger)

    assert failing_checks(report) == {"state"}
    assert "bob (state debits 3.00 credits 3.00, journal debits 3.50 credits 3.00)" in named(
        report, "state"
    )


def test_events_journaled_after_the_state_log_was_read_are_not_held_against_it() -> None:
    """The state log is read before the journal, and a writer may decide meanwhile (a hold
    expires on a timer): each partition's state is compared with its journal up to the head
    the state read ends at."""
    ledger = build(clean_events())
    chain = chained(clean_events()[0])
    late = replaced(
        event("dep-late:0", "deposit", "bob", (WORLD, "bob", 50)),
        seq=len(chain) + 1,
        prev_hash=chain[-1].chain_hash(),
    )
    ledger.journal.append(LogRecord(0, 100, None, as_bytes(late)))

    report = audited(ledger)

    assert report.failures == []
    assert report.figures["journal_events"] == sum(map(len, clean_events().values())) + 1


def test_accounts_on_one_side_only_are_named() -> None:
    ledger = build(clean_events())
    ghost = AccountState(currency="EUR")
    ledger.state.append(LogRecord(1, 2, None, commit(2, {"ghost": ghost}, None)))

    report = audited(ledger)

    assert "accounts in the state log but not in the journal (1): ghost" in named(report, "state")


def test_a_void_state_record_is_ignored_and_counted() -> None:
    ledger = build(clean_events())
    wrong = AccountState(currency="EUR", debits_posted=999)
    # It expected offset 1 (already taken by the valid commit) but landed at 2: void.
    ledger.state.append(LogRecord(0, 2, None, commit(1, {"bob": wrong}, None)))

    report = audited(ledger)

    assert report.failures == []
    assert report.figures["state_void"] == 1


def test_unreadable_records_are_named_but_bad_commands_are_expected() -> None:
    ledger = build(clean_events())
    ledger.journal.append(LogRecord(1, 7, None, b"{garbage"))
    ledger.commands.append(LogRecord(1, 9, None, b"\xff"))

    report = audited(ledger)

    assert failing_checks(report) == {"readable"}
    assert "journal/1/7" in named(report, "readable")
    assert report.figures["command_records_unreadable"] == 2


def test_an_account_posted_on_two_partitions_is_named() -> None:
    events = clean_events()
    events[1].append(event("dep-2:0", "deposit", "alice", (WORLD, "alice", 10)))

    report = audited(build(events))

    assert "accounts in more than one journal partition (1): alice" in named(
        report, "one_partition"
    )


def registered(entry_id: str, alias: str, target: str) -> JournalEvent:
    return replaced(event(entry_id, "alias_registered", alias, target=target), currency="")


def test_a_registered_alias_is_clean_and_not_counted_as_an_account() -> None:
    events = clean_events()
    events[0].append(registered("al-1:0", "alias:bob@example.com", "bob"))

    report = audited(build(events))

    assert report.failures == []
    assert report.figures["accounts"] == 4
    assert report.figures["journal_events"] == 11


def test_an_alias_registered_twice_is_named() -> None:
    events = clean_events()
    events[0].append(registered("al-1:0", "alias:bob@example.com", "bob"))
    events[0].append(registered("al-2:0", "alias:bob@example.com", "carol"))

    report = audited(build(events))

    assert failing_checks(report) == {"once"}
    assert (
        "aliases registered more than once (1): alias:bob@example.com "
        "(al-1:0 to bob, al-2:0 to carol)"
    ) in named(report, "once")
