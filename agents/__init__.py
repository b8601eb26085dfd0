"""Faust agents of the ledger worker."""
