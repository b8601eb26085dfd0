"""LedgerClient: what a producer service uses to publish commands and await their results.

Commands are batched per partition within a short linger (one Kafka record may carry a JSON
array of commands of one partition), and results are read from one results partition that
this client names as its reply partition, without a consumer group.

    async with LedgerClient("localhost:9092") as ledger:
        await ledger.open_account("alice", "USD")
        result = await ledger.deposit("alice", "12.50", "USD")
        assert result.status == "accepted"
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections import defaultdict, deque
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.cluster import ClusterMetadata

from ledger_stream.core import fingerprint
from ledger_stream.errors import ConfigurationError, ResultTimeout
from ledger_stream.kafka.retry import started
from ledger_stream.messages import COMMAND_ADAPTER, Command, Result
from ledger_stream.partitioning import partition_of

logger = logging.getLogger(__name__)


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
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.commands_topic = f"{topic_prefix}commands"
        self.results_topic = f"{topic_prefix}results"
        self.timeout_s = timeout_s
        self.linger_ms = linger_ms
        self.batch_size_max = batch_size_max
        self.connect_attempts_max = connect_attempts_max
        # Commands awaiting their result at once; a caller past this waits for a slot.
        self._slots = asyncio.Semaphore(in_flight_max)
        self.reply_partition = 0
        self._partitions = 0
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None
        # command_id -> (payload digest, future) per submission, oldest first
        self._waiting: dict[str, deque[tuple[str, asyncio.Future[Result]]]] = defaultdict(deque)
        self._queued: dict[int, list[tuple[str, bytes]]] = defaultdict(list)
        self._flush_handle: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

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
        self._producer = await started(
            lambda: AIOKafkaProducer(
                bootstrap_servers=self.bootstrap_servers,
                acks="all",
                linger_ms=self.linger_ms,
                max_batch_size=256 * 1024,
                max_request_size=4 * 1024 * 1024,
            ),
            self.bootstrap_servers,
            self.connect_attempts_max,
            _stop,
        )
        # Ask for all topics: naming one in a metadata request lets a broker with
        # auto.create.topics.enable (and the embedded broker) create it with a wrong layout.
        cluster = await self._producer.client.fetch_all_metadata()
        self._partitions = _partition_count(cluster, self.commands_topic)
        self.reply_partition = random.randrange(_partition_count(cluster, self.results_topic))
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="latest",
        )
        await self._consumer.start()
        tp = TopicPartition(self.results_topic, self.reply_partition)
        self._consumer.assign([tp])
        await self._consumer.seek_to_end(tp)
        await self._consumer.position(tp)  # fixed before the first command is sent
        self._reader = asyncio.create_task(self._read_results())

    async def stop(self) -> None:
        await self.flush()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        for client in (self._consumer, self._producer):
            if client is not None:
                await client.stop()
        for waiting in self._waiting.values():
            for _, future in waiting:
                future.cancel()

    async def open_account(
        self,
        account: str,
        currency: str,
        *,
        overdraft_limit: int | str = 0,
        command_id: str | None = None,
    ) -> Result:
        return await self._command(
            "open_account",
            command_id,
            account=account,
            currency=currency,
            overdraft_limit=overdraft_limit,
        )

    async def deposit(
        self, account: str, amount: int | str, currency: str, *, command_id: str | None = None
    ) -> Result:
        return await self._command(
            "deposit", command_id, account=account, amount=amount, currency=currency
        )

    async def withdraw(
        self, account: str, amount: int | str, currency: str, *, command_id: str | None = None
    ) -> Result:
        return await self._command(
            "withdraw", command_id, account=account, amount=amount, currency=currency
        )

    async def transfer(
        self,
        source: str,
        destination: str,
        amount: int | str,
        currency: str,
        *,
        command_id: str | None = None,
    ) -> Result:
        return await self._command(
            "transfer",
            command_id,
            account=source,
            destination=destination,
            amount=amount,
            currency=currency,
        )

    async def close_account(self, account: str, *, command_id: str | None = None) -> Result:
        return await self._command("close_account", command_id, account=account)

    async def submit(self, command: Command) -> Result:
        """Publish a command and wait for its result (`ResultTimeout` after `timeout_s`)."""
        async with self._slots:
            return await self._submit(command)

    async def _submit(self, command: Command) -> Result:
        if command.reply_partition != self.reply_partition:  # answers come to this client
            command = command.model_copy(update={"reply_partition": self.reply_partition})
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting[command.command_id].append((fingerprint(command), future))
        self._enqueue(command.account, command.model_dump_json(exclude_none=True).encode())
        try:
            return await asyncio.wait_for(future, self.timeout_s)
        except asyncio.TimeoutError:
            self._forget(command.command_id, future)
            raise ResultTimeout(
                f"no result for command {command.command_id!r} within {self.timeout_s} s; "
                "is a worker running? Re-submitting the same command is safe."
            ) from None

    def send_raw(self, account: str, value: bytes) -> None:
        """Queue raw bytes as a command record for `account` (for tools and tests)."""
        self._enqueue(account, value)

    async def flush(self) -> None:
        """Send every queued command now and wait until Kafka has them, and every batch
        already on its way."""
        await self._send_queued()
        await asyncio.gather(*list(self._sending))

    async def _send_queued(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        queued, self._queued = self._queued, defaultdict(list)
        await asyncio.gather(*(self._send_batch(p, items) for p, items in queued.items()))

    async def _send_batch(self, partition: int, items: list[tuple[str, bytes]]) -> None:
        assert self._producer is not None
        delivery = await self._producer.send(
            self.commands_topic,
            _record_value(items),
            key=items[0][0].encode(),
            partition=partition,
        )
        await delivery

    async def _command(self, kind: str, command_id: str | None, **fields: Any) -> Result:
        fields["command_id"] = command_id or uuid.uuid4().hex
        fields["reply_partition"] = self.reply_partition
        command = COMMAND_ADAPTER.validate_python({"type": kind, **fields})
        return await self.submit(command)

    def _enqueue(self, account: str, value: bytes) -> None:
        if self._producer is None:
            raise RuntimeError("LedgerClient is not started; use `async with LedgerClient(...)`")
        partition = partition_of(account, self._partitions)
        queue = self._queued[partition]
        queue.append((account, value))
        if len(queue) >= self.batch_size_max:
            del self._queued[partition]
            self._spawn(self._send_batch(partition, queue))
        elif self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(
                self.linger_ms / 1000, lambda: self._spawn(self._send_queued())
            )

    def _spawn(self, sending: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(sending)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _read_results(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    self._resolve(record.value)

    def _resolve(self, value: bytes | None) -> None:
        if not value:
            return
        try:
            result = Result.model_validate_json(value)
        except ValueError:
            logger.warning("ignoring an unreadable result record: %r", value[:200])
            return
        waiting = self._waiting.get(result.command_id)
        if not waiting:
            return
        # The oldest submission of the same payload; a result that names no payload (a
        # dead letter's rejection) answers the oldest submission of the id.
        for entry in waiting:
            digest, future = entry
            if result.payload_digest in (None, digest) and not future.done():
                future.set_result(result)
                waiting.remove(entry)
                break
        if not waiting:
            del self._waiting[result.command_id]

    def _forget(self, command_id: str, future: asyncio.Future[Result]) -> None:
        waiting = self._waiting.get(command_id)
        if waiting:
            for entry in list(waiting):
                if entry[1] is future:
                    waiting.remove(entry)


def _partition_count(cluster: ClusterMetadata, topic: str) -> int:
    partitions = cluster.partitions_for_topic(topic)
    if not partitions:
        raise ConfigurationError(
            f"topic {topic!r} does not exist; start a worker first (it creates the topics) "
            "or check the topic prefix (LEDGER_TOPIC_PREFIX)"
        )
    return len(partitions)


async def _stop(client: AIOKafkaProducer | AIOKafkaConsumer) -> None:
    await client.stop()


def _record_value(items: list[tuple[str, bytes]]) -> bytes:
    if len(items) == 1:
        return items[0][1]
    return b"[" + b",".join(value for _, value in items) + b"]"
