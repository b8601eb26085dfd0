"""The local copy of one partition's state: accounts, outcomes, the journal head, and how far
into the state log it has applied, in one RocksDB database written one batch at a time.

The position and the data it covers change in the same RocksDB write batch, so the local
copy is always some prefix of the state log, never part of a commit.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Literal, NamedTuple

import orjson
import rocksdict

from ledger_stream.messages import JournalHead, from_json, to_json
from ledger_stream.state import closing

logger = logging.getLogger(__name__)

_ACCOUNT = b"a:"
_OUTCOME = b"o:"  # whole outcomes
_COMPACT = b"c:"  # compact outcomes (a key is never in both for long; whole wins)
_POSITION = b"m:position"
_HEAD = b"m:head"
_SNAPSHOT = b"m:snapshot"
IDENTITY_KEY = b"m:identity"
MEMTABLE_BYTES = 8 * 1024 * 1024
MEMORY_BYTES_DEFAULT = 256 * 1024 * 1024
ITEMS_READ_AT_ONCE = 512  # keys `items` reads from one RocksDB iterator


class Memory:
    """One memory budget for every RocksDB store a process opens, as Kafka Streams bounds
    its stores': one block cache of `budget_bytes`, which the memtables (up to half of it)
    are charged to. Without it each store has a cache of its own (32 MiB) and memtables of
    its own, so a worker's memory grows with its partitions, a read store each as well."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.cache = rocksdict.Cache(budget_bytes)
        self.memtables = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
            budget_bytes // 2, False, self.cache
        )

    def apply(self, options: rocksdict.Options, table: rocksdict.BlockBasedOptions) -> None:
        table.set_block_cache(self.cache)
        # Index and filter blocks in the cache too, as Kafka Streams' bounded config has them:
        # held outside it, they grow with the keys stored (a bloom filter's 10 bits for each
        # command id ever answered), without bound. The newest tables' stay pinned there.
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        options.set_block_based_table_factory(table)
        options.set_write_buffer_manager(self.memtables)


_memory: Memory | None = None


def memory(budget_bytes: int | None = None) -> Memory:
    """The process's RocksDB memory budget: set by the first call that names one (the
    worker's, from `LEDGER_ROCKSDB_MEMORY_MIB`), else the default. Stores opened before a
    change keep the budget they were opened with."""
    global _memory
    if _memory is None or (budget_bytes is not None and budget_bytes != _memory.budget_bytes):
        _memory = Memory(budget_bytes or MEMORY_BYTES_DEFAULT)
    return _memory


def digest(value: bytes) -> str:
    """Digest of a state record, kept for the last record applied: a log that has another
    record at that offset is another log (a recreated topic, a new broker)."""
    return hashlib.blake2b(value, digest_size=16).hexdigest()


@dataclass(frozen=True)
class Position:
    """The state log offset to read next, and the digest of the record just before it."""

    next_offset: int = 0
    last_digest: str = ""


@dataclass(frozen=True)
class SnapshotMark:
    """The latest complete snapshot in the state log: where it starts, and its bytes."""

    base: int
    size_bytes: int


class StoredOutcome(NamedTuple):
    """An outcome's bytes as stored, and whether they are its compact form."""

    value: bytes
    compact: bool


@dataclass
class Changes:
    """Serialized state changes of one or more records, applied in one write batch."""

    accounts: dict[str, bytes]
    outcomes: dict[str, bytes]
    head: JournalHead | None = None
    snapshot: SnapshotMark | None = None  # a snapshot completed in these records
    compact: dict[str, bytes] = field(default_factory=dict)  # outcomes now compact


def open_tagged(
    path: Path,
    identity: str,
    options: rocksdict.Options,
    then: str,
    table: rocksdict.BlockBasedOptions | None = None,
) -> rocksdict.Rdict:
    """The RocksDB at `path`, within the process's `memory()`, tagged with `identity` (which
    ledger it mirrors); one tagged otherwise is deleted, with a warning ending in `then`, and
    opened anew."""
    memory().apply(options, table or rocksdict.BlockBasedOptions())
    path.parent.mkdir(parents=True, exist_ok=True)
    db = rocksdict.Rdict(str(path), options=options)
    found = db.get(IDENTITY_KEY)
    if found is not None and found.decode() != identity:
        logger.warning("%s belongs to %s, not %s; %s", path, found.decode(), identity, then)
        db.close()
        shutil.rmtree(path)
        db = rocksdict.Rdict(str(path), options=options)
        found = None
    if found is None:
        db.put(IDENTITY_KEY, identity.encode())
    return db


class PartitionStore:
    """RocksDB for one partition, in `<data_dir>/partition-<n>`, tagged with `identity`
    (which ledger and which state topic it mirrors); a directory tagged otherwise is wiped."""

    def __init__(self, path: Path, identity: str) -> None:
        self.path = path
        self.identity = identity
        self.writes = 0  # write batches applied, so `items` knows when to read afresh
        self.db = self._open()

    def _open(self) -> rocksdict.Rdict:
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        # RocksDB's default memtable is 64 MiB, two of them, per partition: a worker of 8
        # partitions would grow to a gigabyte before its first flush.
        options.set_write_buffer_size(MEMTABLE_BYTES)
        # Most outcome lookups are of command ids never seen: a bloom filter answers those
        # without reading the tables' index blocks.
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(10, False)
        db = open_tagged(
            self.path, self.identity, options, "rebuilding it from the state log", table
        )
        # No write-ahead log, as Kafka Streams does for its stores: the state log is the
        # record. A crash loses what the memtables held, position included (one write batch
        # is one memtable write), so the store is some earlier prefix of the log and
        # `PartitionLog.restore` reads on from there. (The stubs take the property for a method.)
        writing = rocksdict.WriteOptions()
        writing.disable_wal = True  # type: ignore[method-assign,assignment]
        db.set_write_options(writing)
        return db

    def wipe(self, why: str) -> None:
        """Forget everything local; the state log is read again from its start."""
        logger.warning("rebuilding %s from the state log: %s", self.path, why)
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self.db = self._open()

    def close(self) -> None:
        with closing:
            self.db.close()

    def account(self, name: str) -> bytes | None:
        value: bytes | None = self.db.get(_ACCOUNT + name.encode())
        return value

    def outcome(self, key: str) -> StoredOutcome | None:
        """The outcome of `key`, whole or else compact."""
        raw = key.encode()
        value: bytes | None = self.db.get(_OUTCOME + raw)
        if value is not None:
            return StoredOutcome(value, compact=False)
        value = self.db.get(_COMPACT + raw)
        return None if value is None else StoredOutcome(value, compact=True)

    def accounts(self) -> dict[str, bytes]:
        """Every account of the partition (for audits and tests; not on the hot path)."""
        return dict(self.items("accounts"))

    def items(self, table: Literal["accounts", "outcomes"]) -> Iterator[tuple[str, bytes]]:
        """Every key and value of a table (`outcomes`: the whole ones), in key order, each
        value as it is when reached: after any write through this store, reading goes on
        past the last key given, from the store as it is then. So a caller that writes
        between items, or lets batches commit between them, never gets a value older than
        the store's. No RocksDB iterator stays open between items (one reads a point in
        time, and would keep a closed store's files open)."""
        prefix = _ACCOUNT if table == "accounts" else _OUTCOME
        after = prefix
        while True:
            writes = self.writes
            read = list(islice(self.db.items(from_key=after), ITEMS_READ_AT_ONCE + 1))
            for key, value in read:
                assert isinstance(key, bytes) and isinstance(value, bytes)  # raw mode
                if not key.startswith(prefix):
                    return
                if key == after:
                    continue
                yield key[len(prefix) :].decode(), value
                after = key
                if self.writes != writes:
                    break
            else:
                if len(read) <= ITEMS_READ_AT_ONCE:
                    return

    @property
    def position(self) -> Position:
        raw = self.db.get(_POSITION)
        if raw is None:
            return Position()
        data = orjson.loads(raw)
        return Position(data["next_offset"], data["last_digest"])

    @property
    def snapshot(self) -> SnapshotMark | None:
        raw = self.db.get(_SNAPSHOT)
        return None if raw is None else SnapshotMark(**orjson.loads(raw))

    @property
    def head(self) -> JournalHead:
        raw = self.db.get(_HEAD)
        return JournalHead() if raw is None else from_json(raw, JournalHead)

    def apply(self, changes: Changes, position: Position) -> None:
        """Write `changes` and move the position over the records they came from, at once."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        for name, value in changes.accounts.items():
            batch.put(_ACCOUNT + name.encode(), value)
        for key, value in changes.outcomes.items():
            batch.put(_OUTCOME + key.encode(), value)
        for key, value in changes.compact.items():
            batch.put(_COMPACT + key.encode(), value)
            batch.delete(_OUTCOME + key.encode())
        if changes.head is not None:
            batch.put(_HEAD, to_json(changes.head))
        if changes.snapshot is not None:
            mark = {"base": changes.snapshot.base, "size_bytes": changes.snapshot.size_bytes}
            batch.put(_SNAPSHOT, orjson.dumps(mark))
        position_value = {"next_offset": position.next_offset, "last_digest": position.last_digest}
        batch.put(_POSITION, orjson.dumps(position_value))
        self.db.write(batch)
        self.writes += 1
