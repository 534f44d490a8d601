"""A small typed client for downstream apps (checkout, app home, CRM).

Every call has a timeout and fails with a `CouponflowError` subclass that says what to do:
`BadRequest` (fix the call: the message names the field), `Unauthorized` (the API key),
`UnknownRequest` (feedback for a request id the service never answered) or `Unavailable`
(the service is down, slow or broken: show no coupon and carry on). Only httpx needed.

    with CouponflowClient("http://127.0.0.1:3300", api_key=...) as client:
        answer = client.recommend(42, k=2, category="home")
        client.feedback(answer.request_id, "shown")
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, TypedDict

import httpx

Event = Literal["shown", "redeemed", "purchased"]


class _RecommendBody(TypedDict):
    """What `recommend` sends (the service's RecommendRequest; couponflow.records has the
    project's copy, this package stands alone)."""

    user_id: int
    k: int
    context: dict[str, object] | None  # the page's keys: category, now (ISO), any other
    explain: bool


class _FeedbackBody(TypedDict):
    request_id: str
    event: Event
    amount: float | None


class CouponflowError(RuntimeError):
    """A call failed; `status` is the HTTP status when the service answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class BadRequest(CouponflowError):
    """The service refused the request as malformed (4xx); the message names the field."""


class Unauthorized(CouponflowError):
    """Missing or wrong API key (401)."""


class UnknownRequest(CouponflowError):
    """Feedback named a request id the service has no decision for (404)."""


class Unavailable(CouponflowError):
    """No usable answer in time: connection refused, timeout or a 5xx."""


@dataclass(frozen=True)
class Driver:
    feature: str
    value: float
    baseline: float
    effect: float  # expected incremental profit this input's value adds over cold start


@dataclass(frozen=True)
class Offer:
    coupon_id: str
    score: float  # expected incremental profit over no coupon
    p_redeem: float
    propensity: float
    drivers: list[Driver] | None  # only when explain was asked


@dataclass(frozen=True)
class Recommendation:
    request_id: str  # quote it in feedback
    user_id: int
    model_version: str
    policy_version: str
    cold_start: bool
    degraded: bool
    offers: list[Offer]


@dataclass(frozen=True)
class FeedbackAck:
    request_id: str
    event: str
    user_id: int
    recorded: bool  # False: a repeat of an event already recorded
    pushed: bool  # the user's fresh counters reached the online store


@dataclass(frozen=True)
class Health:
    live: bool  # the server process answers
    ready: bool  # the model and features are loaded: it can take traffic


class CouponflowClient:
    """The couponflow service at `base_url`. `timeout_s` bounds every call (a decision
    normally takes milliseconds: a shopper should not wait on a coupon)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout_s: float = 1.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=base_url, headers=headers, timeout=timeout_s, transport=transport
        )

    def recommend(
        self,
        user_id: int,
        k: int = 1,
        *,
        category: str | None = None,
        now: datetime | None = None,
        explain: bool = False,
        context: Mapping[str, object] | None = None,
    ) -> Recommendation:
        """Up to k offers for `user_id`. `context` carries any other keys of the page."""
        ctx: dict[str, object] = dict(context or {})
        if category is not None:
            ctx["category"] = category
        if now is not None:
            ctx["now"] = now.isoformat()
        body: _RecommendBody = {
            "user_id": user_id,
            "k": k,
            "context": ctx or None,
            "explain": explain,
        }
        raw = self._post("/recommend", body)
        offers = [
            Offer(
                **{
                    **offer,
                    "drivers": None
                    if offer.get("drivers") is None
                    else [Driver(**d) for d in offer["drivers"]],
                }
            )
            for offer in raw["offers"]
        ]
        return Recommendation(**{**raw, "offers": offers})

    def feedback(self, request_id: str, event: Event, amount: float | None = None) -> FeedbackAck:
        """Report an outcome of the decision `request_id`; repeating it is harmless."""
        raw = self._post("/feedback", {"request_id": request_id, "event": event, "amount": amount})
        return FeedbackAck(**raw)

    def health(self) -> Health:
        """Liveness and readiness; never raises (a dead service is simply not live)."""
        return Health(live=self._ok("/livez"), ready=self._ok("/readyz"))

    def _ok(self, path: str) -> bool:
        try:
            return self._http.get(path).status_code == 200
        except httpx.HTTPError:
            return False

    def _post(self, path: str, body: _RecommendBody | _FeedbackBody) -> dict[str, Any]:
        """POST and return the JSON answer, or raise the error that says what went wrong.
        The answer is free-form here: the dataclasses it is built into check its keys."""
        try:
            response = self._http.post(path, json=body)
        except httpx.TimeoutException as exc:
            raise Unavailable(f"POST {path}: no answer within the timeout ({exc!r})") from exc
        except httpx.HTTPError as exc:
            raise Unavailable(f"POST {path}: {exc!r}") from exc
        status = response.status_code
        if status == 200:
            try:
                return response.json()
            except ValueError as exc:
                raise Unavailable(f"POST {path}: not JSON: {response.text[:200]}", status) from exc
        message = f"POST {path}: {status} {_reason(response)}"
        if status == 401:
            raise Unauthorized(message, status)
        if status == 404:
            raise UnknownRequest(message, status)
        if 400 <= status < 500:
            raise BadRequest(message, status)
        raise Unavailable(message, status)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CouponflowClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _reason(response: httpx.Response) -> str:
    """The service's reason: a problem's `detail` (every 4xx: serving.runtime.problems names the
    field at fault there), else whatever text came back."""
    try:
        payload = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(payload, dict) and isinstance(payload.get("detail"), str):
        return payload["detail"]
    if isinstance(payload, dict):
        return str(payload.get("error") or payload)
    return str(payload)
