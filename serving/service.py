"""The BentoML service: `POST /recommend` in front of the live policy.

A thin adapter: it validates requests (a bad body is a 4xx naming the field), picks the
model named by $COUPONFLOW_MODEL_TAG and hands the decision to `Recommender`. Heavy
imports (torch, Feast) wait for a worker's start, because `bentoml build` imports this
module only to read its API. Readiness and liveness are BentoML's /readyz and /livez.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from uuid import uuid4

import bentoml
from pydantic import BaseModel, ConfigDict, Field

from couponflow.config import Workspace
from serving import DEFAULT_MODEL_TAG, MODEL_TAG_ENV, WORKERS_ENV

if TYPE_CHECKING:
    from serving.recommender import Recommender

UserId = Annotated[int, Field(ge=0, strict=True, description="the shopper's user_id")]
SlateSize = Annotated[int, Field(ge=1, le=10, strict=True, description="offers wanted, at most")]


class RequestContext(BaseModel):
    """Free-form request context; `now` moves the policy's clock (eligibility)."""

    model_config = ConfigDict(extra="allow")
    now: datetime | None = Field(default=None, description="judge coupon validity at this time")


class Offer(BaseModel):
    coupon_id: str
    score: float = Field(description="expected incremental profit over no coupon")
    p_redeem: float
    propensity: float = Field(description="probability the policy chose this offer")


class Recommendation(BaseModel):
    request_id: str
    user_id: int
    model_version: str
    policy_version: str
    cold_start: bool = Field(description="the feature store had no row for this user")
    offers: list[Offer]


@bentoml.service(
    name="couponflow-recommender",
    workers=int(os.environ.get(WORKERS_ENV, "2")),
    traffic={"timeout": 10},
)
class CouponRecommender:
    """Coupon offers for one shopper at a time, from the released model."""

    model = bentoml.models.BentoModel(os.environ.get(MODEL_TAG_ENV, DEFAULT_MODEL_TAG))

    def __init__(self) -> None:
        from serving.recommender import Recommender

        stored = self.model
        self.recommender: Recommender = Recommender(
            Path(stored.path), Workspace.from_env(), as_of=stored.info.metadata["catalogue_day"]
        )

    @bentoml.api(route="/recommend")
    def recommend(
        self, user_id: UserId, k: SlateSize = 1, context: RequestContext | None = None
    ) -> Recommendation:
        """Up to k coupons for `user_id`; unknown users get the cold-start features."""
        now = context.now if context else None
        decision = self.recommender.recommend(user_id, k, now)
        return Recommendation(request_id=uuid4().hex, user_id=user_id, **decision)
