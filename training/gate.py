"""DVC stage `gate`: promote the challenger only when the evidence says it is better.

It reads the typed evaluation report (couponflow.evaluation.EvaluationReport):

- Champion semantics: before any release the champion is "no coupon". A first model must
  beat it and the logging policy: the lower bound of its paired DR lead (pooled evaluation
  days, level `evaluation.confidence`) over each above `gate.min_lift_over_baselines`. A
  later challenger must beat the released champion the same way (`min_lift_over_champion`)
  and may not regress in prediction beyond tolerance. A refused challenger changes nothing:
  the champion keeps serving.
- Always, for a model: a floor on AUC and a ceiling on calibration error of P(purchase).
- Always: enough logged evidence for the coupons it would offer (effective sample size),
  and its estimated gain, what it ranks by, not anti-calibrated on the randomised rows
  (slope of the realised contrast on the predicted gain at least `gate.min_gain_slope`).

Every lead check states the smallest effect it could have detected (MDE, 80 % power), so
a refusal says whether the challenger lost or the evidence was too thin to tell.

The decision and every reason behind it are a DVC metric (metrics/gate.json) and go into
the run report. Run from the workspace root: `python -m training.gate`.
"""

from __future__ import annotations

import json
from pathlib import Path

from couponflow.config import GateParams, Workspace
from couponflow.evaluation import LOGGING, NO_COUPON, EvaluationReport, Lead
from couponflow.records import GateCheck, GateDecision


def _check(name: str, passed: bool, detail: str, mde: float | None = None) -> GateCheck:
    check: GateCheck = {"check": name, "passed": bool(passed), "detail": detail}
    if mde is not None:
        check["mde"] = mde
    return check


def _lead_check(name: str, lead: Lead, floor: float) -> GateCheck:
    return _check(
        name,
        lead.estimate.low > floor,
        f"lead {lead.estimate.text(4)} per decision; lower bound must exceed {floor}; "
        f"smallest detectable lead {lead.mde:.4f} (SE {lead.se:.4f})",
        mde=lead.mde,
    )


def _challenger_checks(report: EvaluationReport, gate: GateParams) -> list[GateCheck]:
    """The challenger on its own: prediction quality, evidence, gain calibration."""
    ch = report.policies["challenger"]
    checks: list[GateCheck] = []
    if ch.prediction is not None:
        auc, ece = ch.prediction["auc"], ch.prediction["ece"]
        checks += [
            _check(
                "AUC of P(purchase) at least the floor",
                auc >= gate["min_auc"],
                f"{auc:.4f} vs floor {gate['min_auc']}",
            ),
            _check(
                "calibration error of P(purchase) within bounds",
                ece <= gate["max_ece"],
                f"{ece:.4f} vs ceiling {gate['max_ece']}",
            ),
        ]
    if ch.offer_rate > 0:
        checks.append(
            _check(
                "enough logged evidence for the coupons it would offer",
                ch.coupon_evidence >= gate["min_coupon_evidence"],
                f"effective sample {ch.coupon_evidence:.1f} logged rows vs at least "
                f"{gate['min_coupon_evidence']}",
            )
        )
        cal = report.gain_calibration
        if cal is not None:
            checks.append(
                _check(
                    "estimated gain not anti-calibrated on randomised decisions",
                    cal.slope.value >= gate["min_gain_slope"],
                    f"slope of realised on predicted gain {cal.slope.text(2)} over "
                    f"{cal.rows} randomised decisions vs at least {gate['min_gain_slope']}",
                )
            )
    return checks


def _comparison_checks(report: EvaluationReport, gate: GateParams) -> list[GateCheck]:
    """The challenger against the baselines (a first model) or against the champion."""
    ch = report.policies["challenger"]
    checks: list[GateCheck] = []
    if report.first_model:
        floor = gate["min_lift_over_baselines"]
        checks += [
            _lead_check(
                "first model beats the champion, no coupon (DR)", report.leads[NO_COUPON], floor
            ),
            _lead_check("first model beats the logging policy (DR)", report.leads[LOGGING], floor),
        ]
    else:
        champ = report.policies["champion"]
        checks.append(
            _lead_check(
                "DR policy value beats the champion's with confidence",
                report.leads["champion"],
                gate["min_lift_over_champion"],
            )
        )
        if ch.prediction is not None and champ.prediction is not None:
            a, b = ch.prediction, champ.prediction
            checks += [
                _check(
                    "AUC no worse than the champion's beyond tolerance",
                    a["auc"] >= b["auc"] - gate["max_auc_regression"],
                    f"{a['auc']:.4f} vs champion {b['auc']:.4f} "
                    f"(tolerance {gate['max_auc_regression']})",
                ),
                _check(
                    "log loss no worse than the champion's beyond tolerance",
                    a["log_loss"] <= b["log_loss"] + gate["max_log_loss_regression"],
                    f"{a['log_loss']:.4f} vs champion {b['log_loss']:.4f} "
                    f"(tolerance {gate['max_log_loss_regression']})",
                ),
            ]
    return checks


def decide(report: EvaluationReport, gate: GateParams) -> GateDecision:
    """The gate's decision: `promote`, the champion it is judged against, and the list of
    checks with their outcome."""
    checks = _challenger_checks(report, gate) + _comparison_checks(report, gate)
    return {
        "promote": all(c["passed"] for c in checks),
        "challenger": report.challenger,
        "champion": report.champion,
        "checks": checks,
    }


def main() -> None:
    ws = Workspace(Path.cwd())
    report = EvaluationReport.read(ws.metrics / "evaluation.json")
    decision = decide(report, ws.params["gate"])
    (ws.metrics / "gate.json").write_text(json.dumps(decision, indent=2))
    verdict = "PROMOTE" if decision["promote"] else "REFUSE (the champion keeps serving)"
    print(f"gate: {verdict} {decision['challenger']} against {decision['champion']}")


if __name__ == "__main__":
    main()
