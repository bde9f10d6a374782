"""Fixtures for the persona tests: the registry tests' live server on a fresh registry (`served`)
and their adapter folders (`extra_adapters`), for uploading what the trainer writes."""

from __future__ import annotations

from tests.registry.conftest import extra_adapters, served  # noqa: F401  (fixtures, re-exported)
