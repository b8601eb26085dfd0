"""Partition state: the local store, commit records on the state log, recovery and fencing."""
