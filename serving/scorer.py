"""The per-tenant scorer: Ray Serve model multiplexing keyed by tenant id."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ray import serve

from models.propensity import PropensityModel, reason_codes
from models.registry import ModelRegistry
from serving.args import ServingArgs

__all__ = ["Scorer"]


def _reasons(model: Any, features: pd.DataFrame) -> list[list[str]]:
    """Reason codes where the model can give them (a propensity model), else none."""
    if not isinstance(model, PropensityModel):
        return [[] for _ in range(len(features))]
    return reason_codes(model, features, top=3)


@dataclass
class _TenantModel:
    model: Any
    version: int
    checked_at: float


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25},
    health_check_period_s=10,
    health_check_timeout_s=30,
)
class Scorer:
    def __init__(self, args: ServingArgs):
        self._args = args
        self._registry = ModelRegistry(args.mlflow_tracking_uri, Path(args.mlflow_artifact_root))
        self._loaded: dict[str, _TenantModel] = {}

    def _load(self, tenant_id: str) -> _TenantModel:
        model, version = self._registry.load_champion(tenant_id, "propensity")
        return _TenantModel(model=model, version=version, checked_at=time.monotonic())

    @serve.multiplexed(max_num_models_per_replica=16)
    async def _get_model(self, tenant_id: str) -> _TenantModel:
        loaded = await asyncio.to_thread(self._load, tenant_id)
        self._loaded[tenant_id] = loaded
        return loaded

    async def _fresh(self, tenant_id: str) -> _TenantModel:
        current = await self._get_model(tenant_id)
        # A promoted champion replaces the cached model within champion_refresh_seconds.
        if time.monotonic() - current.checked_at > self._args.champion_refresh_seconds:
            version = await asyncio.to_thread(
                self._registry.champion_version, tenant_id, "propensity"
            )
            if version is not None and version != current.version:
                fresh = await asyncio.to_thread(self._load, tenant_id)
                current.model, current.version = fresh.model, fresh.version
            current.checked_at = time.monotonic()
        return current

    async def score(self, features: pd.DataFrame) -> dict[str, Any]:
        tenant_id = serve.get_multiplexed_model_id()
        tenant_model = await self._fresh(tenant_id)
        proba, version = await self._score_batched((tenant_id, tenant_model, features))
        return {
            "scores": proba.tolist(),
            "model_version": version,
            "reasons": _reasons(tenant_model.model, features),
        }

    # Many small requests share one predict_proba call per tenant; a batch closes at 4,096 rows
    # or after 2 ms, so a lone request waits at most that long.
    @serve.batch(
        max_batch_size=4096,
        batch_wait_timeout_s=0.002,
        batch_size_fn=lambda items: sum(len(features) for _, _, features in items),
    )
    async def _score_batched(
        self, items: list[tuple[str, _TenantModel, pd.DataFrame]]
    ) -> list[tuple[np.ndarray, int]]:
        results: list[tuple[np.ndarray, int] | None] = [None] * len(items)
        by_tenant: dict[str, list[int]] = {}
        for position, (tenant_id, _, _) in enumerate(items):
            by_tenant.setdefault(tenant_id, []).append(position)
        for positions in by_tenant.values():
            tenant_model = items[positions[0]][1]
            frames = [items[p][2] for p in positions]
            proba = np.asarray(
                tenant_model.model.predict_proba(pd.concat(frames, ignore_index=True))[:, 1],
                dtype=float,
            )
            offset = 0
            for p, frame in zip(positions, frames, strict=True):
                results[p] = (proba[offset : offset + len(frame)], tenant_model.version)
                offset += len(frame)
        return [r for r in results if r is not None]

    def check_health(self) -> None:
        # The registry must stay reachable; a replica that cannot load models is unhealthy.
        self._registry.champion_version("healthcheck", "propensity")
