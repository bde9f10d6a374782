"""Schemathesis fuzzing of the server's own OpenAPI schema, over real HTTP.

Every operation gets generated requests, valid and invalid; no answer may be a 5xx, and every
answer must match the documented status codes, content types and response schemas. The server
runs with a small context (64 tokens) so that a generated chat request costs little.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.robustness.conftest import ServerFactory


@pytest.fixture(scope="module")
def fuzz_schema(serve: ServerFactory) -> Iterator[Any]:
    with serve(max_context=64, default_max_tokens=4, max_batch_size=4) as (_runtime, url):
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


def test_no_server_errors_and_schema_conformance(fuzz_schema: Any) -> None:
    # Operations are walked here rather than with schemathesis' pytest plugin, whose
    # fixture-based loader does not support the pytest release we run.
    failures: list[str] = []
    statuses: list[int] = []
    operations = [result.ok() for result in fuzz_schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:
        @settings(max_examples=25, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def fuzz(case: Any) -> None:
            response = case.call_and_validate(checks=CHECKS, timeout=120)
            statuses.append(response.status_code)

        try:
            fuzz()
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
    assert len(statuses) >= 10 * len(operations)  # the fuzzer really talked to the server
    assert any(s == 200 for s in statuses) and any(400 <= s < 500 for s in statuses)
