"""Which adapter sits in which device slot: LRU residency with reference counts.

Contract: `acquire(key, load)` returns the slot holding adapter `key` (loading it with `load()`
into a free slot, or into the least recently used slot no running row holds), or None when every
slot is held by running rows: the caller waits and retries after rows finish. `release(slot)`
ends one row's use. A slot with a non-zero count is never evicted or rewritten.

Keys are opaque strings; the caller makes them unique per adapter version (`name@version`) so
that a re-uploaded adapter never reuses a slot of its predecessor by mistake. Not thread-safe:
only the engine's worker thread calls it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from server.lora.adapter import AdapterWeights
from server.lora.slots import LoraSlots


@dataclass
class _Resident:
    slot: int
    users: int = 0


class SlotManager:
    """Maps adapter keys to slots 1..N of a `LoraSlots` bank."""

    def __init__(self, bank: LoraSlots) -> None:
        self.bank = bank
        self._resident: OrderedDict[str, _Resident] = OrderedDict()  # oldest first
        self._free = list(range(bank.num_slots - 1, 0, -1))
        self.loads = 0
        self.evictions = 0

    @property
    def capacity(self) -> int:
        """Slots for adapters (slot 0, the base, not counted)."""
        return self.bank.num_slots - 1

    def resident(self) -> dict[str, int]:
        """Adapter key -> slot, for every adapter on the device."""
        return {key: entry.slot for key, entry in self._resident.items()}

    def users(self, key: str) -> int:
        entry = self._resident.get(key)
        return entry.users if entry else 0

    def acquire(self, key: str, load: Callable[[], AdapterWeights]) -> int | None:
        entry = self._resident.get(key)
        if entry is None:
            slot = self._free_slot()
            if slot is None:
                return None
            try:
                self.bank.write(slot, load())
            except BaseException:
                self.bank.clear(slot)
                self._free.append(slot)
                raise
            self.loads += 1
            entry = self._resident[key] = _Resident(slot)
        self._resident.move_to_end(key)
        entry.users += 1
        return entry.slot

    def release(self, key: str) -> None:
        entry = self._resident[key]
        entry.users -= 1

    def drop(self, key: str) -> bool:
        """Free `key`'s slot now if no row uses it; returns whether it was freed."""
        entry = self._resident.get(key)
        if entry is None or entry.users:
            return False
        del self._resident[key]
        self.bank.clear(entry.slot)
        self._free.append(entry.slot)
        return True

    def _free_slot(self) -> int | None:
        if self._free:
            return self._free.pop()
        for key, entry in self._resident.items():  # least recently used first
            if entry.users == 0:
                self.evictions += 1
                self.drop(key)
                return self._free.pop()
        return None
