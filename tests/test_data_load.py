"""`pushpilot data load`: a generated events file fills the tenant's online features, only its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis

from pipeline import keys, tenants
from pipeline.eventload import load_events, read_event_file
from pipeline.features import FEATURE_COLUMNS, build_features
from pipeline.featurestore import load_feature_matrix, load_send_hours
from pipeline.generator import generate_tenant, read_events, write_tenant
from pipeline.redis_server import EmbeddedRedis, connect

PUSHPILOT = str(Path(sys.executable).with_name("pushpilot"))


def _run(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PUSHPILOT_DATA_DIR": str(data_dir)}
    env.pop("PUSHPILOT_REDIS_URL", None)
    return subprocess.run([PUSHPILOT, *args], capture_output=True, text=True, env=env,
                          cwd=data_dir, timeout=300)


def _snapshot(data_dir: Path) -> dict[str, str]:
    with EmbeddedRedis(data_dir) as server:
        r = connect(server.url, decode_responses=False)
        return {k.decode(): (r.dump(k) or b"").hex() for k in r.scan_iter()}


@pytest.fixture(scope="module")
def events_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = generate_tenant("shop", users=80, days=21, seed=5)
    return write_tenant(data, tmp_path_factory.mktemp("generated"))["events"]


def test_loading_generated_events_gives_the_batch_features_to_that_tenant_only(
    redis_client: redis.Redis, new_tenant_id: Callable[[str], str], events_csv: Path
) -> None:
    a, b = new_tenant_id("load-a"), new_tenant_id("load-b")
    for t in (a, b):
        tenants.create_tenant(redis_client, t)
    events = read_event_file(events_csv)
    result = load_events(redis_client, a, events)

    frame = read_events(events_csv)
    users = sorted(frame["user_id"].unique())
    assert (result.events, result.accepted, result.duplicates) == (len(frame), len(frame), 0)
    assert result.users == len(users)
    assert result.features_as_of == frame["event_time"].max().ceil("ms")
    stored = load_feature_matrix(redis_client, a, users, with_send_hours=True)
    assert stored.is_known.all() and None not in stored.send_hours
    expected = build_features(frame, result.features_as_of, users=pd.Index(users))
    np.testing.assert_allclose(stored.values, expected[list(FEATURE_COLUMNS)].to_numpy(),
                               rtol=1e-9, atol=1e-6)

    # Tenant B sees none of it: no features, no send hours, no history, no events.
    seen_by_b = load_feature_matrix(redis_client, b, users, with_send_hours=True)
    assert not seen_by_b.is_known.any() and set(seen_by_b.send_hours) == {None}
    assert load_send_hours(redis_client, b, users) == {}
    assert not redis_client.exists(keys.user_history(b, users[0]), keys.events_stream(b))

    # The same file again stores nothing twice and leaves the features as they were.
    again = load_events(redis_client, a, events)
    assert (again.accepted, again.duplicates, again.users) == (0, len(frame), 0)
    np.testing.assert_array_equal(load_feature_matrix(redis_client, a, users).values, stored.values)


@pytest.mark.parametrize(("text", "suffix", "message"), [
    ("user_id,event_time,event_type,value\nu1,2025-03-01T10:00:00Z,view,\n"
     "u2,2025-03-01T10:01:00Z,purchase,12.5\nu3,someday,view,\n",
     ".csv", "line 4: event_time: cannot read 'someday'"),
    ("user_id,event_time,event_type,value\nu1,2025-03-01T10:00:00Z,view,\n"
     "u2,2025-03-01T10:01:00Z,purchase,Infinity\n", ".csv", "line 3: value: 'Infinity'"),
    ("user_id,event_time,event_type\nu1,9999-01-01T00:00:00Z,view\n", ".csv",
     "line 2: event_time: '9999-01-01T00:00:00Z' is outside"),
    ('{"user_id": "u1", "event_time": "2025-03-01T10:00:00Z", "event_type": "view"}\n\n'
     '{"user_id": "u 2", "event_time": "2025-03-01T10:00:00Z", "event_type": "view"}\n',
     ".jsonl", "line 3: user_id: 'u 2' must match"),
    ('{"user_id": "u1", "event_time": "2025-03-01T10:00:00Z", "event_type": "view"}\n[1]\n',
     ".jsonl", "line 2: expected a JSON object"),
    ("user,event_time,event_type\nu1,2025-03-01T10:00:00Z,view\n", ".csv",
     "user_id: required column missing"),
])
def test_a_bad_row_is_named_by_its_line_and_nothing_is_loaded(
    tmp_path: Path, text: str, suffix: str, message: str
) -> None:
    assert _run(tmp_path, "tenant", "create", "shop").returncode == 0
    path = tmp_path / f"events{suffix}"
    path.write_text(text)
    before = _snapshot(tmp_path)
    result = _run(tmp_path, "data", "load", "--tenant", "shop", str(path))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert _snapshot(tmp_path) == before


def test_the_cli_loads_a_generated_file_and_reports_what_it_stored(
    tmp_path: Path, events_csv: Path
) -> None:
    assert _run(tmp_path, "tenant", "create", "shop").returncode == 0
    result = _run(tmp_path, "data", "load", "--tenant", "shop", str(events_csv))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    frame = read_events(events_csv)
    assert report["accepted"] == len(frame) and report["users"] == frame["user_id"].nunique()
    assert pd.Timestamp(report["features_as_of"]) == frame["event_time"].max().ceil("ms")
    unknown = _run(tmp_path, "data", "load", "--tenant", "nobody", str(events_csv))
    assert unknown.returncode == 2 and "no tenant 'nobody'" in unknown.stderr
