"""The BentoML service: `POST /recommend` in front of the live policy, `POST /feedback`
for the outcomes of its decisions.

A thin adapter: it validates requests (a bad body is a 4xx naming the field), picks the
model named by $COUPONFLOW_MODEL_TAG, hands the decision to `Recommender`, counts spend in
the workspace's shared store and lands every decision and outcome (serving.runtime.feedback).
Heavy imports (torch, Feast, prometheus_client) wait for a worker's start, because
`bentoml build` imports this module only to read its API. Readiness and liveness are
BentoML's /readyz and /livez, metrics its /metrics (ours: serving.runtime.metrics); the API key
is optional (serving.runtime.auth).

`/feedback` is a typed BentoML API. `/recommend`, the hot path every shopper waits on, is
a route of the FastAPI app `decisions` mounted on the service (`@bentoml.asgi_app`): its
body is parsed once, by pydantic-core, into `RecommendRequest`, and its answer serialised
once, where the typed API's wrapper cost a request ~0.1 ms of CPU more (docs/scaling.md).
The route is a plain async function handing the body to the worker's service instance,
not one of BentoML's FastAPI class views: those inject `self` through a sync dependency,
which FastAPI runs on a thread pool, a hand-over to a thread and back on every request.
It runs on the worker's event loop: only the feature read leaves it (awaited, bounded by
serving.feature_timeout_s); scoring, pacing and landing the decision (~0.5 ms) run in
place, which costs a request less than handing it to a thread and back.

Every 4xx is an RFC 9457 problem body naming the field at fault (serving.runtime.problems); the
API's documentation is Swagger UI at /docs over the OpenAPI at /docs.json, both offline.
"""

from __future__ import annotations

import gc
import logging
import os
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast
from uuid import uuid4

import bentoml
from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.responses import Response

from couponflow.config import Workspace
from couponflow.contract import CATEGORIES
from serving import ACCESS_LOG_ENV, DEFAULT_MODEL_TAG, MODEL_TAG_ENV, WORKERS_ENV
from serving.runtime.auth import API_KEY_ENV, ApiKeyMiddleware
from serving.runtime.problems import (
    PROBLEM_JSON,
    Problem,
    ProblemMiddleware,
    encode,
    invalid_body,
    problem,
)

if TYPE_CHECKING:
    from serving.runtime.feedback import FeedbackLog
    from serving.runtime.recommender import Decision, Recommender

INT64_MAX = 2**63 - 1  # Feast's entity keys and the decision index store user ids as int64
UserId = Annotated[int, Field(ge=0, le=INT64_MAX, strict=True, description="the shopper's user_id")]
SlateSize = Annotated[int, Field(ge=1, le=10, strict=True, description="offers wanted, at most")]
RequestId = Annotated[
    str, Field(min_length=1, max_length=64, description="request_id of a /recommend answer")
]
Amount = Annotated[float, Field(ge=0, le=1e6, description="order amount, if any")]
CLOCK_YEARS = (1970, 2200)  # a request's `now` must fall in these years


WORKERS = int(os.environ.get(WORKERS_ENV, "2"))
# Requests run on a thread pool, and OpenMP gives each new thread a team of one thread per
# core unless told otherwise (torch.set_num_threads holds only for the thread calling
# it): spinning teams oversubscribed the cores and throughput fell 4x under concurrency.
# Must be set before torch loads, which waits for the worker's start (__init__).
os.environ.setdefault("OMP_NUM_THREADS", "1")
logger = logging.getLogger(__name__)
BENTOML_REQUEST_LOGGER = "bentoml._internal.server.http_app"  # logs each failed request


class RequestContext(BaseModel):
    """Request context: `category` is the page's (coupons scoped to other categories are
    not offered), `now` moves the policy's clock (eligibility); other keys are allowed."""

    model_config = ConfigDict(extra="allow")
    channel: str | None = Field(
        default=None,
        max_length=64,
        description='where the offer is shown (checkout, app_home, crm; "golden": a check)',
    )
    category: Literal[CATEGORIES] | None = Field(  # type: ignore[valid-type]
        default=None, description="the page's category; coupons of other categories are not offered"
    )
    now: datetime | None = Field(
        default=None,
        description=f"judge coupon validity at this time (years {CLOCK_YEARS[0]}-{CLOCK_YEARS[1]})",
    )

    @field_validator("now")
    @classmethod
    def _within_the_policy_clock(cls, now: datetime | None) -> datetime | None:
        """pandas, which judges eligibility, holds 1677-2262 only; the bound keeps a day's
        offset inside that range, so a far-off clock is a 4xx naming `now`, not a 500."""
        if now is not None and not CLOCK_YEARS[0] <= now.year <= CLOCK_YEARS[1]:
            raise ValueError(f"now must fall in the years {CLOCK_YEARS[0]} to {CLOCK_YEARS[1]}")
        return now


class RecommendRequest(BaseModel):
    """The body of `POST /recommend`."""

    user_id: UserId
    k: SlateSize = 1
    context: RequestContext | None = None
    explain: bool = Field(
        default=False, description="name, per offer, the inputs that drove it most"
    )


class Driver(BaseModel):
    """An input of the user's that moved the offer's value: `effect` is how much expected
    incremental profit its `value` adds over the cold-start `baseline`."""

    feature: str
    value: float
    baseline: float
    effect: float


class Offer(BaseModel):
    coupon_id: str
    score: float = Field(description="expected incremental profit over no coupon")
    p_redeem: float
    propensity: float = Field(description="probability the policy chose this offer")
    drivers: list[Driver] | None = Field(
        default=None, description="with explain: the inputs that drove this offer most"
    )


class Recommendation(BaseModel):
    request_id: str
    user_id: int
    model_version: str
    policy_version: str
    cold_start: bool = Field(description="the feature store had no row for this user")
    degraded: bool = Field(
        description="a store or the model failed: answered from cold-start features, or "
        "without offers"
    )
    offers: list[Offer]


class FeedbackAck(BaseModel):
    request_id: str
    event: str
    user_id: int
    recorded: bool = Field(description="false: this event of this request was already landed")
    pushed: bool = Field(description="the user's fresh counters reached the online store")


def _answer(request_id: str, user_id: int, decision: Decision, degraded: bool) -> Recommendation:
    """The answer of a decision (its day, time, spend and seconds are not the client's)."""
    return Recommendation.model_validate(
        {**decision, "request_id": request_id, "user_id": user_id, "degraded": degraded}
    )


def json_response(answer: BaseModel) -> Response:
    """`answer` serialised once. An API may return a response of its own, and the schema
    still comes from its annotation; BentoML's path for a returned model validates it
    again, dumps it to Python and then to JSON, and sends it in three ASGI messages, each
    through every middleware (~0.15 ms a request here)."""
    return Response(answer.model_dump_json(), media_type="application/json")


def refused(exc: ValidationError, path: str) -> Response:
    """400 for a body failing validation: a problem naming each field at fault, the shape
    every 4xx of the API has (serving.runtime.problems)."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    return problem_response(invalid_body(errors, path))


def problem_response(body: Problem) -> Response:
    return Response(encode(body), status_code=body["status"], media_type=PROBLEM_JSON)


def json_body(model: type[BaseModel]) -> dict[str, Any]:  # free-form: an OpenAPI part
    """An OpenAPI request body of `model`'s JSON schema, its nested models written in place
    (a body declared on a route cannot add components of its own)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {key: inline(value) for key, value in node.items()}
        return [inline(value) for value in node] if isinstance(node, list) else node

    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline(schema)}},
        }
    }


# /recommend's app, mounted on the service below; BentoML publishes its OpenAPI, not FastAPI.
decisions = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


class FeedbackUnavailableError(bentoml.exceptions.ServiceUnavailable):
    """503 for /feedback: the feedback index or landing zone failed (Redis down, disk full)
    and nothing was landed, so the caller should report the event again later."""


class RefusedRequestFilter(logging.Filter):
    """Drops BentoML's ERROR traceback for a request refused with a 4xx (a body failing
    validation, a request id never answered): the caller got the reason, and one line per
    bad request would let any client flood the log. Faults of the service stay logged;
    a failing feedback index is logged by the service itself, once per change, not with
    a traceback per 503."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, FeedbackUnavailableError):
            return False
        if isinstance(exc, ValidationError):
            return exc.title != "Input"  # BentoML's model of the request body
        if isinstance(exc, bentoml.exceptions.BentoMLException):
            return exc.error_code >= 500
        return True


def quiet_server_log() -> None:
    """No per-request noise in a worker's log at INFO:

    - BentoML 1.4 reads `model_fields` off each request's model instance, deprecated since
      Pydantic 2.11. PYTHONWARNINGS could not silence it: importing Feast puts `once`
      filters for every DeprecationWarning in front, so each worker printed it anew. This
      filter, aimed at that message from that module, goes in front once Feast is loaded.
    - BentoML logs every refused request with a traceback (RefusedRequestFilter).
    """
    warnings.filterwarnings(
        "ignore",
        message="Accessing the 'model_fields' attribute on the instance is deprecated",
        category=DeprecationWarning,
        module="_bentoml_impl.server.app",
    )
    logging.getLogger(BENTOML_REQUEST_LOGGER).addFilter(RefusedRequestFilter())


@bentoml.service(
    name="couponflow-recommender",
    workers=WORKERS,
    traffic={"timeout": 10},
    # BentoML's access log is a line per request: off unless asked for.
    logging={"access": {"enabled": os.environ.get(ACCESS_LOG_ENV, "") == "1"}},
)
@bentoml.asgi_app(decisions)
class CouponRecommender:
    """Coupon offers for one shopper at a time, from the released model."""

    model = bentoml.models.BentoModel(os.environ.get(MODEL_TAG_ENV, DEFAULT_MODEL_TAG))

    def __init__(self) -> None:
        from serving.runtime import metrics
        from serving.runtime.feedback import FeedbackLog
        from serving.runtime.recommender import Recommender
        from serving.runtime.spend import open_spend

        stored = self.model
        ws = Workspace.from_env()
        self.recommender: Recommender = Recommender(
            Path(stored.path),
            ws,
            as_of=stored.info.metadata["catalogue_day"],
            spend=open_spend(ws),  # every worker counts against the whole day's budget
        )
        self.feedback_log: FeedbackLog = FeedbackLog(ws)
        self._log_failing = False
        self._feedback_failing = False
        self.metrics = metrics
        quiet_server_log()
        # A full collection of this process's objects (torch, Feast, pandas: ~340k) takes
        # ~0.1-0.2 s, a stall every request in flight would wait out. Frozen after the
        # warm-up, they are never scanned again: collections see only what requests leave.
        gc.freeze()

    async def recommend(self, body: bytes) -> Response:
        """The answer to a `POST /recommend` body (see `recommend` below, its route)."""
        try:
            asked = RecommendRequest.model_validate_json(body)
        except ValidationError as exc:
            return refused(exc, "/recommend")
        user_id, k, context = asked.user_id, asked.k, asked.context
        started = time.perf_counter()
        now = context.now if context else None
        category = context.category if context else None
        request_id = uuid4().hex
        decision = await self.recommender.recommend_async(user_id, k, now, category, asked.explain)
        answer = _answer(request_id, user_id, decision, decision["degraded"] is not None)
        logging_started = time.perf_counter()
        try:
            self.feedback_log.log_decision(
                {
                    **answer.model_dump(exclude_none=True),
                    "day": decision["day"],
                    "at": decision["at"],
                    "k": k,
                    "channel": context.channel if context else None,
                    "category": category,
                    "degraded_reason": decision["degraded"],
                    "spent": decision["spent"],  # reconciles with the spend store
                }
            )
            if self._log_failing:
                logger.warning("decision log writable again")
            self._log_failing = False
        except Exception:
            # An offer whose decision is not logged could never be joined to its outcome
            # nor evaluated: answer without offers, and give the day its spend back.
            if not self._log_failing:  # log the change, not every request while it lasts
                logger.exception("decision log failing: answers without offers")
            self._log_failing = True
            decision = self.recommender.withdraw(decision, "decision_log")
            answer = _answer(request_id, user_id, decision, True)
        finished = time.perf_counter()
        self._count(decision)
        for stage, seconds in (*decision["seconds"].items(), ("log", finished - logging_started)):
            self.metrics.STAGE_SECONDS.labels(stage).observe(seconds)
        self.metrics.DECISION_SECONDS.observe(finished - started)
        return json_response(answer)

    @bentoml.api(route="/feedback")
    def feedback(
        self,
        request_id: RequestId,
        event: Literal["shown", "redeemed", "purchased"],
        amount: Amount | None = None,
    ) -> FeedbackAck:
        """Report what the shopper did with the offers of a `/recommend` answer, quoting its
        `request_id`: `shown` once they saw them, `redeemed` when a coupon was used,
        `purchased` for an order (its `amount`, if known). The outcome trains the next
        model and updates the shopper's counters at once (`pushed`). Reporting an event
        twice is harmless: it is acknowledged with `recorded: false` and counted once.
        404 (`unknown-request`) when this deployment made no decision `request_id`, or
        made it longer ago than it keeps feedback for; 503 when the event could not be
        recorded: report it again later."""
        from serving.runtime.feedback import FeedbackUnavailable, UnknownRequest

        pushed: list[bool] = []  # bounded by serving.feature_timeout_s; a failure lands too
        try:
            row = self.feedback_log.record_event(
                request_id,
                event,
                amount,
                lambda row: pushed.append(self.recommender.push_outcome(row)),
            )
        except UnknownRequest:
            detail = f"request_id: no decision {request_id!r} was made by this deployment"
            unknown = problem("unknown-request", 404, detail, "/feedback", field="request_id")
            return problem_response(unknown)  # type: ignore[return-value]
        except FeedbackUnavailable:
            if not self._feedback_failing:  # log the change, not every request while it lasts
                logger.exception("feedback index failing: /feedback answers 503")
            self._feedback_failing = True
            raise FeedbackUnavailableError("feedback could not be landed: retry later") from None
        if self._feedback_failing:
            logger.warning("feedback index answering again")
        self._feedback_failing = False
        self.metrics.FEEDBACK.labels(event, str(row["recorded"]).lower()).inc()
        ack = FeedbackAck(
            request_id=request_id,
            event=event,
            user_id=row["user_id"],
            recorded=row["recorded"],
            pushed=any(pushed),
        )
        return json_response(ack)  # type: ignore[return-value]

    def _count(self, decision: Decision) -> None:
        """The decision's Prometheus counters."""
        reason = decision["degraded"]
        kind = "degraded" if reason else "cold_start" if decision["cold_start"] else "known"
        self.metrics.DECISIONS.labels(kind).inc()
        if reason:
            self.metrics.DEGRADED.labels(reason).inc()
        self.metrics.OFFERS.inc(len(decision["offers"]))
        self.metrics.BUDGET_SPENT.inc(decision["spent"])


@decisions.post(
    "/recommend",
    response_model=Recommendation,
    openapi_extra=json_body(RecommendRequest),
)
async def recommend(request: Request) -> Response:
    """Up to `k` coupon offers for the shopper `user_id`, best first. Show them, then
    report what the shopper did with `POST /feedback`, quoting `request_id`.

    `k` is a most, not a promise: the slate ends at the first slot where offering no
    coupon is worth more than every eligible coupon left (its expected incremental profit
    less its cost at the day's budget price), or where the day's budget left cannot pay
    for another. With a trained model and a tight budget that is usually after one offer,
    or none (an empty `offers` is an answer, not an error): asking for more never makes
    an unprofitable coupon worth offering. The policy explores: a small share of slots
    picks at random among the eligible coupons (each offer's `propensity` says how likely
    it was). A shopper the feature store does not know gets cold-start features
    (`cold_start: true`); a store or model failure answers from cold-start features or
    without offers (`degraded: true`), never with an error. `context.category` keeps
    coupons of other categories out; `context.now` judges coupon validity at that time.
    With `explain`, each offer names the shopper's inputs that drove it most."""
    service: CouponRecommender = bentoml.get_current_service()
    return await service.recommend(await request.body())


# What @bentoml.service made of the class (the checker keeps a decorated class's own type).
SERVICE = cast("bentoml.Service[CouponRecommender]", CouponRecommender)
# Outermost of ours: every 4xx below it (BentoML's, Starlette's, the API key's) a problem.
SERVICE.add_asgi_middleware(ProblemMiddleware, openapi=lambda: SERVICE.openapi_spec.asdict())
if os.environ.get(API_KEY_ENV):
    SERVICE.add_asgi_middleware(ApiKeyMiddleware, key=os.environ[API_KEY_ENV])
