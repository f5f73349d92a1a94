"""The scheduler against a real Valkey, driven by an injected clock: exactly-once firing."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import pandas as pd
import pytest
import redis

from pipeline import keys
from pipeline.campaigns import list_runs, parse_spec, save_campaign
from pipeline.campaigns.scheduler import FiredRun, Scheduler, schedule_campaign

T0 = pd.Timestamp("2025-05-05 09:00", tz="UTC").timestamp()


@pytest.fixture(autouse=True)
def clean_schedules(redis_client: redis.Redis) -> None:
    # The schedules and the lock are global keys: start each test without another's leftovers.
    redis_client.delete(keys.campaign_schedules(), keys.campaign_pending(), keys.scheduler_lock())


def every_minute(r: redis.Redis, tenant_id: str, missed: str = "catch_up") -> None:
    spec = parse_spec(f"""
tenant: {tenant_id}
id: minutely
variants: [{{name: a, title: Hi, body: Hello}}]
schedule: {{cron: '* * * * *', timezone: Europe/Berlin, expires_at: '2025-05-05T09:05:30+00:00',
            missed: {missed}, grace_seconds: 30}}
""")
    save_campaign(r, spec)
    schedule_campaign(r, spec, now=T0 + 10)  # created at 09:00:10: runs 09:01 to 09:05


class Recorder:
    def __init__(self) -> None:
        self.runs: list[FiredRun] = []
        self.lock = threading.Lock()

    def __call__(self, run: FiredRun) -> None:
        with self.lock:
            self.runs.append(run)


def test_two_schedulers_fire_a_minutely_campaign_exactly_five_times_in_five_minutes(
    redis_client: redis.Redis, redis_server, new_tenant_id: Callable[[str], str],
) -> None:
    tenant_id = new_tenant_id("sched")
    every_minute(redis_client, tenant_id)
    recorder = Recorder()
    clients = [redis.Redis.from_url(redis_server.url, decode_responses=True) for _ in range(2)]
    schedulers = [Scheduler(c, recorder, name=f"s{i}", lock_ttl_ms=5_000)
                  for i, c in enumerate(clients)]
    barrier = threading.Barrier(2)

    def drive(scheduler: Scheduler) -> None:
        # Each simulated second, both schedulers tick at once; the clock runs 6 minutes.
        for second in range(0, 6 * 60 + 1, 5):
            barrier.wait()
            scheduler.tick(T0 + second)

    threads = [threading.Thread(target=drive, args=(s,)) for s in schedulers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(recorder.runs) == 5
    assert Counter(r.run_id for r in recorder.runs).most_common(1)[0][1] == 1
    assert [r.due_at - T0 for r in sorted(recorder.runs, key=lambda r: r.due_at)] == [
        60.0, 120.0, 180.0, 240.0, 300.0]
    assert len(list_runs(redis_client, tenant_id, "minutely")) == 5
    state = redis_client.hgetall(keys.campaign_state(tenant_id, "minutely"))
    assert state["status"] == "finished"
    for c in clients:
        c.close()


@pytest.mark.parametrize("missed, expected", [("catch_up", 5), ("skip", 4)])
def test_killing_the_lock_holder_loses_no_run(
    redis_client: redis.Redis, redis_server, new_tenant_id: Callable[[str], str],
    missed: str, expected: int,
) -> None:
    tenant_id = new_tenant_id("kill")
    every_minute(redis_client, tenant_id, missed=missed)
    done = Recorder()

    def dies_on_third(run: FiredRun) -> None:
        if run.due_at == T0 + 180:
            raise SystemExit("holder killed after recording the run, before running it")
        done(run)

    holder = Scheduler(redis_client, dies_on_third, name="holder", lock_ttl_ms=300,
                       lease_seconds=30)
    standby = Scheduler(redis.Redis.from_url(redis_server.url, decode_responses=True), done,
                        name="standby", lock_ttl_ms=300, lease_seconds=30)
    for minute in (1, 2):
        holder.tick(T0 + minute * 60)
        assert standby.tick(T0 + minute * 60) == []
    with pytest.raises(SystemExit):
        holder.tick(T0 + 180)
    # The holder is dead: it never ticks or releases again. Its lock expires on Redis' clock.
    assert standby.tick(T0 + 181) == []
    time.sleep(0.4)
    # Minute 4 comes and goes while nobody holds the lock; the standby takes over at 4:45.
    standby.tick(T0 + 285)
    standby.tick(T0 + 300)
    standby.tick(T0 + 360)

    ran = sorted({r.run_id for r in done.runs})
    fired = list_runs(redis_client, tenant_id, "minutely")
    # Minute 3 was fired by the holder and is run again by the standby after its lease.
    assert len(ran) == expected and len(fired) == expected
    assert set(ran) == set(fired)
    assert standby.fence is not None and standby.fence > 0
    assert redis_client.zcard(keys.campaign_pending()) == 0


def test_a_stale_fencing_token_cannot_fire(
    redis_client: redis.Redis, new_tenant_id: Callable[[str], str],
) -> None:
    tenant_id = new_tenant_id("fence")
    every_minute(redis_client, tenant_id)
    runs = Recorder()
    old = Scheduler(redis_client, runs, name="old", lock_ttl_ms=200)
    assert old.holds_lock()
    time.sleep(0.3)  # old pauses (GC, a stopped VM) and its lock expires
    new = Scheduler(redis_client, runs, name="new", lock_ttl_ms=5_000)
    new.tick(T0 + 60)
    # The paused scheduler wakes and, without noticing, fires with its old token.
    assert old._fire_due(f"{tenant_id}/minutely", T0 + 120, fence=int(old.fence or 0)) == []
    assert len(list_runs(redis_client, tenant_id, "minutely")) == 1
