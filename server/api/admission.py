"""Admission control: bounded waiting by requests and by prompt tokens, and per-key rate limits.

Contract: `admit(tokens, key)` either returns a `Ticket` or raises a 429 `APIError` with a
`Retry-After` header; it is called before the request reaches the engine, and `Ticket.started`
(first token) or `Ticket.close` (finished, failed or cancelled) gives the waiting room back. All
counters live on the event loop's thread: no locks.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from server.api.errors import APIError


@dataclass
class _Bucket:
    tokens: float
    stamp: float = field(default_factory=time.monotonic)


class Ticket:
    def __init__(self, controller: Admission, tokens: int) -> None:
        self._controller = controller
        self._tokens = tokens
        self._waiting = True

    def started(self) -> None:
        """The request holds a batch row now: it no longer counts as waiting."""
        if self._waiting:
            self._waiting = False
            self._controller.waiting_requests -= 1
            self._controller.waiting_tokens -= self._tokens

    close = started


class Admission:
    def __init__(self, max_requests: int, max_tokens: int, per_minute: int) -> None:
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.per_minute = per_minute
        self.waiting_requests = 0
        self.waiting_tokens = 0
        self._buckets: dict[str, _Bucket] = {}

    def check_rate(self, key: str) -> None:
        """Token bucket of `per_minute` requests per key, refilled continuously."""
        if self.per_minute <= 0:
            return
        now = time.monotonic()
        bucket = self._buckets.setdefault(key, _Bucket(float(self.per_minute), now))
        bucket.tokens = min(float(self.per_minute),
                            bucket.tokens + (now - bucket.stamp) * self.per_minute / 60.0)
        bucket.stamp = now
        if bucket.tokens < 1.0:
            wait = math.ceil((1.0 - bucket.tokens) * 60.0 / self.per_minute)
            raise APIError(429, f"rate limit of {self.per_minute} requests per minute reached",
                           code="rate_limit_exceeded", headers={"Retry-After": str(wait)})
        bucket.tokens -= 1.0
        if len(self._buckets) > 100_000:  # forget idle keys rather than grow without bound
            self._buckets = {k: b for k, b in self._buckets.items() if now - b.stamp < 60}

    def check_room(self) -> None:
        """Cheap early refusal, before the prompt is even tokenized."""
        if self.waiting_requests >= self.max_requests:
            raise self._full("requests")

    def admit(self, tokens: int) -> Ticket:
        self.check_room()
        if self.waiting_tokens + tokens > self.max_tokens and self.waiting_requests > 0:
            raise self._full("prompt tokens")
        self.waiting_requests += 1
        self.waiting_tokens += tokens
        return Ticket(self, tokens)

    def _full(self, what: str) -> APIError:
        return APIError(429, f"the server is at capacity (waiting {what}); retry shortly",
                        code="server_busy", headers={"Retry-After": "1"})
