"""The service's own Prometheus metrics, beside BentoML's on /metrics.

Imported only once a worker runs: BentoML sets PROMETHEUS_MULTIPROC_DIR when a worker
starts, and prometheus_client must see it on first import for every worker's samples to
reach /metrics.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

DECISION_SECONDS = Histogram(
    "couponflow_decision_seconds",
    "Time to decide one /recommend request: features, scoring, pacing, decision log",
    buckets=(0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
)
STAGE_SECONDS = Histogram(
    "couponflow_decision_stage_seconds",
    "Time of one stage of a /recommend decision: features (the online read), scoring, "
    "policy (pacing, the choice, the spend store), log (the decision landed)",
    ["stage"],
    buckets=(0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25),
)
DECISIONS = Counter("couponflow_decisions", "Decisions made, by kind", ["kind"])
DEGRADED = Counter(
    "couponflow_degraded_answers", "Answers served without a working store, by cause", ["reason"]
)
OFFERS = Counter("couponflow_offers", "Coupons offered")
BUDGET_SPENT = Counter(
    "couponflow_budget_spent", "Expected redeemed cost committed to the day's budget"
)
FEEDBACK = Counter("couponflow_feedback_events", "Outcome events received", ["event", "recorded"])
