"""Which partition an account lives on: Kafka's default partitioner, murmur2 of the key bytes,
so a producer in any language puts a command where the account's writer is."""

from __future__ import annotations

from aiokafka.partitioner import murmur2


def partition_of(account: str, partitions: int) -> int:
    """>>> partition_of("alice", 8) in range(8)
    True
    """
    return (murmur2(account.encode()) & 0x7FFFFFFF) % partitions
