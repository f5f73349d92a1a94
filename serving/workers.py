"""The delivery workers of one `pushpilot worker` process, hard-isolated tenants apart.

A shared ``DeliveryWorker`` serves every tenant whose plan allows it, on the process's own
connection. A tenant whose plan asks for hard isolation (``Plan.is_hard_isolated``) gets a worker
of its own, on its own thread and on a connection authenticated as the tenant's Redis ACL user, so
the server itself keeps that worker inside the tenant's keys; the shared worker never reads the
tenant's streams. Plans change at run time: ``refresh`` reads the tenants and their plans again
and moves the tenants whose plan changed, and ``run`` calls it every ``refresh_seconds``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from pipeline import acl, keys, tenants
from pipeline.delivery import DeliveryWorker
from pipeline.errors import UnknownTenantError

__all__ = ["WorkerPool"]

log = logging.getLogger(__name__)

# How long a refresh waits for the shared worker to finish a pass over a tenant it let go.
_HANDOVER_TIMEOUT_SECONDS = 10.0


class _Runner:
    """One worker on a thread of its own; a thread that died on an error can be started again."""

    def __init__(self, worker: DeliveryWorker):
        self.worker = worker
        self.stop_event = threading.Event()
        self._thread: threading.Thread | None = None

    def ensure_running(self, block_ms: int) -> None:
        if self.stop_event.is_set() or self.is_alive():
            return
        if self._thread is not None:
            log.warning("restarting delivery worker %s", self.worker.consumer)
        # A daemon, so a crashed main thread cannot hang the process; close() drains first.
        self._thread = threading.Thread(target=self._run, args=(block_ms,), daemon=True,
                                        name=f"deliver {self.worker.consumer}")
        self._thread.start()

    def _run(self, block_ms: int) -> None:
        try:
            self.worker.run(self.stop_event, block_ms=block_ms)
        except Exception:  # the pool starts it again at its next refresh
            log.exception("delivery worker %s stopped on an error", self.worker.consumer)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()


@dataclass
class _Isolated:
    credentials: acl.TenantCredentials
    runner: _Runner


class WorkerPool:
    """The shared worker and one worker per hard-isolated tenant (see the module docstring).

    ``acl_admin`` (``r`` when not given) must be allowed ``ACL SETUSER``: the pool creates each
    isolated tenant's ACL user, and refreshes it every ``refresh_seconds`` (ACL users are server
    config, gone after a restart). ``r`` itself, which delivers, may be a least-privilege user.
    The isolated workers connect to ``url`` as their tenant. ``tenant_ids`` lists the tenants to
    serve, every tenant by default. ``worker_options`` go to every ``DeliveryWorker``.
    """

    def __init__(
        self,
        r: redis.Redis,
        url: str,
        *,
        consumer: str,
        tenant_ids: Callable[[], Sequence[str]] | None = None,
        refresh_seconds: float = 5.0,
        block_ms: int = 200,
        acl_admin: redis.Redis | None = None,
        **worker_options: Any,
    ):
        if refresh_seconds <= 0:
            raise ValueError(f"refresh_seconds must be > 0, got {refresh_seconds}")
        self.r = r
        self._acl_admin = acl_admin or r
        self.url = url
        self.consumer = consumer
        self.refresh_seconds = refresh_seconds
        self.block_ms = block_ms
        self._tenant_source = tenant_ids or (lambda: tenants.list_tenants(r))
        self._worker_options = worker_options
        self._shared_ids: list[str] = []
        # Versions of the shared worker's tenant list: the latest, and the latest it has asked for.
        self._handover = threading.Condition()
        self._shared_ids_version = 0
        self._shared_ids_taken = 0
        self._isolated: dict[str, _Isolated] = {}
        self._is_started = False
        self._shared = _Runner(DeliveryWorker(r, self._shared_tenant_ids, consumer=consumer,
                                              **worker_options))

    @property
    def shared_worker(self) -> DeliveryWorker:
        return self._shared.worker

    @property
    def shared_tenant_ids(self) -> list[str]:
        return list(self._shared_ids)

    @property
    def isolated_workers(self) -> dict[str, DeliveryWorker]:
        """Tenant id -> the worker running it as the tenant's ACL user."""
        return {t: isolated.runner.worker for t, isolated in dict(self._isolated).items()}

    def start(self) -> None:
        """Start every worker on its thread; the tenants are sorted out before any of them runs."""
        try:
            self.refresh()
        except (redis.ConnectionError, redis.TimeoutError):  # none served until one succeeds
            log.exception("lost Redis while reading tenants and plans; retrying")
        self._is_started = True
        self._ensure_running()

    def run(self, stop: threading.Event) -> None:
        """Refresh every ``refresh_seconds`` until ``stop`` is set; ``close`` then drains."""
        if not self._is_started:
            raise RuntimeError("start() the pool before run()")
        while not stop.wait(self.refresh_seconds):
            try:
                self.refresh()
            except (redis.ConnectionError, redis.TimeoutError):
                log.exception("lost Redis while reading tenants and plans; retrying")

    def drain(self) -> int:
        """Deliver what is queued, each tenant by its own worker, on this thread; how many."""
        if self._is_started:
            raise RuntimeError("drain() runs the workers on this thread; the pool is running")
        self.refresh()
        total = 0
        for worker in [self.shared_worker, *self.isolated_workers.values()]:
            while handled := worker.deliver_once():
                total += handled
        return total

    def close(self) -> None:
        """Stop every worker, each finishing what it holds (as SIGTERM asks), and disconnect."""
        runners = [self._shared, *(isolated.runner for isolated in self._isolated.values())]
        for runner in runners:
            runner.stop_event.set()
        for runner in runners:
            runner.join()
        for tenant_id in list(self._isolated):
            self._isolated.pop(tenant_id).runner.worker.r.close()

    def refresh(self) -> None:
        """Read the tenants and their plans again; move each tenant whose plan changed."""
        tenant_ids = list(self._tenant_source())
        hard_isolated = _hard_isolated(self.r, tenant_ids)
        shared = [t for t in tenant_ids if t not in hard_isolated]
        before = set(self._isolated)
        # One worker at a time per tenant: the shared worker lets go of a tenant, and finishes
        # its pass, before the tenant's own worker starts; it takes one back only once that
        # worker has stopped.
        self._set_shared_ids([t for t in shared if t not in before])
        for tenant_id in sorted(before - hard_isolated):
            reason = "plan changed" if tenant_id in tenant_ids else "tenant gone"
            self._stop_isolated(tenant_id, reason)
        self._set_shared_ids(shared)
        for tenant_id in sorted(hard_isolated):
            try:
                self._refresh_isolated(tenant_id)
            except (redis.RedisError, UnknownTenantError) as e:
                # Fail closed: the plan forbids the shared worker, so the tenant waits.
                log.error("tenant %s must run isolated but its worker cannot start (%s: %s); "
                          "trying again in %.1fs", tenant_id, type(e).__name__, e,
                          self.refresh_seconds)
        if set(self._isolated) != before:
            log.info("tenants running isolated: %s", ", ".join(sorted(self._isolated)) or "none")
        if self._is_started:
            self._ensure_running()

    def _set_shared_ids(self, tenant_ids: list[str]) -> None:
        with self._handover:
            is_letting_go = not set(self._shared_ids) <= set(tenant_ids)
            self._shared_ids = tenant_ids
            self._shared_ids_version += 1
            version = self._shared_ids_version
            if not (is_letting_go and self._is_started and self._shared.is_alive()):
                return
            # The worker asks for its tenants as each pass begins: once it has asked, the pass
            # over the old list is over.
            is_handed_over = self._handover.wait_for(
                lambda: self._shared_ids_taken >= version, timeout=_HANDOVER_TIMEOUT_SECONDS)
        if not is_handed_over:
            log.warning("the shared worker did not finish its pass within %.0fs; a tenant it let "
                        "go may see two workers until it does", _HANDOVER_TIMEOUT_SECONDS)

    def _shared_tenant_ids(self) -> list[str]:
        with self._handover:
            tenant_ids = self._shared_ids
            self._shared_ids_taken = self._shared_ids_version
            self._handover.notify_all()
        return tenant_ids

    def _ensure_running(self) -> None:
        for runner in [self._shared, *(isolated.runner for isolated in self._isolated.values())]:
            runner.ensure_running(self.block_ms)

    def _refresh_isolated(self, tenant_id: str) -> None:
        credentials = acl.create_tenant_user(self._acl_admin, tenant_id)
        current = self._isolated.get(tenant_id)
        if current is not None:
            if current.credentials.password == credentials.password:
                return
            self._stop_isolated(tenant_id, "tenant secret changed")
        consumer = f"{self.consumer}/{tenant_id}"
        conn = acl.connect_as_tenant(self.url, credentials, client_name=consumer)
        try:
            user = conn.acl_whoami()
            if user != credentials.username:
                raise redis.AuthenticationError(
                    f"connected as {user!r}, not as {credentials.username!r}: the Redis URL's "
                    "own credentials (a username or password query option?) override the "
                    "tenant's; drop them from the URL")
        except redis.RedisError:
            conn.close()
            raise
        worker = DeliveryWorker(conn, [tenant_id], consumer=consumer, **self._worker_options)
        self._isolated[tenant_id] = _Isolated(credentials, _Runner(worker))
        log.info("tenant %s runs isolated: worker %s as Redis ACL user %s", tenant_id, consumer,
                 credentials.username)

    def _stop_isolated(self, tenant_id: str, reason: str) -> None:
        isolated = self._isolated.pop(tenant_id)
        isolated.runner.stop_event.set()
        isolated.runner.join()
        isolated.runner.worker.r.close()
        log.info("tenant %s no longer runs isolated (%s): worker %s stopped", tenant_id, reason,
                 isolated.runner.worker.consumer)


def _hard_isolated(r: redis.Redis, tenant_ids: Sequence[str]) -> set[str]:
    """The tenants whose plan asks for hard isolation, in one round trip."""
    pipe = r.pipeline(transaction=False)
    for tenant_id in tenant_ids:
        pipe.hget(keys.tenant_meta(tenant_id), "plan")
    isolated = set()
    for tenant_id, raw in zip(tenant_ids, pipe.execute(), strict=True):
        try:
            if raw and json.loads(raw).get("is_hard_isolated"):
                isolated.add(tenant_id)
        except (ValueError, AttributeError):
            # Fail closed: a plan nobody can read might ask for isolation, so the shared
            # worker stays away (the tenant's own worker logs why it cannot deliver).
            log.error("tenant %s has an unreadable plan; treating it as hard-isolated", tenant_id)
            isolated.add(tenant_id)
    return isolated
