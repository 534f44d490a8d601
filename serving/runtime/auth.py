"""The optional API key: when $COUPONFLOW_API_KEY is set, the decision and feedback routes
answer 401 unless the caller sends it (`Authorization: Bearer <key>` or `x-api-key`).
Probes and metrics (/livez, /readyz, /metrics) stay open for the platform."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from serving.runtime.problems import PROBLEM_JSON, encode, problem

API_KEY_ENV = "COUPONFLOW_API_KEY"
PROTECTED = ("/recommend", "/feedback")

UNAUTHORIZED = encode(
    problem("unauthorized", 401, "missing or wrong API key (Authorization: Bearer or x-api-key)")
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key a request carries, from either header."""
    for name, value in headers:
        if name.lower() == b"x-api-key":
            return value.decode("latin-1")
        if name.lower() == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].decode("latin-1").strip()
    return None


class ApiKeyMiddleware:
    """ASGI middleware refusing protected routes without the key (constant-time compare)."""

    def __init__(self, app: App, key: str) -> None:
        self.app, self.key = app, key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PROTECTED):
            key = presented_key(scope.get("headers", []))
            if key is None or not hmac.compare_digest(key.encode(), self.key.encode()):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", PROBLEM_JSON.encode()),
                            (b"content-length", str(len(UNAUTHORIZED)).encode()),
                            (b"www-authenticate", b"Bearer"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": UNAUTHORIZED})
                return
        await self.app(scope, receive, send)
