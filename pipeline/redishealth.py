"""Whether a process's Redis answers, probed in the background, with backoff while it does not.

A service that loses Redis keeps running and says so (``is_up``, ``retry_after_seconds``)
instead of failing its health check: restarting it cannot bring Redis back, and a Serve
replica restarted in a loop spent a whole core on imports while Redis was gone.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

import redis

__all__ = ["RedisHealth"]

log = logging.getLogger(__name__)


class RedisHealth:
    """Pings ``client`` every ``period_seconds`` while it answers; while it does not, again
    after 0.5 s, 1 s, 2 s ... up to ``max_backoff_seconds``."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        period_seconds: float = 2.0,
        min_backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not 0 < min_backoff_seconds <= max_backoff_seconds:
            raise ValueError(f"need 0 < min_backoff_seconds <= max_backoff_seconds, got "
                             f"{min_backoff_seconds} and {max_backoff_seconds}")
        self._client = client
        self._period = period_seconds
        self._min_backoff = min_backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._clock = clock
        self._backoff = 0.0
        self._next_probe = clock()
        self.is_up = True
        self._thread: threading.Thread | None = None

    def retry_after_seconds(self) -> int:
        """Whole seconds until the next probe (at least 1): what a refused client should wait."""
        return max(1, math.ceil(self._next_probe - self._clock()))

    def probe(self) -> bool:
        """Ping now; on failure the next probe waits twice as long as the last one did."""
        try:
            self._client.ping()
        except (redis.ConnectionError, redis.TimeoutError) as e:
            self.report_failure(e)
            return False
        if not self.is_up:
            log.warning("redis answers again")
        self.is_up = True
        self._backoff = 0.0
        self._next_probe = self._clock() + self._period
        return True

    def report_failure(self, error: Exception | None = None) -> None:
        """Redis failed (a probe, or a request that saw it): back off before the next probe."""
        if self.is_up:
            log.warning("redis unreachable (%s); probing with backoff", type(error).__name__)
        self.is_up = False
        self._backoff = min(self._max_backoff, max(self._min_backoff, self._backoff * 2))
        self._next_probe = self._clock() + self._backoff

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            delay = self._next_probe - self._clock()
            if delay > 0:
                stop.wait(delay)
                continue
            self.probe()

    def start(self, stop: threading.Event) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, args=(stop,), name="redis-health",
                                        daemon=True)
        self._thread.start()
        return self._thread

    @property
    def is_watching(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
