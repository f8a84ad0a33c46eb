"""Per-key rate limits in Redis: a token bucket decided by one atomic Lua script.

Why not Litestar's rate limiter: it reads the count and then writes it back, so concurrent
requests in several worker processes each see the old count and all pass. Here the whole
decision (refill, take a token, store) runs inside Redis as one script, so any number of
workers sharing the Redis admit exactly what the bucket holds. Time is Redis's own clock
(``TIME``), not the workers', so their clocks need not agree.

The bucket holds at most ``burst`` tokens and gains ``rate_per_second``; each request takes
one. A request finding less than one token is refused with the seconds until one is there
(``Retry-After``). An idle bucket expires from Redis once it would be full again.

Redis down: the request is let through (and a warning logged, at most every few seconds).
Money safety never depends on this limiter: it protects capacity, nothing else.
"""

from __future__ import annotations

import logging
import math
import time

import msgspec
from redis.asyncio import Redis

_log = logging.getLogger("gwallet.merchant_api.ratelimit")

_WARN_INTERVAL_SECONDS = 10.0

# KEYS[1] the bucket; ARGV[1] tokens gained per millisecond, ARGV[2] burst (capacity).
# Returns {allowed (0/1), milliseconds until a token is there (when refused)}.
_TOKEN_BUCKET = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ms')
local tokens = tonumber(state[1])
local last = tonumber(state[2])
if tokens == nil or last == nil then
    tokens = burst
    last = now
end
if now > last then
    tokens = math.min(burst, tokens + (now - last) * rate)
    last = now
end
local allowed = 0
local wait_ms = 0
if tokens >= 1 then
    tokens = tokens - 1
    allowed = 1
else
    wait_ms = math.ceil((1 - tokens) / rate)
end
redis.call('HSET', KEYS[1],
    'tokens', string.format('%.17g', tokens), 'ms', string.format('%d', last))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate) + 1000)
return {allowed, wait_ms}
"""


class Decision(msgspec.Struct, frozen=True):
    allowed: bool
    retry_after_seconds: int  # 0 when allowed


ALLOWED = Decision(True, 0)


class RateLimiter:
    """``await limiter.hit(name)``: take one token from the bucket ``name``."""

    def __init__(
        self, redis: Redis, *, rate_per_second: float, burst: int, prefix: str
    ) -> None:
        if not rate_per_second > 0:
            raise ValueError("rate_per_second must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self._script = redis.register_script(_TOKEN_BUCKET)
        self._rate_per_ms = repr(rate_per_second / 1000.0)
        self._burst = str(burst)
        self._prefix = prefix
        self._last_warning = -math.inf

    async def hit(self, name: str) -> Decision:
        try:
            allowed, wait_ms = await self._script(
                keys=[self._prefix + name], args=[self._rate_per_ms, self._burst]
            )
        except Exception as exc:  # noqa: BLE001 - fail open: the limiter only guards capacity
            self._warn(exc)
            return ALLOWED
        if allowed:
            return ALLOWED
        return Decision(False, max(1, math.ceil(int(wait_ms) / 1000)))

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _WARN_INTERVAL_SECONDS:
            self._last_warning = now
            _log.warning(
                "rate limit not applied: redis unavailable (%s); letting requests through",
                type(exc).__name__,
            )
