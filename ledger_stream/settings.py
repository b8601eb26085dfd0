"""The one configuration object: every Kafka, RocksDB and HTTP option, from `LEDGER_*`
environment variables (or a `.env` file) with command-line flags on top.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ledger_stream.anomaly import AnomalyRules
from ledger_stream.faults import POINTS
from ledger_stream.messages import AccountLimits


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LEDGER_", env_file=".env", extra="ignore", validate_default=True
    )

    bootstrap_servers: str = Field(
        default="localhost:9092", description="Kafka bootstrap servers, host:port[,host:port]"
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
