"""Retrying a Kafka operation while the broker may be away: bounded attempts with backoff,
a log line for each failure, and the last error for the caller to turn into its own."""

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

T = TypeVar("T")


async def retried(
    attempt: Callable[[], Awaitable[T]],
    *,
    failure: str,
    attempts_max: int,
    errors: tuple[type[Exception], ...],
) -> T:
    """Await `attempt()` until it succeeds, at most `attempts_max` times, doubling the pause
    from 0.5 s up to 10 s; each failure but the last is logged as `failure` and the error.
    The last error is raised."""
    delay_s = DELAY_FIRST_S
    for number in range(1, attempts_max):
        try:
            return await attempt()
        except errors as error:
            logger.warning(
                "%s (%s); retrying in %.1f s (attempt %d of %d)",
                failure,
                error,
                delay_s,
                number,
                attempts_max,
            )
        await asyncio.sleep(delay_s)
        delay_s = min(delay_s * 2, DELAY_MAX_S)
    return await attempt()


class KafkaClient(Protocol):
    async def start(self) -> None: ...


Client = TypeVar("Client", bound=KafkaClient)


async def started(
    make: Callable[[], Client],
    bootstrap_servers: str,
    attempts_max: int,
    close: Callable[[Client], Awaitable[None]],
) -> Client:
    """`make()` a client and start it, retrying while Kafka cannot be reached."""

    async def attempt() -> Client:
        client = make()
        try:
            await client.start()
        except BaseException:
            await close(client)
            raise
        return client

    try:
        return await retried(
            attempt,
            failure=f"Kafka at {bootstrap_servers} is not reachable",
            attempts_max=attempts_max,
            errors=(KafkaError, OSError),
        )
    except (KafkaError, OSError) as error:
        raise BrokerUnavailable(
            f"no Kafka broker answered at {bootstrap_servers} after {attempts_max} attempts; "
            "check the bootstrap servers (LEDGER_BOOTSTRAP_SERVERS) and that the broker is "
            "running"
        ) from error
