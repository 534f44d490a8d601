"""One shape for every refusal of the API: an RFC 9457 problem body
(`Content-Type: application/problem+json`), and the API's documentation at /docs.

    {"type": "urn:couponflow:problem:invalid-body", "title": "The request body is invalid",
     "status": 400, "detail": "k: Input should be greater than or equal to 1",
     "instance": "/recommend",
     "errors": [{"field": "k", "loc": ["k"], "message": "Input should be ...",
                 "type": "greater_than_equal"}]}

`type` says what kind of refusal it is (PROBLEM_TYPES, documented in the OpenAPI schema
and docs/runbook.md), `detail` says it in a sentence, `field` names the field at fault
when there is one (`errors` lists them all for an invalid body; a field of the context is
`context.now`; `loc` is the same path as a list; an empty `field` means the whole body,
e.g. JSON that does not parse). Our own routes answer in this shape directly;
`ProblemMiddleware` rewrites what BentoML and Starlette answer themselves (a /feedback body
failing BentoML's validation, an unknown path, a wrong method), so a client parses one
shape whatever refused it. 5xx answers are not rewritten.

The middleware also serves the API's own pages, offline (no CDN, no tracker): /docs, a
Swagger UI over BentoML's bundled assets, and /docs.json, BentoML's OpenAPI with the
problem responses documented on every route.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from http import HTTPStatus
from typing import Any, NotRequired, TypedDict

PROBLEM_JSON = "application/problem+json"
URN = "urn:couponflow:problem:"
# type -> (title, when it is answered)
PROBLEM_TYPES = {
    "invalid-body": (
        "The request body is invalid",
        "400: a field is missing, of the wrong type or out of range (`errors` names each), "
        "or the body is not JSON (`field` empty)",
    ),
    "unknown-request": (
        "No such decision",
        "404 on /feedback: `request_id` names no decision of this deployment (or one older "
        "than serving.feedback_retention_days)",
    ),
    "unauthorized": (
        "Missing or wrong API key",
        "401: send `Authorization: Bearer <key>` or `x-api-key: <key>`",
    ),
    "no-such-route": ("No such route", "404: the path is not one of the API's (see /docs)"),
    "method-not-allowed": ("Method not allowed", "405: the API's routes take POST"),
}
DOCS_HTML = b"""<!DOCTYPE html>
<html lang="en"><head><meta charset="UTF-8"><title>couponflow API</title>
<link rel="stylesheet" type="text/css" href="/static_content/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/static_content/swagger-ui-bundle.js" charset="UTF-8"></script>
<script src="/static_content/swagger-ui-standalone-preset.js" charset="UTF-8"></script>
<script>
window.onload = function () {
  window.ui = SwaggerUIBundle({url: "/docs.json", dom_id: "#swagger-ui", deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout"});
};
</script></body></html>
"""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class FieldError(TypedDict):
    """One field at fault in an invalid body."""

    field: str
    loc: list[str | int]
    message: str
    type: str  # pydantic's error type


class Problem(TypedDict):
    """A problem body (PROBLEM_SCHEMA documents it to clients)."""

    type: str
    title: str
    status: int
    detail: str
    instance: NotRequired[str]
    field: NotRequired[str]
    errors: NotRequired[list[FieldError]]


def field_of(loc: list | tuple) -> str:
    """A pydantic error location as the field's dotted name: `context.now`, `` for the
    body as a whole. BentoML's typed API puts its body model's fields at the top level."""
    return ".".join(str(part) for part in loc)


def problem(
    kind: str,
    status: int,
    detail: str,
    instance: str | None = None,
    field: str | None = None,
    errors: list[FieldError] | None = None,
) -> Problem:
    """A problem body of one of PROBLEM_TYPES (or `about:blank` for any other 4xx); `field`
    names the field at fault, `errors` each of an invalid body's."""
    title = PROBLEM_TYPES[kind][0] if kind in PROBLEM_TYPES else HTTPStatus(status).phrase
    body: Problem = {
        "type": URN + kind if kind in PROBLEM_TYPES else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if field is not None:
        body["field"] = field
    if errors is not None:
        body["errors"] = errors
    return body


def invalid_body(errors: Sequence[Mapping[str, Any]], instance: str | None = None) -> Problem:
    """The problem for pydantic `errors` (each with `loc`, `msg`, `type`; as BentoML
    answered them, plain JSON read with defaults)."""
    listed: list[FieldError] = [
        {
            "field": field_of(error.get("loc", ())),
            "loc": list(error.get("loc", ())),
            "message": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        for error in errors
    ]
    detail = "; ".join(f"{e['field'] or 'body'}: {e['message']}" for e in listed)
    field = listed[0]["field"] if listed else ""
    return problem("invalid-body", 400, detail, instance, field=field, errors=listed)


def encode(body: Problem) -> bytes:
    return json.dumps(body).encode()


def from_answer(status: int, body: bytes, path: str) -> Problem:
    """The problem for a 4xx that BentoML or Starlette answered in a shape of its own:
    `{"error", "detail": [pydantic errors]}`, `[{"error": ...}]`, `{"detail": "..."}` or
    plain text."""
    try:
        payload: Any = json.loads(body) if body else None
    except ValueError:
        payload = None
    if isinstance(payload, list) and len(payload) == 1:
        payload = payload[0]
    if isinstance(payload, dict) and isinstance(payload.get("detail"), list):
        return invalid_body(payload["detail"], path)
    if isinstance(payload, dict):
        message = str(payload.get("error") or payload.get("detail") or HTTPStatus(status).phrase)
    else:
        message = body.decode("utf-8", "replace").strip() or HTTPStatus(status).phrase
    if status == 404:
        return problem("no-such-route", 404, f"{path}: {message}", path)
    if status == 405:
        return problem("method-not-allowed", 405, f"{path}: {message}", path)
    return problem("", status, message, path)


class ProblemMiddleware:
    """ASGI middleware: a 4xx not already a problem is rewritten as one; /docs and
    /docs.json are answered here. Everything else passes untouched (a 2xx costs one
    status check)."""

    def __init__(self, app: App, openapi: Callable[[], dict[str, Any]]) -> None:
        self.app = app
        self.openapi = openapi  # BentoML's OpenAPI document of the service: free-form JSON
        self._spec: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if scope["method"] in ("GET", "HEAD") and path in ("/docs", "/docs/", "/docs.json"):
            if path == "/docs.json":
                if self._spec is None:
                    self._spec = json.dumps(documented(self.openapi())).encode()
                await _answer(send, 200, "application/json", self._spec)
            else:
                await _answer(send, 200, "text/html; charset=utf-8", DOCS_HTML)
            return
        held: dict[str, Any] = {}  # the 4xx start message and its body while held back

        async def rewriting(message: Message) -> None:
            if message["type"] == "http.response.start":
                if 400 <= message["status"] < 500 and not _is_problem(message):
                    held["start"], held["body"] = message, b""
                    return
                await send(message)
            elif "start" in held and message["type"] == "http.response.body":
                held["body"] += message.get("body", b"")
                if not message.get("more_body", False):
                    status = held["start"]["status"]
                    body = encode(from_answer(status, held["body"], path))
                    await _answer(send, status, PROBLEM_JSON, body, held["start"])
            else:
                await send(message)

        await self.app(scope, receive, rewriting)


def _is_problem(start: Message) -> bool:
    headers = dict(start.get("headers", []))
    return headers.get(b"content-type", b"").startswith(PROBLEM_JSON.encode())


async def _answer(
    send: Send, status: int, content_type: str, body: bytes, start: Message | None = None
) -> None:
    """Send a whole answer; headers of `start` other than the body's are kept."""
    kept = [
        (name, value)
        for name, value in (start or {}).get("headers", [])
        if name.lower() not in (b"content-type", b"content-length")
    ]
    headers = [*kept, (b"content-type", content_type.encode()),
               (b"content-length", str(len(body)).encode())]  # fmt: skip
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- the OpenAPI document ------------------------------------------------------------------
PROBLEM_SCHEMA: dict[str, Any] = {  # a JSON Schema, free-form: it goes into the OpenAPI
    "type": "object",
    "title": "Problem",
    "description": "Every 4xx of this API (RFC 9457). `type` is one of: "
    + "; ".join(f"`{URN}{kind}`: {when}" for kind, (_, when) in PROBLEM_TYPES.items())
    + "; `about:blank` for any other 4xx.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "what kind of refusal (see above)"},
        "title": {"type": "string", "description": "the kind in words"},
        "status": {"type": "integer", "description": "the HTTP status"},
        "detail": {"type": "string", "description": "this refusal in a sentence"},
        "instance": {"type": "string", "description": "the path refused"},
        "field": {
            "type": "string",
            "description": "the field at fault, dotted (`context.now`); empty: the whole body",
        },
        "errors": {
            "type": "array",
            "description": "invalid-body: every field at fault",
            "items": {
                "type": "object",
                "properties": {
                    "field": {"type": "string"},
                    "loc": {"type": "array", "items": {"type": "string"}},
                    "message": {"type": "string"},
                    "type": {"type": "string", "description": "pydantic's error type"},
                },
            },
        },
    },
}
SUMMARIES = {  # the routes an app calls, first, under one tag, each with a summary
    "/recommend": "Coupon offers for a shopper",
    "/feedback": "Report what the shopper did with them",
}
ROUTE_PROBLEMS = {
    "/recommend": {400: "invalid-body", 401: "unauthorized"},
    "/feedback": {400: "invalid-body", 401: "unauthorized", 404: "unknown-request"},
}


def documented(spec: dict[str, Any]) -> dict[str, Any]:
    """BentoML's OpenAPI of the service with each route's 4xx answers as problems (BentoML
    documents its own error shapes, which the middleware no longer sends), the two routes
    an app calls first and together, and without BentoML's team as the API's contact."""
    spec = json.loads(json.dumps(spec))
    spec.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    spec.get("info", {}).pop("contact", None)
    ref = {"$ref": "#/components/schemas/Problem"}
    paths = spec.get("paths", {})
    tags = paths.get("/feedback", {}).get("post", {}).get("tags")
    for path, summary in SUMMARIES.items():
        if "post" in paths.get(path, {}):
            paths[path]["post"]["summary"] = summary
            if tags:
                paths[path]["post"]["tags"] = tags
    spec["paths"] = {
        **{path: paths[path] for path in SUMMARIES if path in paths},
        **{path: item for path, item in paths.items() if path not in SUMMARIES},
    }
    for path, item in spec.get("paths", {}).items():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            for status in [s for s in responses if str(s).startswith("4")]:
                del responses[status]
            for status, kind in ROUTE_PROBLEMS.get(path, {}).items():
                responses[str(status)] = {
                    "description": PROBLEM_TYPES[kind][1],
                    "content": {PROBLEM_JSON: {"schema": ref}},
                }
    return spec
