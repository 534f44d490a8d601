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
from typing import TYPE_CHECKING, Annotated, Literal
from uuid import uuid4

import bentoml
from pydantic import BaseModel, ConfigDict, Field

from couponflow.config import Workspace
from couponflow.contract import CATEGORIES
from serving import DEFAULT_MODEL_TAG, MODEL_TAG_ENV, WORKERS_ENV

if TYPE_CHECKING:
    from serving.recommender import Recommender

UserId = Annotated[int, Field(ge=0, strict=True, description="the shopper's user_id")]
SlateSize = Annotated[int, Field(ge=1, le=10, strict=True, description="offers wanted, at most")]


WORKERS = int(os.environ.get(WORKERS_ENV, "2"))


class RequestContext(BaseModel):
    """Request context: `category` is the page's (coupons scoped to other categories are
    not offered), `now` moves the policy's clock (eligibility); other keys are allowed."""

    model_config = ConfigDict(extra="allow")
    category: Literal[CATEGORIES] | None = Field(  # type: ignore[valid-type]
        default=None, description="the page's category; coupons of other categories are not offered"
    )
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
    workers=WORKERS,
    traffic={"timeout": 10},
)
class CouponRecommender:
    """Coupon offers for one shopper at a time, from the released model."""

    model = bentoml.models.BentoModel(os.environ.get(MODEL_TAG_ENV, DEFAULT_MODEL_TAG))

    def __init__(self) -> None:
        from serving.recommender import Recommender

        stored = self.model
        self.recommender: Recommender = Recommender(
            Path(stored.path),
            Workspace.from_env(),
            as_of=stored.info.metadata["catalogue_day"],
            workers=WORKERS,  # each worker paces its share of the day's budget
        )

    @bentoml.api(route="/recommend")
    def recommend(
        self, user_id: UserId, k: SlateSize = 1, context: RequestContext | None = None
    ) -> Recommendation:
        """Up to k coupons for `user_id`; unknown users get the cold-start features."""
        now = context.now if context else None
        category = context.category if context else None
        decision = self.recommender.recommend(user_id, k, now, category)
        return Recommendation(request_id=uuid4().hex, user_id=user_id, **decision)
