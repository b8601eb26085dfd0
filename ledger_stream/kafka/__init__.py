"""Kafka plumbing: the embedded broker, the Faust transport, batched record sending."""
