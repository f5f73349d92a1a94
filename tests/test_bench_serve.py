"""The serve benchmark's load generator counts only complete answers, against a real server."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from serving.bench_serve import _is_complete, run_closed_loop

USERS = [f"u{i:04d}" for i in range(40)]

# A stand-in scorer that drops the last user of every request with more than one user.
_SERVER = '''
import orjson
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

async def score(request):
    ids = orjson.loads(await request.body())["user_ids"]
    kept = ids if len(ids) == 1 else ids[:-1]
    return Response(orjson.dumps({"model_version": 1, "scores": [
        {"user_id": u, "score": 0.5, "best_send_hour": 19, "reasons": []} for u in kept]}),
        media_type="application/json")

async def healthz(request):
    return Response(b"{}", media_type="application/json")

app = Starlette(routes=[Route("/v1/score", score, methods=["POST"]), Route("/healthz", healthz)])
'''


def _answer(user_ids: list[str]) -> bytes:
    return orjson.dumps({"model_version": 3, "scores": [
        {"user_id": u, "score": 0.25, "best_send_hour": 19, "reasons": []} for u in user_ids]})


def test_an_answer_is_complete_only_with_a_score_for_every_user_in_order() -> None:
    assert _is_complete(_answer(USERS[:3]), USERS[:3])
    assert not _is_complete(_answer(USERS[:2]), USERS[:3])
    assert not _is_complete(_answer(USERS[2::-1]), USERS[:3])
    assert not _is_complete(orjson.dumps({"scores": [{"user_id": "u0000"}]}), ["u0000"])
    assert not _is_complete(b"<html>busy</html>", USERS[:1])
    assert not _is_complete(orjson.dumps({"detail": "x"}), USERS[:1])


@pytest.fixture
def short_changing_server(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "short_server.py").write_text(_SERVER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "short_server:app", "--port", str(port),
         "--log-level", "warning"], cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_200_missing_users_counts_as_an_error(short_changing_server: str) -> None:
    whole = run_closed_loop("stub", short_changing_server, "key", USERS, 1, 2, 0.3)
    short = run_closed_loop("stub", short_changing_server, "key", USERS, 10, 2, 0.3)

    assert whole.requests > 0 and whole.errors == 0
    assert short.requests == 0 and short.errors > 0
