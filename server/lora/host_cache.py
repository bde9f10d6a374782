"""The host-memory tier of adapters: parsed `AdapterWeights`, LRU, pinned on CUDA.

Contract: `get(key, path)` returns the adapter's weights, reading and validating them from disk
on a miss (called from the API's worker threads, never from the engine thread, so disk reads
never stall a decode step). At most `capacity` adapters are kept; a request that already holds
an evicted adapter's weights keeps them alive until it ends (Python references), so eviction
never breaks a running request. `discard(key)` drops a replaced or deleted version.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from server.lora.adapter import AdapterWeights


@dataclass
class HostCacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class HostAdapterCache:
    def __init__(self, capacity: int, pin: bool) -> None:
        self.capacity = capacity
        self.pin = pin
        self.stats = HostCacheStats()
        self._entries: OrderedDict[str, AdapterWeights] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(w.nbytes for w in self._entries.values())

    def get(self, key: str, load: Callable[[], AdapterWeights]) -> AdapterWeights:
        with self._lock:
            weights = self._entries.get(key)
            if weights is not None:
                self._entries.move_to_end(key)
                self.stats.hits += 1
                return weights
        weights = self._pinned(load())  # outside the lock: disk reads run in parallel
        with self._lock:
            self.stats.misses += 1
            self._entries[key] = weights
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
                self.stats.evictions += 1
        return weights

    def discard(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def _pinned(self, weights: AdapterWeights) -> AdapterWeights:
        if not self.pin:
            return weights
        modules = {k: (a.pin_memory(), b.pin_memory(), s) for k, (a, b, s) in weights.modules.items()}
        return AdapterWeights(rank=weights.rank, alpha=weights.alpha,
                              use_rslora=weights.use_rslora,
                              target_modules=weights.target_modules,
                              base_model=weights.base_model, modules=modules)


__all__ = ["HostAdapterCache", "HostCacheStats"]
