"""LedgerClient: what a producer service uses to publish commands and await their results.

Commands are batched per partition (one Kafka record may carry a JSON array of commands of
one partition): a command goes out at once when no record of its partition is on its way,
and otherwise waits for that record's ack, `batch_size_max` commands or `linger_ms`, whichever
comes first; so one command at a time is not delayed, and many at once are batched. Results
are read from one results partition that this client names as its reply partition, without
a consumer group.

    async with LedgerClient("localhost:9092") as ledger:
        await ledger.open_account("alice", "USD")
        result = await ledger.deposit("alice", "12.50", "USD", attempts_max=3)
        assert result.status == "accepted"

A command id is the command's idempotency key, so retrying with the same id is the safe way
to retry: the writer decides a command id once, and answers a repeat of the same payload with
the original outcome, marked `duplicate=True`. `attempts_max` re-publishes the identical
command after each `ResultTimeout`; after a `ResultTimeout` or a `SendFailed`, a caller may
`submit(error.command)` itself. A writer checks ids for uniqueness within the partition of the
command's account (all it sees), so ids must be unique across the whole ledger: the default
is a uuid4. An id once decided is spent, even by a rejection: the same id with another
payload is rejected with `exists_with_different_payload`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.cluster import ClusterMetadata

from ledger_stream.core import fingerprint
from ledger_stream.errors import ConfigurationError, ResultTimeout, SendFailed
from ledger_stream.intake import RECORD_BYTES_MAX
from ledger_stream.kafka.retry import started
from ledger_stream.messages import (
    COMMAND_ADAPTER,
    Command,
    Result,
    aliases_named,
    from_builtins,
    with_accounts_of,
)
from ledger_stream.partitioning import partition_of
from ledger_stream.reads import HttpReads

logger = logging.getLogger(__name__)

# A submit waiting on a queued record: the command, as sent, and the future of its result.
_Waiter = tuple[Command, asyncio.Future[Result]]
# One queued command record: its account (the record key), its bytes, and its waiter
# (None for `send_raw`). Plain tuples: one is made per command on the hot path.
_Queued = tuple[str, bytes, _Waiter | None]


class RecordProducer(Protocol):
    """What the client needs of a started Kafka producer (AIOKafkaProducer has it)."""

    async def send(
        self, topic: str, value: bytes, *, key: bytes, partition: int
    ) -> Awaitable[Any]: ...

    async def stop(self) -> None: ...


class LedgerClient:
    def __init__(
        self,
        bootstrap_servers: str,
        *,
        topic_prefix: str = "ledger.",
        timeout_s: float = 30.0,
        linger_ms: int = 5,
        batch_size_max: int = 500,
        connect_attempts_max: int = 5,
        in_flight_max: int = 10_000,
        fetch_wait_ms: int = 500,
        http_url: str | None = None,
        security: Mapping[str, Any] | None = None,
        api_key: str | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        # Keyword arguments of each Kafka client this one makes: a secured cluster's
        # protocol, TLS context and SASL credentials (`ledger_stream.kafka.security`).
        self.security = dict(security or {})
        self.commands_topic = f"{topic_prefix}commands"
        self.results_topic = f"{topic_prefix}results"
        self.timeout_s = timeout_s
        self.linger_ms = linger_ms
        self.batch_size_max = batch_size_max
        self.connect_attempts_max = connect_attempts_max
        self.fetch_wait_ms = fetch_wait_ms  # see Settings.fetch_wait_ms
        # Commands awaiting their result at once; a caller past this waits for a slot.
        self._slots = asyncio.Semaphore(in_flight_max)
        self.reply_partition = 0
        self._partitions = 0
        self._producer: RecordProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None
        # command_id -> (payload digest, future) per submission, oldest first
        # Per command id, the submissions waiting: payload digest, future, and the command
        # when it names aliases (its answer's digest is then that of the command resolved).
        self._waiting: dict[str, deque[tuple[str, asyncio.Future[Result], Command | None]]] = (
            defaultdict(deque)
        )
        self._queued: dict[int, list[_Queued]] = defaultdict(list)
        self._queued_bytes: dict[int, int] = {}  # size of each queue's record, as sent
        self._on_the_way: dict[int, int] = defaultdict(int)  # records sent, not yet acked
        self._flush_handle: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[SendFailed | None]] = set()
        # Failed records holding `send_raw` values: no caller waits on those, so the next
        # `flush` raises them.
        self._unreported: list[SendFailed] = []
        # Called with every result read from the reply partition (see `watch_results`).
        self._watchers: list[Callable[[dict[str, Any]], None]] = []
        # Reads go to a worker's HTTP API (any worker).
        self._reads = None if http_url is None else HttpReads(http_url, api_key=api_key)

    async def __aenter__(self) -> LedgerClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        producer = await started(
            lambda: AIOKafkaProducer(
                bootstrap_servers=self.bootstrap_servers,
                acks="all",
                linger_ms=0,  # this client batches commands itself (see `_enqueue`)
                max_batch_size=256 * 1024,
                max_request_size=4 * 1024 * 1024,
                **self.security,
            ),
            self.bootstrap_servers,
            self.connect_attempts_max,
            _stop,
        )
        try:
            # Ask for all topics: naming one in a metadata request lets a broker with
            # auto.create.topics.enable (and the embedded broker) create it with a wrong
            # layout.
            cluster = await producer.client.fetch_all_metadata()
            partitions = _partition_count(cluster, self.commands_topic)
            reply_partition = random.randrange(_partition_count(cluster, self.results_topic))
            self._consumer = await _results_consumer(
                self.bootstrap_servers,
                TopicPartition(self.results_topic, reply_partition),
                self.fetch_wait_ms,
                self.security,
            )
        except BaseException:
            await producer.stop()
            raise
        self.attach(
            producer,
            _result_values(self._consumer),
            partitions=partitions,
            reply_partition=reply_partition,
        )

    def attach(
        self,
        producer: RecordProducer,
        results: AsyncIterator[Sequence[bytes | None]],
        *,
        partitions: int,
        reply_partition: int,
    ) -> None:
        """Work on a started producer and the values of the result records written to
        `reply_partition` (a poll at a time): what `start` does once connected, and where
        tests attach fakes. `stop` stops the producer."""
        if self._producer is not None:
            raise RuntimeError("LedgerClient is already started")
        self._producer = producer
        self._partitions = partitions
        self.reply_partition = reply_partition
        self._reader = asyncio.create_task(self._read_results(results))

    async def stop(self) -> None:
        """Send what is queued, then close. A record Kafka did not take raises `SendFailed`
        (see `flush`), after closing."""
        try:
            await self.flush()
        finally:
            await self._close()

    async def _close(self) -> None:
        if self._flush_handle is not None:  # submitted while stopping: cancelled below
            self._flush_handle.cancel()
            self._flush_handle = None
        self._queued.clear()
        self._queued_bytes.clear()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        for client in (self._consumer, self._producer):
            if client is not None:
                await client.stop()
        if self._reads is not None:
            await self._reads.close()
        self._reader, self._consumer, self._producer = None, None, None
        for waiting in self._waiting.values():
            for _, future, _ in waiting:
                future.cancel()

    # One method per command type. Each takes `command_id` (default: a new uuid4),
    # `metadata` (string to string, recorded on the journal event and the result) and
    # `attempts_max` (see `submit`), and returns the result.

    async def open_account(
        self,
        account: str,
        currency: str,
        *,
        overdraft_limit: int | str = 0,
        limits: dict[str, Any] | None = None,
        low_balance: int | None = None,
        **options: Any,
    ) -> Result:
        fields = {
            "currency": currency,
            "overdraft_limit": overdraft_limit,
            "limits": limits,
            "low_balance": low_balance,
        }
        return await self._command("open_account", account, fields, **options)

    async def set_limits(
        self,
        account: str,
        *,
        limits: dict[str, Any] | None = None,
        overdraft_limit: int | None = None,
        low_balance: int | None = None,
        **options: Any,
    ) -> Result:
        fields = {"limits": limits, "overdraft_limit": overdraft_limit, "low_balance": low_balance}
        return await self._command("set_limits", account, fields, **options)

    async def deposit(
        self, account: str, amount: int | str, currency: str, **options: Any
    ) -> Result:
        fields = {"amount": amount, "currency": currency}
        return await self._command("deposit", account, fields, **options)

    async def withdraw(
        self, account: str, amount: int | str, currency: str, **options: Any
    ) -> Result:
        fields = {"amount": amount, "currency": currency}
        return await self._command("withdraw", account, fields, **options)

    async def transfer(
        self, source: str, destination: str, amount: int | str, currency: str, **options: Any
    ) -> Result:
        fields = {"destination": destination, "amount": amount, "currency": currency}
        return await self._command("transfer", source, fields, **options)

    async def close_account(self, account: str, **options: Any) -> Result:
        return await self._command("close_account", account, {}, **options)

    async def hold(
        self,
        source: str,
        destination: str,
        amount: int | str,
        currency: str,
        *,
        timeout_s: int | None = None,
        **options: Any,
    ) -> Result:
        """Reserve `amount`; the result's `command_id` is the hold's id."""
        fields = {
            "destination": destination,
            "amount": amount,
            "currency": currency,
            "timeout_s": timeout_s,
        }
        return await self._command("hold", source, fields, **options)

    async def post_hold(
        self, source: str, hold_id: str, *, amount: int | None = None, **options: Any
    ) -> Result:
        fields = {"hold_id": hold_id, "amount": amount}
        return await self._command("post_hold", source, fields, **options)

    async def void_hold(self, source: str, hold_id: str, **options: Any) -> Result:
        return await self._command("void_hold", source, {"hold_id": hold_id}, **options)

    async def pay_invoice(
        self,
        payer: str,
        payee: str,
        invoice_id: str,
        amount: int | str,
        currency: str,
        *,
        channel: str = "ledger",
        timeout_s: int | None = None,
        **options: Any,
    ) -> Result:
        fields = {
            "destination": payee,
            "invoice_id": invoice_id,
            "amount": amount,
            "currency": currency,
            "channel": channel,
            "timeout_s": timeout_s,
        }
        return await self._command("pay_invoice", payer, fields, **options)

    async def confirm_payment(self, payer: str, invoice_id: str, **options: Any) -> Result:
        return await self._command("confirm_payment", payer, {"invoice_id": invoice_id}, **options)

    async def fail_payment(self, payer: str, invoice_id: str, **options: Any) -> Result:
        return await self._command("fail_payment", payer, {"invoice_id": invoice_id}, **options)

    async def reverse(self, account: str, target: str, **options: Any) -> Result:
        """Reverse the command `target`; `account` is the one the money comes back from (a
        deposit's account, a transfer's or payment's destination, a withdrawal's account)."""
        return await self._command("reverse", account, {"target": target}, **options)

    async def register_alias(self, alias: str, account: str, **options: Any) -> Result:
        """Register `alias` (`alias:<name>`) for `account`, once: a second registration of
        the alias, for any account, is refused `alias_taken`."""
        return await self._command("register_alias", alias, {"target": account}, **options)

    # Reads, from the HTTP API of the worker at `http_url` (ledger_stream/reads.py). Each
    # shows every command whose result this or any client has been given; a problem answer
    # raises `ReadFailed` (its `code` says what, e.g. account_not_found).

    async def account(self, account: str) -> dict[str, Any]:
        """Balances (posted, pending, available), limits and status."""
        return await self._http().account(account)

    async def balance(self, account: str, as_of: int | str | None = None) -> dict[str, Any]:
        """The balance now, or as of a journal time (ms since 1970, or ISO 8601)."""
        return await self._http().balance(account, as_of)

    async def history(
        self, account: str, limit: int = 50, cursor: str | None = None
    ) -> dict[str, Any]:
        """A page of history, newest first: `items`, and `next_cursor` for the next page."""
        return await self._http().history(account, limit, cursor)

    def history_items(self, account: str) -> AsyncIterator[Any]:
        """Every history item, newest first, fetched a page at a time."""
        return self._http().history_items(account)

    async def summary(self, account: str, day: str | None = None) -> dict[str, Any]:
        """A UTC day (YYYY-MM-DD; default today): opening and closing balance, and per event
        kind the count, debits and credits."""
        return await self._http().summary(account, day)

    async def flags(
        self, account: str, limit: int = 50, cursor: str | None = None
    ) -> dict[str, Any]:
        """The anomaly flags raised on the account, newest first."""
        return await self._http().flags(account, limit, cursor)

    async def resolve_alias(self, alias: str) -> str | None:
        """The account an alias (`alias:<name>`) names, None when none does."""
        return await self._http().alias(alias)

    def _http(self) -> HttpReads:
        if self._reads is None:
            raise ConfigurationError(
                "reads go through a worker's HTTP API: pass http_url (e.g. "
                "http://127.0.0.1:6066) to LedgerClient"
            )
        return self._reads

    async def submit(self, command: Command, *, attempts_max: int = 1) -> Result:
        """Publish a command and wait for its result, up to `timeout_s` per attempt.

        Without a result in time, the identical command (same command_id and payload, the
        same bytes) is published again, up to `attempts_max` publications in all; then the
        last `ResultTimeout` is raised. A repeat is safe: the writer deduplicates by
        command id and answers a repeat of the same payload with the original outcome
        (marked `duplicate=True`). Ids are checked within the partition of the command's
        account, so they must be unique across the ledger (the convenience methods make
        uuid4s); an id once decided is spent, even by a rejection, and re-using it with
        another payload is rejected with `exists_with_different_payload`.

        A record Kafka did not take raises `SendFailed` at once, without another attempt.
        """
        if attempts_max < 1:
            raise ValueError(f"attempts_max must be at least 1, not {attempts_max}")
        if command.reply_partition != self.reply_partition:  # answers come to this client
            command = command.model_copy(update={"reply_partition": self.reply_partition})
        digest = fingerprint(command)
        value = command.model_dump_json(exclude_none=True).encode()
        async with self._slots:
            for attempt in range(1, attempts_max):
                with contextlib.suppress(asyncio.TimeoutError):
                    return await self._published(command, digest, value)
                logger.info(
                    "no result for command %r within %s s; publishing it again (attempt %d of %d)",
                    command.command_id,
                    self.timeout_s,
                    attempt + 1,
                    attempts_max,
                )
            try:
                return await self._published(command, digest, value)
            except TimeoutError:
                raise ResultTimeout(command, self.timeout_s, attempts=attempts_max) from None

    async def _published(self, command: Command, digest: str, value: bytes) -> Result:
        """Queue the command's record and wait `timeout_s` for its result."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        aliased = command if aliases_named(command) else None
        self._waiting[command.command_id].append((digest, future, aliased))
        try:
            self._enqueue(command.account, value, (command, future))
            return await asyncio.wait_for(future, self.timeout_s)
        finally:
            self._forget(command.command_id, future)

    def send_raw(self, account: str, value: bytes) -> None:
        """Queue raw bytes as a command record for `account` (for tools and tests). If Kafka
        does not take it, the next `flush` raises `SendFailed`."""
        self._enqueue(account, value, None)

    async def flush(self) -> None:
        """Send every queued command now and wait until Kafka has them, and every record
        already on its way.

        Raises `SendFailed` naming the commands of those records that Kafka did not take,
        and of any earlier failed record holding `send_raw` values (no caller waits on
        those). A failed command's `submit` raises its own `SendFailed` as well.
        """
        self._send_queued()
        failures = [
            failure for failure in await asyncio.gather(*self._sending) if failure is not None
        ]
        failures += [failure for failure in self._unreported if failure not in failures]
        self._unreported.clear()
        if failures:
            raise _combined(failures)

    def _send_queued(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        for partition in list(self._queued):
            self._send_partition(partition)

    def _send_partition(self, partition: int) -> None:
        """Send what is queued for `partition` as one record (counted on its way at once)."""
        queue = self._queued.pop(partition)
        self._queued_bytes.pop(partition, None)
        self._on_the_way[partition] += 1
        self._spawn(self._send_batch(partition, queue))

    async def _send_batch(self, partition: int, batch: list[_Queued]) -> SendFailed | None:
        """Send a partition's queued commands as one record. When Kafka does not take it,
        fail the submits waiting on it and return the error: these tasks never raise, so
        no error is left unretrieved."""
        assert self._producer is not None
        try:
            delivery = await self._producer.send(
                self.commands_topic,
                _record_value(batch),
                key=batch[0][0].encode(),
                partition=partition,
            )
            await delivery
        except Exception as error:  # whatever the producer raises, a caller hears of it
            return self._failed(partition, batch, error)
        finally:
            self._on_the_way[partition] -= 1
            if not self._on_the_way[partition] and partition in self._queued:
                self._send_partition(partition)  # what queued up behind this record
        return None

    def _failed(self, partition: int, batch: list[_Queued], error: Exception) -> SendFailed:
        commands = [waiter[0] for _, _, waiter in batch if waiter is not None]
        failure = SendFailed([c.command_id for c in commands], error, records=len(batch))
        logger.warning("partition %d of %s: %s", partition, self.commands_topic, failure)
        for _, _, waiter in batch:
            if waiter is not None and not waiter[1].done():
                command, future = waiter
                future.set_exception(SendFailed([command.command_id], error, command=command))
        if len(commands) < len(batch):
            self._unreported.append(failure)
        return failure

    async def _command(
        self,
        kind: str,
        account: str,
        fields: dict[str, Any],
        *,
        command_id: str | None = None,
        metadata: dict[str, str] | None = None,
        attempts_max: int = 1,
    ) -> Result:
        given = {"account": account}
        given.update((name, value) for name, value in fields.items() if value is not None)
        command = COMMAND_ADAPTER.validate_python(
            {
                "type": kind,
                "command_id": command_id or uuid.uuid4().hex,
                "reply_partition": self.reply_partition,
                "metadata": metadata,
                **given,
            }
        )
        return await self.submit(command, attempts_max=attempts_max)

    def _enqueue(self, account: str, value: bytes, waiter: _Waiter | None) -> None:
        if self._producer is None:
            raise RuntimeError("LedgerClient is not started; use `async with LedgerClient(...)`")
        partition = partition_of(account, self._partitions)
        size = self._queued_bytes.get(partition, 0)
        if partition in self._queued and size + len(value) + 2 > RECORD_BYTES_MAX:
            # The writer reads no record over the limit: send what is queued, start anew.
            self._send_partition(partition)
            size = 0
        queue = self._queued[partition]
        queue.append((account, value, waiter))
        self._queued_bytes[partition] = size + len(value) + 1
        if len(queue) >= self.batch_size_max or not self._on_the_way[partition]:
            self._send_partition(partition)
        elif self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(self.linger_ms / 1000, self._send_queued)

    def _spawn(self, sending: Coroutine[Any, Any, SendFailed | None]) -> None:
        task = asyncio.create_task(sending)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _read_results(self, results: AsyncIterator[Sequence[bytes | None]]) -> None:
        async for values in results:
            for value in values:
                self._resolve(value)

    def watch_results(self, watcher: Callable[[dict[str, Any]], None]) -> None:
        """Call `watcher` with every result read from the reply partition, as parsed JSON,
        answers to `send_raw` commands included (tools such as the benchmark count them)."""
        self._watchers.append(watcher)

    def _resolve(self, value: bytes | None) -> None:
        if not value:
            return
        try:
            fields = orjson.loads(value)
            waiting = self._waiting.get(fields["command_id"])
            # No model is made for a result nobody here waits on.
            result = from_builtins(fields, Result) if waiting else None
        except (ValueError, TypeError, KeyError):
            logger.warning("ignoring an unreadable result record: %r", value[:200])
            return
        for watcher in self._watchers:
            watcher(fields)
        if not waiting or result is None:
            return
        # The oldest submission of the same payload; a result that names no payload (a
        # dead letter's rejection) answers the oldest submission of the id.
        for entry in waiting:
            digest, future, aliased = entry
            if aliased is not None and result.payload_digest != digest:
                digest = fingerprint(with_accounts_of(aliased, result))
            if result.payload_digest in (None, digest) and not future.done():
                future.set_result(result)
                waiting.remove(entry)
                break
        if not waiting:
            del self._waiting[result.command_id]

    def _forget(self, command_id: str, future: asyncio.Future[Result]) -> None:
        waiting = self._waiting.get(command_id)
        if not waiting:
            return
        for entry in list(waiting):
            if entry[1] is future:
                waiting.remove(entry)
        if not waiting:
            del self._waiting[command_id]


def _partition_count(cluster: ClusterMetadata, topic: str) -> int:
    partitions = cluster.partitions_for_topic(topic)
    if not partitions:
        raise ConfigurationError(
            f"topic {topic!r} does not exist; start a worker first (it creates the topics) "
            "or check the topic prefix (LEDGER_TOPIC_PREFIX)"
        )
    return len(partitions)


async def _results_consumer(
    bootstrap_servers: str,
    reply: TopicPartition,
    fetch_wait_ms: int,
    security: Mapping[str, Any],
) -> AIOKafkaConsumer:
    """A consumer of the reply partition, at its end before the first command is sent."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="latest",
        fetch_max_wait_ms=fetch_wait_ms,
        **security,
    )
    try:
        await consumer.start()
        consumer.assign([reply])
        await consumer.seek_to_end(reply)
        await consumer.position(reply)
    except BaseException:
        await consumer.stop()
        raise
    return consumer


async def _result_values(consumer: AIOKafkaConsumer) -> AsyncIterator[list[bytes | None]]:
    """The values of the records the consumer reads, a poll at a time."""
    while True:
        batches = await consumer.getmany(timeout_ms=200)
        if batches:
            yield [record.value for records in batches.values() for record in records]


async def _stop(client: AIOKafkaProducer | AIOKafkaConsumer) -> None:
    await client.stop()


def _record_value(batch: list[_Queued]) -> bytes:
    if len(batch) == 1:
        return batch[0][1]
    return b"[" + b",".join(value for _, value, _ in batch) + b"]"


def _combined(failures: list[SendFailed]) -> SendFailed:
    if len(failures) == 1:
        return failures[0]
    command_ids = [command_id for failure in failures for command_id in failure.command_ids]
    records = sum(failure.records for failure in failures)
    return SendFailed(command_ids, failures[0].cause, records=records)
