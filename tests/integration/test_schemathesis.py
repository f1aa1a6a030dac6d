"""Bad input at scale: schemathesis generates requests for every operation of every
service's OpenAPI schema, valid and not, and sends them over real HTTP to the services
running on the real broker and store. No answer may be a 5xx, and every documented
answer must match its schema (a 422 included: ``{"detail": [{"field", "reason"}]}``)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import APIOperation
from schemathesis.checks import not_a_server_error, response_schema_conformance
from schemathesis.core.result import Err

from shared.embedded import EmbeddedStack
from tests.system import ADMIN, AGENT, FACTORIES, PUBLISHER, System, running

Operation = APIOperation[Any, Any, Any, Any]
EXAMPLES = int(os.environ.get("SWITCHBOARD_SCHEMATHESIS_EXAMPLES", "30"))
CHECKS = [not_a_server_error, response_schema_conformance]

pytestmark = pytest.mark.timeout(600)


def caller(system: System, method: str, path: str) -> dict[str, str]:
    """The key that reaches the operation's logic, not just its 403."""
    if (method, path) == ("POST", "/v1/interactions"):
        return system.headers(PUBLISHER)
    if path == "/v1/items/{interaction_id}/{action}":
        return system.headers(AGENT)
    return system.headers(ADMIN)


async def test_no_generated_request_gets_a_5xx_or_an_answer_off_its_schema(
    stack: EmbeddedStack, namespace: str, run_dir: Path
) -> None:
    async with running(stack, namespace, run_dir, tuple(FACTORIES)) as system:
        failures: list[str] = []
        for service, app in system.apps.items():
            schema = schemathesis.openapi.from_dict(app.openapi())
            base_url = str(system.http[service].base_url)
            for result in schema.get_all_operations():
                if isinstance(result, Err):  # the schema itself is wrong there
                    failures.append(f"{service}: {result.err()}")
                    continue
                operation = result.ok()
                headers = caller(system, operation.method.upper(), operation.path)
                failures += await fuzz(operation, base_url, headers)

    assert failures == []


async def fuzz(operation: Operation, base_url: str, headers: dict[str, str]) -> list[str]:
    """Run the generated cases for one operation in a worker thread (schemathesis calls
    over blocking HTTP, and the services answer on this loop); returns what failed, one
    line per distinct failure."""
    return await asyncio.to_thread(_fuzz, operation, base_url, headers)


def _fuzz(operation: Operation, base_url: str, headers: dict[str, str]) -> list[str]:
    failures: list[str] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same cases on every run: a failure here is reproducible
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def check(case: schemathesis.Case[Any]) -> None:
        try:
            case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS, timeout=10)
        except Exception as failure:  # one line each: the operation and what went wrong
            line = f"{operation.label}: {str(failure).strip().splitlines()[0][:300]}"
            if line not in failures:
                failures.append(line)

    started = time.monotonic()
    check()
    print(f"{operation.label}: {time.monotonic() - started:.1f}s")  # where the time goes
    return failures
