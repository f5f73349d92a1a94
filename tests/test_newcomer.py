"""The README's newcomer path, step by step as written: the `pushpilot` commands in a shell's
place, the session's Serve app in `pushpilot serve`'s place, and a real `pushpilot worker`."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import websockets

from pipeline.config import Settings

pytestmark = [pytest.mark.serve, pytest.mark.slow]

PUSHPILOT = str(Path(sys.executable).with_name("pushpilot"))
README = Path(__file__).resolve().parents[1] / "README.md"


def _pushpilot(settings: Settings, cwd: Path, *args: str) -> str:
    env = {**os.environ, "PUSHPILOT_DATA_DIR": str(settings.data_dir)}
    env.pop("PUSHPILOT_REDIS_URL", None)
    done = subprocess.run([PUSHPILOT, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=600)
    assert done.returncode == 0, f"pushpilot {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


def _readme_commands() -> list[str]:
    text = README.read_text()
    block = text.split("## The newcomer path", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines()
            if line.split("#", 1)[0].strip().startswith(("pushpilot", "KEY=", "TOKEN="))]


def test_the_readme_newcomer_path_scores_by_id_and_delivers_a_push(
    settings: Settings, serve_app: str, tmp_path: Path, new_tenant_id: Callable[[str], str]
) -> None:
    commands = _readme_commands()
    # The README's commands, in its order; the test runs each with its own tenant name.
    assert [c.split("(")[-1].split()[1] if "$(" in c else c.split()[1] for c in commands] == [
        "tenant", "tenant", "data", "data", "model", "serve", "worker", "tenant"]
    shop = new_tenant_id("newcomer")

    def run(command: str) -> str:
        line = command.replace("shop", shop).removeprefix("KEY=").removeprefix("TOKEN=")
        line = line.removeprefix("$(").removesuffix(")")
        line = line.replace("--users 2000", "--users 300")  # the path, a little smaller
        return _pushpilot(settings, tmp_path, *line.split()[1:])

    run(commands[0])
    key = run(commands[1])
    generated = json.loads(run(commands[2]))
    cutoff = re.search(r"--cutoff (\S+)", commands[4]).group(1)  # type: ignore[union-attr]
    assert generated["cutoff"].startswith(cutoff), "the README's --cutoff is not the data's"
    loaded = json.loads(run(commands[3]))
    assert loaded["accepted"] == generated["events"] and loaded["users"] == 300
    trained = json.loads(run(commands[4]))
    assert trained["champion"] is True

    auth = {"Authorization": f"Bearer {key}"}
    other = new_tenant_id("other")
    _pushpilot(settings, tmp_path, "tenant", "create", other)
    other_key = _pushpilot(settings, tmp_path, "tenant", "key", "create", other, "--scopes", "score")
    other_auth = {"Authorization": f"Bearer {other_key}"}
    with httpx.Client(base_url=serve_app, timeout=60) as client:
        before = client.get("/v1/users/u000001", headers=auth).json()["features"]
        ingest = client.post("/v1/events", headers=auth, json={"events": [
            {"event_id": "e-1", "user_id": "u000001", "event_time": "2025-03-31T09:00:00Z",
             "event_type": "purchase", "value": 42.5}]})
        assert ingest.status_code == 202, ingest.text
        after = client.get("/v1/users/u000001", headers=auth).json()["features"]
        assert after["purchases_total"] == before["purchases_total"] + 1
        assert after["monetary_total"] == pytest.approx(before["monetary_total"] + 42.5)
        assert after["days_since_last_purchase"] == 0

        scored = client.post("/v1/score", headers=auth, json={"user_ids": ["u000001", "u000002"]})
        assert scored.status_code == 200, scored.text
        scores = scored.json()["scores"]
        assert [s["user_id"] for s in scores] == ["u000001", "u000002"]
        assert all(0.0 <= s["score"] <= 1.0 for s in scores)
        # Another tenant's key finds none of these users.
        assert client.post("/v1/score", headers=other_auth,
                           json={"user_ids": ["u000001"]}).status_code == 404

        token = run(commands[7])
        ws_url = serve_app.replace("http://", "ws://") + f"/v1/inbox?token={token}"

        async def receive_a_push() -> tuple[str, dict[str, str]]:
            async with websockets.connect(ws_url) as ws:
                sent = await asyncio.to_thread(client.post, "/v1/pushes", headers=auth, json={
                    "user_ids": ["u000001"], "title": "Hello", "body": "Your order has shipped"})
                assert sent.status_code == 202, sent.text
                push_id = sent.json()["push_ids"][0]
                status = client.get(f"/v1/pushes/{push_id}", headers=auth).json()["status"]
                assert status == "queued", "a push left `queued` with no worker running"
                worker = _start_worker(settings, tmp_path, commands[6])
                try:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=120))
                    await ws.send(json.dumps({"ack": frame["id"], "push_id": frame["push_id"]}))
                finally:
                    worker.send_signal(signal.SIGTERM)
                    assert worker.wait(timeout=60) == 0
                return push_id, frame

        push_id, frame = asyncio.run(receive_a_push())
        assert frame["push_id"] == push_id
        assert (frame["title"], frame["body"]) == ("Hello", "Your order has shipped")
        deadline = time.monotonic() + 30
        while True:
            trail = client.get(f"/v1/pushes/{push_id}", headers=auth).json()["trail"]
            statuses = [step["status"] for step in trail]
            if "acked" in statuses or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert statuses[0] == "queued" and "delivered" in statuses and "acked" in statuses


def _start_worker(settings: Settings, cwd: Path, command: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PUSHPILOT_DATA_DIR": str(settings.data_dir)}
    env.pop("PUSHPILOT_REDIS_URL", None)
    return subprocess.Popen([PUSHPILOT, *command.split()[1:]], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
