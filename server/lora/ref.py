"""Which adapter version a request runs with: `AdapterRef`, built by the registry only.

Contract: an `AdapterRef` names one upload forever (the registry never reuses a version
number), so its `key` may be trusted by every cache (host memory, device slots, merged mode).
The key is built here and nowhere else, and nothing parses it: whoever needs the persona's
name or version reads `name` and `version`.

It does not hold weights: the host cache (`server.lora.host_cache`) reads them from `path`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def adapter_key(name: str, version: int) -> str:
    """The one spelling of an adapter version's cache key."""
    return f"{name}@{version}"


@dataclass(frozen=True)
class AdapterRef:
    name: str  # the persona
    version: int
    path: Path  # the version's folder of adapter files

    @property
    def key(self) -> str:
        return adapter_key(self.name, self.version)
