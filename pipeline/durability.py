"""Waiting for replicas before acknowledging a write (Redis ``WAIT``).

``WAIT n timeout`` blocks until ``n`` replicas hold every write made *on the same connection*;
a WAIT on another connection of a pool says nothing about them. So the write and the wait must
share a connection: queue the wait at the end of the writing pipeline (``add_replica_wait`` then
``check_replica_wait``), or call ``wait_for_replicas`` on a client with one connection
(``single_connection_client=True``). docs/ha.md says where the outbox does this.
"""

from __future__ import annotations

from typing import Any

import redis

__all__ = [
    "NotReplicatedError",
    "wait_for_replicas",
    "add_replica_wait",
    "check_replica_wait",
    "connected_replicas",
]


class NotReplicatedError(redis.RedisError):
    """Fewer replicas than asked hold the writes; a failover now could lose them."""

    def __init__(self, wanted: int, got: int, timeout_ms: int):
        super().__init__(
            f"only {got} of {wanted} replica(s) acknowledged the writes within {timeout_ms} ms; "
            "do not acknowledge them to the caller (retrying with the same push ids is safe)"
        )
        self.wanted, self.got, self.timeout_ms = wanted, got, timeout_ms


def _check_arguments(n_replicas: int, timeout_ms: int) -> None:
    if n_replicas < 0:
        raise ValueError(f"n_replicas must be >= 0, got {n_replicas}")
    if timeout_ms < 1:
        # WAIT 0 would block forever: a stuck replica must never hang an API call.
        raise ValueError(f"timeout_ms must be >= 1, got {timeout_ms}")


def wait_for_replicas(r: redis.Redis, n_replicas: int, timeout_ms: int) -> int:
    """Block until ``n_replicas`` replicas hold this connection's writes; how many do.

    Raises ``NotReplicatedError`` when fewer do within ``timeout_ms``. ``n_replicas`` 0 returns
    at once (a single server has nothing to wait for).
    """
    _check_arguments(n_replicas, timeout_ms)
    if n_replicas == 0:
        return 0
    return check_replica_wait(r.execute_command("WAIT", n_replicas, timeout_ms),
                              n_replicas, timeout_ms)


def add_replica_wait(pipe: Any, n_replicas: int, timeout_ms: int) -> bool:
    """Queue ``WAIT`` last in a pipeline of writes; False (nothing queued) for 0 replicas."""
    _check_arguments(n_replicas, timeout_ms)
    if n_replicas == 0:
        return False
    pipe.execute_command("WAIT", n_replicas, timeout_ms)
    return True


def check_replica_wait(reply: Any, n_replicas: int, timeout_ms: int) -> int:
    """The replicas a queued ``WAIT`` counted; ``NotReplicatedError`` if too few."""
    if isinstance(reply, Exception):
        raise reply
    got = int(reply)
    if got < n_replicas:
        raise NotReplicatedError(n_replicas, got, timeout_ms)
    return got


def connected_replicas(r: redis.Redis) -> int:
    """Replicas the primary has now (``INFO replication``)."""
    return int(r.info("replication").get("connected_slaves", 0))
