"""Per-tenant token buckets in Redis: exact under any number of concurrent workers.

A bucket is one hash, ``keys.rate_bucket(tenant)``, holding ``tokens`` and the server time ``at``
they were counted. Each take refills by ``rate * elapsed`` up to ``burst`` and takes what it may,
all in one Lua call on the server's clock, so workers on many machines share one exact budget.
The delivery worker embeds ``BUCKET_LUA`` in its read script: the tokens it takes are the
entries it actually reads, never more.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from pipeline import keys
from pipeline.receipts import StatusScript, run_scripts

__all__ = ["BUCKET_LUA", "Taken", "take"]

# bucket_refill(key, rate, burst) -> tokens, now; bucket_store(key, tokens, now, rate, burst)
BUCKET_LUA = """
local function bucket_refill(key, rate, burst)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local b = redis.call('HMGET', key, 'tokens', 'at')
  local tokens, at = tonumber(b[1]), tonumber(b[2])
  if not tokens then return burst, now end
  return math.min(burst, tokens + math.max(0, now - at) * rate), now
end
local function bucket_store(key, tokens, now, rate, burst)
  redis.call('HSET', key, 'tokens', string.format('%.6f', tokens), 'at', string.format('%.6f', now))
  redis.call('EXPIRE', key, math.ceil(burst / rate) + 60)
end
local function bucket_wait_ms(tokens, rate)
  if tokens >= 1 then return 0 end
  return math.ceil((1 - tokens) / rate * 1000)
end
"""

# KEYS: bucket; ARGV: rate, burst, want, is_debt_allowed ('1'/'0')
_TAKE = StatusScript(BUCKET_LUA + """
local rate, burst, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens, now = bucket_refill(KEYS[1], rate, burst)
local granted = want
if ARGV[4] ~= '1' then granted = math.max(0, math.min(want, math.floor(tokens))) end
tokens = tokens - granted
bucket_store(KEYS[1], tokens, now, rate, burst)
return {granted, bucket_wait_ms(tokens, rate)}
""")


@dataclass(frozen=True, slots=True)
class Taken:
    granted: int
    wait_ms: int  # until the next whole token; 0 if one is there now


def take(
    r: redis.Redis, tenant_id: str, want: int, *, rate: float, burst: int,
    is_debt_allowed: bool = False,
) -> Taken:
    """Take up to ``want`` tokens; with ``is_debt_allowed`` take all and let the bucket go negative."""
    if rate <= 0 or burst < 1 or want < 0:
        raise ValueError(f"need rate > 0, burst >= 1 and want >= 0, got {rate}, {burst}, {want}")
    (result,) = run_scripts(r, [(_TAKE, [keys.rate_bucket(tenant_id)],
                                 [rate, burst, want, "1" if is_debt_allowed else "0"])])
    if isinstance(result, Exception):
        raise result
    return Taken(granted=int(result[0]), wait_ms=int(result[1]))
