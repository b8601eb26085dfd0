"""The benchmark's workload: which accounts transfer to which, the same for every system
`ledger-stream bench --compare` measures, so their figures can be set side by side."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ledger_stream.money import AMOUNT_MAX
from ledger_stream.partitioning import partition_of

HOT_ACCOUNTS = 10  # hot-account mode: these take all the traffic
CURRENCY = "USD"


def opening(account: str) -> dict[str, Any]:
    """The command that opens `account`, with room to overdraw for any transfer, so that none
    is refused."""
    return {
        "type": "open_account",
        "command_id": f"open-{account}",
        "account": account,
        "currency": CURRENCY,
        "overdraft_limit": AMOUNT_MAX,
    }


@dataclass(frozen=True)
class Transfer:
    number: int
    source: str
    destination: str
    amount: int  # minor units

    def command(self, command_id: str) -> dict[str, Any]:
        """This transfer as a ledger command."""
        return {
            "type": "transfer",
            "command_id": command_id,
            "account": self.source,
            "destination": self.destination,
            "amount": self.amount,
            "currency": CURRENCY,
        }


@dataclass
class Workload:
    """`accounts` accounts spread over `partitions`. Each transfer is between two accounts
    picked at random; with `cross` set, that share of transfers goes to an account of another
    partition and the rest stay within one (where the accounts allow it)."""

    accounts: int = 10_000
    partitions: int = 8
    cross: float | None = None
    hot: bool = False
    seed: int = 1
    names: list[str] = field(init=False)
    _active: list[str] = field(init=False)
    _by_partition: dict[int, list[str]] = field(init=False)
    _elsewhere: dict[int, list[str]] = field(init=False)

    def __post_init__(self) -> None:
        if self.accounts < 2:
            raise ValueError("accounts: at least 2")
        if self.cross is not None and not 0.0 <= self.cross <= 1.0:
            raise ValueError("cross: a share between 0 and 1")
        self.names = [f"acct-{i:07d}" for i in range(self.accounts)]
        active = self.names[:HOT_ACCOUNTS] if self.hot else self.names
        self._active = active
        self._by_partition = defaultdict(list)
        for name in active:
            self._by_partition[partition_of(name, self.partitions)].append(name)
        self._elsewhere = {  # only a set share of cross-partition transfers asks
            home: [name for name in active if partition_of(name, self.partitions) != home]
            for home in (self._by_partition if self.cross is not None else ())
        }

    def transfers(self) -> Iterator[Transfer]:
        """An endless, seeded stream of transfers between distinct active accounts."""
        rng = random.Random(self.seed)
        number = 0
        while True:
            source = rng.choice(self._active)
            pool = self._destinations(source, rng)
            destination = source
            while destination == source:
                destination = rng.choice(pool)
            yield Transfer(number, source, destination, rng.randint(1, 10_000))
            number += 1

    def _destinations(self, source: str, rng: random.Random) -> list[str]:
        """Where a transfer from `source` may go: anywhere, its own partition, or the others."""
        if self.cross is None:
            return self._active
        home = partition_of(source, self.partitions)
        here = self._by_partition[home]
        elsewhere = self._elsewhere[home]
        if (rng.random() < self.cross and elsewhere) or len(here) < 2:
            return elsewhere
        return here
