"""The ledger worker process: the writer agent, its HTTP views, and the entry point."""
