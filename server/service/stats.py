"""One frozen snapshot of the serving side: what /metrics, /ready and the admin routes read.

Contract: `ServiceStats` is taken at once (`EngineService.stats()`) and never changes; a Ray
deployment's is `combine` over its replicas' snapshots (sums of counters and capacities, unions
of adapter sets). Nothing reads engine internals beside it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceStats:
    ready: bool = False  # generation requests can be served now
    stalled: bool = False  # the engine has stopped coming round its loop
    running: int = 0  # requests holding a batch row
    waiting: int = 0  # requests queued inside the engine
    steps: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    slots: int = 0  # device adapter slots (capacity)
    slot_loads: int = 0
    slot_evictions: int = 0
    resident: tuple[tuple[str, int], ...] = ()  # (adapter key, device slot)
    running_personas: frozenset[str] = frozenset()
    waiting_personas: frozenset[str] = frozenset()
    merged: str | None = None  # the adapter key merged into the base layers now
    pinned: str | None = None  # the adapter key an admin asked to merge
    merges: int = 0
    unmerges: int = 0
    host_keys: frozenset[str] = frozenset()  # adapter keys in host memory
    host_capacity: int = 0
    host_hits: int = 0
    host_misses: int = 0
    host_evictions: int = 0

    def slot_of(self, key: str) -> int | None:
        return dict(self.resident).get(key)


def combine(parts: Iterable[ServiceStats]) -> ServiceStats:
    """Many engines as one (a key resident on several replicas shows one of its slots)."""
    parts = list(parts)
    total = {name: sum(getattr(p, name) for p in parts) for name in (
        "running", "waiting", "steps", "prompt_tokens", "generated_tokens", "slots",
        "slot_loads", "slot_evictions", "merges", "unmerges", "host_capacity", "host_hits",
        "host_misses", "host_evictions")}
    resident = dict(pair for p in parts for pair in p.resident)
    return ServiceStats(
        ready=any(p.ready for p in parts), stalled=bool(parts) and all(p.stalled for p in parts),
        resident=tuple(sorted(resident.items())),
        running_personas=frozenset().union(*(p.running_personas for p in parts)),
        waiting_personas=frozenset().union(*(p.waiting_personas for p in parts)),
        host_keys=frozenset().union(*(p.host_keys for p in parts)), **total)
