"""The HTTP layer: OpenAI-compatible routes, schemas, errors, streaming."""
