"""Batch scoring fanned out over Ray equals scoring in one process, row for row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.tabular import TableModel
from models.uplift import UpliftModel
from pipeline.tabular import score_partitioned, score_proba, score_table

PUSHPILOT = Path(sys.executable).with_name("pushpilot")


def _table(n_rows: int = 1500, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    plan = rng.choice(["free", "plus", "pro"], size=n_rows)
    visits = rng.poisson(4, n_rows).astype(float)
    visits[rng.random(n_rows) < 0.05] = np.nan
    logit = -2.5 + 0.5 * np.nan_to_num(visits) + np.where(plan == "pro", 1.5, 0.0)
    y = rng.random(n_rows) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame({"customer": [f"c{i}" for i in range(n_rows)], "plan": plan,
                         "visits": visits, "noise": rng.normal(size=n_rows),
                         "bought": np.where(y, "yes", "no")})


def test_partitions_on_ray_equal_one_process_row_for_row(ray_session):
    table = _table()
    X, y = table[["plan", "visits", "noise"]], (table["bought"] == "yes").to_numpy()
    model = TableModel(random_state=0, n_threads=1).fit(X, y)
    # An index that is not 0..n-1, so a reordering or reset would show.
    shuffled = table.sample(frac=1.0, random_state=1)

    alone = score_table(model, shuffled)
    fanned = score_partitioned(model, shuffled, partition_rows=200, progress=False)

    assert len(alone) == len(shuffled) and not alone["score"].isna().any()
    pd.testing.assert_frame_equal(fanned, alone, check_exact=True)
    pd.testing.assert_frame_equal(
        score_partitioned(model, X, score_proba, partition_rows=333, progress=False),
        score_proba(model, X), check_exact=True)


def test_uplift_partitions_on_ray_equal_one_process(ray_session):
    table = _table(seed=2)
    rng = np.random.default_rng(3)
    treated = rng.random(len(table)) < 0.5
    X, y = table[["plan", "visits", "noise"]], (table["bought"] == "yes").to_numpy()
    model = UpliftModel(random_state=0, n_threads=1).fit(X, y, treated)

    pd.testing.assert_frame_equal(
        score_partitioned(model, table, partition_rows=400, progress=False),
        score_table(model, table), check_exact=True)


@pytest.mark.slow
def test_cli_scores_on_ray_above_the_threshold_like_one_process(tmp_path):
    env = {**os.environ, "PUSHPILOT_DATA_DIR": str(tmp_path / "data")}
    env.pop("PUSHPILOT_REDIS_URL", None)

    def run(*args: str) -> str:
        result = subprocess.run([str(PUSHPILOT), *args], env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]

    table = tmp_path / "customers.csv"
    _table().to_csv(table, index=False)
    try:
        run("tenant", "create", "acme")
        run("model", "train", "--tenant", "acme", "--table", str(table), "--label", "bought")
        score = ("model", "score", "--tenant", "acme", "--table", str(table), "--keep", "customer")
        # Without a cluster address, a local run scores in one process unless told --ray.
        alone = json.loads(run(*score, "--out", str(tmp_path / "alone.parquet"),
                               "--ray-threshold", "1000"))
        fanned = json.loads(run(*score, "--out", str(tmp_path / "fanned.parquet"), "--ray",
                                "--partition-rows", "400"))
    finally:
        subprocess.run([str(PUSHPILOT), "down"], env=env, capture_output=True, timeout=120)

    assert alone["ray"] is False and fanned["ray"] is True
    assert alone["rows"] == fanned["rows"] == 1500
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "fanned.parquet"),
                                  pd.read_parquet(tmp_path / "alone.parquet"), check_exact=True)
