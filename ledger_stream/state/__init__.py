"""Partition state: the local store, commit records on the state log, recovery and fencing."""

import threading

# Held while a store is closed, and by a reader on another thread (the worker's HTTP thread)
# while it reads one, so that no store is closed under a read. The writer, which closes its
# stores on its own thread, never waits for it on its hot path.
closing = threading.Lock()
