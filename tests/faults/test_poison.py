"""Records no producer of the ledger would write, published raw on the commands and legs
topics, each end up in the dead-letter topic with an `error` header naming what is wrong,
and the writer goes on deciding what comes after them. A command whose id can be read gets
a rejection; amounts that parse but cannot be moved (zero, negative, past the maximum) are
rejected by `decide` with their code, as core.py documents, not dead-lettered.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaProducer
from ledger_load import (
    Load,
    accounts_on_every_partition,
    assert_ledger_sound,
    beside,
    client_for,
    command_id,
    finished,
    new_command,
)
from worker_harness import Workers, polled

from ledger_stream.kafka.reading import read_topic
from ledger_stream.messages import Result, from_json
from ledger_stream.outputs import DEAD_LETTER_VALUE_BYTES_MAX
from ledger_stream.partitioning import partition_of
from ledger_stream.settings import Settings
from ledger_stream.topics import TopicNames

HUGE_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class Poison:
    name: str
    value: bytes | None
    command_id: str | None = None  # when one can be read, it gets a rejection:
    code: str | None = None  # this one
    dead_letter: bool = True


class RawJson(str):
    """A JSON fragment written as is."""


def _json(**fields: object) -> bytes:
    """JSON text, with `RawJson` values (`NaN`, `1e400`) written as they are."""
    parts = [f'"{k}": {v if isinstance(v, RawJson) else _quoted(v)}' for k, v in fields.items()]
    return ("{" + ", ".join(parts) + "}").encode()


def _quoted(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


def command_poisons(rng: random.Random, account: str) -> list[Poison]:
    """Bad command records for `account`'s partition."""

    def deposit(name: str, amount: object, code: str, dead_letter: bool, **more: str) -> Poison:
        cid = command_id(rng, "bad")
        fields = {"type": "deposit", "command_id": cid, "account": account, "currency": "USD"}
        value = _json(**{**fields, **more}, amount=amount)
        return Poison(name, value, cid, code, dead_letter)

    shapeless, mint = command_id(rng, "shape"), command_id(rng, "mint")
    # Over the writer's record limit, with an id that can be read: it is dead-lettered
    # unread. Whether it is answered as well is for the audit to say (it wants every
    # readable id answered), so no code is expected here.
    huge = _json(
        type="deposit",
        command_id=command_id(rng, "huge"),
        account=account,
        currency="USD",
        amount=5,
        metadata=RawJson('{"note": "' + "x" * HUGE_BYTES + '"}'),
    )
    return [
        Poison("not JSON", b"{this is not json"),
        Poison("a JSON string", b'"deposit 5 USD"'),
        Poison("an array of numbers", b"[1, 2, 3]"),
        Poison("empty value", b""),
        Poison("no value", None),
        Poison("huge value", b"x" * HUGE_BYTES),
        Poison("huge command", huge),
        Poison("wrong shape", _json(command_id=shapeless), shapeless, "invalid_command"),
        Poison(
            "unknown type",
            _json(type="mint", command_id=mint, account=account, amount=5, currency="USD"),
            mint,
            "invalid_command",
        ),
        # Amounts that parse are decided, and refused with a code; the others cannot be read.
        deposit("amount 0", 0, "invalid_amount", dead_letter=False),
        deposit("negative amount", -5, "invalid_amount", dead_letter=False),
        deposit("amount 2**63", 2**63, "amount_too_large", dead_letter=False),
        deposit('"0.1" JPY', "0.1", "invalid_amount", dead_letter=True, currency="JPY"),
        deposit("NaN", RawJson("NaN"), "invalid_amount", dead_letter=True),
        deposit("1e400", RawJson("1e400"), "invalid_amount", dead_letter=True),
        deposit('"abc"', "abc", "invalid_amount", dead_letter=True),
    ]


def leg_poisons(rng: random.Random, source: str, destination: str) -> list[Poison]:
    """Bad leg records (a leg record is a JSON array of legs)."""

    def leg(kind: str, amount: object, currency: str = "USD") -> bytes:
        fields = {
            "type": kind,
            "transfer_id": command_id(rng, "forged"),
            "source": source,
            "destination": destination,
            "currency": currency,
        }
        return b"[" + _json(**fields, amount=amount) + b"]"

    return [
        Poison("not JSON", b"[{oops"),
        Poison("an object, not an array", _json(type="credit")),
        Poison("an array of numbers", b"[1, 2]"),
        Poison("unknown type", leg("steal", 100)),
        Poison("empty value", b""),
        Poison("no value", None),
        Poison("huge value", b"[" + b" " * HUGE_BYTES + b"]"),
        Poison("settle of a transfer that never happened", leg("settle", 100)),
        Poison("amount 0", leg("credit", 0)),
        Poison("negative amount", leg("credit", -5)),
        Poison('"0.1" JPY', leg("credit", "0.1", "JPY")),
        Poison("NaN", leg("credit", RawJson("NaN"))),
        Poison("1e400", leg("credit", RawJson("1e400"))),
        Poison("amount 2**63", leg("credit", 2**63)),
        Poison('"abc"', leg("credit", "abc")),
    ]


async def publish(
    ledger: Settings, topic: str, key: str, poisons: list[Poison]
) -> dict[tuple[int, int], Poison]:
    """Publish each value raw to the partition of `key`; the poisons by (partition, offset)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=ledger.bootstrap_servers, max_request_size=2 * HUGE_BYTES
    )
    await producer.start()
    try:
        partition = partition_of(key, ledger.partitions)
        at = {}
        for poison in poisons:
            sent = await producer.send_and_wait(
                topic, poison.value, key=key.encode(), partition=partition
            )
            at[(partition, sent.offset)] = poison
        return at
    finally:
        await producer.stop()


@dataclass(frozen=True)
class DeadLetter:
    headers: dict[str, str]
    value: bytes | None


async def dead_letters(ledger: Settings, source_topic: str) -> dict[tuple[int, int], DeadLetter]:
    """The dead letters of `source_topic`, by source (partition, offset)."""
    found = {}
    topic = TopicNames.from_settings(ledger).deadletter
    async for records in read_topic(ledger.bootstrap_servers, topic):
        for record in records:
            headers = {name: value.decode() for name, value in record.headers}
            if headers.get("source_topic") == source_topic:
                source = (int(headers["source_partition"]), int(headers["source_offset"]))
                found[source] = DeadLetter(headers, record.value)
    return found


async def results_of(ledger: Settings, command_ids: set[str]) -> dict[str, Result]:
    found = {}
    topic = TopicNames.from_settings(ledger).results
    async for records in read_topic(ledger.bootstrap_servers, topic):
        for record in records:
            result = from_json(record.value, Result)
            if result.command_id in command_ids:
                found[result.command_id] = result
    return found


async def wait_for_dead_letters(
    ledger: Settings, workers: Workers, topic: str, sources: set[tuple[int, int]]
) -> dict[tuple[int, int], DeadLetter]:
    return await polled(
        lambda: dead_letters(ledger, topic),
        lambda letters: sources <= letters.keys(),
        workers,
        f"{len(sources)} dead letters of {topic}",
    )


@pytest.mark.timeout(120)
async def test_poison_commands_are_dead_lettered_and_the_writer_goes_on(
    ledger: Settings, workers: Workers, rng: random.Random
) -> None:
    accounts = accounts_on_every_partition(rng, ledger.partitions)
    target = accounts[0]
    worker = await asyncio.to_thread(workers.start_ready)
    topic = TopicNames.from_settings(ledger).commands
    async with client_for(ledger) as client:
        load = Load(ledger, client)
        await load.open_accounts(rng, accounts)
        loading = beside(load, rng, accounts)
        poisons = command_poisons(rng, target)
        published = await publish(ledger, topic, target, poisons)
        after = [new_command(rng, "deposit", a, amount=7) for a in accounts]
        assert {r.status for r in await load.submit(after)} == {"accepted"}

        letters = await wait_for_dead_letters(
            ledger, workers, topic, {o for o, p in published.items() if p.dead_letter}
        )
        for where, poison in published.items():
            if not poison.dead_letter:
                assert where not in letters, (poison.name, letters[where])
                continue
            letter = letters[where]
            assert letter.headers["error"], (poison.name, letter.headers)
            original = poison.value and poison.value[:DEAD_LETTER_VALUE_BYTES_MAX]
            assert (letter.value or None) == (original or None), poison.name  # its own bytes
        readable = [p for p in poisons if p.command_id]
        answered = await results_of(ledger, {p.command_id for p in readable})
        codes = {p.name: answered[p.command_id].code for p in readable}
        assert codes == {p.name: p.code for p in readable}
        await finished(loading, workers, "the load beside")
        assert worker.alive()
    await assert_ledger_sound(ledger, workers, load, accounts)


@pytest.mark.timeout(120)
async def test_poison_legs_are_dead_lettered_and_the_writer_goes_on(
    ledger: Settings, workers: Workers, rng: random.Random
) -> None:
    accounts = accounts_on_every_partition(rng, ledger.partitions)
    source, *others = accounts
    destination = next(a for a in others if _partition(ledger, a) != _partition(ledger, source))
    worker = await asyncio.to_thread(workers.start_ready)
    topic = TopicNames.from_settings(ledger).legs
    async with client_for(ledger) as client:
        load = Load(ledger, client)
        await load.open_accounts(rng, accounts)
        loading = beside(load, rng, accounts)
        # A credit leg goes to the destination's writer, a settle to the source's.
        poisons = leg_poisons(rng, source, destination)
        settles = [p for p in poisons if p.name.startswith("settle")]
        at_destination = [p for p in poisons if p not in settles]
        published = {
            **await publish(ledger, topic, destination, at_destination),
            **await publish(ledger, topic, source, settles),
        }
        # Transfers around a ring of accounts the load beside does not touch (its holds and
        # payments may leave its own accounts short at any moment), across partitions.
        quiet = accounts_on_every_partition(rng, ledger.partitions, 1)
        await load.open_accounts(rng, quiet)
        after = [
            new_command(rng, "transfer", a, destination=b, amount=5)
            for a, b in zip(quiet, quiet[1:] + quiet[:1], strict=True)
        ]
        assert {r.status for r in await load.submit(after)} == {"accepted"}

        letters = await wait_for_dead_letters(ledger, workers, topic, set(published))
        for where, poison in published.items():
            assert letters[where].headers["error"], (poison.name, letters[where].headers)
        await finished(loading, workers, "the load beside")
        assert worker.alive()
    await assert_ledger_sound(ledger, workers, load, [*accounts, *quiet])


def _partition(ledger: Settings, account: str) -> int:
    return partition_of(account, ledger.partitions)
