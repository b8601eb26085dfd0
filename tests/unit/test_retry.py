"""Retries with backoff: each failure but the last logged, the last error raised."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from ledger_stream.kafka import retry


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    taken: list[float] = []

    async def sleep(delay_s: float) -> None:
        taken.append(delay_s)

    monkeypatch.setattr(retry.asyncio, "sleep", sleep)
    return taken


def failing(times: int) -> tuple[list[int], Callable[[], Awaitable[str]]]:
    calls: list[int] = []

    async def attempt() -> str:
        calls.append(len(calls) + 1)
        if len(calls) <= times:
            raise OSError(f"down {len(calls)}")
        return "sent"

    return calls, attempt


async def test_it_backs_off_and_returns_once_an_attempt_succeeds(
    pauses: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    calls, attempt = failing(2)
    result = await retry.retried(
        attempt, failure="Kafka is away", attempts_max=5, errors=(OSError,)
    )
    assert (result, calls, pauses) == ("sent", [1, 2, 3], [0.5, 1.0])
    assert "Kafka is away (down 2); retrying in 1.0 s (attempt 2 of 5)" in caplog.text


async def test_the_pause_stops_growing_at_ten_seconds_and_the_last_error_is_raised(
    pauses: list[float],
) -> None:
    calls, attempt = failing(99)
    with pytest.raises(OSError, match="down 8"):
        await retry.retried(attempt, failure="x", attempts_max=8, errors=(OSError,))
    assert len(calls) == 8
    assert pauses == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
