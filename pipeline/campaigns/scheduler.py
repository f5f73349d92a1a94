"""The campaign scheduler: schedules live in Redis; any number of schedulers may run, and each due
run fires exactly once.

One scheduler at a time holds the lock (``SET NX PX``); each acquisition takes a fencing token
from a counter. A run is recorded by a Lua script on the campaign's own keys that refuses a token
older than the last one it saw and a due time already fired, so a paused holder whose lock
expired cannot fire again. A fired run stays in the pending set until it finished; if its
scheduler dies first, the next lock holder runs it again after the lease (run ids come from the
due time, and push ids from the run, so nobody gets a push twice).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import redis

from pipeline import keys
from pipeline.campaigns.spec import CampaignSpec
from pipeline.campaigns.store import load_campaign
from pipeline.errors import InvalidInputError

__all__ = ["FiredRun", "Scheduler", "schedule_campaign", "unschedule_campaign", "scheduled_run_id"]

log = logging.getLogger(__name__)

OnFire = Callable[["FiredRun"], None]


@dataclass(frozen=True)
class FiredRun:
    tenant_id: str
    campaign_id: str
    run_id: str
    due_at: float
    is_retry: bool = False


def scheduled_run_id(due_at: float) -> str:
    return "at-" + datetime.fromtimestamp(due_at, ZoneInfo("UTC")).strftime("%Y%m%dT%H%M%S")


def schedule_campaign(r: redis.Redis, spec: CampaignSpec, now: float) -> float:
    """Put a stored campaign on the schedule; returns its first due time (epoch seconds)."""
    if spec.schedule is None:
        raise InvalidInputError("schedule", "the campaign has no schedule; add 'schedule: {cron: ..."
                                "}' or 'schedule: {at: ...}' to its spec")
    load_campaign(r, spec.tenant, spec.id)
    first = spec.schedule.next_due(now - 1e-6)
    if first is None:
        raise InvalidInputError("schedule", "no run is due before it expires (an 'at' in the past, "
                                "or an expiry before the next cron time)")
    state = keys.campaign_state(spec.tenant, spec.id)
    pipe = r.pipeline(transaction=True)
    pipe.hset(state, mapping={"status": "active", "next_due": repr(first)})
    pipe.zadd(keys.campaign_schedules(), {_member(spec.tenant, spec.id): first})
    pipe.execute()
    return first


def unschedule_campaign(r: redis.Redis, tenant_id: str, campaign_id: str) -> None:
    """Cancel: no further run fires; runs already fired are left to finish."""
    pipe = r.pipeline(transaction=True)
    pipe.zrem(keys.campaign_schedules(), _member(tenant_id, campaign_id))
    pipe.hset(keys.campaign_state(tenant_id, campaign_id), mapping={"status": "cancelled"})
    pipe.hdel(keys.campaign_state(tenant_id, campaign_id), "next_due")
    pipe.execute()


def _member(tenant_id: str, campaign_id: str) -> str:
    return f"{tenant_id}/{campaign_id}"


# KEYS: campaign state, campaign runs. ARGV: fencing token, due time, run id, now, outcome.
# Returns -1 for a stale token, 0 for a due time already recorded, 1 when recorded now.
_RECORD = """
local fence = tonumber(ARGV[1])
local seen = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
if fence < seen then return -1 end
redis.call('HSET', KEYS[1], 'fence', fence)
if redis.call('HSETNX', KEYS[1], 'fired:' .. ARGV[2], ARGV[5] .. ':' .. ARGV[3]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'last_due', ARGV[2])
if ARGV[5] == 'run' then redis.call('ZADD', KEYS[2], 'NX', ARGV[4], ARGV[3]) end
return 1
"""

# KEYS: campaign state. ARGV: fencing token, next due ('' when none is left).
_ADVANCE = """
local seen = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
if tonumber(ARGV[1]) < seen then return -1 end
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], 'next_due')
  redis.call('HSET', KEYS[1], 'status', 'finished')
else
  redis.call('HSET', KEYS[1], 'next_due', ARGV[2])
end
return 1
"""

# KEYS: lock. ARGV: token, ttl ms. Extends the lock only for its holder.
_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class Scheduler:
    """Fires due campaign runs; ``tick(now)`` does one round, ``run(stop)`` loops on the clock.

    ``on_fire`` runs a fired run (normally the Ray runner); a run it finishes leaves the pending
    set, one it does not finish (an exception, a dead process) is run again after
    ``lease_seconds`` by whichever scheduler then holds the lock.
    """

    def __init__(self, r: redis.Redis, on_fire: OnFire, *, name: str | None = None,
                 lock_ttl_ms: int = 15_000, lease_seconds: float = 900.0):
        if lock_ttl_ms < 100:
            raise ValueError(f"lock_ttl_ms must be at least 100, got {lock_ttl_ms}")
        self.r = r
        self.on_fire = on_fire
        self.name = name or uuid.uuid4().hex[:12]
        self.lock_ttl_ms = lock_ttl_ms
        self.lease_seconds = lease_seconds
        self._token = f"{self.name}:{uuid.uuid4().hex}"
        self._fence: int | None = None
        self._record = r.register_script(_RECORD)
        self._advance = r.register_script(_ADVANCE)
        self._refresh = r.register_script(_REFRESH)

    @property
    def fence(self) -> int | None:
        return self._fence

    def holds_lock(self) -> bool:
        if self._fence is not None and self._refresh(keys=[keys.scheduler_lock()],
                                                     args=[self._token, self.lock_ttl_ms]):
            return True
        if self.r.set(keys.scheduler_lock(), self._token, nx=True, px=self.lock_ttl_ms):
            self._fence = int(self.r.incr(keys.scheduler_fence()))
            log.info("scheduler %s holds the lock (fence %d)", self.name, self._fence)
            return True
        self._fence = None
        return False

    def release(self) -> None:
        if self._fence is not None:
            self.r.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then "
                        "return redis.call('DEL', KEYS[1]) end return 0", 1,
                        keys.scheduler_lock(), self._token)
            self._fence = None

    def tick(self, now: float) -> list[FiredRun]:
        """Fire every run due at ``now`` (if this scheduler holds the lock); returns them."""
        if not self.holds_lock():
            return []
        fence = int(self._fence or 0)
        fired: list[FiredRun] = []
        for member in self.r.zrangebyscore(keys.campaign_schedules(), "-inf", now):
            fired += self._fire_due(str(member), now, fence)
        fired += self._retry_stale(now)
        for run in fired:
            self._execute(run, now)
        return fired

    def run(self, stop: Callable[[], bool], interval_seconds: float = 1.0,
            clock: Callable[[], float] = time.time) -> None:
        try:
            while not stop():
                self.tick(clock())
                time.sleep(interval_seconds)
        finally:
            self.release()

    def _fire_due(self, member: str, now: float, fence: int) -> list[FiredRun]:
        tenant_id, campaign_id = member.split("/", 1)
        state_key = keys.campaign_state(tenant_id, campaign_id)
        state = self.r.hgetall(state_key)
        raw_spec = self.r.hget(keys.campaigns(tenant_id), campaign_id)
        if raw_spec is None or state.get("status") != "active" or "next_due" not in state:
            self.r.zrem(keys.campaign_schedules(), member)
            return []
        spec = CampaignSpec.model_validate_json(raw_spec)
        schedule = spec.schedule
        if schedule is None:
            self.r.zrem(keys.campaign_schedules(), member)
            return []
        first = float(state["next_due"])
        due = [first, *schedule.due_times(first, now)]
        fired: list[FiredRun] = []
        for due_at in due:
            is_missed = schedule.missed == "skip" and now - due_at > schedule.grace_seconds
            run_id = scheduled_run_id(due_at)
            outcome = self._record(keys=[state_key, keys.campaign_runs(tenant_id, campaign_id)],
                                   args=[fence, repr(due_at), run_id, repr(now),
                                         "skipped" if is_missed else "run"])
            if outcome == -1:
                log.warning("scheduler %s: fence %d is stale; another scheduler took over",
                            self.name, fence)
                return fired
            if outcome == 1 and not is_missed:
                fired.append(FiredRun(tenant_id, campaign_id, run_id, due_at))
                self.r.zadd(keys.campaign_pending(),
                            {f"{member}/{run_id}": now + self.lease_seconds})
            elif outcome == 1:
                log.info("skipped missed run %s of %s (due %.0f, now %.0f)", run_id, member,
                         due_at, now)
        following = schedule.next_due(due[-1])
        if self._advance(keys=[state_key], args=[fence, "" if following is None else repr(following)]) == 1:
            if following is None:
                self.r.zrem(keys.campaign_schedules(), member)
            else:
                self.r.zadd(keys.campaign_schedules(), {member: following})
        return fired

    def _retry_stale(self, now: float) -> list[FiredRun]:
        """Runs fired by a scheduler that died before finishing them."""
        out = []
        for member, _ in self.r.zrangebyscore(keys.campaign_pending(), "-inf", now, withscores=True):
            tenant_id, campaign_id, run_id = str(member).split("/", 2)
            # Take the lease first: a slow but living scheduler sees its entry moved.
            self.r.zadd(keys.campaign_pending(), {member: now + self.lease_seconds})
            out.append(FiredRun(tenant_id, campaign_id, run_id, 0.0, is_retry=True))
        return out

    def _execute(self, run: FiredRun, now: float) -> None:
        member = f"{run.tenant_id}/{run.campaign_id}/{run.run_id}"
        try:
            self.on_fire(run)
        except Exception:
            log.exception("run %s failed; it is retried after its lease", member)
            return
        self.r.zrem(keys.campaign_pending(), member)
