"""The fault suite's harness: worker processes, a seeded load of commands that are submitted
until each has a result, and the checks every case ends with (the ledger quiet, the audit
clean, the journal equal to what the accepted results say, each commit by its owner).

The load is a mix of deposits, withdrawals and transfers over accounts on every partition,
so most transfers cross partitions and some run out of funds. Outcomes depend on the order
the writers see commands, so what the books must hold is computed from the results the
client receives: a sum of accepted movements does not depend on the order.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import random
import signal
import subprocess
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from worker_harness import Workers, polled, until

from ledger_stream.audit import audit
from ledger_stream.client import LedgerClient
from ledger_stream.core import REFUND_CODES
from ledger_stream.journal import fold, read_journal
from ledger_stream.kafka.reading import read_topic, reader, true_ends
from ledger_stream.local import WorkerProcess
from ledger_stream.messages import (
    COMMAND_ADAPTER,
    Command,
    Deposit,
    Result,
    StateRecord,
    Transfer,
    Withdraw,
    from_json,
)
from ledger_stream.partitioning import partition_of
from ledger_stream.settings import Settings
from ledger_stream.topics import TopicNames

logger = logging.getLogger(__name__)
T = TypeVar("T")

CURRENCY = "USD"
OPENING_FUNDS = 40_000
ACCOUNTS_PER_PARTITION = 3
BESIDE_CHUNKS = 4
TRANSIT = "@transit"
# One attempt of a submit; a command without a result by then is published again (the same
# command_id and payload), up to SUBMIT_ATTEMPTS_MAX times. Crashed workers restart in
# seconds, so this is generous; pytest-timeout bounds each test as a whole.
CLIENT_TIMEOUT_S = 20.0
SUBMIT_ATTEMPTS_MAX = 10
# A crashed worker's partitions move once its group session times out: 3 s instead of
# FAST_GROUP_ENV's 6 s saves most of a restart in the cases that crash workers on purpose.
QUICK_FAILOVER_ENV = {"LEDGER_SESSION_TIMEOUT_S": "3", "LEDGER_HEARTBEAT_INTERVAL_S": "1"}


# -- worker processes ---------------------------------------------------------------------


def wait_exit(worker: WorkerProcess, timeout_s: float) -> int | None:
    """The worker's exit code once it exits; None if it is still running after `timeout_s`."""
    assert worker.process is not None
    try:
        return worker.process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return None


def pause(worker: WorkerProcess) -> None:
    """SIGSTOP, by pid: the worker stops mid-step, its sockets open, its heartbeats gone."""
    assert worker.process is not None and worker.alive()
    os.kill(worker.process.pid, signal.SIGSTOP)


async def owned_partitions(worker: WorkerProcess) -> tuple[str, list[int]]:
    """The worker's writer id and the partitions it writes, from its HTTP view."""
    body = json.loads(await worker.view("/partitions/"))
    return body["writer"], body["partitions"]


# -- commands -----------------------------------------------------------------------------


def command_id(rng: random.Random, kind: str) -> str:
    return f"{kind}-{rng.getrandbits(64):016x}"


def accounts_on_every_partition(
    rng: random.Random, partitions: int, per_partition: int = ACCOUNTS_PER_PARTITION
) -> list[str]:
    """`per_partition` account names on each partition."""
    stem = f"{rng.getrandbits(32):08x}"
    names: dict[int, list[str]] = {p: [] for p in range(partitions)}
    for i in itertools.count():
        name = f"acct-{stem}-{i}"
        on = names[partition_of(name, partitions)]
        if len(on) < per_partition:
            on.append(name)
        if all(len(on) == per_partition for on in names.values()):
            return sorted(itertools.chain.from_iterable(names.values()))
    raise AssertionError("unreachable")


def command(**fields: object) -> Command:
    return COMMAND_ADAPTER.validate_python(fields)


def new_command(
    rng: random.Random, kind: str, account: str, currency: str = CURRENCY, **fields: object
) -> Command:
    """A command of `kind` with a fresh id: `new_command(rng, "deposit", "a", amount=5)`."""
    if kind != "close_account":  # the one command without a currency
        fields["currency"] = currency
    return command(type=kind, command_id=command_id(rng, kind), account=account, **fields)


def random_commands(rng: random.Random, accounts: Sequence[str], count: int) -> list[Command]:
    """Transfers (most of them across partitions), withdrawals and deposits; amounts large
    enough that some debits find too little money."""
    commands = []
    for _ in range(count):
        source, destination = rng.sample(list(accounts), 2)
        roll = rng.random()
        common = {"account": source, "currency": CURRENCY}
        if roll < 0.55:
            fields = {"type": "transfer", "destination": destination}
            amount = rng.randint(1, 15_000)
        elif roll < 0.8:
            fields, amount = {"type": "withdraw"}, rng.randint(1, 10_000)
        else:
            fields, amount = {"type": "deposit"}, rng.randint(1, 8_000)
        kind = str(fields["type"])
        commands.append(
            command(command_id=command_id(rng, kind), amount=amount, **common, **fields)
        )
    return commands


@dataclass
class Expected:
    """What the accepted results add up to: balances, and the journal entries they post."""

    partitions: int
    balances: Counter[str] = field(default_factory=Counter)
    entry_ids: set[str] = field(default_factory=set)
    # Rejected transfers across partitions: refused by the destination (debited, then
    # refunded: entries :0 and :2, nothing moved in all) or by the source (no entry).
    maybe_refunded: set[str] = field(default_factory=set)

    def apply(self, command: Command, result: Result) -> None:
        assert result.command_id == command.command_id, (command, result)
        refusable = isinstance(command, Transfer) and self.crosses(command)
        if refusable and result.status == "rejected" and result.code in REFUND_CODES:
            self.maybe_refunded.add(command.command_id)
        if result.status != "accepted" or not isinstance(command, (Deposit, Withdraw, Transfer)):
            return
        self.entry_ids.add(f"{command.command_id}:0")
        if isinstance(command, Deposit):
            self.balances[command.account] += command.amount
        elif isinstance(command, Withdraw):
            self.balances[command.account] -= command.amount
        elif isinstance(command, Transfer):
            self.balances[command.account] -= command.amount
            self.balances[command.destination] += command.amount
            if self.crosses(command):
                self.entry_ids.add(f"{command.command_id}:1")

    def crosses(self, transfer: Transfer) -> bool:
        n = self.partitions
        return partition_of(transfer.account, n) != partition_of(transfer.destination, n)


class Load:
    """Commands submitted through one client, each until it has a result (the same command
    published again after every `ResultTimeout`), and what their results add up to."""

    def __init__(self, settings: Settings, client: LedgerClient) -> None:
        self.client = client
        self.expected = Expected(settings.partitions)
        self.commands: dict[str, Command] = {}
        self.results: dict[str, Result] = {}
        self.chunks_done = 0

    async def submit(
        self, commands: Sequence[Command], via: LedgerClient | None = None
    ) -> list[Result]:
        """Submit `commands` together (through another client `via`, if given); each is
        published again after a `ResultTimeout`."""
        client = via or self.client
        for one in commands:
            self.commands[one.command_id] = one
        results = await asyncio.gather(
            *(client.submit(one, attempts_max=SUBMIT_ATTEMPTS_MAX) for one in commands)
        )
        for one, result in zip(commands, results, strict=True):
            self.track(one, result)
        return list(results)

    def track(self, one: Command, result: Result) -> None:
        """Count a command's first answer; the answer to a repeat decides nothing new."""
        self.commands[one.command_id] = one
        if one.command_id not in self.results:
            self.results[one.command_id] = result
            self.expected.apply(one, result)

    async def open_accounts(
        self,
        rng: random.Random,
        accounts: Sequence[str],
        *,
        funds: int = OPENING_FUNDS,
        currency: str = CURRENCY,
    ) -> None:
        """Open the accounts and deposit `funds` on each; every one must be accepted."""
        commands = []
        for account in accounts:
            common = {"account": account, "currency": currency}
            commands.append(
                command(type="open_account", command_id=command_id(rng, "open"), **common)
            )
            if funds:
                funding = command_id(rng, "fund")
                commands.append(command(type="deposit", command_id=funding, amount=funds, **common))
        results = await self.submit(commands)
        assert {r.status for r in results} == {"accepted"}, results

    async def run(
        self,
        rng: random.Random,
        accounts: Sequence[str],
        *,
        chunk_size: int = 40,
        chunks_max: int | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        """Chunks of random commands, one chunk after the other (all of a chunk in flight at
        once), until `stop` is set or `chunks_max` chunks are done. Between accounts that are
        all open in one currency, the only rejection is `insufficient_funds`."""
        assert stop is not None or chunks_max is not None, "the load needs an end"
        done = 0
        while not (stop is not None and stop.is_set()) and done != chunks_max:
            for result in await self.submit(random_commands(rng, accounts, chunk_size)):
                assert result.status == "accepted" or result.code == "insufficient_funds", result
            done += 1
            self.chunks_done += 1

    async def chunks(self, count: int, workers: Workers) -> None:
        """Wait until `count` chunks are done in all."""
        await until(lambda: self.chunks_done >= count, workers, f"{count} chunks of the load")

    def assert_all_answered(self) -> None:
        missing = sorted(set(self.commands) - set(self.results))
        assert not missing, f"{len(missing)} commands without a result: {missing[:5]}"


def beside(load: Load, rng: random.Random, accounts: Sequence[str]) -> asyncio.Task[None]:
    """A seeded random load over `accounts` (opened, funded, in CURRENCY), running beside a
    case's own commands: `BESIDE_CHUNKS` chunks, one after the other."""
    load_rng = random.Random(rng.getrandbits(64))
    return asyncio.create_task(load.run(load_rng, accounts, chunks_max=BESIDE_CHUNKS))


def client_for(settings: Settings) -> LedgerClient:
    return LedgerClient(
        settings.bootstrap_servers, topic_prefix=settings.topic_prefix, timeout_s=CLIENT_TIMEOUT_S
    )


async def finished(task: asyncio.Task[T], workers: Workers, what: str) -> T:
    await until(task.done, workers, what)
    return await task


# -- the checks every case ends with ------------------------------------------------------


async def wait_until_quiet(settings: Settings, workers: Workers) -> None:
    """Wait until the writers have acknowledged every command and leg record there is: the
    last step of a batch, after its state commit and its outputs, so the audit is exact."""
    names = TopicNames.from_settings(settings)
    tps = [
        TopicPartition(topic, p)
        for topic in (names.commands, names.legs)
        for p in range(settings.partitions)
    ]
    consumer = reader(settings.bootstrap_servers)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await consumer.start()
    await admin.start()

    async def waiting() -> dict[str, int]:
        """Input records not yet acknowledged, by topic partition."""
        ends = await true_ends(consumer, tps)
        committed = await admin.list_consumer_group_offsets(settings.app_id, partitions=tps)
        acked = {tp: max(0, committed[tp].offset) if tp in committed else 0 for tp in tps}
        behind = {f"{tp.topic}-{tp.partition}": ends[tp] - acked[tp] for tp in tps}
        behind = {name: count for name, count in behind.items() if count > 0}
        if behind:
            logger.info("input not yet acknowledged: %s", behind)
        return behind

    try:
        await polled(waiting, lambda behind: not behind, workers, "every input acknowledged")
    finally:
        await admin.close()
        await consumer.stop()


async def assert_audit_clean(settings: Settings) -> None:
    """What `ledger-stream audit` says must be: OK."""
    report = await audit(settings)
    assert report.ok, f"audit of {settings.topic_prefix}*:\n{report.text()}"


async def assert_books_match(
    settings: Settings, expected: Expected, accounts: Sequence[str]
) -> None:
    """The journal's balances equal what the accepted results add up to, and it holds exactly
    the entries the accepted results posted (none twice, none missing) and the debit and
    refund of each transfer the destination refused; @transit is empty."""
    journal = TopicNames.from_settings(settings).journal
    events = await read_journal(settings.bootstrap_servers, journal)
    books = fold(events)
    from_journal = {a: books.balance(a, CURRENCY) for a in accounts}
    from_results = {a: expected.balances[a] for a in accounts}
    assert from_journal == from_results
    assert books.balance(TRANSIT, CURRENCY) == 0
    movements = {e.entry_id for e in events if e.kind not in ("account_opened", "account_closed")}
    refunded = {tid for tid in expected.maybe_refunded if {f"{tid}:0", f"{tid}:2"} <= movements}
    posted = expected.entry_ids | {f"{tid}:{leg}" for tid in refunded for leg in (0, 2)}
    assert movements == posted, (
        f"missing: {sorted(posted - movements)[:5]}, unexpected: {sorted(movements - posted)[:5]}"
    )


@dataclass(frozen=True)
class StateEntry:
    """One record of the state log: where it landed and what it says."""

    partition: int
    offset: int
    record: StateRecord

    @property
    def valid(self) -> bool:
        return self.record.expect == self.offset


async def read_state_log(settings: Settings) -> list[StateEntry]:
    """Every record of the state topic, in offset order per partition."""
    entries = []
    topic = TopicNames.from_settings(settings).state
    async for records in read_topic(settings.bootstrap_servers, topic):
        for r in records:
            entries.append(StateEntry(r.partition, r.offset, from_json(r.value, StateRecord)))
    return sorted(entries, key=lambda e: (e.partition, e.offset))


def commits_by_non_owners(entries: Sequence[StateEntry]) -> list[str]:
    """Valid commits made by a writer other than the one whose valid claim came last before
    them on their partition: a writer that lost its partition and still changed it."""
    owner: dict[int, str] = {}
    wrong = []
    for entry in entries:
        if not entry.valid:
            continue
        if entry.record.kind == "claim":
            owner[entry.partition] = entry.record.writer
        elif owner.get(entry.partition) != entry.record.writer:
            wrong.append(
                f"state/{entry.partition}/{entry.offset} by {entry.record.writer[:8]}, "
                f"owner {owner.get(entry.partition, 'none')[:8]}"
            )
    return wrong


async def assert_ledger_sound(
    settings: Settings, workers: Workers, load: Load, accounts: Sequence[str]
) -> None:
    """The end of every case: the writers quiet, the audit clean, every commit made by the
    partition's owner, every command answered, and the journal (for `accounts`) what the
    accepted results say."""
    await wait_until_quiet(settings, workers)
    await assert_audit_clean(settings)
    assert commits_by_non_owners(await read_state_log(settings)) == []
    load.assert_all_answered()
    await assert_books_match(settings, load.expected, accounts)
