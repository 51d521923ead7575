"""Typed settings: one class per process on a shared base, all read from TGFLOW_* variables."""

from __future__ import annotations

import hashlib
import hmac
from enum import StrEnum
from typing import Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.signing import derive_key

DEFAULT_SECRET = "dev-insecure-signing-secret-change-me"  # noqa: S105 - the value production refuses


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class InsecureSettingsError(RuntimeError):
    """Raised when a production process would start with a development secret."""


class BaseAppSettings(BaseSettings):
    """Settings every tgflow process shares."""

    model_config = SettingsConfigDict(
        env_prefix="TGFLOW_", env_file=".env", extra="ignore", frozen=True
    )

    env: Environment = Environment.PRODUCTION
    secret_key: SecretStr = SecretStr(DEFAULT_SECRET)
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_timeout: float = Field(default=0.5, gt=0, le=30)
    db_pool_min: int = Field(default=1, ge=0, le=100)
    db_pool_max: int = Field(default=4, ge=1, le=200)
    db_command_timeout: float = Field(default=10.0, gt=0)
    log_level: str = Field(default="INFO", pattern="(?i)^(debug|info|warning|error|critical)$")
    log_json: bool = True
    otlp_endpoint: str | None = None
    sentry_dsn: SecretStr | None = None
    instance_name: str | None = None
    job_status_ttl: int = Field(default=86_400, ge=60)
    idempotency_ttl: int = Field(default=86_400, ge=60)
    # Telegram accounts map to this many shard queues; every process must agree on it.
    telegram_shards: int = Field(default=64, ge=1, le=4096)
    # Dead letters: bounds of the Redis set of failed jobs (the archive keeps every one).
    dead_letter_max: int = Field(default=100_000, ge=1)
    dead_letter_retention_days: float = Field(default=30.0, gt=0)
    # AI providers: the gateway validates AI jobs against this catalogue, workers call it.
    ai_providers: str = ""
    ai_providers_file: str = ""
    ai_default_provider: str = ""
    ai_sandbox_url: str = "http://127.0.0.1:10480/v1"
    # Completion webhooks: the signing secret (default: derived from secret_key) and
    # whether URLs may point at loopback, private or link-local addresses.
    webhook_secret: SecretStr | None = None
    webhook_allow_private: bool = False

    @model_validator(mode="after")
    def _pool_bounds(self) -> Self:
        if self.db_pool_min > self.db_pool_max:
            raise ValueError("TGFLOW_DB_POOL_MIN must not exceed TGFLOW_DB_POOL_MAX")
        return self

    def monitor_api_key(self) -> str:
        """The header value the gateway sends and the monitor checks, derived from the
        signing secret so the two processes share it without another setting."""
        secret = self.secret_key.get_secret_value().encode()
        return hmac.new(secret, b"tgflow-monitor-api", hashlib.sha256).hexdigest()

    def dialog_cursor_key(self) -> bytes:
        """The key ``telegram.get_dialogs`` cursors are tagged with, derived from the
        signing secret: the gateway checks what workers wrote, and a new secret makes
        every cursor written before it invalid."""
        return derive_key(self.secret_key.get_secret_value(), "tgflow dialog cursor v1").encode()

    def webhook_signing_key(self, tenant: str) -> str:
        """The key a tenant's completion webhooks are signed with: one per tenant, so a
        receiver of one tenant cannot forge another's, all derived from one secret."""
        secret = self.webhook_secret or self.secret_key
        return derive_key(secret.get_secret_value(), f"tgflow-webhook:{tenant}")

    @property
    def is_development(self) -> bool:
        return self.env is Environment.DEVELOPMENT

    def ensure_safe(self) -> None:
        """Refuse to run outside development with the built-in signing secret."""
        if not self.is_development and self.secret_key.get_secret_value() == DEFAULT_SECRET:
            raise InsecureSettingsError(
                "TGFLOW_SECRET_KEY is the built-in development value; set a real secret "
                "or TGFLOW_ENV=development"
            )


class GatewaySettings(BaseAppSettings):
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_defer_seconds: int = Field(default=30 * 86_400, ge=1)
    control_wait_seconds: float = Field(default=20.0, gt=0, le=120)
    monitor_url: str = "http://127.0.0.1:8001"
    monitor_timeout: float = Field(default=5.0, gt=0, le=60)
    sse_max_streams: int = Field(default=1000, ge=1, le=100_000)
    sse_keepalive_seconds: float = Field(default=15.0, gt=0, le=300)


class WorkerSettings(BaseAppSettings):
    worker_queues: str = "control,ai,telegram"
    worker_concurrency: int = Field(default=50, ge=1, le=10_000)
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)
    worker_poll_delay: float = Field(default=0.5, gt=0, le=10)
    worker_drain_seconds: float = Field(default=20.0, ge=0)
    job_lease_seconds: float = Field(default=10.0, ge=2)
    shard_lease_seconds: float = Field(default=10.0, ge=3)
    shard_handoff_seconds: float = Field(default=10.0, ge=0)
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    migrate_on_start: bool = True
    # Telegram: without an API id the worker talks to the sandbox DC.
    telegram_api_id: int | None = None
    telegram_api_hash: SecretStr | None = None
    sandbox_dc: str = "127.0.0.1:10443"
    vault_keys: SecretStr | None = None
    telegram_max_clients: int = Field(default=50, ge=1, le=100_000)
    # Users and chats (with their access hashes) a client remembers, most recent first.
    telegram_entities_per_account: int = Field(default=2000, ge=100, le=1_000_000)
    telegram_idle_seconds: float = Field(default=300.0, gt=0)
    telegram_request_timeout: float = Field(default=20.0, gt=0)
    telegram_health_seconds: float = Field(default=60.0, gt=0)
    telegram_validate_seconds: float = Field(default=3600.0, gt=0)
    telegram_session_retention_days: int = Field(default=30, ge=0)
    # A login not finished (no code or password step) within this long is dropped.
    telegram_login_expiry_seconds: float = Field(default=3600.0, gt=0)
    # Wrong codes and passwords a login may take; the last one allowed cancels it.
    telegram_login_max_attempts: int = Field(default=5, ge=1, le=100)
    telegram_event_retention_days: int = Field(default=90, ge=1)
    telegram_flood_sleep_threshold: int = Field(default=3, ge=0)
    telegram_long_flood_seconds: int = Field(default=300, ge=1)
    telegram_send_rate: float = Field(default=1.0, gt=0)
    telegram_send_burst: int = Field(default=20, ge=1)
    telegram_peer_send_rate: float = Field(default=0.34, gt=0)
    telegram_peer_send_burst: int = Field(default=3, ge=1)
    # How far ahead a send waiting for its budget may reserve its slot.
    telegram_send_horizon_seconds: float = Field(default=60.0, gt=0)
    # AI: content logging, the response cache, waiting for a provider slot.
    ai_log_content: bool = False
    ai_cache_ttl: int = Field(default=86_400, ge=1)
    ai_slot_wait_seconds: float = Field(default=10.0, ge=0, le=60)
    ai_lease_seconds: float = Field(default=30.0, ge=2)
    ai_http_max_connections: int = Field(default=100, ge=1, le=10_000)
    # Completion webhooks: attempts, backoff, timeouts and how many POSTs run at once.
    webhook_max_attempts: int = Field(default=12, ge=1, le=100)
    webhook_backoff_seconds: float = Field(default=10.0, gt=0)
    webhook_backoff_cap_seconds: float = Field(default=3600.0, gt=0)
    webhook_timeout: float = Field(default=10.0, gt=0, le=300)
    webhook_lease_seconds: float = Field(default=60.0, gt=0)
    webhook_concurrency: int = Field(default=20, ge=1, le=1000)
    webhook_poll_seconds: float = Field(default=1.0, gt=0, le=60)

    @model_validator(mode="after")
    def _webhook_lease(self) -> Self:
        if self.webhook_lease_seconds <= self.webhook_timeout:
            raise ValueError("TGFLOW_WEBHOOK_LEASE_SECONDS must exceed TGFLOW_WEBHOOK_TIMEOUT")
        return self

    @property
    def queue_kinds(self) -> list[str]:
        return [q.strip() for q in self.worker_queues.split(",") if q.strip()]

    @property
    def telegram_sandbox(self) -> bool:
        """No Telegram credentials configured: use the sandbox DC."""
        return self.telegram_api_id is None or self.telegram_api_hash is None

    def ensure_safe(self) -> None:
        super().ensure_safe()
        blank = self.vault_keys is None or not self.vault_keys.get_secret_value().strip()
        if not self.is_development and blank:  # a blank value would mean the derived dev key
            raise InsecureSettingsError(
                "TGFLOW_VAULT_KEYS is required outside development (see `tgflow keys generate`)"
            )


class MonitorSettings(BaseAppSettings):
    monitor_host: str = "127.0.0.1"
    monitor_port: int = Field(default=8001, ge=0, le=65535)
    monitor_interval: float = Field(default=15.0, gt=0)
    monitor_rules_path: str = ""
    monitor_config_path: str = ""
    monitor_history_days: int = Field(default=30, ge=1)
    monitor_history_max: int = Field(default=10_000, ge=10)
    monitor_slow_query_ms: float = Field(default=1000.0, gt=0)
    monitor_failure_window: float = Field(default=900.0, gt=0)
    monitor_failure_min_jobs: int = Field(default=10, ge=1)
    monitor_disk_paths: str = "/"
    monitor_scrape_timeout: float = Field(default=2.0, gt=0, le=60)
