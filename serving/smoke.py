"""The smoke test a freshly started server must pass before it is released: a known user
and an unknown one get well-formed answers, and a malformed request is refused."""

from __future__ import annotations

from typing import Any

import httpx

COLD_USER_ID = 10**9  # beyond any simulated user_id: must be served from default features
ANSWER_FIELDS = {
    "request_id", "user_id", "model_version", "policy_version", "cold_start", "degraded", "offers"
}  # fmt: skip
OFFER_FIELDS = {"coupon_id", "score", "p_redeem", "propensity", "drivers"}


class SmokeTestFailed(RuntimeError):
    """The live server misbehaved; the message says how."""


def smoke_test(base_url: str, known_user_id: int = 0, timeout_s: float = 10.0) -> dict[str, Any]:
    """Check the live service end to end; returns the known user's answer."""
    with httpx.Client(base_url=base_url, timeout=timeout_s) as client:
        known = _recommend(client, {"user_id": known_user_id, "k": 3})
        if known["degraded"]:
            raise SmokeTestFailed(f"a degraded answer: a store is failing (server log): {known}")
        if known["cold_start"]:
            raise SmokeTestFailed(f"user {known_user_id} is not in the online feature store")
        cold = _recommend(client, {"user_id": COLD_USER_ID})
        if not cold["cold_start"]:
            raise SmokeTestFailed(f"unknown user {COLD_USER_ID} was not served as a cold start")
        bad = _post(client, {"user_id": "not-a-number"})
        if not 400 <= bad.status_code < 500:
            raise SmokeTestFailed(f"malformed request got {bad.status_code}, expected 4xx")
    return known


def _recommend(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
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
        if set(offer) != OFFER_FIELDS or not 0.0 < offer["propensity"] <= 1.0:
            raise SmokeTestFailed(f"malformed offer {offer}")
    if len(answer["offers"]) > body.get("k", 1):
        raise SmokeTestFailed(f"{len(answer['offers'])} offers for k={body.get('k', 1)}")
    return answer


def _post(client: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    try:
        return client.post("/recommend", json=body)
    except httpx.HTTPError as exc:
        raise SmokeTestFailed(f"POST /recommend {body}: {exc!r}") from exc
