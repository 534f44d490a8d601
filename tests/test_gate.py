"""The gate's rules on evaluation results: what promotes a challenger and what refuses it."""

from __future__ import annotations

import pytest

from training.gate import decide

GATE = {
    "min_auc": 0.55,
    "max_ece": 0.05,
    "min_coupon_evidence": 30,
    "min_lift_over_champion": 0.0,
    "max_auc_regression": 0.02,
    "max_log_loss_regression": 0.01,
    "min_lift_over_baselines": 0.0,
}
BASELINES = ("no_coupon", "random", "most_redeemed", "response", "two_model_uplift")


def model(
    version: str, auc: float = 0.7, log_loss: float = 0.4, ece: float = 0.01, evidence: float = 80
) -> dict:
    return {
        "kind": "model",
        "version": version,
        "auc": auc,
        "log_loss": log_loss,
        "ece": ece,
        "offer_rate": 0.2,
        "coupon_evidence": evidence,
    }


def lead(value: float, half_width: float = 0.1) -> dict:
    return {"value": value, "low": value - half_width, "high": value + half_width}


def evaluation(challenger: dict, incumbent: dict | None = None, **leads: dict) -> dict:
    """Evaluation results with `incumbent` as the champion; `leads` override the
    challenger's DR lead over a policy (default: a clear lead)."""
    policies = {"challenger": challenger, **{b: {"kind": "baseline"} for b in BASELINES}}
    if incumbent:
        policies["champion"] = incumbent
    default = {name: lead(0.5) for name in policies if name != "challenger"}
    return {"policies": policies, "challenger_lead_dr": {**default, **leads}}


def failed(decision: dict) -> list[str]:
    return [c["check"] for c in decision["checks"] if not c["passed"]]


def test_first_model_beating_every_baseline_is_promoted() -> None:
    decision = decide(evaluation(model("c")), GATE)
    assert decision["promote"], decision
    assert decision["champion"] is None
    assert sum("baseline" in c["check"] for c in decision["checks"]) == len(BASELINES)


@pytest.mark.parametrize("baseline", BASELINES)
def test_first_model_losing_to_one_baseline_is_refused(baseline: str) -> None:
    decision = decide(evaluation(model("c"), **{baseline: lead(-0.01, 0.02)}), GATE)
    assert not decision["promote"]
    assert failed(decision) == [f"first model beats the {baseline} baseline (DR)"]


def test_a_lead_too_uncertain_over_a_baseline_is_refused() -> None:
    decision = decide(evaluation(model("c"), no_coupon=lead(0.02, 0.5)), GATE)
    assert failed(decision) == ["first model beats the no_coupon baseline (DR)"]


def test_challenger_must_beat_the_champion_with_confidence() -> None:
    sure = evaluation(model("c"), model("p"), champion=lead(0.2, 0.1))
    assert decide(sure, GATE)["promote"]
    unsure = evaluation(model("c"), model("p"), champion=lead(0.05, 0.1))
    decision = decide(unsure, GATE)
    assert not decision["promote"]
    assert failed(decision) == ["DR policy value beats the champion's with confidence"]
    assert "lower bound must exceed 0.0" in decision["checks"][3]["detail"]


def test_against_a_champion_baselines_are_not_rechecked() -> None:
    ev = evaluation(model("c"), model("p"), champion=lead(0.2), random=lead(-1.0))
    assert decide(ev, GATE)["promote"]


@pytest.mark.parametrize(
    ("challenger", "reasons"),
    [
        (
            model("c", auc=0.5),
            [
                "AUC of P(purchase) at least the floor",
                "AUC no worse than the champion's beyond tolerance",
            ],
        ),
        (model("c", ece=0.2), ["calibration error of P(purchase) within bounds"]),
        (model("c", auc=0.67), ["AUC no worse than the champion's beyond tolerance"]),
        (model("c", log_loss=0.5), ["log loss no worse than the champion's beyond tolerance"]),
    ],
)
def test_prediction_regressions_are_refused(challenger: dict, reasons: list[str]) -> None:
    ev = evaluation(challenger, model("p", auc=0.7, log_loss=0.4), champion=lead(0.2))
    decision = decide(ev, GATE)
    assert not decision["promote"] and failed(decision) == reasons


def test_coupons_backed_by_too_few_logged_rows_are_refused() -> None:
    """Five logged rows at weight 60 can make any lead look certain: not enough evidence."""
    decision = decide(evaluation(model("c", evidence=5.0)), GATE)
    assert failed(decision) == ["enough logged evidence for the coupons it would offer"]
    assert "effective sample 5.0" in decision["checks"][2]["detail"]


def test_small_auc_loss_within_tolerance_passes() -> None:
    ev = evaluation(model("c", auc=0.69), model("p", auc=0.70), champion=lead(0.2))
    assert decide(ev, GATE)["promote"]
