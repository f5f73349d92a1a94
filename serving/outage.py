"""503 while the replica's Redis is gone: answered at once, without waiting on Redis."""

from __future__ import annotations

from typing import Any

import redis
from starlette.responses import JSONResponse

from pipeline.redishealth import RedisHealth

__all__ = ["RedisOutageMiddleware", "unavailable", "watch"]

# One Api replica per process; its health is what this process's middleware consults.
_HEALTH: list[RedisHealth] = []
_LIVENESS_PATH = "/healthz"
_DEFAULT_RETRY_AFTER_SECONDS = 5


def unavailable(error: Exception) -> JSONResponse:
    """The 503 for a request that met Redis gone; it also starts this process's backoff."""
    if not _HEALTH:
        return _problem(_DEFAULT_RETRY_AFTER_SECONDS)
    _HEALTH[0].report_failure(error)
    return _unavailable(_HEALTH[0])


def watch(health: RedisHealth) -> RedisHealth:
    _HEALTH[:] = [health]
    return health


def _unavailable(health: RedisHealth) -> JSONResponse:
    return _problem(health.retry_after_seconds())


def _problem(seconds: int) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": "Service Unavailable", "status": 503,
         "detail": f"the service cannot reach its Redis (restarting or unreachable); retry the "
                   f"same request in {seconds} s",
         "retry_after": seconds},
        status_code=503, media_type="application/problem+json",
        headers={"Retry-After": str(seconds)},
    )


class RedisOutageMiddleware:
    """While Redis is down, every HTTP route but liveness gets 503 with Retry-After; a request
    that finds Redis gone first also gets 503 and starts the backoff."""

    def __init__(self, inner: Any):
        self.inner = inner

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        health = _HEALTH[0] if _HEALTH else None
        if scope["type"] != "http" or health is None or str(scope.get("path", "")).endswith(_LIVENESS_PATH):
            await self.inner(scope, receive, send)
            return
        if not health.is_up:
            await _unavailable(health)(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.inner(scope, receive, tracking_send)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            health.report_failure(e)
            if started:
                raise
            await _unavailable(health)(scope, receive, send)
