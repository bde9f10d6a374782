"""Domain errors: what went wrong, as a code, and which input; no HTTP.

Contract: every failure a layer below the API reports on purpose is a `CameoError` (or a
subclass: `AdapterError`, `CardError`, `RegistryError`, `CatalogError`, `MergeError`,
`GrammarError`, `UnsupportedModel`) with a `code` (stable, machine-readable, the OpenAI error
`code` clients see), a `message` for people and the `param` at fault when there is one. A
failed request's engine output carries an `ErrorCode` the same way
(`server.engine.types.RequestOutput.error_code`). The HTTP edge maps codes to statuses in one
table (`server.api.errors.STATUS`); nothing below it knows a status.
"""

from __future__ import annotations


class CameoError(Exception):
    code: str = "internal_error"

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
