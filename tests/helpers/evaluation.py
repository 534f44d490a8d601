"""Typed evaluation reports for the gate's tests: a model's result, leads and a report
whose every figure a test can set."""

from __future__ import annotations

from couponflow.evaluation import (
    LOGGING,
    NO_COUPON,
    Estimate,
    EvaluationReport,
    GainCalibration,
    Lead,
    PolicyResult,
)

BASELINES = ("no_coupon", "random", "most_redeemed", "response", "two_model_uplift")


def est(value: float, half_width: float = 0.1) -> Estimate:
    return Estimate(value, value - half_width, value + half_width)


def model(
    version: str, auc: float = 0.7, log_loss: float = 0.4, ece: float = 0.01, evidence: float = 80
) -> PolicyResult:
    return PolicyResult(
        name=version, kind="model", version=version, dr=est(1.0), ips=est(1.0), snips=est(1.0),
        offer_rate=0.2, planned_cost=0.05, coupon_evidence=evidence,
        prediction={"auc": auc, "log_loss": log_loss, "ece": ece},
    )  # fmt: skip


def lead(over: str, value: float, half_width: float = 0.1) -> Lead:
    return Lead(over, est(value, half_width), half_width / 1.645, 2.49 * half_width / 1.645)


def evaluation(
    challenger: PolicyResult,
    incumbent: PolicyResult | None = None,
    slope: float = 1.0,
    **leads: float | tuple[float, float],
) -> EvaluationReport:
    """A report with `incumbent` as the released champion (None: no release yet); `leads`
    set the challenger's DR lead over a policy (value or (value, half width); default a
    clear lead)."""
    policies = {"challenger": challenger, LOGGING: model(LOGGING)}
    policies.update({b: model(b) for b in BASELINES})
    if incumbent:
        policies["champion"] = incumbent
    all_leads = {name: lead(name, 0.5) for name in policies if name != "challenger"}
    for name, v in leads.items():
        all_leads[name] = lead(name, *(v if isinstance(v, tuple) else (v,)))
    return EvaluationReport(
        days=["2026-01-05", "2026-01-06", "2026-01-07"],
        decisions=4_500,
        randomised_decisions=1_500,
        confidence=0.9,
        estimator="DR",
        challenger=challenger.version,
        champion=incumbent.version if incumbent else NO_COUPON,
        budget_per_decision=0.1,
        policies=policies,
        leads=all_leads,
        gain_calibration=GainCalibration(
            [-0.1, 0.0, 0.2], [-0.1 * slope, 0.0, 0.2 * slope], [10, 10, 10], est(slope), 1500
        ),
    )
