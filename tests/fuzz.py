"""A bounded property-based fuzz of a running service's OpenAPI document, for any service.

    report = fuzz_service("http://127.0.0.1:3000", examples=30)
    assert report.problems == [], report.summary()

schemathesis reads ``<base_url>/docs.json`` (every BentoML service serves it), generates requests
for each operation from its schema, valid ones (positive) and ones that break it (negative), at most
``examples`` per operation and mode, and sends them over HTTP. Each answer must be

- not a 5xx,
- of a status, content type and body shape the document declares for that operation,
- when a 4xx with a ``detail`` list (a validation error), an entry per problem that names the field
  (its ``loc``) unless the problem is the body as a whole (not JSON, not an object),
- for a valid request (positive mode), a 2xx: the document must say exactly what the service
  accepts. The refusals a schema cannot rule out are excused, by their error code
  (:data:`EXCUSED_CODES`, OpenAI's ``error.code`` or a BentoML route's top-level ``code``):
  ``context_length_exceeded``, a prompt and ``max_tokens`` that together overflow the LLM's
  context (which depends on the prompt's tokens, not its characters), and
  ``unknown_request_id``, a 404 from ``POST /feedback`` for a request id the service never
  answered (a random id is well-formed, yet names nothing).

Failures are collected, not raised at the first one, so one run shows every kind of problem; the
report counts requests, 5xx and refused valid requests per service. ``operations`` limits the fuzz
to some ``(METHOD, path)`` pairs, ``headers`` are sent with every request (an API key).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# refusals of a valid request that depend on what no schema can say (see the module docstring)
EXCUSED_CODES = frozenset({"context_length_exceeded", "unknown_request_id"})
# validation errors about the body as a whole: no field to name
BODY_LEVEL_ERRORS = frozenset(
    {"json_invalid", "json_type", "model_type", "dict_type", "model_attributes_type"}
)


@dataclass
class FuzzReport:
    base_url: str
    requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    operations: list[str] = field(default_factory=list)
    refused_valid: int = 0  # positive-mode requests answered 4xx without an excused code
    accepted_invalid: int = 0  # negative-mode requests answered 2xx (an ignored field may be one)

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def summary(self) -> str:
        head = (
            f"{self.base_url}: {self.requests} requests to {self.operations}, "
            f"statuses {dict(sorted(self.statuses.items()))}, 5xx {self.server_errors}, "
            f"valid requests refused {self.refused_valid}"
        )
        return "\n".join([head, *self.problems[:20]])


def unnamed_fields(status: int, body: Any) -> list[dict[str, Any]]:
    """The entries of a 4xx ``detail`` list that do not say which field they are about."""
    if not 400 <= status < 500 or not isinstance(body, dict) or not isinstance(body.get("detail"), list):
        return []
    return [
        entry
        for entry in body["detail"]
        if not (isinstance(entry, dict) and (entry.get("loc") or entry.get("type") in BODY_LEVEL_ERRORS))
    ]


def refused_valid(status: int, body: Any) -> bool:
    """Whether a valid request's answer is a refusal that no excused code explains."""
    if not 400 <= status < 500:
        return False
    if not isinstance(body, dict):
        return True
    error = body.get("error")
    code = error.get("code") if isinstance(error, dict) else body.get("code")
    return code not in EXCUSED_CODES


def fuzz_service(
    base_url: str,
    *,
    examples: int = 30,
    operations: Iterable[tuple[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 30,
) -> FuzzReport:
    """Fuzz every (or each named) POST/GET operation of the service at ``base_url``."""
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.failures import FailureGroup
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    wanted = {(m.upper(), p) for m, p in operations} if operations is not None else None
    schema = schemathesis.openapi.from_url(f"{base_url}/docs.json", timeout=timeout_s)
    report = FuzzReport(base_url)
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        key = (operation.method.upper(), operation.path)
        if wanted is not None and key not in wanted:
            continue
        report.operations.append(f"{key[0]} {key[1]}")
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=examples,
                deadline=None,
                database=None,  # no example database written into the checkout
                phases=[Phase.explicit, Phase.generate],  # no shrinking: bounded time, every failure kept
                suppress_health_check=list(HealthCheck),
                derandomize=True,  # the same requests on every run
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def send(case: Any) -> None:
                response = case.call(base_url=base_url, session=session, headers=headers, timeout=timeout_s)
                report.requests += 1
                report.statuses[response.status_code] += 1
                generated = case.meta.generation.mode.value if case.meta else "?"
                where = f"{case.method} {case.path} [{generated}] body={_short(case.body)}"
                try:
                    case.validate_response(response, checks=checks, headers=headers)
                except (Exception, FailureGroup) as exc:  # failed checks: keep them, go on
                    report.problems.append(f"{where} -> {response.status_code}: {_short(str(exc), 600)}")
                try:
                    body = response.json()
                except ValueError:
                    body = None
                if generated == "negative" and response.status_code < 300:
                    report.accepted_invalid += 1
                if generated == "positive" and refused_valid(response.status_code, body):
                    report.refused_valid += 1
                    report.problems.append(f"{where} -> {response.status_code} refused a valid request: "
                                           f"{_short(response.text, 300)}")  # fmt: skip
                unnamed = unnamed_fields(response.status_code, body)
                if unnamed:
                    report.problems.append(f"{where} -> {response.status_code} names no field: {unnamed}")

            try:
                send()
            except Unsatisfiable:  # nothing to break in it (e.g. GET /livez has no input)
                continue
    return report


def _short(value: Any, limit: int = 200) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."
