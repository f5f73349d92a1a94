"""Tenants' champion models inside a serving replica: loaded on demand, refreshed on promotion.

The ingress deployment multiplexes these by tenant id (``serve.multiplexed``): a replica keeps a
bounded number of tenants' models, and the proxy can route a request that names its tenant in
the ``serve_multiplexed_model_id`` header to a replica that already has the model. Scoring in
the ingress replica saves a Ray call per request, which costs more than the prediction itself.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.propensity import PropensityModel, reason_codes
from models.registry import ModelRegistry
from pipeline.featurestore import FeatureMatrix

__all__ = ["TenantModel", "ChampionLoader", "predict_batch", "reasons_for"]


@dataclass
class TenantModel:
    tenant_id: str
    model: Any
    version: int
    checked_at: float


class ChampionLoader:
    """Loads a tenant's propensity champion and notices when another one is promoted."""

    def __init__(self, tracking_uri: str, artifact_root: Path, refresh_seconds: float):
        self._registry = ModelRegistry(tracking_uri, artifact_root)
        self._refresh_seconds = refresh_seconds

    def load(self, tenant_id: str) -> TenantModel:
        model, version = self._registry.load_champion(tenant_id, "propensity")
        return TenantModel(tenant_id, model, version, time.monotonic())

    def is_stale(self, loaded: TenantModel) -> bool:
        return time.monotonic() - loaded.checked_at > self._refresh_seconds

    def refresh(self, loaded: TenantModel) -> TenantModel:
        """The same object, holding the current champion (reloaded only if it changed)."""
        version = self._registry.champion_version(loaded.tenant_id, "propensity")
        if version is not None and version != loaded.version:
            fresh = self.load(loaded.tenant_id)
            loaded.model, loaded.version = fresh.model, fresh.version
        loaded.checked_at = time.monotonic()
        return loaded

    def is_reachable(self) -> bool:
        self._registry.champion_version("readiness-probe", "propensity")
        return True


def predict_batch(
    items: Sequence[tuple[TenantModel, FeatureMatrix]],
) -> list[tuple[np.ndarray, int]]:
    """Score many requests with one ``predict_proba`` call per tenant, in request order."""
    results: list[tuple[np.ndarray, int] | None] = [None] * len(items)
    by_tenant: dict[tuple[str, tuple[str, ...]], list[int]] = {}
    for position, (tenant_model, features) in enumerate(items):
        group = (tenant_model.tenant_id, tuple(features.columns))
        by_tenant.setdefault(group, []).append(position)
    for positions in by_tenant.values():
        tenant_model, first = items[positions[0]]
        blocks = [items[p][1].values for p in positions]
        stacked = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        proba = _predict_proba(tenant_model.model, first.columns, stacked)[:, 1]
        offset = 0
        for p, block in zip(positions, blocks, strict=True):
            results[p] = (proba[offset : offset + len(block)], tenant_model.version)
            offset += len(block)
    return [r for r in results if r is not None]


def _predict_proba(model: Any, columns: list[str], values: np.ndarray) -> np.ndarray:
    """``predict_proba``, skipping scikit-learn's checks when the rows are in the model's order.

    The rows come from the feature store in the model's own column order, so building a
    DataFrame and checking each column's dtype again (2 ms of a 3 ms one-row prediction)
    proves nothing.
    """
    names = getattr(model, "feature_names_in_", None)
    inner = getattr(model, "model_", None)
    if (isinstance(model, PropensityModel) and inner is not None and names is not None
            and columns == list(names)):
        return np.asarray(inner.predict_proba(values), dtype=np.float64)
    return np.asarray(model.predict_proba(pd.DataFrame(values, columns=columns)),
                      dtype=np.float64)


def reasons_for(model: Any, features: pd.DataFrame) -> list[list[str]]:
    """Reason codes where the model can give them (a propensity model), else none."""
    if not isinstance(model, PropensityModel):
        return [[] for _ in range(len(features))]
    return reason_codes(model, features, top=3)
