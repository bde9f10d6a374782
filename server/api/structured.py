"""`response_format` into a grammar, and the check that the grammar compiles.

Contract: `response_grammar(value)` turns OpenAI's `response_format` (`text`, `json_object`, or
`json_schema` with `name`, `schema` and `strict`) into a `GrammarSpec`, or None for plain text;
a malformed value is a 400 naming the parameter. `check_grammar(grammars, spec, param)` compiles
the spec off the event loop (the engine then finds it compiled) and turns a schema the grammar
library cannot compile into a 400 naming `param`.

`strict: true` is what the grammar does anyway: the reply is the schema's JSON and nothing
else; `strict: false` (or absent) also lets objects carry properties the schema does not list,
as JSON Schema allows. This module does not build prompts: the schema is not shown to the model
unless the client puts it in a message, as with OpenAI.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from server.api.errors import APIError
from server.engine.constraints import GrammarError, GrammarSpec

MAX_SCHEMA_CHARS = 100_000


def response_grammar(value: Any) -> GrammarSpec | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in ("text", "json_object",
                                                                "json_schema"):
        raise _bad("response_format.type must be text, json_object or json_schema",
                   "response_format.type")
    if value["type"] == "text":
        return None
    if value["type"] == "json_object":
        return GrammarSpec("json_object")
    described = value.get("json_schema")
    if not isinstance(described, dict) or not isinstance(described.get("name"), str):
        raise _bad("response_format.json_schema needs a name and a schema",
                   "response_format.json_schema")
    schema = described.get("schema", {})
    if not isinstance(schema, dict):
        raise _bad("response_format.json_schema.schema must be a JSON schema object",
                   "response_format.json_schema.schema")
    source = json.dumps(schema)
    if len(source) > MAX_SCHEMA_CHARS:
        raise _bad(f"the schema is over {MAX_SCHEMA_CHARS} characters",
                   "response_format.json_schema.schema")
    return GrammarSpec("json_schema", source, strict=bool(described.get("strict")))


async def check_grammar(grammars: Any, spec: GrammarSpec, param: str) -> None:
    """`grammars`: the engine's `Grammars` (compiles and caches)."""
    try:
        await asyncio.to_thread(grammars.compile, spec)
    except GrammarError as exc:
        raise APIError(400, f"{param} cannot be used for constrained decoding: {exc.message}",
                       param=param, code="invalid_schema") from exc


def _bad(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")
