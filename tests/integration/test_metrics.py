"""The worker's metrics under load: /metrics/ of one worker on the embedded broker, read before
and after a few hundred commands, moves by exactly what was sent where that is known (results
by command type, status and code, journal events, dead letters, inputs decided), its
histograms count what was done, @transit's balance per partition is what the transfers
between partitions left there, and a restore shows the partitions and state records it read.

Every wait polls until the worker has counted what it was sent (pytest-timeout bounds it);
the assertions then compare exact figures.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from dataclasses import dataclass

from aiokafka import TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from worker_harness import Workers, journal, polled

from agents.projector import TRANSIT_SEQ, TRANSIT_SUM
from ledger_stream.client import LedgerClient
from ledger_stream.kafka.reading import reader, true_ends
from ledger_stream.local import WorkerProcess
from ledger_stream.messages import Result
from ledger_stream.partitioning import name_on
from ledger_stream.settings import Settings
from ledger_stream.state.readstore import ReadStore, read_store_path
from ledger_stream.topics import TopicNames

CLIENT_TIMEOUT_S = 60.0
ROUNDS = 30  # transfers from each partition's sender, within and across partitions
FUNDS = 10_000
TRANSIT = "ledger_transit_balance_minor_units"
RESULTS = "ledger_results_total"


class Scrape:
    """One reading of a worker's /metrics/: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.samples = [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def value(self, name: str) -> float:
        """The sum of the samples called `name`, whatever their labels."""
        return sum(value for found, _, value in self.samples if found == name)

    def by(self, name: str, *labels: str) -> dict[tuple[str, ...], float]:
        """The samples called `name`, summed by the values of `labels`."""
        sums: dict[tuple[str, ...], float] = collections.defaultdict(float)
        for found, found_labels, value in self.samples:
            if found == name:
                sums[tuple(found_labels[label] for label in labels)] += value
        return dict(sums)


async def scrape(worker: WorkerProcess) -> Scrape:
    return Scrape(await worker.view("/metrics/"))


def moved(before: Scrape, after: Scrape, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """How far each labelled series of `name` moved, those that did."""
    start, end = before.by(name, *labels), after.by(name, *labels)
    return {key: value - start.get(key, 0) for key, value in end.items() if value != start.get(key)}


@dataclass
class Load:
    """What a load sent, and what the ledger must show for it."""

    results: collections.Counter[tuple[str, str, str]]  # (type, status, code)
    journal_events: int
    inputs: int  # commands and legs the writers decide
    transit: dict[tuple[str, str], float]  # @transit's balance by (partition, currency)


async def send_load(client: LedgerClient, partitions: int) -> Load:
    """Per partition a sender and a payee; each sender pays its own partition's payee 1 and
    the next partition's payee its partition number + 1, ROUNDS times; then one transfer
    refused (insufficient funds) and one sent back by its destination (no such account)."""
    stem = uuid.uuid4().hex[:8]
    senders = [name_on(p, f"sender-{stem}", partitions) for p in range(partitions)]
    payees = [name_on(p, f"payee-{stem}", partitions) for p in range(partitions)]
    opened = await asyncio.gather(*(client.open_account(a, "USD") for a in senders + payees))
    funded = await asyncio.gather(*(client.deposit(a, FUNDS, "USD") for a in senders))
    within = [
        client.transfer(senders[p], payees[p], 1, "USD")
        for _ in range(ROUNDS)
        for p in range(partitions)
    ]
    across = [
        client.transfer(senders[p], payees[(p + 1) % partitions], p + 1, "USD")
        for _ in range(ROUNDS)
        for p in range(partitions)
    ]
    transferred = await asyncio.gather(*within, *across)
    refused = await client.transfer(senders[0], payees[0], FUNDS * 100, "USD")
    nobody = name_on(1, f"nobody-{stem}", partitions)
    returned = await client.transfer(senders[0], nobody, 5, "USD")

    accepted: list[Result] = [*opened, *funded, *transferred]
    assert {(r.status, r.code) for r in accepted} == {("accepted", None)}
    assert (refused.status, refused.code) == ("rejected", "insufficient_funds")
    assert (returned.status, returned.code) == ("rejected", "account_not_found")
    results: collections.Counter[tuple[str, str, str]] = collections.Counter(
        (r.type or "unknown", r.status, str(r.code or "")) for r in [*accepted, refused, returned]
    )
    crossing = len(across) + 1  # the returned transfer crossed too, and came back
    # What each partition sent into @transit and what landed from the partition before it.
    transit = {
        (str(p), "USD"): float(ROUNDS * (p + 1) - ROUNDS * ((p - 1) % partitions + 1))
        for p in range(partitions)
    }
    return Load(
        results=results,
        # opened, deposited, transferred within a partition; a debit and a credit (or a
        # refund) for each transfer between partitions
        journal_events=len(opened) + len(funded) + len(within) + 2 * crossing,
        # every command, and the credit leg and its settle (or refund) leg of each crossing
        inputs=sum(results.values()) + 2 * crossing,
        transit=transit,
    )


async def test_counters_move_by_exactly_what_a_load_sent(
    ledger: Settings, workers: Workers
) -> None:
    worker = await asyncio.to_thread(workers.start_ready)
    before = await scrape(worker)
    partitions = [str(p) for p in range(ledger.partitions)]
    # Recovery: every partition restored (from an empty state log) and claimed.
    assert before.value("ledger_state_restore_seconds_count") == ledger.partitions
    assert before.by("ledger_state_restore_records_remaining", "partition") == {
        (p,): 0.0 for p in partitions
    }

    async with LedgerClient(
        ledger.bootstrap_servers, topic_prefix=ledger.topic_prefix, timeout_s=CLIENT_TIMEOUT_S
    ) as client:
        load = await send_load(client, ledger.partitions)
        client.send_raw(name_on(0, "raw", ledger.partitions), b"not a command")
        await client.flush()  # alone in its record: a dead letter, and no result

    inputs = "ledger_writer_batch_inputs_sum"

    def counted(after: Scrape) -> bool:
        """Every result written, the last settle leg decided, the journal folded."""
        return (
            after.value(RESULTS) - before.value(RESULTS) >= sum(load.results.values())
            and after.value(inputs) - before.value(inputs) >= load.inputs
            and after.value("ledger_dead_letters_total") >= 1
            and after.value("ledger_read_events_folded_total") >= load.journal_events
        )

    after = await polled(lambda: scrape(worker), counted, workers, "the load to be counted")

    assert moved(before, after, RESULTS, "type", "status", "code") == load.results
    assert after.value("ledger_dead_letters_total") - before.value("ledger_dead_letters_total") == 1
    events = after.value("ledger_journal_events_total") - before.value(
        "ledger_journal_events_total"
    )
    assert events == load.journal_events == len(await journal(ledger))
    assert after.value("ledger_read_events_folded_total") == load.journal_events
    assert after.value(inputs) - before.value(inputs) == load.inputs
    for histogram in (
        "ledger_writer_batch_inputs_count",
        "ledger_writer_batch_seconds_count",
        "ledger_writer_decide_seconds_count",
        "ledger_state_commit_seconds_count",
    ):
        assert after.value(histogram) > before.value(histogram), histogram
    # One observation a state record committed.
    commits = after.value("ledger_state_commits_total") - before.value("ledger_state_commits_total")
    commit_seconds = "ledger_state_commit_seconds_count"
    assert after.value(commit_seconds) - before.value(commit_seconds) == commits > 0
    # @transit: in each partition what it sent and what landed from the one before; over
    # all of them (this worker folds every partition), nothing once every transfer is done.
    assert after.by(TRANSIT, "partition", "currency") == load.transit
    assert after.value(TRANSIT) == 0
    # RocksDB: every store's memtables, charged to the one cache of the worker's budget.
    memory = after.by("ledger_rocksdb_memory_bytes", "kind")
    assert 0 < memory[("memtables",)] <= memory[("cache",)] <= 256 * 1024 * 1024


async def test_a_restore_shows_the_records_it_read_and_the_transit_balances_survive(
    ledger: Settings, workers: Workers
) -> None:
    first = await asyncio.to_thread(workers.start_ready)
    async with LedgerClient(
        ledger.bootstrap_servers, topic_prefix=ledger.topic_prefix, timeout_s=CLIENT_TIMEOUT_S
    ) as client:
        load = await send_load(client, ledger.partitions)
    await asyncio.to_thread(first.stop)
    events = len(await journal(ledger))
    ends = await state_log_ends(ledger)
    assert sum(ends) > 0

    # A worker with an empty data directory restores every partition from the state log,
    # and folds the journal again from its start.
    fresh = workers.root / "fresh"
    second = await asyncio.to_thread(workers.start_ready, fresh)
    restored = await polled(
        lambda: scrape(second),
        lambda s: s.value("ledger_read_events_folded_total") >= events,
        workers,
        "the journal to be folded again",
    )
    assert restored.value("ledger_state_restore_seconds_count") == ledger.partitions
    assert restored.value("ledger_state_restored_records_total") == sum(ends)
    assert restored.by("ledger_state_restore_records_remaining", "partition") == {
        (str(p),): 0.0 for p in range(ledger.partitions)
    }
    assert restored.by(TRANSIT, "partition", "currency") == load.transit
    await asyncio.to_thread(second.stop)

    # Partition 0's read store as one folded without @transit's sums (an older worker's, or
    # `rebuild --replace`'s): they are summed again from the journal.
    identity = f"{TopicNames.from_settings(ledger).journal}/{ledger.partitions}"
    store = ReadStore(read_store_path(fresh, 0), identity)
    store.write({}, {TRANSIT_SEQ: 0, TRANSIT_SUM.format(currency="USD"): 12345})
    store.close()
    third = await asyncio.to_thread(workers.start_ready, fresh)
    again = await polled(
        lambda: scrape(third),
        lambda s: len(s.by(TRANSIT, "partition")) == ledger.partitions,
        workers,
        "every partition's @transit balance",
    )
    assert again.by(TRANSIT, "partition", "currency") == load.transit
    assert again.value("ledger_state_restored_records_total") == 0  # its store was up to date
    log = third.log_path.read_text()
    summed = [p for p in range(ledger.partitions) if f"journal partition {p}: summing" in log]
    assert summed == [0]


async def state_log_ends(ledger: Settings) -> list[int]:
    """The end of each partition of the state log."""
    topic = TopicNames.from_settings(ledger).state
    consumer = reader(ledger.bootstrap_servers)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(ledger.partitions)]
        ends = await true_ends(consumer, tps)
    finally:
        await consumer.stop()
    return [ends[tp] for tp in tps]
