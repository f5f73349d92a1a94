"""Settings, read once at the entry point and passed down.

Sources, highest first: keyword arguments, ``PUSHPILOT_*`` environment variables, the TOML file
named by ``PUSHPILOT_CONFIG`` (or ``pushpilot.toml`` in the working directory), the defaults here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

if TYPE_CHECKING:
    from pipeline.redis_server import EmbeddedTls

__all__ = ["GuardSettings", "Settings", "load_settings"]


class GuardSettings(BaseModel):
    """The traffic guard's thresholds (docs/anomaly.md). TOML ``[guard]``, or the environment
    as JSON: ``PUSHPILOT_GUARD='{"min_rate_per_second": 20}'``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_rate_per_second: float = Field(
        default=10.0, ge=0,
        description="A key sending at most this many requests in a second is never a burst, "
        "whatever its baseline.",
    )
    warmup_seconds: int = Field(
        default=60, ge=1, description="Seconds of a key's traffic learnt before its baseline counts."
    )
    warmup_requests: int = Field(
        default=100, ge=0, description="Requests of a key learnt before its baseline counts."
    )
    idle_seconds: int = Field(
        default=10, ge=1,
        description="Silence past this many seconds (idle key, outage) is not learnt as a "
        "zero rate: the baseline keeps what it knew before the silence.",
    )
    throttle_seconds: int = Field(
        default=900, ge=1, description="How long a burst throttles its key unless cleared."
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PUSHPILOT_", extra="forbid", frozen=True)

    data_dir: Path = Field(
        default=Path(".pushpilot"),
        description="Runtime state: embedded Valkey files, MLflow store, logs.",
    )
    redis_url: str | None = Field(
        default=None, description="Redis/Valkey to use; unset starts the embedded Valkey."
    )
    ray_address: str | None = Field(
        default=None, description="Ray cluster to join; unset starts a local one-node Ray."
    )
    ray_num_cpus: int = Field(default=2, ge=1)
    ray_object_store_mb: int = Field(default=512, ge=78)
    ray_temp_dir: Path | None = Field(
        default=None, description="Ray's session and log folder; unset uses Ray's default."
    )
    mlflow_uri: str | None = Field(
        default=None, description="MLflow tracking URI; unset uses SQLite in the data directory."
    )
    http_host: str = "127.0.0.1"
    monitor_host: str = Field(
        default="127.0.0.1",
        description="Interface of HAProxy's stats page (8404) and Prometheus metrics (9101).",
    )
    http_port: int = Field(default=8000, ge=1, le=65535)
    serve_replicas: int = Field(
        default=1, ge=1, description="Ingress (and scorer) replicas, at least."
    )
    serve_ingress: Literal["haproxy", "proxy"] = Field(
        default="haproxy", description="HAProxy straight to replicas, or Ray Serve's proxy."
    )
    serve_max_replicas: int | None = Field(
        default=None, ge=1, description="Autoscale the scorer up to this many replicas."
    )
    max_models_per_replica: int = Field(default=16, ge=1)
    inbox_max_len: int = Field(default=1000, ge=10)
    log_level: str = "INFO"
    redis_replicas_to_wait: int = Field(
        default=0, ge=0,
        description="Replicas a transactional enqueue waits for (WAIT) before it is "
        "acknowledged; 0 for a single server. See docs/ha.md.",
    )
    redis_replica_wait_ms: int = Field(
        default=2000, ge=1,
        description="How long a transactional enqueue waits for its replicas before failing.",
    )
    guard: GuardSettings = Field(default_factory=GuardSettings)

    backup_key_file: Path | None = Field(
        default=None,
        description="HMAC key that signs backups and that restores verify; unset uses "
        "<data_dir>/backup.key, created 0600 by the first backup.",
    )

    tls_cert_file: Path | None = Field(
        default=None,
        description="PEM certificate (chain) for HTTPS and wss:// on the API and the gateway; "
        "with tls_key_file. Unset: plain HTTP.",
    )
    tls_key_file: Path | None = Field(default=None, description="PEM private key of tls_cert_file.")
    hsts_max_age: int = Field(
        default=0, ge=0,
        description="Strict-Transport-Security max-age (seconds) on HTTPS answers; 0 sends none.",
    )

    redis_tls_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="Give the embedded Valkey a TLS listener on this port (with tls_cert_file "
        "and tls_key_file), for clients on other machines; unset: loopback only, no TLS.",
    )
    redis_tls_host: str = Field(
        default="127.0.0.1", description="Interface of the embedded Valkey's TLS listener."
    )

    encrypt_at_rest: bool = Field(
        default=True,
        description="Store push messages (title, body, data) encrypted with per-tenant data "
        "keys wrapped by the master key (docs/security.md).",
    )
    at_rest_key_file: Path | None = Field(
        default=None,
        description="The master key wrapping tenants' data keys; unset uses "
        "<data_dir>/master.key, created 0600 on first use. Every process needs the same file.",
    )

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.mlflow_uri or f"sqlite:///{self.data_dir / 'mlflow.db'}"

    @property
    def mlflow_artifact_root(self) -> Path:
        return self.data_dir / "mlartifacts"

    @property
    def backup_key_path(self) -> Path:
        return self.backup_key_file or self.data_dir / "backup.key"

    @property
    def at_rest_key_path(self) -> Path:
        """The master key file. With encryption off it still opens what was sealed before."""
        return self.at_rest_key_file or self.data_dir / "master.key"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("give both tls_cert_file and tls_key_file, or neither")
        if self.hsts_max_age and self.tls_cert_file is None:
            raise ValueError("hsts_max_age needs HTTPS: set tls_cert_file and tls_key_file")
        if self.redis_tls_port is not None and (self.tls_cert_file is None or self.redis_url):
            raise ValueError("redis_tls_port is the embedded Valkey's TLS listener: it needs "
                             "tls_cert_file and tls_key_file, and no redis_url")
        for path in (self.tls_cert_file, self.tls_key_file):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"TLS file {str(path)!r} does not exist")
        return self

    @property
    def embedded_tls(self) -> EmbeddedTls | None:
        """The embedded Valkey's TLS listener, when ``redis_tls_port`` asks for one."""
        if self.redis_tls_port is None or self.tls_cert_file is None or self.tls_key_file is None:
            return None
        from pipeline.redis_server import EmbeddedTls

        return EmbeddedTls(self.redis_tls_host, self.redis_tls_port, self.tls_cert_file,
                           self.tls_key_file)

    @property
    def is_tls(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def http_url(self) -> str:
        return f"{'https' if self.is_tls else 'http'}://{self.http_host}:{self.http_port}"

    @property
    def inbox_url(self) -> str:
        """The API's WebSocket inbox, ws:// or wss://."""
        return f"{'wss' if self.is_tls else 'ws'}://{self.http_host}:{self.http_port}/v1/inbox"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = os.environ.get("PUSHPILOT_CONFIG", "pushpilot.toml")
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=config_file),
        )


def load_settings(**overrides: object) -> Settings:
    """Read settings once; the entry points call this and pass the result down."""
    config_file = os.environ.get("PUSHPILOT_CONFIG")
    if config_file and not Path(config_file).is_file():
        raise FileNotFoundError(f"PUSHPILOT_CONFIG names {config_file!r}, which is not a file")
    return Settings(**overrides)  # type: ignore[arg-type]
