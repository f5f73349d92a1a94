"""`pushpilot demo` end to end in its own process, then a search for leaked personal data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from pipeline.redis_server import EmbeddedRedis, connect

pytestmark = pytest.mark.slow

PUSHPILOT = str(Path(sys.executable).with_name("pushpilot"))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class DemoRun:
    workdir: Path
    data_dir: Path
    ray_dir: Path
    stdout: str
    stderr: str
    report: dict  # type: ignore[type-arg]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    workdir = tmp_path_factory.mktemp("demo")
    data_dir = workdir / "state"
    # Ray's socket paths must stay short, so its session folder goes under /tmp directly.
    ray_dir = Path(tempfile.mkdtemp(prefix="pp-ray-", dir="/tmp"))
    env = {
        **os.environ,
        "PUSHPILOT_DATA_DIR": str(data_dir),
        "PUSHPILOT_HTTP_PORT": str(_free_port()),
        "PUSHPILOT_RAY_TEMP_DIR": str(ray_dir),
    }
    env.pop("PUSHPILOT_REDIS_URL", None)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [PUSHPILOT, "demo", "--users", "600", "--top-k", "40"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, f"demo failed:\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    yield DemoRun(workdir, data_dir, ray_dir, proc.stdout, proc.stderr, report)
    shutil.rmtree(ray_dir, ignore_errors=True)


def test_demo_delivers_every_selected_push_to_a_connected_client(demo_run: DemoRun) -> None:
    tenants = demo_run.report["tenants"]
    assert set(tenants) == {"demo-shop", "demo-bank"}
    for figures in tenants.values():
        assert figures["delivered"] == figures["received"] == figures["selected"] > 0
        assert figures["received_duplicates"] == 0
        assert figures["roc_auc"] > 0.7
        assert figures["pii_values_pseudonymised"] > 0


def test_demo_leaves_nothing_running(demo_run: DemoRun) -> None:
    assert not (demo_run.data_dir / "valkey" / "server.json").exists()


def _planted_pii(workdir: Path) -> list[str]:
    values: list[str] = []
    for profiles in workdir.glob("data/generated/*/profiles.*"):
        frame = pd.read_parquet(profiles) if profiles.suffix == ".parquet" else pd.read_csv(profiles)
        for column in ("email", "phone"):
            values += [v for v in frame[column].dropna().astype(str) if len(v) >= 6]
    return values


def _files_under(root: Path) -> Iterator[Path]:
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            yield path


def test_no_raw_email_or_phone_in_redis_mlflow_or_logs(demo_run: DemoRun) -> None:
    planted = _planted_pii(demo_run.workdir)
    assert len(planted) > 1000, "the generator should have planted e-mails and phone numbers"

    corpus: list[tuple[str, str]] = []
    with EmbeddedRedis(demo_run.data_dir) as server:
        r = connect(server.url, decode_responses=False)
        for key in r.scan_iter(count=1000):
            kind = r.type(key)
            dump = r.dump(key) or b""
            corpus.append((f"redis key {key!r}", key.decode(errors="replace")))
            # DUMP serialises every type; listpack-encoded values stay readable inside it.
            corpus.append((f"redis value {key!r} ({kind!r})", dump.decode("latin-1")))
        for key in r.scan_iter(count=1000, _type="hash"):
            for field, value in r.hgetall(key).items():
                corpus.append((f"redis hash {key!r}", (field + b"=" + value).decode(errors="replace")))
        for key in r.scan_iter(count=1000, _type="stream"):
            for _entry_id, fields in r.xrange(key):
                corpus.append((f"redis stream {key!r}", repr(fields)))
    for root in (demo_run.data_dir, demo_run.ray_dir):
        for path in _files_under(root):
            corpus.append((str(path), path.read_bytes().decode("latin-1")))
    corpus.append(("demo stdout", demo_run.stdout))
    corpus.append(("demo stderr", demo_run.stderr))

    blob = "\x00".join(text for _, text in corpus)
    leaked = [value for value in planted if value in blob]
    where = [name for name, text in corpus if leaked and leaked[0] in text]
    assert not leaked, f"{len(leaked)} raw values leaked, e.g. {leaked[:3]} in {where[:3]}"
    names = [name for name, _ in corpus]
    assert any(name.endswith("mlflow.db") for name in names)
    assert any(name.endswith("pushpilot.log") for name in names)
