"""Which partition an account lives on: Kafka's default partitioner, murmur2 of the key bytes,
so a producer in any language puts a command where the account's writer is."""

from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2


# murmur2 is pure Python in aiokafka; a writer asks about the same accounts again and again.
@lru_cache(maxsize=1 << 17)
def partition_of(account: str, partitions: int) -> int:
    """The partition of `account` among `partitions`, as Kafka's Java client computes it.

    >>> partition_of("alice", 8), partition_of("bob", 8)
    (5, 6)
    """
    return (murmur2(account.encode()) & 0x7FFFFFFF) % partitions


def name_on(partition: int, stem: str, partitions: int) -> str:
    """The first account name `<stem>-<i>` that lives on `partition` (for demos and tests).

    >>> name_on(0, "alice", 8)
    'alice-5'
    """
    if not 0 <= partition < partitions:
        raise ValueError(f"partition {partition} is not one of 0..{partitions - 1}")
    i = 0
    while partition_of(f"{stem}-{i}", partitions) != partition:
        i += 1
    return f"{stem}-{i}"
