"""The Redis probe backs off while Redis is gone and recovers when it answers (real sockets)."""

from __future__ import annotations

import socket

import redis

from pipeline.redis_server import EmbeddedRedis, connect
from pipeline.redishealth import RedisHealth


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_probes_back_off_exponentially_while_redis_is_gone_and_reset_when_it_answers(
    redis_server: EmbeddedRedis,
) -> None:
    clock = _Clock()
    gone = redis.Redis(host="127.0.0.1", port=_closed_port(), socket_connect_timeout=1)
    health = RedisHealth(gone, min_backoff_seconds=0.5, max_backoff_seconds=4, clock=clock)
    assert health.is_up
    waits = []
    for _ in range(5):
        assert health.probe() is False
        waits.append(health._next_probe - clock.now)
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert not health.is_up and health.retry_after_seconds() == 4

    back = RedisHealth(connect(redis_server.url), clock=clock)
    back.report_failure()
    assert not back.is_up
    assert back.probe() is True and back.is_up and back.retry_after_seconds() == 2
