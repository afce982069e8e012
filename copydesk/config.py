"""The one settings object. Read once, at start-up, from ``COPYDESK_*`` variables.

Components never read the environment themselves: they receive the values they need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "copydesk"


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "copydesk"


class ProviderSettings(BaseModel):
    """One named provider. ``kind`` picks the implementation from the provider registry."""

    kind: str = Field(description="registry name: embedded, openai, deterministic, or a plugin's")
    model: str | None = Field(default=None, description="default model name for this provider")
    base_url: str | None = None
    api_key: str | None = None
    timeout_s: float = Field(default=120.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    max_concurrency: int = Field(default=16, ge=1)
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    options: dict[str, Any] = Field(default_factory=dict)


class BlobSettings(BaseModel):
    """Where uploaded files' bytes are kept: ``local`` (``data_dir/files``) or an
    S3-compatible bucket (``COPYDESK_BLOBS__KIND=s3``), which scale-out workers share."""

    kind: Literal["local", "s3"] = "local"
    s3_bucket: str | None = None
    s3_prefix: str = Field(default="", description="keys are stored under this prefix")
    s3_endpoint_url: str | None = Field(
        default=None, description="for MinIO and other S3-compatible servers (path-style)"
    )
    s3_region: str | None = None
    s3_access_key_id: str | None = Field(
        default=None, description="unset: the standard AWS credential chain (AWS_* variables, ...)"
    )
    s3_secret_access_key: SecretStr | None = None
    s3_session_token: SecretStr | None = None
    s3_part_size_mb: int = Field(default=8, ge=5, description="multipart upload part size")

    @model_validator(mode="after")
    def _check_s3(self) -> BlobSettings:
        if self.kind == "s3" and not self.s3_bucket:
            raise ValueError(
                "COPYDESK_BLOBS__KIND=s3 needs a bucket: set COPYDESK_BLOBS__S3_BUCKET=NAME "
                "(and COPYDESK_BLOBS__S3_ENDPOINT_URL=http://HOST:PORT for MinIO or another "
                "S3-compatible server), or use COPYDESK_BLOBS__KIND=local"
            )
        if (self.s3_access_key_id is None) != (self.s3_secret_access_key is None):
            raise ValueError(
                "set both COPYDESK_BLOBS__S3_ACCESS_KEY_ID and "
                "COPYDESK_BLOBS__S3_SECRET_ACCESS_KEY, or neither (the AWS credential chain)"
            )
        return self


def _default_providers() -> dict[str, dict[str, Any]]:
    return {
        "local": {"kind": "embedded", "max_concurrency": 4},
        "echo": {"kind": "deterministic", "model": "echo", "max_concurrency": 1000},
    }


class Settings(BaseSettings):
    """Everything Copydesk can be told, with defaults for the embedded one-machine setup."""

    model_config = SettingsConfigDict(
        env_prefix="COPYDESK_",
        env_nested_delimiter="__",
        extra="ignore",
        validate_default=True,
    )

    data_dir: Path = Field(default_factory=_default_data_dir)
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default is SQLite in data_dir. "
        "PostgreSQL: postgresql+asyncpg://user@host:5432/db",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    providers: dict[str, ProviderSettings] = Field(
        default_factory=dict,
        description="named providers, merged over the built-in 'local' (embedded model) and "
        "'echo' (deterministic); e.g. COPYDESK_PROVIDERS__VLLM__KIND=openai",
    )
    default_provider: str = "local"
    embedded_model: Literal["qwen2.5-coder-0.5b", "smollm2-135m"] = "qwen2.5-coder-0.5b"
    embedded_threads: int | None = Field(default=None, ge=1)
    embedded_context: int = Field(default=4096, ge=512)

    agents_dirs: list[Path] = Field(
        default_factory=list, description="folders of agent YAML files deployed at start-up"
    )
    bootstrap_org: str = Field(default="default", description="organisation of the first key")
    static_keys: dict[str, str] = Field(
        default_factory=dict,
        description="extra accepted keys, key -> organisation name (for SDK test suites)",
    )
    max_request_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_upload_mb: int = Field(default=100, ge=1, description="largest file upload (F1), in MB")
    blobs: BlobSettings = Field(
        default_factory=BlobSettings,
        description="uploaded files' bytes: local disk, or S3 with COPYDESK_BLOBS__KIND=s3",
    )
    file_wait_s: float = Field(
        default=120.0,
        ge=0,
        description="how long a call or job waits for a file input still being processed",
    )
    url_fetch_allow: list[str] = Field(
        default_factory=list,
        description="hosts or networks (CIDR) a URL file input may be fetched from even "
        "though they are private or loopback; e.g. COPYDESK_URL_FETCH_ALLOW='[\"10.0.0.0/8\"]'",
    )
    url_fetch_timeout_s: float = Field(
        default=20.0, gt=0, description="time limit for fetching a URL file input"
    )
    webhook_allow: list[str] = Field(
        default_factory=list,
        description="hosts or networks (CIDR) webhook endpoints may point at even though "
        "they are private or loopback; e.g. COPYDESK_WEBHOOK_ALLOW='[\"127.0.0.1\"]'",
    )
    webhook_timeout_s: float = Field(
        default=10.0, gt=0, description="time limit for one webhook delivery attempt"
    )
    webhook_backoff_s: list[float] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0, 600.0, 3600.0, 10800.0, 21600.0],
        description="waits before each retry of a failed webhook delivery (the last "
        "repeats), jittered by 20 %",
    )
    webhook_max_attempts: int = Field(
        default=8, ge=1, description="attempts per webhook delivery before it is failed"
    )
    webhook_poll_s: float = Field(
        default=1.0, gt=0, description="how often an idle worker looks for due webhooks"
    )

    # --- jobs and workers ---
    engine: Literal["auto", "embedded", "pgqueuer"] = Field(
        default="auto",
        description="dispatch engine: 'embedded' (in-process, any database) or 'pgqueuer' "
        "(PostgreSQL only); 'auto' picks pgqueuer on PostgreSQL and embedded on SQLite",
    )
    lease_s: float = Field(default=30.0, gt=0, description="a running job's lease; renewed")
    max_attempts: int = Field(default=5, ge=1, description="attempts per job run")
    retry_base_delay_s: float = Field(default=1.0, ge=0)
    retry_max_delay_s: float = Field(default=60.0, ge=0)
    shutdown_grace_s: float = Field(default=30.0, ge=0, description="SIGTERM: time to finish")
    poll_interval_s: float = Field(
        default=0.2, gt=0, description="idle worker's queue check (another process's new jobs)"
    )
    provider_prefetch: int | None = Field(
        default=None,
        ge=0,
        description="jobs per provider a worker picks ahead of its max_concurrency; they "
        "wait, started and ready to send, for a provider slot, so a slot freed by a "
        "returning call is refilled at once instead of after a trip to the queue. Unset: "
        "as many as max_concurrency (a whole wave of calls can be refilled). The price: "
        "up to this many jobs per worker are taken before a later, higher-priority one, "
        "and a job cancelled while it waits ends with a cancelled attempt (no provider "
        "call). 0 keeps priorities exact",
    )
    file_concurrency: int = Field(
        default=2, ge=1, description="pgqueuer: uploaded files processed at once, all workers"
    )
    files_sweep_s: float = Field(
        default=30.0,
        gt=0,
        description="pgqueuer: how often a worker sweeps for uploaded files whose queue "
        "entry was lost (the embedded engine polls every poll_interval_s)",
    )
    jobs_page_max: int = Field(default=500, ge=1)

    # --- idempotency keys (Idempotency-Key on creates) ---
    idempotency_ttl_s: float = Field(
        default=24 * 3600.0, gt=0, description="how long a create's answer is replayed"
    )
    idempotency_lease_s: float = Field(
        default=60.0,
        gt=0,
        description="a key held by a request that stopped (a crash) is free after this long",
    )
    idempotency_wait_s: float = Field(
        default=60.0,
        ge=0,
        description="how long a duplicate waits for the first request's answer before a 409",
    )
    batch_max_rows: int = Field(default=100_000, ge=1, description="rows in one batch")
    batch_max_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="largest batch body (JSON, JSONL, CSV)"
    )

    @model_validator(mode="before")
    @classmethod
    def _merge_providers(cls, data: Any) -> Any:
        # Configured providers are laid over the built-ins field by field, so
        # COPYDESK_PROVIDERS__LOCAL__MAX_CONCURRENCY=2 changes one value and keeps the rest.
        if not isinstance(data, dict):
            return data
        merged: dict[str, Any] = _default_providers()
        given = data.get("providers") or {}
        if isinstance(given, dict):
            for name, value in given.items():
                if isinstance(value, dict):
                    merged[name] = {**merged.get(name, {}), **value}
                else:
                    merged[name] = value
        return {**data, "providers": merged}

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            return "postgresql+asyncpg://" + value.split("://", 1)[1]
        if not (value.startswith("sqlite") or value.startswith("postgresql+asyncpg://")):
            raise ValueError(
                "COPYDESK_DATABASE_URL must be sqlite+aiosqlite:///PATH or "
                "postgresql+asyncpg://USER@HOST:PORT/DB"
            )
        return value

    @model_validator(mode="after")
    def _check_default_provider(self) -> Settings:
        if self.default_provider not in self.providers:
            known = ", ".join(sorted(self.providers)) or "none"
            raise ValueError(
                f"COPYDESK_DEFAULT_PROVIDER={self.default_provider!r} is not a configured "
                f"provider (configured: {known}); set COPYDESK_PROVIDERS__<NAME>__KIND"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'copydesk.db'}"

    def prefetch(self, max_concurrency: int) -> int:
        """Jobs a worker picks ahead of a provider's ``max_concurrency``: the setting,
        never more than the limit itself; the limit when unset."""
        if self.provider_prefetch is None:
            return max_concurrency
        return min(self.provider_prefetch, max_concurrency)

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @property
    def files_dir(self) -> Path:
        """Where uploaded files' bytes are kept (the local blob store)."""
        return self.data_dir / "files"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @property
    def resolved_engine(self) -> Literal["embedded", "pgqueuer"]:
        if self.engine == "auto":
            return "embedded" if self.is_sqlite else "pgqueuer"
        return self.engine

    @model_validator(mode="after")
    def _check_engine(self) -> Settings:
        if self.engine == "pgqueuer" and self.is_sqlite:
            raise ValueError(
                "COPYDESK_ENGINE=pgqueuer needs PostgreSQL: set COPYDESK_DATABASE_URL="
                "postgresql+asyncpg://USER@HOST:PORT/DB, or use COPYDESK_ENGINE=embedded"
            )
        return self
