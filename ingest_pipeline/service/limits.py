"""Per-key request rates: a token bucket per API key, in this process."""

from __future__ import annotations

import math
import threading
import time


class RateLimiter:
    """A bucket per key id that refills at the key's rate (requests per second) and holds at most one second's
    worth (at least one request). Each replica keeps its own buckets: behind N replicas a key may reach N times
    its rate, and a load balancer that keeps a client on one replica keeps it at its rate."""

    def __init__(self):
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, key_id: str, rate_per_s: float) -> float:
        """0 when the request may go on (a token is taken), else the seconds until one is available."""
        capacity = max(1.0, rate_per_s)
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key_id, (capacity, now))
            tokens = min(capacity, tokens + (now - last) * rate_per_s)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1.0 - tokens) / rate_per_s


def retry_after(seconds: float) -> str:
    """A Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
