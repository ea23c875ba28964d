"""The OpenAPI document validates, and schemathesis finds no 5xx in /$mgmt/v1 (issue 5).

The run is bounded: a fixed number of examples per operation and generation mode (5
positive, 4 negative; under MAX_REQUESTS in all), generation only (no shrinking, no
example database), derandomized so that CI replays the same inputs. The relay runs in the
test's event loop; schemathesis' blocking HTTP client runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import pytest
from tests.harness.relay import ROOT_KEY, InProcessRelay

from hybridrelay.protocol.sas import create_sas_token
from hybridrelay.relay.mgmt.openapi import build_openapi

schemathesis = pytest.importorskip("schemathesis")
openapi_spec_validator = pytest.importorskip("openapi_spec_validator")
requests = pytest.importorskip("requests")
hypothesis = pytest.importorskip("hypothesis")

EXAMPLES: Final = {"positive": 5, "negative": 4}


@schemathesis.serializer("application/x-ndjson")  # type: ignore[untyped-decorator]
def _ndjson(ctx: object, value: object) -> bytes:
    # POST /jobs/import takes JSON Lines; the schema calls the body a string.
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else b"%r" % value


# About 9 examples per operation, fewer for some (certificates 6; a path-only GET has no
# negative input): about 300 for the 45 operations since the device timeline, key
# regeneration, HC metrics and the HTTP inspector (issue 14).
MAX_REQUESTS: Final = 360


def test_openapi_document_validates() -> None:
    openapi_spec_validator.validate(build_openapi())


async def test_served_openapi_document_is_the_same(relay: InProcessRelay) -> None:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.get(relay.http_url + "/$mgmt/v1/openapi.json") as resp,
    ):
        assert resp.status == 200
        served = await resp.json()
    assert served == build_openapi()
    openapi_spec_validator.validate(served)


# A parameter schema with one of these can be violated by a generated value. A bare string
# (even with minLength 1 on a path segment, which schemathesis never sends empty) cannot.
_NEGATABLE_KEYWORDS: Final = frozenset(
    {"pattern", "minimum", "maximum", "maxLength", "enum", "format"}
)


def _negatable(document: dict[str, Any], path: str, method: str) -> bool:
    """Whether negative generation can produce anything for this operation.

    Hypothesis spends seconds (tens under CI load) proving an unnegatable operation
    Unsatisfiable, so those run positive examples only; the negative examples still cover
    every body and every constrained parameter.
    """
    item = document["paths"][path]
    operation = item[method.lower()]
    if "requestBody" in operation:
        return True
    for parameter in [*item.get("parameters", []), *operation.get("parameters", [])]:
        schema = parameter.get("schema", {})
        if schema.get("type", "string") != "string" or _NEGATABLE_KEYWORDS & schema.keys():
            return True
    return False


def _fuzz(base_url: str, token: str) -> tuple[int, list[str]]:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    document = build_openapi()
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    sent = 0
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode_name, examples in EXAMPLES.items():
                mode = GenerationMode(mode_name)
                if mode is GenerationMode.NEGATIVE and not _negatable(
                    document, operation.path, operation.method
                ):
                    continue

                @settings(
                    max_examples=examples,
                    deadline=None,
                    database=None,
                    derandomize=True,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=operation.as_strategy(generation_mode=mode))
                def probe(case) -> None:  # a schemathesis Case (generic over its operation type)
                    nonlocal sent
                    sent += 1
                    response = case.call(
                        base_url=base_url,
                        session=session,
                        headers={"Authorization": token},
                        timeout=10,
                    )
                    if response.status_code >= 500:
                        failures.append(
                            f"{response.status_code} for {case.method} {case.formatted_path}: "
                            f"{case.as_curl_command()}\n{response.text[:300]}"
                        )

                try:
                    probe()
                except Unsatisfiable:
                    # No negative input exists for an operation without parameters or body.
                    assert mode is GenerationMode.NEGATIVE, operation.label
    return sent, failures


@pytest.mark.timeout(60)
async def test_schemathesis_finds_no_server_errors(relay: InProcessRelay) -> None:
    token = create_sas_token(
        "http://127.0.0.1/", "RootManageSharedAccessKey", ROOT_KEY, int(time.time()) + 600
    )
    started = time.monotonic()
    sent, failures = await asyncio.to_thread(_fuzz, relay.http_url + "/$mgmt/v1", token)
    assert not failures, "\n\n".join(failures)
    assert 0 < sent <= MAX_REQUESTS
    assert time.monotonic() - started < 60
