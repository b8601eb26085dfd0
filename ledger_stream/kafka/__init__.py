"""Kafka plumbing: the embedded broker, the consumer group, reading to the true end, batched
record sending and retries."""
