"""The evaluation report as one typed structure, and its one renderer.

`training.evaluate` builds an `EvaluationReport`, writes it to metrics/evaluation.json
(`write`) and `training.gate` reads it back (`read`) to decide; the run report
(training/report.py), the run summary (couponflow/report.py) and the CLI
(`couponflow status`) all print it through `render_lines`, so the three cannot disagree.

Every value is per logged decision, pooled over the evaluation days, unless it says
otherwise. "True" figures come from the world's oracle and exist only on simulated data.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, cast

from couponflow.records import (
    ABReadout,
    EvaluationRecord,
    GateDecision,
    ModelRecord,
    SegmentRow,
    ServedReadout,
)

NO_COUPON = "no_coupon"  # the champion before any release: offering nothing
LOGGING = "logging"  # the policy that logged the data, judged on-policy


@dataclass
class Estimate:
    """A point estimate and its interval at the report's confidence."""

    value: float
    low: float
    high: float

    def text(self, digits: int = 3) -> str:
        return f"{self.value:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


@dataclass
class PolicyResult:
    """One policy judged on the pooled logged decisions."""

    name: str
    kind: str  # "model" | "baseline" | "logging" | "candidate"
    version: str | None
    dr: Estimate  # doubly robust value per decision (the gate reads this)
    ips: Estimate
    snips: Estimate
    offer_rate: float
    planned_cost: float | None  # expected cost per decision by its own cost model (logging: none)
    coupon_evidence: float  # effective logged rows behind its coupon choices
    prediction: dict[str, float] | None = None  # auc, log_loss, ece, redeem_* (models)
    qini: float | None = None
    auuc: float | None = None
    true_value: float | None = None  # oracle: true incremental profit per decision
    gain: Estimate | None = None  # DR value less no coupon's (paired): estimated incremental


@dataclass
class Lead:
    """The challenger's paired DR lead over one other policy."""

    over: str
    estimate: Estimate
    se: float  # bootstrap standard error of the lead
    mde: float  # smallest true lead the gate would detect with 80 % power
    true: float | None = None  # oracle: the true lead per decision


@dataclass
class GainCalibration:
    """The challenger's estimated gain (incremental profit of a coupon over none, what it
    ranks by) against the realised contrast on randomised logged rows, by decile."""

    predicted: list[float]
    realised: list[float]
    count: list[int]  # (user, coupon) pairs in the decile
    slope: Estimate  # of realised on predicted: 1 calibrated, < 0 anti-calibrated
    rows: int  # randomised logged decisions behind it


@dataclass
class OracleTruth:
    """Whole-population truth on the last evaluation day (simulated data only)."""

    users: int
    budget: float
    oracle_policy: float  # the oracle policy's true incremental profit at the budget
    oracle_cost: float  # ... and its true coupon cost
    policies: dict[str, dict[str, float]]  # name -> incremental_profit, true_cost, offers
    challenger_lead: dict[str, Estimate]  # true lead in total, interval over users


@dataclass
class EvaluationReport:
    days: list[str]
    decisions: int
    randomised_decisions: int
    confidence: float
    estimator: str  # which rows and propensities the values use
    challenger: str  # its version
    champion: str  # a released version, or NO_COUPON before any release
    budget_per_decision: float
    policies: dict[str, PolicyResult]
    leads: dict[str, Lead]
    gain_calibration: GainCalibration | None
    ab_readout: ABReadout | None = None  # stored as {} when there is none
    oracle: OracleTruth | None = None
    segments: list[SegmentRow] = field(default_factory=list)
    population: dict[str, int] = field(default_factory=dict)
    logged_decisions: int | None = None  # on the judged days; more than `decisions` when
    # they are a sample of users (`evaluation.decision_sample`); None: before it existed

    @property
    def first_model(self) -> bool:
        return self.champion == NO_COUPON

    def to_dict(self) -> EvaluationRecord:
        """The stored document: the dataclasses' fields in order (records.EvaluationRecord
        mirrors them), no A/B readout written `{}` as it always was."""
        record = cast(EvaluationRecord, asdict(self))
        record["ab_readout"] = self.ab_readout or {}
        return record

    @classmethod
    def from_dict(cls, data: EvaluationRecord) -> EvaluationReport:
        report: EvaluationReport = _build(cls, data)
        report.ab_readout = report.ab_readout or None  # {}: none
        return report

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=float))

    @classmethod
    def read(cls, path: Path) -> EvaluationReport:
        return cls.from_dict(json.loads(Path(path).read_text()))


def render_summary(evaluation: EvaluationRecord, gate: GateDecision | None) -> list[str]:
    """`render_lines` of a report as stored in a run summary (the train step's
    TrainedRun); one recorded before the typed report existed is named, not rendered."""
    try:
        report = EvaluationReport.from_dict(evaluation)
    except (KeyError, TypeError):
        return ["(evaluation recorded in an older format: see the run report)"]
    return render_lines(report, gate)


def _build(tp: Any, data: Any) -> Any:
    """`data` (parsed JSON) as type `tp`: dataclasses, optionals, lists and dicts of them."""
    if data is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _build(inner[0] if len(inner) == 1 else Any, data)  # several: kept as read
    if isinstance(tp, type) and is_dataclass(tp):  # a dataclass type, not an instance
        hints = typing.get_type_hints(tp)
        values = {f.name: _build(hints[f.name], data[f.name]) for f in fields(tp) if f.name in data}
        return tp(**values)
    if origin is list:
        (inner,) = typing.get_args(tp)
        return [_build(inner, x) for x in data]
    if origin is dict:
        _, inner = typing.get_args(tp)
        return {k: _build(inner, v) for k, v in data.items()}
    return data


# -- the one renderer --------------------------------------------------------------------------
def _num(x: float | None, digits: int = 3) -> str:
    return "" if x is None else f"{x:+.{digits}f}"


def policy_table(report: EvaluationReport) -> list[str]:
    """Every policy's estimated and (simulated) true value per decision, and its true
    profit on the whole day as a share of the oracle policy's, Markdown."""
    truth = report.oracle.policies if report.oracle is not None else {}
    out = [
        "| policy | version | AUC | DR profit per decision | estimated gain over no coupon "
        "| true gain | true share of the oracle's | offers |",
        "|---|---|---:|---|---|---:|---:|---:|",
    ]
    order = ["challenger", "champion", LOGGING]
    names = [n for n in order if n in report.policies]
    names += sorted(set(report.policies) - set(order))
    for name in names:
        p = report.policies[name]
        auc = f"{p.prediction['auc']:.3f}" if p.prediction else ""
        gain = p.gain.text() if p.gain is not None else ""
        share = truth.get(name, {}).get("share_of_oracle")
        out.append(
            f"| {name} | {p.version or ''} | {auc} | {p.dr.text()} | {gain} "
            f"| {_num(p.true_value)} | {'' if share is None else f'{share:.0%}'} "
            f"| {p.offer_rate:.0%} |"
        )
    return out


def lead_lines(report: EvaluationReport) -> list[str]:
    out = []
    for lead in report.leads.values():
        true = f"; true {lead.true:+.3f}" if lead.true is not None else ""
        out.append(
            f"- lead over {lead.over}: {lead.estimate.text()} per decision (SE {lead.se:.3f}, "
            f"smallest detectable {lead.mde:.3f}){true}"
        )
    return out


def expected_earnings(report: EvaluationReport) -> str:
    """What releasing the challenger is expected to earn over the champion, and (simulated)
    what it truly earns."""
    lead = report.leads.get(NO_COUPON if report.first_model else "champion")
    if lead is None:
        return "no estimate of the release's earnings"
    true = f"; truly {lead.true:+.3f} (oracle)" if lead.true is not None else ""
    return (
        f"Releasing {report.challenger} is expected to earn {lead.estimate.text()} per "
        f"decision over the champion ({report.champion}){true}"
    )


def judged_decisions(report: EvaluationReport) -> str:
    """How many logged decisions the figures judge, and of how many when a sample."""
    logged = report.logged_decisions
    if logged is not None and logged > report.decisions:
        return (
            f"{report.decisions} of {logged} logged decisions, those of a fixed sample of users "
            "(`evaluation.decision_sample`)"
        )
    return f"{report.decisions} logged decisions"


def render_lines(report: EvaluationReport, gate: GateDecision | None = None) -> list[str]:
    """The evaluation (and the gate's verdict when given) as Markdown lines: the one
    rendering the run report, the run summary and the CLI share."""
    champion = (
        "no coupon (nothing released yet: a first model must beat offering nothing and the "
        "logging policy)"
        if report.first_model
        else report.champion
    )
    out = [
        f"Evaluated on {', '.join(report.days)}: {judged_decisions(report)} "
        f"({report.randomised_decisions} randomised), {report.estimator}, "
        f"{report.confidence:.0%} intervals. Champion: {champion}.",
        "",
        *policy_table(report),
        "",
        *lead_lines(report),
        "",
        expected_earnings(report),
    ]
    cal = report.gain_calibration
    if cal is not None:
        out += [
            "",
            f"Estimated gain against the realised contrast on {cal.rows} randomised "
            f"decisions: slope {cal.slope.text(2)} (1 calibrated, below 0 anti-calibrated)",
            "",
            "| decile | predicted gain | realised | pairs |",
            "|---:|---:|---:|---:|",
        ]
        out += [
            f"| {i + 1} | {p:+.3f} | {r:+.3f} | {n} |"
            for i, (p, r, n) in enumerate(zip(cal.predicted, cal.realised, cal.count, strict=True))
        ]
    if report.oracle is not None:
        o = report.oracle
        ch = o.policies.get("challenger", {})
        out += [
            "",
            f"Truth on all {o.users} users of {report.days[-1]} at a daily budget of "
            f"{o.budget:.0f}, in total for the day: the challenger earns "
            f"{_num(ch.get('incremental_profit'), 1)} of the oracle policy's "
            f"{o.oracle_policy:+.1f} (the oracle sees the hidden traits; every policy's share "
            "is in the table)",
        ]
    if report.ab_readout:
        out += ["", f"A/B readout on the logged days: {ab_line(report.ab_readout)}"]
    if gate is not None:
        verdict = "PROMOTE" if gate["promote"] else "REFUSE: the champion keeps serving"
        out += ["", f"Decision: {verdict}", ""]
        out += [
            f"- [{'x' if c['passed'] else ' '}] {c['check']}: {c['detail']}" for c in gate["checks"]
        ]
    return out


def refit_line(model: ModelRecord) -> str | None:
    """Which weights are the candidate (what ships if the gate promotes) when `model.refit`
    is on, and which the evaluation judged (None: no refit, the judged model is both)."""
    refit = model.get("refit")
    if not refit:
        return None
    losses = (
        f"loss on {refit['early_stopping_day']} {refit['newest_day_loss']:.4f}, the held-out "
        f"twin's {refit['judged_newest_day_loss']:.4f}"
    )
    if not refit["shipped"]:
        return f"The refit fitted the newest day worse ({losses}): the candidate is the twin."
    return (
        f"The candidate is the refit {model['version']}: the same recipe on "
        f"{refit['train_rows']} offers up to the day before {refit['early_stopping_day']}, "
        f"early stopping on it ({losses}). The evaluation judged its held-out twin "
        f"{refit['judged_version']}."
    )


def ab_line(readout: ABReadout | ServedReadout) -> str:
    """A policy's realised lift over its random holdout (metrics.ab_readout), in a line."""
    lift = readout.get("lift")
    if lift is None:
        return readout.get("note", "no readout")
    days = readout.get("days") or []
    span = f" over {len(days)} days" if len(days) > 1 else ""
    verdict = "significant" if readout.get("significant") else "not significant"
    return (
        f"{readout['decisions']} decisions, {readout['holdout']} held out{span}; profit per "
        f"decision {readout['policy_mean']:.3f} against {readout['holdout_mean']:.3f} held "
        f"out: lift {lift['value']:+.3f} [{lift['low']:+.3f}, {lift['high']:+.3f}] ({verdict})"
    )
