"""Starting a Kafka client when the broker may not be up yet: bounded retries with backoff,
a log line for each, and one clear error at the end."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from aiokafka.errors import KafkaError

from ledger_stream.errors import BrokerUnavailable

logger = logging.getLogger(__name__)

DELAY_FIRST_S = 0.5
DELAY_MAX_S = 10.0


class KafkaClient(Protocol):
    async def start(self) -> None: ...


Client = TypeVar("Client", bound=KafkaClient)


async def started(
    make: Callable[[], Client],
    bootstrap_servers: str,
    attempts_max: int,
    close: Callable[[Client], Awaitable[None]],
) -> Client:
    """`make()` a client and start it, retrying with backoff while Kafka cannot be reached."""
    delay_s = DELAY_FIRST_S
    for attempt in range(1, attempts_max + 1):
        client = make()
        try:
            await client.start()
            return client
        except (KafkaError, OSError) as error:
            await close(client)
            if attempt == attempts_max:
                break
            logger.warning(
                "Kafka at %s is not reachable (%s); retrying in %.1f s (attempt %d of %d)",
                bootstrap_servers,
                error,
                delay_s,
                attempt,
                attempts_max,
            )
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, DELAY_MAX_S)
    raise BrokerUnavailable(
        f"no Kafka broker answered at {bootstrap_servers} after {attempts_max} attempts; "
        "check the bootstrap servers (LEDGER_BOOTSTRAP_SERVERS) and that the broker is running"
    )
