"""The records that cross rooms: JSON documents one room writes (a file, an Airflow XCom, an
HTTP answer) and another reads (issue 20).

Each is a TypedDict: at run time the same plain dict as before, so files, XComs and answers
stay byte for byte what they were, and readers that only index them (the CLI, the DAGs)
work unchanged; the checker now knows every key and its type. Where a record is made:

- `Release`, `SwitchedRelease`: serving.deploy.release and .deployment (production.json,
  history.jsonl; the release task's XCom); read by the CLI, the run summary, rollbacks.
- `Slot`, `ServerHandle`, `Refusal`: serving.deploy.deployment's record (live/deployment.json,
  also read by serving.deploy.router); a slot is the check_candidate task's XCom.
- `RecommendBody`, `RequestContext`, `Answer`, `Offer`, `Driver`, `CanaryChecks`,
  `LatencyCheck`: a /recommend request and answer as serving.deploy.smoke sends and checks
  them, and what the candidate checks record.
- `LiftInterval`, `ABReadout`, `ServedReadout`: couponflow.metrics.ab_readout and
  training.served; rendered by couponflow.evaluation.ab_line.
- `Forgotten`: serving.runtime.feedback.forget_old_feedback.
- `GateCheck`, `GateDecision`: training.gate (metrics/gate.json); read by the renderers.
- `EpochLoss`, `FitLog`, `EnsembleLog`: training.train.fit and fit_ensemble's training log;
  read by training.trial, the benchmarks, and into the model record (with `RefitRecord`).
- `Layout`, `ModelInputs`, `ModelRecord`, `SavedModelMeta`: the model record training.train
  writes (models/model.json; model.pt's meta, couponflow.model.save_model); read back by
  couponflow.model.load_model, serving, the run report, and the train task's XCom.
- `EvaluationRecord` (with `PolicyRecord`, `LeadRecord`, `GainCalibrationRecord`,
  `OracleRecord`, `EstimateRecord`, `SegmentRow`, `NoReadout`): metrics/evaluation.json,
  couponflow.evaluation.EvaluationReport.to_dict(); read back by EvaluationReport.from_dict
  (the gate, the run summary, the CLI).
- `BudgetPlanRecord`: models/policy.json, couponflow.policy.BudgetPlan as stored.
- `TrainedRun`: training.pipeline.repro, the train task's XCom.
- `Steps`, `RunSummary`: couponflow.report (reports/steps/, reports/runs/).
- `Alert`, `LateCheck`: couponflow.alerts (alerts.jsonl).
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

from couponflow.config import ModelParams


# -- releases and the deployment -----------------------------------------------------------
class Release(TypedDict):
    """One line of history.jsonl, and production.json: the release in production."""

    time: str
    action: NotRequired[str]  # "release" or "rollback"; records before rollbacks lack it
    model_version: str
    model_tag: str
    bento_tag: str
    reason: str


class RequestContext(TypedDict, total=False):
    """A /recommend body's `context` (serving.runtime.service.RequestContext): the page's
    channel and category, `now` (ISO) for the policy's clock; the service allows other keys."""

    channel: str
    category: str
    now: str


class RecommendBody(TypedDict):
    """A well-formed POST /recommend body (serving.runtime.service.RecommendRequest), as
    serving.deploy.smoke sends it."""

    user_id: int
    k: NotRequired[int]  # default 1
    context: NotRequired[RequestContext | None]
    explain: NotRequired[bool]


class Driver(TypedDict):
    """A user input that moved an offer's expected incremental profit (`explain`)."""

    feature: str
    value: float
    baseline: float
    effect: float


class Offer(TypedDict):
    coupon_id: str
    score: float  # expected incremental profit
    p_redeem: float
    propensity: float
    drivers: list[Driver] | None


class Answer(TypedDict):
    """A /recommend answer as a client reads it (serving.runtime.service.Recommendation)."""

    request_id: str
    user_id: int
    model_version: str
    policy_version: str
    cold_start: bool
    degraded: bool
    offers: list[Offer]


class LatencyCheck(TypedDict):
    requests: int
    p50_ms: float
    p99_ms: float


class CanaryChecks(TypedDict):
    """What a candidate passed before taking traffic (serving.deploy.smoke.canary_checks)."""

    golden: str
    answer: Answer
    latency: LatencyCheck


class ServerHandle(TypedDict):
    """What serving.deploy.server.Server.attach needs to find a server again."""

    pid: int
    url: str
    log: str
    pgids: NotRequired[list[int]]  # handles recorded before process groups were kept lack it


class Slot(TypedDict):
    """A bento server in the deployment record: live, standby or candidate."""

    bento_tag: str
    model_tag: str
    model_version: str
    port: int
    since: str
    server: ServerHandle
    ready_s: NotRequired[float]  # a checked candidate's: seconds until it answered
    checks: NotRequired[CanaryChecks]


class Refusal(TypedDict):
    """The deployment record's `last_refusal`: a candidate that failed its checks."""

    time: str
    bento_tag: str
    reason: str


class SwitchedRelease(Release):
    """The release task's result: the release record, the front door, the checks passed."""

    url: str
    checks: CanaryChecks | None


# -- readouts ------------------------------------------------------------------------------
class LiftInterval(TypedDict):
    value: float
    low: float
    high: float


class ABReadout(TypedDict):
    """The served policy's realised profit per decision against its random holdout."""

    policy_version: str
    days: list[str]
    decisions: int
    holdout: int
    lift: LiftInterval | None
    significant: bool
    note: NotRequired[str]  # why there is no lift
    policy_mean: NotRequired[float]
    holdout_mean: NotRequired[float]


class ServedReadout(TypedDict):
    """training.served.served_readout: the A/B readout of the served decisions of `day`
    (its ABReadout keys absent when nothing was served)."""

    day: str
    feedback_decisions: int
    lift: LiftInterval | None
    note: NotRequired[str]
    policy_version: NotRequired[str]
    days: NotRequired[list[str]]
    decisions: NotRequired[int]
    holdout: NotRequired[int]
    significant: NotRequired[bool]
    policy_mean: NotRequired[float]
    holdout_mean: NotRequired[float]
    redeemed: NotRequired[int]


class Forgotten(TypedDict):
    """The day's clean-up of the feedback index."""

    before: str
    forgotten: int
    retention_days: int


# -- the model -----------------------------------------------------------------------------
class EpochLoss(TypedDict):
    """One check on the early-stopping day: once an epoch, or every `model.check_rows`
    training rows when an epoch is longer (absent before 2026-12-07: once an epoch)."""

    epoch: int
    rows: NotRequired[int]  # training rows seen before this check, every rank's
    valid_loss: float


class FitLog(TypedDict):
    """training.train.fit's log of one network; `seconds` and `samples_per_second` over the
    whole call (packing, copies, process start and validation passes included)."""

    device: str  # "cpu" or "cuda"
    threads: int
    processes: int
    epochs_run: int
    best_epoch: int
    history: list[EpochLoss]
    seconds: float
    samples_per_second: int


class EnsembleLog(TypedDict):
    """training.train.fit_ensemble's log: the first member's, with each member's epochs and
    the seconds and rows summed over the members, then how many trained at once and the
    wall time (keys in model.json's order)."""

    device: str
    threads: int
    processes: int
    epochs_run: list[int]  # per member
    best_epoch: list[int]  # per member
    history: list[EpochLoss]  # the first member's
    seconds: float
    samples_per_second: int  # per process: rows over the members' summed seconds
    members: int
    member_processes: NotRequired[int]  # members trained at once (absent before 2026-12-07)
    wall_seconds: NotRequired[float]  # the whole ensemble's time, start to end


class RefitRecord(TypedDict):
    """The refit training.train ships: the judged recipe fitted again on every day but the
    newest (early stopping on the newest), once the held-out twin has been judged."""

    judged_version: str  # the held-out twin's: the weights the evaluation and the gate judged
    train_rows: int
    early_stopping_day: str  # the newest day: judged by neither model
    newest_day_loss: float  # the refit's validation loss on it (selected on it: a floor)
    judged_newest_day_loss: float  # the twin's on the same day, which it never saw
    shipped: bool  # the refit is the candidate; False: it fitted the newest day worse, the twin is
    epochs_run: list[int]  # per member
    seconds: float


class Layout(TypedDict):
    """couponflow.model's `layout()`: what it takes to rebuild the network."""

    n_user: int
    n_arm: int
    hidden: int
    effect: str  # how the purchase effect is built (couponflow.model.EFFECT)
    members: NotRequired[int]  # an ensemble's
    credibility: NotRequired[float]


class ModelInputs(TypedDict):
    """The feature lists and block sizes a saved model was trained on."""

    user_features: list[str]
    coupon_features: list[str]
    arm_features: list[str]
    n_user: int
    n_arm: int


class ModelRecord(TypedDict):
    """models/model.json (training.train.main), keys in the file's order: the version (of
    the weights that ship), the layout, what the held-out twin learned from, the params, the
    twin's EnsembleLog, then the refit (RefitRecord) that ships when model.refit is on."""

    version: str
    n_user: int
    n_arm: int
    hidden: int
    effect: str  # how the purchase effect is built (couponflow.model.EFFECT)
    members: NotRequired[int]  # an ensemble's (always, since training fits ensembles)
    credibility: NotRequired[float]
    data_days: list[str]
    train_rows: int
    valid_rows: int
    early_stopping_day: str
    evaluation_day: str
    evaluation_days: list[str]
    params: ModelParams
    data_version: dict[str, str]  # data set -> its DVC hash (training_set: the table's own)
    code_commit: str
    device: str
    threads: int
    processes: int
    epochs_run: list[int]
    best_epoch: list[int]
    history: list[EpochLoss]
    seconds: float
    samples_per_second: int
    member_processes: NotRequired[int]
    wall_seconds: NotRequired[float]
    refit: NotRequired[RefitRecord | None]  # None: model.refit off, the judged model ships


class SavedModelMeta(ModelRecord):
    """model.pt's meta (couponflow.model.save_model, load_model): the record and the
    feature lists its inputs encode."""

    user_features: list[str]
    coupon_features: list[str]
    arm_features: list[str]


# -- the evaluation report ------------------------------------------------------------------
# metrics/evaluation.json is couponflow.evaluation.EvaluationReport's dataclasses as asdict
# writes them: each record below has its dataclass's fields, in their order (a test holds
# the two together). A figure with nothing to measure is NaN in the file and null in the
# train task's copy (TrainedRun), which takes strict JSON.
class EstimateRecord(TypedDict):
    value: float
    low: float
    high: float


class PolicyRecord(TypedDict):
    name: str
    kind: str  # "model" | "baseline" | "logging" | "candidate"
    version: str | None
    dr: EstimateRecord
    ips: EstimateRecord
    snips: EstimateRecord
    offer_rate: float
    planned_cost: float | None
    coupon_evidence: float
    prediction: dict[str, float] | None  # auc, log_loss, ece, redeem_* (models)
    qini: float | None
    auuc: float | None
    true_value: float | None
    gain: EstimateRecord | None


class LeadRecord(TypedDict):
    over: str
    estimate: EstimateRecord
    se: float
    mde: float
    true: float | None


class GainCalibrationRecord(TypedDict):
    predicted: list[float]
    realised: list[float]
    count: list[int]
    slope: EstimateRecord
    rows: int


class OracleRecord(TypedDict):
    users: int
    budget: float
    oracle_policy: float
    oracle_cost: float
    policies: dict[str, dict[str, float]]  # name -> incremental_profit, true_cost, offers, ...
    challenger_lead: dict[str, EstimateRecord]


class SegmentRow(TypedDict):
    """One level of a segment (training.evaluate.segment_report): the challenger's allocation
    on the whole population, per user; keys in the file's (and the run report table's) order."""

    segment: str  # "region", "age_band" or "new"
    level: str
    users: int
    offer_rate: float
    planned_cost: float  # expected coupon cost
    estimated_uplift: float  # by the challenger's own values
    true_uplift: NotRequired[float]  # the world's truth (simulated data only)


class NoReadout(TypedDict):
    """`{}`: the report's `ab_readout` when there is none (the file has always said so)."""


class EvaluationRecord(TypedDict):
    """metrics/evaluation.json. The keys with a default in EvaluationReport are absent from
    reports written before they existed."""

    days: list[str]
    decisions: int
    randomised_decisions: int
    confidence: float
    estimator: str
    challenger: str
    champion: str
    budget_per_decision: float
    policies: dict[str, PolicyRecord]
    leads: dict[str, LeadRecord]
    gain_calibration: GainCalibrationRecord | None
    ab_readout: NotRequired[ABReadout | NoReadout]
    oracle: NotRequired[OracleRecord | None]
    segments: NotRequired[list[SegmentRow]]
    population: NotRequired[dict[str, int]]  # users, known_users
    logged_decisions: NotRequired[int | None]


class BudgetPlanRecord(TypedDict):
    """models/policy.json: couponflow.policy.BudgetPlan as stored, keys in its order."""

    day: str
    multiplier: float
    daily_budget: float
    expected_decisions: float
    budget_per_decision: float
    epsilon: float
    planned_offer_rate: float
    planned_spend: float


# -- training ------------------------------------------------------------------------------
class GateCheck(TypedDict):
    check: str
    passed: bool
    detail: str
    mde: NotRequired[float]  # a lead check's smallest detectable lead


class GateDecision(TypedDict):
    """metrics/gate.json."""

    promote: bool
    challenger: str
    champion: str
    checks: list[GateCheck]


class TrainedRun(TypedDict):
    """training.pipeline.repro: what the train task hands the gate and the run summary.
    `model`, `budget_plan` and `evaluation` are those files as stored (model.json,
    policy.json, evaluation.json; NaN read as null), the evaluation rendered through its
    dataclasses (EvaluationReport.from_dict); `report` is the run report's path."""

    workspace_commit: str
    model: ModelRecord
    budget_plan: BudgetPlanRecord
    evaluation: EvaluationRecord
    gate: GateDecision
    report: str


# -- the run summary -----------------------------------------------------------------------
class ValidationBrief(TypedDict):
    """expectations.validate.ValidationOutcome.brief(), the validate task's XCom."""

    rows: dict[str, int]
    warnings: list[str]
    notes: list[str]
    report: str
    data_docs: dict[str, str]


class FeaturesDone(TypedDict):
    """feature_repo.store.materialise_user_features, the features task's result for a day."""

    seconds: dict[str, float]
    users: int
    coupons: int
    features: int
    coupon_features: int


class Built(TypedDict):
    model_tag: str
    bento_tag: str


class Steps(TypedDict, total=False):
    """One day's step results (reports/steps/<day>.json): absent, not run yet; None, did not
    finish."""

    land: dict[str, int] | None  # rows landed per table
    validate: ValidationBrief | None
    load_offline_store: dict[str, int] | None
    features: FeaturesDone | None
    train: TrainedRun | None
    gate: bool | None
    build_bento: Built | None
    check_candidate: Slot | None
    release: SwitchedRelease | None
    served_readout: ServedReadout | None
    forget_feedback: Forgotten | None


class RunSummary(TypedDict):
    """reports/runs/<day>.json; its paths are relative to the workspace."""

    day: str
    outcome: str
    steps: Steps
    candidate_refused: NotRequired[Refusal]
    rejection: NotRequired[list[str] | None]  # the failures of a quarantined batch
    data_docs: NotRequired[dict[str, str] | None]
    validation_warnings: NotRequired[list[str]]
    summary_json: str
    summary_markdown: str


# -- alerts --------------------------------------------------------------------------------
class Alert(TypedDict):
    """One line of alerts.jsonl; the alert's own details follow these keys, flat."""

    at: str
    kind: str
    summary: str
    channels: dict[str, str]  # channel -> "ok" or "failed: <why>"


class LateCheck(TypedDict):
    day: str
    outcome: str
    late: bool
