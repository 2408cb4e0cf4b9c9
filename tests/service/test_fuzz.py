"""Fuzz the running API from its own OpenAPI document with schemathesis: requests generated from
every operation's schema, valid ones (positive) and ones that break it (negative), sent to uvicorn
over a socket, with a real Redis behind.  Whatever arrives, the answer is never a 5xx, and every
error is ``application/problem+json`` with a ``code`` and the status it was sent with.

Bounded: ``EXAMPLES`` requests in all, generated deterministically (``derandomize``), so a failure
is reproduced by running the test again; well under a minute on two cores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from stack import API_KEY, ApiServer, auth_env, base_env, settings_from

EXAMPLES = 300


def check_answer(case: Any, response: Any) -> None:
    status = response.status_code
    where = f"{case.method} {case.formatted_path} -> {status}: {response.text[:300]}"
    assert status < 500, where
    if status >= 400:
        ctype = {k.lower(): v for k, v in response.headers.items()}.get("content-type", [""])[0]
        assert ctype.startswith("application/problem+json"), where
        body = response.json()
        assert isinstance(body.get("code"), str) and body["code"] and body["code"] != "internal_error", where
        assert body.get("status") == status, where


def test_openapi_fuzz(redis_url: str, tmp_path: Path) -> None:
    env = base_env(redis_url, tmp_path, **auth_env(), BACKDROP_MAX_UPLOAD_BYTES="200000")
    with ApiServer(settings_from(env)) as server:
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        paths = {(op.method.upper(), op.path) for op in operations}
        assert ("POST", "/jobs") in paths and ("GET", "/jobs/{job_id}/result") in paths, paths
        post_jobs = next(op for op in operations if (op.method.upper(), op.path) == ("POST", "/jobs"))
        assert post_jobs.body, "POST /jobs documents no request body: schemathesis could not send one"
        modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        everything = st.one_of([op.as_strategy(mode) for op in operations for mode in modes])
        uploads = st.one_of([post_jobs.as_strategy(mode) for mode in modes])
        session = requests.Session()
        session.trust_env = False  # loopback only, whatever proxy the environment names
        seen: dict[tuple[str, int, str], int] = {}

        def send(case: Any) -> None:
            response = case.call(base_url=server.url, session=session, timeout=30,
                                 headers={"Authorization": f"Bearer {API_KEY}"})
            code = response.json().get("code", "") if response.status_code >= 400 else ""
            key = (f"{case.method} {case.operation.path}", response.status_code, str(code))
            seen[key] = seen.get(key, 0) + 1
            check_answer(case, response)

        # every operation, then the upload path alone (where most of the input handling is)
        for strategy, examples in ((everything, EXAMPLES // 2), (uploads, EXAMPLES // 2)):
            run = settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                           suppress_health_check=list(HealthCheck))(given(case=strategy)(send))
            run()
    print(sorted(seen.items()))
    # the fuzzer reached the upload path itself, not only the router's refusals
    assert any(op == "POST /jobs" and status not in (404, 405) for op, status, _ in seen), seen
