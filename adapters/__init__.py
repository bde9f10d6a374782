"""Cameo's shipped personas (`adapters/registry/`) and the recipe that trains them (`training`)."""
