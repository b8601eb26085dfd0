"""The fault suite's harness: worker processes, a seeded load of commands that are submitted
until each has a result, and the checks every case ends with (the ledger quiet, the audit
clean, the journal equal to what the accepted results say, each commit by its owner).

The load is a mix of every command that moves money — deposits, withdrawals, transfers,
holds posted (in part) or voided, invoice payments through the ledger and through a card
gateway (confirmed or failed), and reversals of earlier commands — over accounts on every
partition, so most of it crosses partitions and some runs out of funds; and aliases
registered for those accounts, some twice (for one account or another), which later
transfers name instead of the accounts, and deposits name as soon as they are registered
(sometimes before the alias is: `alias_not_found`). Outcomes depend on
the order the writers see commands, so what the books must hold is computed from the results
the client receives: a sum of accepted movements does not depend on the order.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import signal
import subprocess
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from worker_harness import Workers, polled, until

from ledger_stream.audit import audit
from ledger_stream.client import LedgerClient
from ledger_stream.codes import REFUND_CODES, Code
from ledger_stream.journal import fold, read_journal
from ledger_stream.kafka.reading import read_topic, reader, true_ends
from ledger_stream.local import WorkerProcess
from ledger_stream.messages import (
    COMMAND_ADAPTER,
    Command,
    ConfirmPayment,
    Deposit,
    FailPayment,
    PayInvoice,
    PlaceHold,
    PostHold,
    RegisterAlias,
    Result,
    Reverse,
    StateRecord,
    Transfer,
    VoidHold,
    Withdraw,
    from_json,
    with_accounts_of,
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


# The rejections the load may meet between open accounts of one currency: too little money,
# and the second command of a pair whose first was refused (a hold, a payment) or that names
# what was done already or is under way (an invoice paid, a command reversed, an alias
# registered).
LOAD_CODES = (
    Code.INSUFFICIENT_FUNDS,
    Code.HOLD_NOT_FOUND,
    Code.PAYMENT_NOT_FOUND,
    Code.INVOICE_ALREADY_PAID,
    Code.INVOICE_PAYMENT_PENDING,
    Code.ALREADY_REVERSED,
    Code.ALIAS_TAKEN,
    Code.ALIAS_NOT_FOUND,
)


def random_commands(
    rng: random.Random,
    accounts: Sequence[str],
    count: int,
    done: Sequence[Command] = (),
    aliases: Mapping[str, str] | None = None,
) -> list[Command]:
    """About `count` commands of every kind that moves money, and alias registrations;
    amounts large enough that some debits find too little money. A hold comes with its post
    or void, a card payment with its confirmation or failure, after it (same account, same
    partition, in order); reversals pick from `done`, commands accepted before; an alias is
    sometimes registered twice at once, the second for the same account or another (one of
    the two is refused, whichever its writer reads second), and sometimes paid by the alias
    at once. A transfer sometimes names its accounts by `aliases` (alias: account) of
    theirs."""
    commands: list[Command] = []
    by_account: dict[str, list[str]] = {}
    for alias, account in (aliases or {}).items():
        by_account.setdefault(account, []).append(alias)

    def named(account: str) -> str:
        known = by_account.get(account)
        return rng.choice(known) if known and rng.random() < 0.3 else account

    reversible = [
        c
        for c in done
        if isinstance(c, (Deposit, Withdraw, Transfer))
        or (isinstance(c, PayInvoice) and c.channel == "ledger")
    ]
    while len(commands) < count:
        source, destination = rng.sample(list(accounts), 2)
        roll = rng.random()
        amount = rng.randint(1, 12_000)
        if roll < 0.40:
            commands.append(
                new_command(
                    rng, "transfer", named(source), destination=named(destination), amount=amount
                )
            )
        elif roll < 0.55:
            commands.append(new_command(rng, "withdraw", source, amount=amount))
        elif roll < 0.65:
            commands.append(new_command(rng, "deposit", source, amount=rng.randint(1, 8_000)))
        elif roll < 0.77:
            hold = new_command(rng, "hold", source, destination=destination, amount=amount)
            if rng.random() < 0.7:
                part = rng.randint(1, amount)
                then = command(
                    type="post_hold",
                    command_id=command_id(rng, "post"),
                    account=source,
                    hold_id=hold.command_id,
                    amount=part,
                )
            else:
                then = command(
                    type="void_hold",
                    command_id=command_id(rng, "void"),
                    account=source,
                    hold_id=hold.command_id,
                )
            commands += [hold, then]
        elif roll < 0.85:
            invoice = {"invoice_id": f"inv-{rng.getrandbits(32):08x}", "amount": amount}
            times = 2 if rng.random() < 0.3 else 1  # paid again, under another command id
            for _ in range(times):
                commands.append(
                    new_command(rng, "pay_invoice", source, destination=destination, **invoice)
                )
        elif roll < 0.89:
            alias = f"alias:{rng.getrandbits(32):08x}@example.com"
            commands.append(new_alias(rng, alias, source))
            if rng.random() < 0.4:
                commands.append(new_alias(rng, alias, rng.choice([source, destination])))
            if rng.random() < 0.5:
                commands.append(new_command(rng, "deposit", alias, amount=rng.randint(1, 8_000)))
        elif roll < 0.94:
            invoice = f"inv-{rng.getrandbits(32):08x}"
            pay = new_command(
                rng,
                "pay_invoice",
                source,
                destination=destination,
                amount=amount,
                invoice_id=invoice,
                channel="card",
            )
            answer = "confirm_payment" if rng.random() < 0.7 else "fail_payment"
            then = command(
                type=answer, command_id=command_id(rng, answer), account=source, invoice_id=invoice
            )
            commands += [pay, then]
        elif reversible:
            target = rng.choice(reversible)
            by = (
                target.destination if isinstance(target, (Transfer, PayInvoice)) else target.account
            )
            commands.append(
                command(
                    type="reverse",
                    command_id=command_id(rng, "reverse"),
                    account=by,
                    target=target.command_id,
                )
            )
    return commands


def new_alias(rng: random.Random, alias: str, account: str) -> Command:
    return command(
        type="register_alias", command_id=command_id(rng, "alias"), account=alias, target=account
    )


@dataclass
class Expected:
    """What the accepted results add up to: balances, and the journal entries they post."""

    partitions: int
    commands: dict[str, Command]
    balances: Counter[str] = field(default_factory=Counter)
    entry_ids: set[str] = field(default_factory=set)
    # Rejected commands whose money crossed partitions and came back (debited, then
    # refunded: entries :0 and :2, nothing moved in all), or were refused at the source.
    maybe_refunded: set[str] = field(default_factory=set)

    def apply(self, command: Command, result: Result) -> None:
        assert result.command_id == command.command_id, (command, result)
        moving = self.movement(command, result)
        refused = result.status == "rejected" and result.code in REFUND_CODES
        if moving is not None and refused and self.crosses(*moving[:2]):
            self.maybe_refunded.add(command.command_id)
        if result.status != "accepted":
            return
        if isinstance(command, (PlaceHold, VoidHold, FailPayment, RegisterAlias)) or (
            isinstance(command, PayInvoice) and command.channel != "ledger"
        ):
            # Reserved or released, or an alias registered: no movement.
            self.entry_ids.add(f"{command.command_id}:0")
            return
        if moving is None:
            return
        source, destination, amount = moving
        self.entry_ids.add(f"{command.command_id}:0")
        self.balances[source] -= amount
        self.balances[destination] += amount
        if self.crosses(source, destination):
            self.entry_ids.add(f"{command.command_id}:1")

    def movement(self, command: Command, result: Result) -> tuple[str, str, int] | None:
        """(from, to, amount) of what the command moves when accepted; @world outside."""
        if isinstance(command, Deposit):
            return "@world", command.account, command.amount
        if isinstance(command, Withdraw):
            return command.account, "@world", command.amount
        if isinstance(command, (Transfer, PayInvoice)):
            return command.account, command.destination, command.amount
        if isinstance(command, (PostHold, ConfirmPayment)):
            if result.status != "accepted":  # where it would have gone: the result says not
                return None
            assert result.destination is not None and result.amount is not None
            return command.account, result.destination, result.amount
        if isinstance(command, Reverse):
            target = self.commands[command.target]
            back = self.movement(target, result)
            if back is None:
                return None
            source, destination, amount = back
            return destination, source, amount
        return None

    def crosses(self, one: str, other: str) -> bool:
        if "@world" in (one, other):
            return False
        n = self.partitions
        return partition_of(one, n) != partition_of(other, n)


class Load:
    """Commands submitted through one client, each until it has a result (the same command
    published again after every `ResultTimeout`), and what their results add up to."""

    def __init__(self, settings: Settings, client: LedgerClient) -> None:
        self.client = client
        self.commands: dict[str, Command] = {}
        self.expected = Expected(settings.partitions, self.commands)
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
        """Count a command's first answer, the command naming the accounts its aliases
        stood for; the answer to a repeat decides nothing new."""
        if one.command_id not in self.results:
            one = with_accounts_of(one, result)
            self.commands[one.command_id] = one
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
        all open in one currency, the only rejections are `LOAD_CODES`."""
        assert stop is not None or chunks_max is not None, "the load needs an end"
        done = 0
        while not (stop is not None and stop.is_set()) and done != chunks_max:
            # Reversals pick among this load's own accepted commands: the accounts of a case's
            # own commands are not the load's to take money from.
            ours = set(accounts)
            accepted = [
                self.commands[c]
                for c, r in self.results.items()
                if r.status == "accepted" and _names(self.commands[c]) <= ours
            ]
            aliases = {
                self.commands[c].account: r.destination
                for c, r in self.results.items()
                if isinstance(self.commands[c], RegisterAlias)
                and r.status == "accepted"
                and r.destination in ours
            }
            chunk = random_commands(rng, accounts, chunk_size, accepted, aliases)
            for result in await self.submit(chunk):
                assert result.status == "accepted" or result.code in LOAD_CODES, result
            done += 1
            self.chunks_done += 1

    async def chunks(self, count: int, workers: Workers) -> None:
        """Wait until `count` chunks are done in all."""
        await until(lambda: self.chunks_done >= count, workers, f"{count} chunks of the load")

    def assert_all_answered(self) -> None:
        missing = sorted(set(self.commands) - set(self.results))
        assert not missing, f"{len(missing)} commands without a result: {missing[:5]}"


def _names(command: Command) -> set[str]:
    """The accounts a command names."""
    return {command.account, *filter(None, [getattr(command, "destination", None)])}


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
