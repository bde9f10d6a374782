"""Merged mode: when one persona holds the whole batch, fold its adapter into the base layers.

Contract (worker thread only, between two forward passes):
  - `reconcile(running, waiting)` before admission: unmerges when any running or waiting request
    needs something other than the merged adapter (another persona, or the plain base), so a
    mixed batch never runs on merged weights;
  - `maybe_merge(running, waiting, ref)` after admission: merges the pinned adapter, or in
    `auto` mode the adapter that has held every running row for `after_steps` steps, when no
    request for anything else is running or waiting;
  - `slot(key, slot)`: the slot a row must use in the forward pass (0 while its adapter is
    merged, since the merged layers already add its delta).

Modes: `never` (no merging), `explicit` (only pinned personas, set by the admin API),
`auto` (explicit pins, plus automatic merging of a persona that has the batch to itself).
A pinned persona is merged again each time the batch is its own; pins survive unmerges.

Switching is safe for running requests: it happens between steps, the rows keep their slot
(the merge holds one reference on it), and only the arithmetic of later steps changes. Keys
are opaque `name@version` strings; `forget(key)` drops a retired version's pin and merge.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal

from server.engine.types import AdapterRef, MergeStats
from server.lora.adapter import AdapterWeights
from server.lora.manager import SlotManager
from server.lora.merge import Merge, MergeError, MergeFormat, check_mergeable, merge_slot
from server.lora.slots import SlotLinear

log = logging.getLogger(__name__)

MergeMode = Literal["never", "explicit", "auto"]
Loader = Callable[[AdapterRef], Callable[[], AdapterWeights]]
Keys = set[str | None]  # adapter keys of requests; None is the plain base


class MergeController:
    """Which adapter is merged into the base layers now, and when to switch (see module doc)."""

    def __init__(self, linears: dict[str, SlotLinear], slots: SlotManager, loader: Loader,
                 mode: MergeMode, fmt: MergeFormat, after_steps: int) -> None:
        self.linears = linears
        self.slots = slots
        self.loader = loader
        self.mode = mode
        self.fmt = fmt
        self.after_steps = after_steps
        self.stats = MergeStats()
        self._merge: Merge | None = None
        self._merged: AdapterRef | None = None
        self._pinned: AdapterRef | None = None
        self._solo_key: str | None = None
        self._solo_steps = 0

    @property
    def merged_key(self) -> str | None:
        return self._merged.key if self._merged else None

    def slot(self, key: str | None, slot: int) -> int:
        if key is not None and key == self.merged_key:
            return 0
        if self._merged is not None:
            raise RuntimeError(f"a row of {key or 'the base'} reached a batch merged with "
                               f"{self.merged_key}")
        return slot

    def pin(self, ref: AdapterRef) -> None:
        """Merge `ref` whenever the batch is its own, from now until `unpin`."""
        if self.mode == "never":
            raise MergeError("merging is disabled (merge_mode is never)")
        for linear in self.linears.values():
            check_mergeable(linear.base)
        if self._pinned is not None and self._pinned.key != ref.key:
            self.unpin()
        self._pinned = ref
        self.stats.pinned = ref.key

    def unpin(self, key: str | None = None) -> None:
        """Drop the pin (only if it is `key`, when given) and unmerge it now."""
        if self._pinned is None or (key is not None and self._pinned.key != key):
            return
        if self.merged_key == self._pinned.key:
            self.unmerge()
        self._pinned = None
        self.stats.pinned = None

    def forget(self, key: str) -> None:
        """`key` was retired: it must never be merged again."""
        self.unpin(key)
        if self.merged_key == key:
            self.unmerge()

    def reconcile(self, running: Keys, waiting: Keys) -> None:
        merged = self.merged_key
        if merged is not None and not (running | waiting) <= {merged}:
            self.unmerge()

    def maybe_merge(self, running: Keys, waiting: Keys, ref_of: dict[str, AdapterRef]) -> None:
        keys = running | waiting
        solo = next(iter(running)) if len(running) == 1 and keys == running else None
        self._count_solo(solo)
        if self.mode == "never" or self._merged is not None:
            return
        pinned = self._pinned
        if pinned is not None and (not keys or keys == {pinned.key}):
            self._do_merge(pinned)
        elif (self.mode == "auto" and solo is not None and self._solo_steps >= self.after_steps
              and solo in ref_of):
            self._do_merge(ref_of[solo])

    def unmerge(self) -> None:
        if self._merge is None or self._merged is None:
            return
        started = time.perf_counter()
        self._merge.restore()
        self.slots.release(self._merged.key)
        log.info("unmerged %s in %.3f s", self._merged.key, time.perf_counter() - started)
        self._merge = self._merged = None
        self.stats.merged = None
        self.stats.unmerges += 1
        self.stats.last_unmerge_seconds = time.perf_counter() - started
        self._solo_steps = 0

    def _count_solo(self, key: str | None) -> None:
        if key is not None and key == self._solo_key:
            self._solo_steps += 1
        else:
            self._solo_key, self._solo_steps = key, 0 if key is None else 1

    def _do_merge(self, ref: AdapterRef) -> None:
        started = time.perf_counter()
        try:
            slot = self.slots.acquire(ref.key, self.loader(ref))
        except Exception:
            log.exception("cannot load %s to merge it", ref.key)
            self.unpin(ref.key)
            return
        if slot is None:
            return  # every slot is held by running rows; try again next step
        try:
            self._merge = merge_slot(self.linears, slot, self.fmt)
        except Exception:  # out of memory, or a layer that cannot merge: keep serving unmerged
            log.exception("merging %s failed; serving it unmerged", ref.key)
            self.slots.release(ref.key)
            self.unpin(ref.key)
            return
        self._merged = ref
        elapsed = time.perf_counter() - started
        log.info("merged %s (%s) in %.3f s", ref.key, self.fmt, elapsed)
        self.stats.merged = ref.key
        self.stats.merges += 1
        self.stats.last_merge_seconds = elapsed


__all__ = ["MergeController", "MergeMode"]
