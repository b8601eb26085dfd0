"""The local copy of one partition's read models (ledger_stream/readmodel.py), in RocksDB at
`<data_dir>/read/partition-<n>`, with how far the journal and results have been folded.

Disposable: it is a fold of the journal, so a directory of another ledger is wiped and
refolded, and so can any directory at any time (`ledger-stream rebuild`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import rocksdict

from ledger_stream.state import closing
from ledger_stream.state.store import IDENTITY_KEY, MEMTABLE_BYTES, open_tagged

logger = logging.getLogger(__name__)

_POSITION = b"m|offset|"  # + topic: the next offset to fold
META_PREFIX = "m|"


def read_store_path(data_dir: Path, number: int) -> Path:
    return Path(data_dir) / "read" / f"partition-{number}"


class ReadStore:
    def __init__(self, path: Path, identity: str) -> None:
        self.path = path
        self.identity = identity
        self.db = self._open()

    def _open(self) -> rocksdict.Rdict:
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_write_buffer_size(MEMTABLE_BYTES)
        # With its write-ahead log (unlike the writer's store): `ledger-stream rebuild` reads
        # a live store as a RocksDB secondary, which sees only what the log holds.
        return open_tagged(self.path, self.identity, options, "folding the read models again")

    @classmethod
    def secondary(cls, path: Path, secondary_path: Path) -> ReadStore:
        """A read-only view of a store another process has open, as of now."""
        store = cls.__new__(cls)
        store.path, store.identity = path, ""
        options = rocksdict.Options(raw_mode=True)
        access = rocksdict.AccessType.secondary(str(secondary_path))
        store.db = rocksdict.Rdict(str(path), options=options, access_type=access)
        store.db.try_catch_up_with_primary()
        return store

    def close(self) -> None:
        with closing:
            self.db.close()

    def get(self, key: str) -> bytes | None:
        value: bytes | None = self.db.get(key.encode())
        return value

    def position(self, topic: str) -> int:
        raw = self.db.get(_POSITION + topic.encode())
        return 0 if raw is None else int(raw)

    def write(self, writes: dict[str, bytes], positions: dict[str, int]) -> None:
        """Write what a fold asks, and move the positions past what it folded, at once."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in writes.items():
            batch.put(key.encode(), value)
        for topic, offset in positions.items():
            batch.put(_POSITION + topic.encode(), str(offset).encode())
        self.db.write(batch)

    def newest(self, prefix: str, before: str | None = None) -> Iterator[tuple[str, bytes]]:
        """Keys under `prefix` and their values, newest (greatest) first; with `before`, only
        keys less than it."""
        start = (before if before is not None else prefix + "\xff").encode()
        first = prefix.encode()
        for key, value in self.db.items(backwards=True, from_key=start):
            assert isinstance(key, bytes) and isinstance(value, bytes)  # raw mode
            if not key.startswith(first):
                break
            if before is not None and key >= start:
                continue
            yield key.decode(), value

    def last_at_most(self, prefix: str, key: str) -> str | None:
        """The greatest key under `prefix` that is at most `key`."""
        for found, _ in self.newest(prefix, key + "\xff"):
            return found
        return None

    def models(self) -> Iterator[tuple[bytes, bytes]]:
        """Every read model key and value (not the positions and tags), in key order: what
        `ledger-stream rebuild` compares."""
        for key, value in self.db.items():
            assert isinstance(key, bytes) and isinstance(value, bytes)
            if key != IDENTITY_KEY and not key.startswith(_POSITION):
                yield key, value
