"""The one configuration object: every Kafka, RocksDB and HTTP option, from `LEDGER_*`
environment variables (or a `.env` file) with command-line flags on top.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ledger_stream.anomaly import AnomalyRules
from ledger_stream.errors import ConfigurationError
from ledger_stream.faults import POINTS
from ledger_stream.kafka.security import SASL_PROTOCOLS, SSL_PROTOCOLS, ssl_context
from ledger_stream.messages import AccountLimits

# An API key as LEDGER_API_KEY_HASHES holds it: the SHA-256 of the key, never the key.
API_KEY_HASH = re.compile(r"sha256:[0-9a-fA-F]{64}")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LEDGER_", env_file=".env", extra="ignore", validate_default=True
    )

    bootstrap_servers: str = Field(
        default="localhost:9092", description="Kafka bootstrap servers, host:port[,host:port]"
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="How every Kafka client of the ledger connects: PLAINTEXT, SSL (TLS), "
        "SASL_PLAINTEXT (SASL without TLS) or SASL_SSL (SASL over TLS)",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None,
        description="SASL mechanism; required with SASL_PLAINTEXT and SASL_SSL, refused "
        "without them",
    )
    kafka_sasl_username: str | None = Field(
        default=None, description="SASL user (PLAIN and SCRAM); required with SASL"
    )
    kafka_sasl_password: SecretStr | None = Field(
        default=None, description="SASL password (PLAIN and SCRAM); required with SASL"
    )
    kafka_ssl_cafile: Path | None = Field(
        default=None,
        description="PEM file of the CA certificates that sign the brokers' certificates "
        "(SSL, SASL_SSL); unset: the system's CAs. The broker's name is always checked",
    )
    kafka_ssl_certfile: Path | None = Field(
        default=None,
        description="PEM file of the client's certificate (and its chain), for brokers that "
        "ask for one (mutual TLS); the key too unless kafka_ssl_keyfile is set",
    )
    kafka_ssl_keyfile: Path | None = Field(
        default=None, description="PEM file of the client certificate's private key"
    )
    kafka_ssl_key_password: SecretStr | None = Field(
        default=None, description="Password of an encrypted kafka_ssl_keyfile"
    )
    topic_prefix: str = Field(
        default="ledger.", pattern=r"^[A-Za-z0-9._-]*$", description="Prefix of every topic name"
    )
    partitions: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="Partitions of commands, legs, journal, results, state, outcomes and receipts",
    )
    replication_factor: int = Field(default=1, ge=1, le=16)
    min_insync_replicas: int | None = Field(
        default=None,
        ge=1,
        le=16,
        description="min.insync.replicas of the topics the ledger creates (unset: the "
        "broker's default); 2 with a replication factor of 3 keeps an acknowledged write on "
        "two brokers",
    )
    data_dir: Path = Field(
        default=Path(".ledger-data"), description="Worker's local state (one RocksDB per partition)"
    )
    batch_size_max: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Records the writer takes per batch (a record may carry many commands)",
    )
    fetch_wait_ms: int = Field(
        default=500,
        ge=1,
        le=60_000,
        description="How long a fetch may wait at the end of a partition for data. Apache "
        "Kafka answers a waiting fetch as soon as data arrives, so 500 costs no latency there. "
        "The embedded broker answers only when the wait is over, and gives up looking for "
        "records when it is over, so a short wait there stalls a reader of a long partition; "
        "use 50 with it (the local ledger of the demo and the benchmark does)",
    )
    connect_attempts_max: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="Tries to reach Kafka at start-up, with backoff from 0.5 s to 10 s",
    )
    send_attempts_max: int = Field(
        default=20,
        ge=1,
        le=1000,
        description="Tries to send a batch's outputs (backoff 0.5 s to 10 s) before the "
        "worker stops without acknowledging the batch",
    )
    rebalance_timeout_s: float = Field(
        default=10.0, gt=0, le=600, description="Consumer group rebalance timeout"
    )
    session_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="Consumer group session timeout: how long a dead worker keeps its partitions",
    )
    heartbeat_interval_s: float = Field(default=2.0, gt=0, le=60)
    web_enabled: bool = Field(default=True, description="Serve /accounts/<id>/ over HTTP")
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=0, le=65535, description="0 picks a free port")
    web_advertised_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^/]+$",
        description="The base URL other workers forward requests for this worker's accounts "
        "to (unset: http://<web_host>:<port>)",
    )
    read_wait_s: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="How long a read of an account waits for the read models to show the "
        "writes this worker answered for it (read-your-writes) before answering 503",
    )
    http_wait_s: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="How long a POST waits for the decision before answering 202 with a "
        "location to poll",
    )
    api_key_hashes: str = Field(
        default="",
        description="Keys that may call the HTTP API, comma-separated, each stored as "
        "sha256:<64 hex digits> (the SHA-256 of the key, never the key). Set: every POST "
        "under /v1 needs one (Authorization: Bearer <key>, or X-API-Key: <key>); empty: the "
        "API is open",
    )
    api_reads_require_key: bool = Field(
        default=False,
        description="Reads (every GET under /v1 but the OpenAPI document and its page, and "
        "/accounts/<id>/) need a key too; needs api_key_hashes",
    )
    anomaly_rules: AnomalyRules = Field(
        default_factory=AnomalyRules,
        description="The anomaly rules and their thresholds, as JSON (see README, Anomaly "
        "flags); unset: the defaults",
    )
    journal_retention_ms: int = Field(
        default=-1, ge=-1, description="Journal retention (-1: keep forever; compacted)"
    )
    results_retention_ms: int = Field(default=7 * 24 * 3600 * 1000, ge=-1)
    outcome_window_s: int = Field(
        default=60,
        ge=0,
        description="How long, by record time, a command's outcome keeps the journal events "
        "and legs a repeat re-sends; after that (and once its input is acknowledged) only its "
        "fingerprint and result are kept, for good, so a late repeat is still answered and "
        "never applied twice. Any value is safe, 0 included",
    )
    snapshot_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1,
        description="State log a partition grows by before its owner writes a snapshot of its "
        "state there (and at least the last snapshot's size). A restore into an empty store "
        "starts at the latest snapshot; the log before the one before it is deleted where the "
        "broker allows (Apache Kafka; the embedded broker keeps it)",
    )
    rocksdb_memory_mib: int = Field(
        default=256,
        ge=16,
        le=1024 * 1024,
        description="RocksDB memory of all of a worker's stores together, whatever the number "
        "of partitions it owns: one block cache, which the memtables (up to half) are charged "
        "to",
    )
    default_limits: AccountLimits | None = Field(
        default=None,
        description="Limits of an account opened without any, as JSON: "
        '{"transaction_amount_max": 100000, "daily_amount_max": {"withdrawal": 500000}, '
        '"daily_count_max": {"withdrawal": 4}} (minor units); unset: no limits',
    )
    payment_timeout_s: int = Field(
        default=15 * 60,
        ge=1,
        le=10 * 365 * 86_400,
        description="How long a payment through an external channel waits for confirm_payment "
        "or fail_payment before its hold expires (a pay_invoice may say otherwise)",
    )
    expiry_interval_s: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="How often the writer looks for holds past their deadline, to send "
        "expire_hold for them",
    )
    stall_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="A partition with input waiting and no progress for this long is named in "
        "a log line and the ledger_partition_stalled metric",
    )
    webhook_urls: str = Field(
        default="",
        description="Webhooks the notifier delivers every notification to: comma-separated "
        "http(s)://host[:port]/path URLs; empty: no notifier",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Key of the HMAC-SHA256 signature of every delivery (Ledger-Signature "
        "header); required with webhook_urls",
    )
    webhook_attempts_max: int = Field(
        default=8,
        ge=1,
        le=100,
        description="Deliveries of one notification to one webhook, the first included, before "
        "it is written to the undelivered topic",
    )
    webhook_backoff_s: float = Field(
        default=0.5,
        gt=0,
        le=3600,
        description="Bound of the wait after a first failed delivery, doubling with each "
        "failure up to webhook_backoff_max_s; the wait is random between 0 and the bound",
    )
    webhook_backoff_max_s: float = Field(
        default=30.0, gt=0, le=3600, description="The bound of the wait between deliveries"
    )
    webhook_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="How long one delivery may take, connecting included, before it has failed",
    )
    fault_point: str | None = Field(
        default=None,
        description="Test only: exit at this step of the write path (see ledger_stream.faults)",
    )
    fault_after: int = Field(default=1, ge=1, description="Test only: at its n-th occurrence")
    fault_action: Literal["exit", "hang"] = Field(
        default="exit", description="Test only: exit the process, or hang the writer there"
    )
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_port_list(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port], got {value!r}")
        return value

    @field_validator("fault_point")
    @classmethod
    def _known_fault_point(cls, value: str | None) -> str | None:
        if value is not None and value not in POINTS:
            raise ValueError(f"expected one of {', '.join(POINTS)}")
        return value

    @field_validator("webhook_urls")
    @classmethod
    def _webhook_url_list(cls, value: str) -> str:
        for url in value.split(",") if value.strip() else []:
            if not _is_webhook_url(url.strip()):
                raise ValueError(
                    "LEDGER_WEBHOOK_URLS takes comma-separated http(s)://host[:port]/path "
                    f"URLs; {url.strip()!r} is not one"
                )
        return value

    @field_validator("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")
    @classmethod
    def _readable_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return value
        name = f"LEDGER_{str(info.field_name).upper()}"
        if not value.is_file():
            raise ValueError(f"{name}: there is no file at {str(value)!r}")
        if not os.access(value, os.R_OK):
            raise ValueError(f"{name}: {str(value)!r} cannot be read by this user")
        return value

    @field_validator("api_key_hashes")
    @classmethod
    def _api_key_hash_list(cls, value: str) -> str:
        entries = [entry.strip() for entry in value.split(",")] if value.strip() else []
        for number, entry in enumerate(entries, 1):
            if not API_KEY_HASH.fullmatch(entry):
                # The entry is not shown: it may be a key pasted where its hash goes.
                raise ValueError(
                    "LEDGER_API_KEY_HASHES takes comma-separated sha256:<64 hex digits>, the "
                    f"SHA-256 of each key (never the key itself); entry {number} is not one"
                )
        return value

    @model_validator(mode="after")
    def _kafka_sasl(self) -> Settings:
        protocol = f"LEDGER_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol}"
        given = {
            "LEDGER_KAFKA_SASL_MECHANISM": self.kafka_sasl_mechanism,
            "LEDGER_KAFKA_SASL_USERNAME": self.kafka_sasl_username or None,
            "LEDGER_KAFKA_SASL_PASSWORD": _secret(self.kafka_sasl_password),
        }
        if self.kafka_security_protocol not in SASL_PROTOCOLS:
            unused = [name for name, value in given.items() if value is not None]
            if unused:
                raise ValueError(
                    f"{', '.join(unused)} set, but {protocol} does not authenticate with "
                    "SASL: use SASL_SSL (or SASL_PLAINTEXT), or unset them"
                )
            return self
        missing = [name for name, value in given.items() if value is None]
        if missing:
            raise ValueError(
                f"{protocol} needs {', '.join(missing)} (mechanism PLAIN, SCRAM-SHA-256 or "
                "SCRAM-SHA-512, and the principal's user name and password)"
            )
        return self

    @model_validator(mode="after")
    def _kafka_ssl(self) -> Settings:
        protocol = f"LEDGER_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol}"
        given = {
            "LEDGER_KAFKA_SSL_CAFILE": self.kafka_ssl_cafile,
            "LEDGER_KAFKA_SSL_CERTFILE": self.kafka_ssl_certfile,
            "LEDGER_KAFKA_SSL_KEYFILE": self.kafka_ssl_keyfile,
            "LEDGER_KAFKA_SSL_KEY_PASSWORD": _secret(self.kafka_ssl_key_password),
        }
        if self.kafka_security_protocol not in SSL_PROTOCOLS:
            unused = [name for name, value in given.items() if value is not None]
            if unused:
                raise ValueError(
                    f"{', '.join(unused)} set, but {protocol} does not use TLS: use SSL or "
                    "SASL_SSL, or unset them"
                )
            return self
        if self.kafka_ssl_certfile is None:
            for name in ("LEDGER_KAFKA_SSL_KEYFILE", "LEDGER_KAFKA_SSL_KEY_PASSWORD"):
                if given[name] is not None:
                    raise ValueError(
                        f"{name} is set without LEDGER_KAFKA_SSL_CERTFILE, the client "
                        "certificate it belongs to"
                    )
        try:  # load the files now, so that a bad one stops the start, named
            ssl_context(
                self.kafka_ssl_cafile,
                self.kafka_ssl_certfile,
                self.kafka_ssl_keyfile,
                _secret(self.kafka_ssl_key_password),
            )
        except ConfigurationError as error:
            raise ValueError(str(error)) from None
        return self

    @model_validator(mode="after")
    def _insync_within_replicas(self) -> Settings:
        if self.min_insync_replicas is not None and (
            self.min_insync_replicas > self.replication_factor
        ):
            raise ValueError(
                f"LEDGER_MIN_INSYNC_REPLICAS ({self.min_insync_replicas}) is more than "
                f"LEDGER_REPLICATION_FACTOR ({self.replication_factor}): no write could be "
                "acknowledged"
            )
        return self

    @model_validator(mode="after")
    def _api_keys_for_reads(self) -> Settings:
        if self.api_reads_require_key and not self.api_key_digests:
            raise ValueError(
                "LEDGER_API_READS_REQUIRE_KEY is set but LEDGER_API_KEY_HASHES names no key: "
                "set the hashes of the keys that may read (and write)"
            )
        return self

    @model_validator(mode="after")
    def _webhook_secret_with_urls(self) -> Settings:
        if self.webhooks and (
            self.webhook_secret is None or not self.webhook_secret.get_secret_value()
        ):
            raise ValueError(
                "webhooks are set (LEDGER_WEBHOOK_URLS) but no secret to sign their deliveries "
                "with: set LEDGER_WEBHOOK_SECRET to the key the receivers verify with"
            )
        return self

    @property
    def app_id(self) -> str:
        """The writers' consumer group."""
        return f"{self.topic_prefix}writer"

    @property
    def webhooks(self) -> list[str]:
        """The webhook URLs the notifier delivers to (none: no notifier)."""
        return [url.strip() for url in self.webhook_urls.split(",") if url.strip()]

    @property
    def api_key_digests(self) -> list[bytes]:
        """The SHA-256 digests of the keys that may call the HTTP API (none: it is open)."""
        entries = [entry.strip() for entry in self.api_key_hashes.split(",") if entry.strip()]
        return [bytes.fromhex(entry.removeprefix("sha256:")) for entry in entries]


def _secret(value: SecretStr | None) -> str | None:
    """A secret's value; None when unset or empty."""
    return None if value is None else value.get_secret_value() or None


def _is_webhook_url(url: str) -> bool:
    """http(s)://host[:port]/path, nothing else (no credentials, no fragment)."""
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0  # reading it checks its range
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and port_ok
        and parts.username is None
        and not parts.fragment
        and (parts.path == "" or parts.path.startswith("/"))
        and not any(c.isspace() for c in url)
    )
