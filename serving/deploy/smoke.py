"""The checks a freshly started server must pass before it takes traffic: golden requests
(a known user, an unknown one, a category page, an explanation, malformed requests, feedback
for an unknown decision) get the answers they must, from the expected model, fast enough.

Golden requests say `context.channel: "golden"`, so readers of the decision log can tell
them from shoppers'.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import cast

import httpx
import numpy as np

from couponflow.config import RolloutParams
from couponflow.contract import GOLDEN
from couponflow.records import Answer, CanaryChecks, LatencyCheck, RecommendBody, RequestContext

COLD_USER_ID = 10**9  # beyond any simulated user_id: must be served from default features
ANSWER_FIELDS = {
    "request_id", "user_id", "model_version", "policy_version", "cold_start", "degraded", "offers"
}  # fmt: skip
OFFER_FIELDS = {"coupon_id", "score", "p_redeem", "propensity", "drivers"}


class SmokeTestFailed(RuntimeError):
    """The live server misbehaved; the message says how."""


def smoke_test(
    base_url: str,
    known_user_id: int = 0,
    timeout_s: float = 10.0,
    model_version: str | None = None,
) -> Answer:
    """The golden requests against a server (and, given `model_version`, that it serves
    that model); returns the known user's answer."""
    with httpx.Client(base_url=base_url, timeout=timeout_s) as client:
        known = _recommend(client, {"user_id": known_user_id, "k": 3, "context": GOLDEN})
        if known["degraded"]:
            raise SmokeTestFailed(f"a degraded answer: a store is failing (server log): {known}")
        if known["cold_start"]:
            raise SmokeTestFailed(f"user {known_user_id} is not in the online feature store")
        if model_version is not None and known["model_version"] != model_version:
            raise SmokeTestFailed(f"serves model {known['model_version']}, not {model_version}")
        cold = _recommend(client, {"user_id": COLD_USER_ID, "context": GOLDEN})
        if not cold["cold_start"]:
            raise SmokeTestFailed(f"unknown user {COLD_USER_ID} was not served as a cold start")
        page: RequestContext = {**GOLDEN, "category": "fashion"}
        _recommend(client, {"user_id": known_user_id, "k": 2, "context": page, "explain": True})
        for bad, field in (
            ({"user_id": "not-a-number"}, "user_id"),
            ({"user_id": known_user_id, "k": 11}, "k"),
            ({"user_id": known_user_id, "context": {"category": "no-such-page"}}, "category"),
        ):
            refused = _post(client, bad)
            if not 400 <= refused.status_code < 500 or field not in refused.text:
                raise SmokeTestFailed(
                    f"{bad} got {refused.status_code} {refused.text[:200]}, expected a 4xx "
                    f"naming {field}"
                )
        unknown = client.post("/feedback", json={"request_id": "golden-none", "event": "shown"})
        if unknown.status_code != 404:
            raise SmokeTestFailed(f"feedback for an unknown decision got {unknown.status_code}")
    return known


def latency_check(
    base_url: str, requests: int, max_p99_ms: float, timeout_s: float = 10.0
) -> LatencyCheck:
    """p50 and p99 of `requests` sequential golden requests over one connection (users
    0, 1, ...); SmokeTestFailed when p99 exceeds `max_p99_ms`: a candidate much slower than
    it should be never takes traffic."""
    seconds = []
    with httpx.Client(base_url=base_url, timeout=timeout_s) as client:
        for user in range(requests):
            started = time.perf_counter()
            _recommend(client, {"user_id": user, "context": GOLDEN})
            seconds.append(time.perf_counter() - started)
    p50, p99 = (float(np.percentile(np.array(seconds) * 1000, q)) for q in (50, 99))
    if p99 > max_p99_ms:
        raise SmokeTestFailed(f"p99 {p99:.1f} ms over {requests} requests > {max_p99_ms} ms")
    return {"requests": requests, "p50_ms": round(p50, 2), "p99_ms": round(p99, 2)}


def canary_checks(base_url: str, model_version: str, cfg: RolloutParams) -> CanaryChecks:
    """Everything a candidate must pass before taking traffic (`cfg`: serving.rollout)."""
    answer = smoke_test(base_url, model_version=model_version)
    latency = latency_check(base_url, int(cfg["latency_requests"]), float(cfg["max_p99_ms"]))
    return {"golden": "passed", "answer": answer, "latency": latency}


def _recommend(client: httpx.Client, body: RecommendBody) -> Answer:
    """POST /recommend and check the answer's shape; the parsed answer."""
    response = _post(client, body)
    if response.status_code != 200:
        raise SmokeTestFailed(f"POST /recommend {body}: {response.status_code} {response.text}")
    try:
        answer = response.json()
    except ValueError as exc:
        raise SmokeTestFailed(f"POST /recommend {body}: not JSON: {response.text[:200]}") from exc
    if not isinstance(answer, dict) or set(answer) != ANSWER_FIELDS:
        raise SmokeTestFailed(f"answer {answer}, expected the fields {sorted(ANSWER_FIELDS)}")
    if answer["user_id"] != body["user_id"] or not answer["model_version"]:
        raise SmokeTestFailed(f"answer does not match the request: {answer}")
    for offer in answer["offers"]:
        if (
            set(offer) != OFFER_FIELDS
            or not 0.0 < offer["propensity"] <= 1.0
            or not 0.0 <= offer["p_redeem"] <= 1.0
            or not math.isfinite(offer["score"])
        ):
            raise SmokeTestFailed(f"malformed offer {offer}")
    if len(answer["offers"]) > body.get("k", 1):
        raise SmokeTestFailed(f"{len(answer['offers'])} offers for k={body.get('k', 1)}")
    return cast(Answer, answer)  # its fields checked above


def _post(client: httpx.Client, body: Mapping[str, object]) -> httpx.Response:
    """POST a request body, malformed ones included (free-form, not a RecommendBody: its
    shape is the test)."""
    try:
        return client.post("/recommend", json=body)
    except httpx.HTTPError as exc:
        raise SmokeTestFailed(f"POST /recommend {body}: {exc!r}") from exc
