"""The typed arguments the Ray Serve application is built from."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from pipeline.config import GuardSettings, Settings

__all__ = ["ServingArgs"]


class ServingArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    redis_url: str
    mlflow_tracking_uri: str
    mlflow_artifact_root: str
    replicas: int = Field(default=1, ge=1)
    max_replicas: int = Field(default=1, ge=1)
    max_models_per_replica: int = Field(default=16, ge=1)
    champion_refresh_seconds: float = Field(default=3.0, gt=0)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_users_per_request: int = Field(default=1000, ge=1)
    redis_replicas_to_wait: int = Field(default=0, ge=0)
    redis_replica_wait_ms: int = Field(default=1000, ge=1)
    guard: GuardSettings = Field(default_factory=GuardSettings)
    # Settings.at_rest_key_path (every replica reads the same file) and encrypt_at_rest.
    at_rest_key_file: str
    encrypt_at_rest: bool = True
    hsts_max_age: int = Field(default=0, ge=0)

    @classmethod
    def from_settings(cls, settings: Settings, redis_url: str) -> ServingArgs:
        return cls(
            redis_url=redis_url,
            mlflow_tracking_uri=settings.mlflow_tracking_uri,
            mlflow_artifact_root=str(settings.mlflow_artifact_root),
            replicas=settings.serve_replicas,
            max_replicas=max(settings.serve_replicas, settings.serve_max_replicas or 0),
            max_models_per_replica=settings.max_models_per_replica,
            redis_replicas_to_wait=settings.redis_replicas_to_wait,
            redis_replica_wait_ms=settings.redis_replica_wait_ms,
            guard=settings.guard,
            at_rest_key_file=str(settings.at_rest_key_path),
            encrypt_at_rest=settings.encrypt_at_rest,
            hsts_max_age=settings.hsts_max_age,
        )
