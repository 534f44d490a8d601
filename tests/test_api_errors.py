"""The API as an app developer meets it: every 4xx one RFC 9457 problem shape naming the
field or id at fault, the documentation at /docs (offline), descriptions written for the
caller, and why `k` is a most. Against conftest's real BentoML server, plus the middleware
and the slate rule on their own (no server)."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest

from serving.deploy.server import Server
from serving.runtime.problems import PROBLEM_JSON, URN, ProblemMiddleware, documented

PROBLEM_KEYS = {"type", "title", "status", "detail"}


def assert_problem(answer: httpx.Response, status: int, kind: str | None) -> dict:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM_JSON, answer.headers
    body = answer.json()
    assert isinstance(body, dict) and set(body) >= PROBLEM_KEYS, body
    assert body["status"] == status and body["detail"], body
    assert body["type"] == (URN + kind if kind else "about:blank"), body
    return body


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/recommend", {"user_id": 1, "k": 0}, "k"),
        ("/recommend", {"k": 2}, "user_id"),
        ("/recommend", {"user_id": 1, "context": {"now": "someday"}}, "context.now"),
        ("/feedback", {"request_id": "x", "event": "clicked"}, "event"),
        ("/feedback", {"event": "shown"}, "request_id"),
        ("/feedback", {"request_id": "x", "event": "purchased", "amount": -1}, "amount"),
    ],
)
def test_an_invalid_body_is_a_problem_naming_the_field(
    server: Server, path: str, body: dict, field: str
) -> None:
    answer = httpx.post(f"{server.base_url}{path}", json=body, timeout=10)
    problem = assert_problem(answer, 400, "invalid-body")
    assert problem["field"] == field and problem["instance"] == path
    assert field in [error["field"] for error in problem["errors"]]
    assert field in problem["detail"] and "validation error for" not in problem["detail"]


@pytest.mark.parametrize("path", ["/recommend", "/feedback"])
def test_a_body_that_is_not_json_is_a_problem_about_the_whole_body(
    server: Server, path: str
) -> None:
    answer = httpx.post(f"{server.base_url}{path}", content=b"{not json", timeout=10)
    problem = assert_problem(answer, 400, "invalid-body")
    assert problem["field"] == "" and problem["errors"][0]["type"] == "json_invalid"


def test_feedback_for_an_unknown_request_is_a_problem_naming_the_id(server: Server) -> None:
    body = {"request_id": "no-such-request", "event": "shown"}
    answer = httpx.post(f"{server.base_url}/feedback", json=body, timeout=10)
    problem = assert_problem(answer, 404, "unknown-request")
    assert problem["field"] == "request_id" and "no-such-request" in problem["detail"]


def test_unknown_paths_and_wrong_methods_are_problems_too(server: Server) -> None:
    assert_problem(httpx.get(f"{server.base_url}/nothing", timeout=10), 404, "no-such-route")
    assert_problem(httpx.get(f"{server.base_url}/recommend", timeout=10), 405, "method-not-allowed")


def test_swagger_is_at_docs_and_works_offline(server: Server) -> None:
    page = httpx.get(f"{server.base_url}/docs", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "swagger-ui-bundle.js" in page.text and "/docs.json" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN, no tracker
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert httpx.get(f"{server.base_url}/static_content/{asset}", timeout=10).status_code == 200


def test_the_openapi_documents_the_problems_and_the_slate_rule(server: Server) -> None:
    spec = httpx.get(f"{server.base_url}/docs.json", timeout=10).json()
    assert "Problem" in spec["components"]["schemas"]
    assert "contact" not in spec["info"]
    for path, statuses in {
        "/recommend": {"400", "401"},
        "/feedback": {"400", "401", "404"},
    }.items():
        responses = spec["paths"][path]["post"]["responses"]
        assert {s for s in responses if s.startswith("4")} == statuses, responses
        for status in statuses:
            assert PROBLEM_JSON in responses[status]["content"]
    described = spec["paths"]["/recommend"]["post"]["description"]
    assert "event loop" not in described and "worker" not in described
    assert "budget" in described and "`k` is a most" in described
    assert "request_id" in spec["paths"]["/feedback"]["post"]["description"]
    assert list(spec["paths"])[:2] == ["/recommend", "/feedback"]
    routes = [spec["paths"][path]["post"] for path in ("/recommend", "/feedback")]
    assert routes[0]["tags"] == routes[1]["tags"] and all(r["summary"] for r in routes)


# -- without a server ------------------------------------------------------------------------
def call(app, method: str, path: str) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request through an ASGI app, in process."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": []}
    asyncio.run(app(scope, receive, send))
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), body


def answering(status: int, content_type: bytes, *chunks: bytes):
    """An ASGI app answering every request with `chunks` as the body."""

    async def app(scope, receive, send) -> None:
        await send(
            {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", content_type)]}
        )  # fmt: skip
        for i, chunk in enumerate(chunks):
            more = i < len(chunks) - 1
            await send({"type": "http.response.body", "body": chunk, "more_body": more})

    return app


@pytest.mark.parametrize(
    ("status", "content_type", "chunks", "kind", "field"),
    [
        # BentoML's typed API refusing a body, sent in two pieces
        (400, b"application/json",
         [b'{"error": "1 validation error for Input", "detail": [{"type": "missing", ',
          b'"loc": ["request_id"], "msg": "Field required"}]}'], "invalid-body", "request_id"),
        (404, b"application/json", [b'[{"error": "gone"}]'], "no-such-route", None),
        (404, b"text/plain; charset=utf-8", [b"Not Found"], "no-such-route", None),
        (405, b"application/json", [b'{"detail": "Method Not Allowed"}'],
         "method-not-allowed", None),
        (413, b"text/plain", [b"too big"], None, None),
    ],
)  # fmt: skip
def test_the_middleware_rewrites_any_other_4xx_as_a_problem(
    status: int, content_type: bytes, chunks: list[bytes], kind: str | None, field: str | None
) -> None:
    app = ProblemMiddleware(answering(status, content_type, *chunks), openapi=dict)
    got, headers, body = call(app, "POST", "/x")
    problem = json.loads(body)
    assert got == status and headers[b"content-type"] == PROBLEM_JSON.encode()
    assert int(headers[b"content-length"]) == len(body)
    assert problem["type"] == (URN + kind if kind else "about:blank")
    assert problem["status"] == status and problem["instance"] == "/x"
    assert problem.get("field") == field


def test_the_middleware_leaves_answers_and_server_errors_alone() -> None:
    for status in (200, 500, 503):
        inner = answering(status, b"application/json", b'{"a": ', b"1}")
        got, headers, body = call(ProblemMiddleware(inner, openapi=dict), "POST", "/recommend")
        assert (got, headers[b"content-type"], body) == (status, b"application/json", b'{"a": 1}')


def test_the_documented_spec_replaces_bentomls_error_shapes() -> None:
    bentoml_spec = {
        "info": {"title": "t", "contact": {"name": "BentoML Team"}},
        "paths": {
            "/feedback": {"post": {"responses": {"200": {}, "400": {}, "404": {}, "500": {}}}},
            "/livez": {"get": {"responses": {"200": {}}}},
        },
    }
    spec = documented(bentoml_spec)
    responses = spec["paths"]["/feedback"]["post"]["responses"]
    assert set(responses) == {"200", "400", "401", "404", "500"}
    assert responses["404"]["content"][PROBLEM_JSON]["schema"]["$ref"].endswith("/Problem")
    assert "contact" not in spec["info"] and "contact" in bentoml_spec["info"]  # a copy
    assert list(spec["paths"])[0] == "/feedback" and spec["paths"]["/feedback"]["post"]["summary"]


def test_k_is_a_most_the_slate_ends_where_no_coupon_is_worth_more() -> None:
    """Why k=5 mostly returns one offer: each slot after the first offers the best coupon
    left only if its value net of the budget's price beats offering nothing (arm 0)."""
    from couponflow.policy import choose

    rng = np.random.default_rng(0)
    one_worth_it = np.array([0.0, 2.0, -0.5, -1.0, -0.1, -3.0])  # lagrangian values
    assert [arm for arm, _ in choose(one_worth_it, 5, 0.0, rng)] == [1]
    three_worth_it = np.array([0.0, 2.0, 1.0, -1.0, 0.5, -3.0])
    assert [arm for arm, _ in choose(three_worth_it, 5, 0.0, rng)] == [1, 2, 4]
    # and the day's allowance stops the slate too, however much the coupons are worth
    cost = np.array([0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    all_worth_it = np.array([0.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    assert len(choose(all_worth_it, 5, 0.0, rng, cost, allowance=2.5)) == 2


def test_a_missing_api_key_is_a_problem() -> None:
    from serving.runtime.auth import ApiKeyMiddleware

    guarded = ApiKeyMiddleware(answering(200, b"application/json", b"{}"), key="k3y")
    got, headers, body = call(ProblemMiddleware(guarded, openapi=dict), "POST", "/recommend")
    assert got == 401 and headers[b"content-type"] == PROBLEM_JSON.encode()
    assert json.loads(body)["type"] == URN + "unauthorized"
    assert int(headers[b"content-length"]) == len(body)
