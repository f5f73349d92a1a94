"""The online feature store on a real Valkey: packed float64 rows, old JSON rows, backups."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis
from redis.client import NEVER_DECODE
from test_cluster import cluster  # noqa: F401  (a fixture: a real three-primary cluster)

from models.registry import ModelRegistry
from pipeline import keys, tenants
from pipeline.backup import BackupKey, backup, restore
from pipeline.campaigns.runner import _load_matrix
from pipeline.features import FEATURE_COLUMNS
from pipeline.featurestore import (
    load_feature_matrix,
    load_features,
    store_features,
    store_send_hours,
)
from pipeline.redis_server import EmbeddedRedis, connect

FRAME = pd.DataFrame(
    {"sessions_7d": [3.0, np.nan, 0.0], "monetary_total": [12.345678901234567, 1e300, -0.0],
     "share_night": [0.1, 0.2, np.nan]},
    index=pd.Index(["u1", "u2", "u3"], name="user_id"),
)


def test_features_round_trip_exactly_with_missing_values_and_unknown_users(
    redis_client: redis.Redis, new_tenant_id: Callable[[str], str]
) -> None:
    tenant_id = new_tenant_id("fs")
    assert store_features(redis_client, tenant_id, FRAME) == 3

    got = load_feature_matrix(redis_client, tenant_id, ["u3", "nobody", "u1"])

    assert got.columns == list(FRAME.columns)
    assert got.is_known.tolist() == [True, False, True]
    assert got.missing() == ["nobody"]
    np.testing.assert_array_equal(got.values[[0, 2]], FRAME.loc[["u3", "u1"]].to_numpy())
    assert np.isnan(got.values[1]).all()
    assert np.signbit(got.values[0, 1])  # -0.0 stays -0.0: the bytes are the float's own
    pd.testing.assert_frame_equal(load_features(redis_client, tenant_id, ["u2", "u1", "zz"]),
                                  FRAME.loc[["u2", "u1"]])
    assert load_features(redis_client, tenant_id, []).columns.tolist() == list(FRAME.columns)


def test_a_stored_row_is_little_endian_float64_in_the_meta_column_order(
    redis_client: redis.Redis, new_tenant_id: Callable[[str], str]
) -> None:
    tenant_id = new_tenant_id("fs")
    store_features(redis_client, tenant_id, FRAME)

    meta = redis_client.hgetall(keys.tenant_meta(tenant_id))
    raw = redis_client.execute_command("HGET", keys.user_features(tenant_id), "u1",
                                       **{NEVER_DECODE: []})

    assert meta["feature_encoding"] == "f64le"
    assert json.loads(meta["feature_columns"]) == list(FRAME.columns)
    assert raw == np.array([3.0, 12.345678901234567, 0.1], dtype="<f8").tobytes()


def test_send_hours_come_in_the_same_call(
    redis_client: redis.Redis, new_tenant_id: Callable[[str], str]
) -> None:
    tenant_id = new_tenant_id("fs")
    store_features(redis_client, tenant_id, FRAME)
    store_send_hours(redis_client, tenant_id, pd.Series({"u1": 0, "u2": 23}))

    got = load_feature_matrix(redis_client, tenant_id, ["u2", "u3", "u1"], with_send_hours=True)

    assert got.send_hours == [23, None, 0]
    assert load_feature_matrix(redis_client, tenant_id, ["u1"]).send_hours is None


def test_rows_stored_as_json_before_the_packed_format_are_still_read(
    redis_client: redis.Redis, new_tenant_id: Callable[[str], str]
) -> None:
    tenant_id = new_tenant_id("fs")
    # What store_features wrote before: JSON arrays, and no feature_encoding in the meta hash.
    redis_client.hset(keys.tenant_meta(tenant_id), "feature_columns",
                      json.dumps(list(FRAME.columns)))
    redis_client.hset(keys.user_features(tenant_id), mapping={
        "u1": "[3.0, 12.345678901234567, 0.1]", "u2": "[null, 1e+300, 0.2]"})

    got = load_feature_matrix(redis_client, tenant_id, ["u2", "nobody", "u1"])

    assert got.is_known.tolist() == [True, False, True]
    np.testing.assert_array_equal(got.values[[0, 2]], FRAME.loc[["u2", "u1"]].to_numpy())
    assert np.isnan(got.values[1]).all()


def test_a_row_of_the_wrong_width_is_an_error_naming_the_tenant_and_the_fix(
    redis_client: redis.Redis, new_tenant_id: Callable[[str], str]
) -> None:
    tenant_id = new_tenant_id("fs")
    store_features(redis_client, tenant_id, FRAME)
    redis_client.hset(keys.user_features(tenant_id), "u2", np.zeros(2).tobytes())

    with pytest.raises(ValueError, match=f"{tenant_id}.*16 bytes, expected 24.*store_features"):
        load_feature_matrix(redis_client, tenant_id, ["u1", "u2"])


def test_the_campaign_runner_reads_packed_rows_in_its_own_column_order(
    redis_client: redis.Redis, new_tenant_id: Callable[[str], str]
) -> None:
    tenant_id = new_tenant_id("fs")
    rng = np.random.default_rng(3)
    stored_order = list(reversed(FEATURE_COLUMNS))
    frame = pd.DataFrame(rng.normal(size=(4, len(stored_order))), columns=stored_order,
                         index=pd.Index([f"u{i}" for i in range(4)], name="user_id"))
    store_features(redis_client, tenant_id, frame)

    matrix = _load_matrix(redis_client, tenant_id, np.array(["u2", "gone", "u0"]))

    np.testing.assert_array_equal(matrix[[0, 2]],
                                  frame.loc[["u2", "u0"], list(FEATURE_COLUMNS)].to_numpy())
    assert np.isnan(matrix[1]).all()


def test_a_backup_restores_packed_features_byte_for_byte(
    redis_server: EmbeddedRedis, new_tenant_id: Callable[[str], str], tmp_path: Path
) -> None:
    r = connect(redis_server.url)
    tenant_id, copy_id = new_tenant_id("fs"), new_tenant_id("fs-copy")
    tenants.create_tenant(r, tenant_id)
    store_features(r, tenant_id, FRAME)
    registry = ModelRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "mlartifacts")

    key = BackupKey.generate()
    backup(r, registry, [tenant_id], tmp_path / "fs.tar.gz", key=key)
    restore(r, registry, tmp_path / "fs.tar.gz", key=key, tenant_ids=[tenant_id],
            as_tenant_id=copy_id)

    raw = [r.execute_command("HGETALL", keys.user_features(t), **{NEVER_DECODE: []})
           for t in (tenant_id, copy_id)]
    assert raw[0] == raw[1]
    pd.testing.assert_frame_equal(load_features(r, copy_id, ["u1", "u2", "u3"]), FRAME)
    r.close()


@pytest.mark.slow
def test_features_and_send_hours_load_in_one_pipeline_on_a_cluster(
    cluster: list[int],  # noqa: F811
) -> None:
    rc = connect(f"redis+cluster://127.0.0.1:{cluster[0]}")
    store_features(rc, "shop", FRAME)
    store_send_hours(rc, "shop", pd.Series({"u3": 7}))

    got = load_feature_matrix(rc, "shop", ["u3", "u1"], with_send_hours=True)

    np.testing.assert_array_equal(got.values, FRAME.loc[["u3", "u1"]].to_numpy())
    assert got.send_hours == [7, None]
    rc.close()
