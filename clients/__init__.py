"""Cameo clients: the `cameo` command line and (later) the Python client and web chat."""
