"""The gate's rules on the typed evaluation report: what promotes a challenger and what
refuses it, and the report's round trip through metrics/evaluation.json."""

from __future__ import annotations

from pathlib import Path

import pytest

from couponflow.evaluation import (
    LOGGING,
    NO_COUPON,
    Estimate,
    EvaluationReport,
    OracleTruth,
    PolicyResult,
    render_lines,
)
from tests.helpers.evaluation import est, evaluation, model
from training.gate import decide

GATE = {
    "min_auc": 0.55,
    "max_ece": 0.05,
    "min_coupon_evidence": 30,
    "min_gain_slope": 0.0,
    "min_lift_over_champion": 0.0,
    "max_auc_regression": 0.02,
    "max_log_loss_regression": 0.01,
    "min_lift_over_baselines": 0.0,
}


def failed(decision: dict) -> list[str]:
    return [c["check"] for c in decision["checks"] if not c["passed"]]


def test_first_model_beating_no_coupon_and_the_logging_policy_is_promoted() -> None:
    decision = decide(evaluation(model("c")), GATE)
    assert decision["promote"], failed(decision)
    assert decision["champion"] == NO_COUPON
    names = [c["check"] for c in decision["checks"]]
    assert any("no coupon" in n for n in names) and any("logging policy" in n for n in names)
    # every lead check states the smallest lead it could have detected
    assert all("mde" in c for c in decision["checks"] if "beats" in c["check"])


@pytest.mark.parametrize("over", [NO_COUPON, LOGGING])
def test_first_model_losing_to_no_coupon_or_the_logging_policy_is_refused(over: str) -> None:
    decision = decide(evaluation(model("c"), **{over: (-0.01, 0.02)}), GATE)
    assert not decision["promote"]


def test_a_lead_too_uncertain_over_no_coupon_is_refused_and_says_what_it_could_detect() -> None:
    decision = decide(evaluation(model("c"), no_coupon=(0.02, 0.5)), GATE)
    assert not decision["promote"]
    (check,) = [c for c in decision["checks"] if not c["passed"]]
    assert "smallest detectable lead" in check["detail"] and check["mde"] > 0.5


def test_an_anti_calibrated_gain_is_refused_even_with_a_lead() -> None:
    decision = decide(evaluation(model("c"), slope=-0.8), GATE)
    assert not decision["promote"]
    assert failed(decision) == ["estimated gain not anti-calibrated on randomised decisions"]


def test_challenger_must_beat_the_champion_with_confidence() -> None:
    sure = evaluation(model("c"), model("p"), champion=0.2)
    assert decide(sure, GATE)["promote"]
    unsure = evaluation(model("c"), model("p"), champion=0.05)
    decision = decide(unsure, GATE)
    assert not decision["promote"] and decision["champion"] == "p"
    assert failed(decision) == ["DR policy value beats the champion's with confidence"]


def test_against_a_champion_baselines_are_not_rechecked() -> None:
    ev = evaluation(model("c"), model("p"), champion=0.2, random=-1.0, no_coupon=-1.0)
    assert decide(ev, GATE)["promote"]


@pytest.mark.parametrize(
    "challenger, reasons",
    [
        (model("c", auc=0.5), ["AUC of P(purchase) at least the floor",
                               "AUC no worse than the champion's beyond tolerance"]),
        (model("c", ece=0.2), ["calibration error of P(purchase) within bounds"]),
        (model("c", log_loss=0.5), ["log loss no worse than the champion's beyond tolerance"]),
    ],
)  # fmt: skip
def test_prediction_regressions_are_refused(challenger: PolicyResult, reasons: list[str]) -> None:
    ev = evaluation(challenger, model("p", auc=0.7, log_loss=0.4), champion=0.2)
    assert failed(decide(ev, GATE)) == reasons


def test_coupons_backed_by_too_few_logged_rows_are_refused() -> None:
    decision = decide(evaluation(model("c", evidence=5.0)), GATE)
    assert failed(decision) == ["enough logged evidence for the coupons it would offer"]


def test_the_typed_report_round_trips_through_json_and_renders_once(tmp_path: Path) -> None:
    report = evaluation(model("c"), model("p"), champion=0.2)
    report.oracle = OracleTruth(
        3000, 150.0, 90.0, 140.0, {"challenger": {"incremental_profit": 40.0}},
        {"champion": est(12.0, 5.0)},
    )  # fmt: skip
    report.ab_readout = {"decisions": 10, "holdout": 2, "lift": None, "note": "none"}
    path = tmp_path / "metrics" / "evaluation.json"
    report.write(path)
    back = EvaluationReport.read(path)
    assert back == report
    assert isinstance(back.policies["challenger"].dr, Estimate)
    assert isinstance(back.oracle.challenger_lead["champion"], Estimate)
    text = "\n".join(render_lines(back, decide(back, GATE)))
    assert "Champion: p" in text and "Decision: PROMOTE" in text
    assert "expected to earn +0.200" in text


def test_before_any_release_the_summary_says_the_champion_is_no_coupon() -> None:
    text = "\n".join(render_lines(evaluation(model("c"))))
    assert "Champion: no coupon (nothing released yet" in text


def test_the_stored_records_mirror_the_report_dataclasses_field_for_field() -> None:
    """records.EvaluationRecord and its parts type metrics/evaluation.json: the same keys as
    the dataclasses asdict writes, in the same order."""
    from dataclasses import fields

    from couponflow import records
    from couponflow.evaluation import GainCalibration, Lead

    pairs = [
        (EvaluationReport, records.EvaluationRecord),
        (PolicyResult, records.PolicyRecord),
        (Estimate, records.EstimateRecord),
        (Lead, records.LeadRecord),
        (GainCalibration, records.GainCalibrationRecord),
        (OracleTruth, records.OracleRecord),
    ]
    for dataclass_, record in pairs:
        assert [f.name for f in fields(dataclass_)] == list(record.__annotations__), record


def test_no_ab_readout_is_stored_as_an_empty_object_and_read_back_as_none(tmp_path: Path) -> None:
    report = evaluation(model("c"))
    assert report.ab_readout is None and report.to_dict()["ab_readout"] == {}
    path = tmp_path / "evaluation.json"
    report.write(path)
    assert '"ab_readout": {}' in path.read_text()
    assert EvaluationReport.read(path).ab_readout is None
