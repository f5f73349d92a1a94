"""The `pushpilot` command as a user runs it: clear errors, exit 2, and nothing changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import keys
from pipeline.redis_server import EmbeddedRedis, connect

PUSHPILOT = str(Path(sys.executable).with_name("pushpilot"))


def run(data_dir: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PUSHPILOT_DATA_DIR": str(data_dir)}
    env.pop("PUSHPILOT_REDIS_URL", None)
    return subprocess.run([PUSHPILOT, *args], capture_output=True, text=True, env=env,
                          cwd=cwd or data_dir, timeout=300)


def redis_snapshot(data_dir: Path) -> dict[str, str]:
    with EmbeddedRedis(data_dir) as server:
        r = connect(server.url, decode_responses=False)
        return {k.decode(): (r.dump(k) or b"").hex() for k in r.scan_iter()}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    assert run(tmp_path, "tenant", "create", "shop").returncode == 0
    return tmp_path


def test_tenant_lifecycle(data_dir: Path) -> None:
    assert run(data_dir, "tenant", "list").stdout.split() == ["shop"]
    created = run(data_dir, "tenant", "key", "create", "shop", "--scopes", "score,push:send")
    assert created.returncode == 0 and created.stdout.startswith("ppk_")
    token = run(data_dir, "tenant", "token", "shop", "--user", "u1")
    assert token.returncode == 0 and "." in token.stdout
    assert run(data_dir, "down").stdout.strip() == "no embedded Valkey was running"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tenant", "create", "shop"], "already exists"),
        (["tenant", "create", "Bad Name"], "tenant id must match"),
        (["tenant", "key", "create", "nobody"], "no tenant 'nobody'"),
        (["tenant", "key", "create", "shop", "--scopes", "score,root"], "unknown ['root']"),
        (["tenant", "key", "create", "shop", "--scopes", ""], "at least one"),
        (["tenant", "token", "nobody", "--user", "u1"], "no tenant 'nobody'"),
        (["data", "generate", "--tenant", "Bad!"], "--tenant"),
        (["data", "generate", "--tenant", "shop", "--format", "xlsx"], "--format"),
        (["model", "train", "--tenant", "nobody", "--events", "events.csv", "--cutoff", "2025-03-20"],
         "no tenant 'nobody'"),
        (["model", "train", "--tenant", "shop", "--events", "missing.csv", "--cutoff", "2025-03-20"],
         "missing.csv"),
        (["model", "train", "--tenant", "shop", "--events", "bad.csv", "--cutoff", "2025-03-20"],
         "event_time"),
        (["model", "train", "--tenant", "shop", "--events", "events.csv", "--cutoff", "someday"],
         "--cutoff"),
    ],
)
def test_bad_input_is_refused_clearly_and_changes_nothing(
    data_dir: Path, args: list[str], message: str
) -> None:
    (data_dir / "bad.csv").write_text("user_id,when,event_type\nu1,yesterday,view\n")
    (data_dir / "events.csv").write_text("user_id,event_time,event_type\nu1,2025-03-01T10:00:00Z,view\n")
    before = redis_snapshot(data_dir)
    result = run(data_dir, *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr, result.stderr
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr
    assert redis_snapshot(data_dir) == before


def test_typer_rejects_wrong_types_with_exit_2(data_dir: Path) -> None:
    result = run(data_dir, "data", "generate", "--tenant", "shop", "--users", "many")
    assert result.returncode == 2
    assert "--users" in result.stderr


def test_generated_data_trains_a_registered_model(data_dir: Path) -> None:
    out = data_dir / "gen"
    generated = run(data_dir, "data", "generate", "--tenant", "shop", "--users", "400", "--days", "21",
                    "--seed", "3", "--out", str(out))
    assert generated.returncode == 0, generated.stderr
    meta = json.loads(generated.stdout.strip().splitlines()[-1])
    trained = run(data_dir, "model", "train", "--tenant", "shop", "--events", str(out / "events.csv"),
                  "--cutoff", meta["cutoff"], "--horizon", "7")
    assert trained.returncode == 0, trained.stderr
    result = json.loads(trained.stdout.strip().splitlines()[-1])
    assert result["tenant"] == "shop" and result["version"] == 1 and result["champion"] is True
    assert result["metrics"]["roc_auc"] > 0.7


def test_settings_file_typo_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "pushpilot.toml").write_text('htp_port = 9000\n')
    result = run(tmp_path, "tenant", "list", cwd=tmp_path)
    assert result.returncode == 2
    assert "htp_port" in result.stderr


def test_keys_are_named_in_one_module_only() -> None:
    root = Path(__file__).parent.parent
    offenders = [
        str(path.relative_to(root))
        for package in ("pipeline", "models", "serving")
        for path in (root / package).rglob("*.py")
        if path.name != "keys.py" and ('"pp:' in path.read_text() or "'pp:" in path.read_text()
                                       or 'f"pp:' in path.read_text())
    ]
    assert offenders == []
    assert keys.tenant_prefix("shop") == "pp:{shop}:"


def test_layers_import_downward_only() -> None:
    root = Path(__file__).parent.parent
    for package, forbidden in (("models", ("pipeline", "serving")), ("pipeline", ("serving",))):
        for path in (root / package).rglob("*.py"):
            for line in path.read_text().splitlines():
                stripped = line.strip()
                for name in forbidden:
                    assert not stripped.startswith((f"import {name}", f"from {name}")), (
                        f"{path.relative_to(root)} imports {name}: {stripped}"
                    )


def test_alerts_are_listed_and_cleared_by_an_operator(data_dir: Path) -> None:
    import time

    from pipeline import guard

    now = int(time.time())
    with EmbeddedRedis(data_dir) as server:
        r = connect(server.url)
        for second in range(now - 120, now - 10):
            guard.record_requests(r, "shop", "key:abc", second, count=2)
        for second in range(now - 10, now):
            guard.record_requests(r, "shop", "key:abc", second, count=40)
        assert guard.observe_traffic(r, "shop", "key:abc", now)
    listed = run(data_dir, "alerts", "list", "--tenant", "shop")
    assert listed.returncode == 0, listed.stderr
    alert = json.loads(listed.stdout.splitlines()[0])
    assert alert["series"] == "key:abc" and "throttled" in alert["action"]
    cleared = run(data_dir, "alerts", "clear", "--tenant", "shop", "--id", alert["id"],
                  "--operator", "oncall")
    assert cleared.returncode == 0, cleared.stderr
    assert run(data_dir, "alerts", "list", "--tenant", "shop").stdout == ""
    again = run(data_dir, "alerts", "list", "--tenant", "shop", "--all").stdout
    assert json.loads(again.splitlines()[0])["cleared_by"] == "oncall"
    missing = run(data_dir, "alerts", "clear", "--tenant", "shop", "--id", "1-0", "--operator", "x")
    assert missing.returncode == 2 and "no alert" in missing.stderr
