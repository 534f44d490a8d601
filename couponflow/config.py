"""Where things live and which knobs are set: the workspace and its params.yaml.

A workspace is one self-contained home for a deployment (landing zone, offline store,
feature store state, DVC-tracked models and metrics, releases). Every room receives a
`Workspace` rather than building paths of its own.

The params sections one room hands another as a value are TypedDicts here (issue 20):
`ModelParams` (training.train.fit, its callers: training.trial, the benchmarks),
`EvaluationParams` (training.evaluate's stage and its helpers; the days it holds out, read
by training.dataset and training.served), `GateParams` (training.gate.decide),
`RolloutParams` (serving.deploy.smoke.canary_checks, from serving.deploy.deployment),
`HillstromParams` and `ObdParams` (couponflow.public_data).
The sections each read in place by the room that owns them stay `Section`: free-form to the
checker, held to the project's params.yaml by `check_params` all the same.
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any, NotRequired, TypedDict, cast

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
HOME_ENV = "COUPONFLOW_HOME"
REDIS_PASSWORD_ENV = "COUPONFLOW_REDIS_PASSWORD"
DEFAULT_REDIS = "127.0.0.1:6379"


# -- the params sections that cross rooms -----------------------------------------------------
# A workspace's params.yaml is checked with complete=False: a workspace made before a key was
# added lacks it (it is refused only at `init`), so the keys read with a default are NotRequired.
class ModelParams(TypedDict):
    """params.yaml `model`: what training.train.fit and fit_ensemble take (a trial's network
    is this section with its spec's `network` over it, training.trial.network_config)."""

    seed: int
    hidden: int
    epochs: int
    batch_size: int
    lr: float
    patience: NotRequired[int]  # checks without improvement; default 3
    check_rows: NotRequired[int | None]  # check at least every this many rows; None: per epoch
    training_days: NotRequired[int]  # absent: every logged day (training.dataset)
    max_stabilised_weight: float
    max_inverse_propensity: float
    members: NotRequired[int]  # default 1
    bootstrap: NotRequired[bool]  # members but the first on resampled shoppers; default off
    credibility: NotRequired[float]  # default 0.0
    threads: NotRequired[int]  # default 1
    processes: NotRequired[int | None]  # None: one per GPU on CUDA, else 1
    member_processes: NotRequired[int | None]  # None: one per idle core (CPU only)
    refit: NotRequired[bool]  # ship the judged recipe refitted up to yesterday; default off
    device: NotRequired[str]  # not a params.yaml key: the benchmarks' and tests' choice
    amount_by_arm: NotRequired[bool]  # not a params.yaml key: a trial spec's `network` only


class EvaluationParams(TypedDict):
    """params.yaml `evaluation`: what training.evaluate judges on and how."""

    oracle: bool  # simulated data: judge by the world's truth too
    days: NotRequired[int]  # evaluation days held out; default 1 where read with one
    rows: str  # "all" or "randomised"
    reward_model_folds: int
    confidence: float
    bootstrap: int
    new_user_days: int
    budget_multiples: list[float]
    population_sample: NotRequired[int | None]  # None: every user
    decision_sample: NotRequired[int | None]  # None: every logged decision judged
    baseline_rows: NotRequired[int | None]  # None: every row before the judged days


class GateParams(TypedDict):
    """params.yaml `gate`: training.gate.decide's thresholds."""

    min_auc: float
    max_ece: float
    min_coupon_evidence: float
    min_gain_slope: float
    min_lift_over_baselines: float
    min_lift_over_champion: float
    max_auc_regression: float
    max_log_loss_regression: float


class RolloutParams(TypedDict):
    """params.yaml `serving.rollout`: serving.deploy.smoke.canary_checks's limits."""

    latency_requests: int
    max_p99_ms: float


class ServingParams(TypedDict):
    """params.yaml `serving` (it carries `rollout`)."""

    host: str
    port: int
    workers: int
    smoke_timeout_s: float
    feature_timeout_s: NotRequired[float]
    rollout: RolloutParams
    spend_store: NotRequired[str]  # "sqlite" or "redis"
    spend_timeout_s: NotRequired[float]
    feedback_index: NotRequired[str]  # "sqlite" or "redis"
    feedback_retention_days: NotRequired[int]


class HillstromParams(TypedDict):
    """params.yaml `public_data.hillstrom`: couponflow.public_data.load_hillstrom's source."""

    path: str  # relative to the project root
    spec: NotRequired[str]  # the trial spec; default public_data/hillstrom.yaml
    date: str
    email_kind: str
    email_value: float


class ObdParams(TypedDict):
    """params.yaml `public_data.obd`: couponflow.public_data.load_obd's source."""

    path: str
    campaign: str


class PublicDataParams(TypedDict):
    hillstrom: HillstromParams
    obd: ObdParams


# A section read in place by the one room that owns it (`ws.params["world"]["margin"]`): left
# free-form to the checker; check_params holds its keys and types to the project's params.yaml.
Section = dict[str, Any]


class Params(TypedDict):
    """A workspace's params.yaml, as checked (`Workspace.params`)."""

    code_dir: str
    world: Section  # couponflow.world.World's (that package is another change's now)
    public_data: NotRequired[PublicDataParams]
    validation: Section  # expectations'
    features: NotRequired[Section]  # feature_repo's and the Redis settings'
    model: ModelParams
    evaluation: EvaluationParams
    gate: GateParams
    policy: Section  # read by key where the policy is applied
    serving: NotRequired[ServingParams]  # read with a default by serving.runtime


@dataclass(frozen=True)
class Workspace:
    """Paths of one couponflow deployment, all under `root`."""

    root: Path

    @classmethod
    def from_env(cls) -> Workspace:
        """The workspace named by $COUPONFLOW_HOME (default: var/demo in the project)."""
        return cls(Path(os.environ.get(HOME_ENV, PROJECT_ROOT / "var" / "demo")).resolve())

    @cached_property
    def params(self) -> Params:
        """The workspace's params.yaml, checked against the schema (`check_params`: unknown
        keys, types, ranges; a key it lacks is only refused at `init`): a bad one raises
        ParamsError naming the key, before any task works with it."""
        return checked_params(self.params_file, complete=False)

    @property
    def params_file(self) -> Path:
        return self.root / "params.yaml"

    @property
    def landing(self) -> Path:
        return self.root / "data" / "landing"

    @property
    def quarantine(self) -> Path:
        return self.root / "data" / "quarantine"

    @property
    def offline(self) -> Path:
        return self.root / "data" / "offline"

    @property
    def features(self) -> Path:
        return self.root / "data" / "features"

    @property
    def feature_store(self) -> Path:
        return self.root / "feature_store"

    @property
    def validation_reports(self) -> Path:
        return self.root / "reports" / "validation"

    @property
    def training_set(self) -> Path:
        return self.root / "data" / "training"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    @property
    def champion(self) -> Path:
        return self.releases / "champion"

    def landing_partition(self, day: str) -> Path:
        return self.landing / f"date={day}"

    def quarantine_partition(self, day: str) -> Path:
        return self.quarantine / f"date={day}"

    def relative(self, value: Any) -> Any:
        """`value` (a path, a string, or dicts and lists of them) with every path inside the
        workspace written relative to its root, so what is stored in the workspace stays
        true when it moves (issue #18). Paths elsewhere, and other values, are kept."""
        if isinstance(value, Path):
            value = str(value)
        if isinstance(value, str):
            root = str(self.root)
            # the root where a path starts (not inside a longer one), in a path or a message
            return "." if value == root else re.sub(rf"(?<![\w.~/-]){re.escape(root)}/", "", value)
        if isinstance(value, dict):
            return {key: self.relative(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.relative(item) for item in value]
        return value


@dataclass(frozen=True)
class RedisSettings:
    """Where the Redis of the online store and the spend store is: `features.redis`
    (host:port) in params.yaml, and its password, a secret, only from
    $COUPONFLOW_REDIS_PASSWORD (never in params.yaml, which the workspace commits)."""

    host: str
    port: int
    password: str | None

    @classmethod
    def of(cls, ws: Workspace) -> RedisSettings:
        address = ws.params.get("features", {}).get("redis", DEFAULT_REDIS)
        host, _, port = address.partition(":")
        return cls(host, int(port or 6379), os.environ.get(REDIS_PASSWORD_ENV) or None)

    @property
    def feast_connection_string(self) -> str:
        """Feast's form, `host:port[,password=...]` (so the password cannot hold a comma)."""
        address = f"{self.host}:{self.port}"
        return f"{address},password={self.password}" if self.password else address  # secrets: allow


def load_params(path: Path) -> dict[str, Any]:
    """The YAML as written, not yet checked: free-form until `check_params` has read it."""
    with open(path) as fh:
        return yaml.safe_load(fh)


# -- the schema of params.yaml ------------------------------------------------------------------
class ParamsError(ValueError):
    """params.yaml (or a `--set`) breaks the schema; the message is one line saying what to
    fix."""


@cache
def _template() -> dict[str, Any]:
    """The project's params.yaml: its keys are the known keys, its values' types the types."""
    return load_params(PROJECT_ROOT / "params.yaml")


# Keys whose value may be null, and what they hold otherwise (the template's value is null,
# or null has a meaning: "everyone", "one per GPU", "no shock", "Ray in this process",
# "check once an epoch").
NULLABLE: dict[str, type] = {
    "world.drift.price_shock_date": dt.date,
    "model.processes": int,
    "model.member_processes": int,
    "model.check_rows": int,
    "evaluation.population_sample": int,
    "evaluation.decision_sample": int,
    "evaluation.baseline_rows": int,
    "validation.reference_from": dt.date,
    "features.ray_address": str,
}
DATES = {"world.start_date", "world.drift.price_shock_date", "public_data.hillstrom.date"}
DATES |= {"validation.reference_from"}
CHOICES: dict[str, tuple[str, ...]] = {
    "features.online_store": ("sqlite", "redis"),
    "features.online_write": ("bulk", "feast"),
    "features.engine": ("local", "ray"),
    "serving.spend_store": ("sqlite", "redis"),
    "serving.feedback_index": ("sqlite", "redis"),
}
_SHARE = (0.0, 1.0)
_POSITIVE = (1, None)
# dotted key (a `*` matches any one key) -> (lowest, highest), both inclusive, None: unbounded
RANGES: dict[str, tuple[float | None, float | None]] = {
    "world.seed": (0, None),
    "world.history_days": _POSITIVE,
    "world.n_users": _POSITIVE,
    "world.n_coupons": _POSITIVE,
    "world.sessions_per_user": (0, None),
    "world.offers_per_user": _SHARE,
    "world.random_share": _SHARE,
    "world.holdout_share": (0.0, 0.99),
    "world.margin": _SHARE,
    "world.fatigue_window_days": _POSITIVE,
    "world.segment_mix.*": (0, None),
    "world.drift.new_coupons_per_week": (0, None),
    "world.drift.new_users_per_day": (0, None),
    "world.drift.new_user_mix.*": (0, None),
    "world.drift.price_shock": (-0.99, None),
    "validation.min_rows.*": (0, None),
    "validation.max_rows.*": _POSITIVE,
    "validation.trailing_days": (2, None),
    "validation.min_trailing_days": (2, None),
    "validation.reference_days": (2, None),
    "validation.sigmas.*": (0, None),
    "validation.tolerance.*.*": (0, None),
    "validation.reference_tolerance.*.*": (0, None),
    "features.online_write_batch": _POSITIVE,
    "features.ray_cpus": _POSITIVE,
    "model.seed": (0, None),
    "model.hidden": _POSITIVE,
    "model.epochs": _POSITIVE,
    "model.batch_size": _POSITIVE,
    "model.lr": (1e-12, None),
    "model.patience": _POSITIVE,
    "model.check_rows": _POSITIVE,
    "model.max_inverse_propensity": (1, None),
    "model.threads": _POSITIVE,
    "model.processes": _POSITIVE,
    "model.member_processes": _POSITIVE,
    "evaluation.confidence": (0.01, 0.999),
    "evaluation.bootstrap": _POSITIVE,
    "evaluation.new_user_days": _POSITIVE,
    "evaluation.population_sample": _POSITIVE,
    "evaluation.decision_sample": _POSITIVE,
    "evaluation.baseline_rows": _POSITIVE,
    "evaluation.budget_multiples": (0, None),
    "gate.min_auc": _SHARE,
    "gate.max_ece": _SHARE,
    "gate.min_coupon_evidence": (0, None),
    "policy.k": _POSITIVE,
    "policy.epsilon": _SHARE,
    "policy.budget_per_user": (0, None),
    "policy.max_offers_7d": (0, None),
    "policy.holdout_share": (0.0, 0.99),
    "serving.port": (1, 65535),
    "serving.workers": _POSITIVE,
    "serving.smoke_timeout_s": (0.001, None),
    "serving.feature_timeout_s": (0.001, None),
    "serving.spend_timeout_s": (0.001, None),
    "serving.rollout.latency_requests": _POSITIVE,
    "serving.rollout.max_p99_ms": (0.001, None),
    "serving.feedback_retention_days": _POSITIVE,
}
_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _nearest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def _range_of(path: str) -> tuple[float | None, float | None] | None:
    if path in RANGES:
        return RANGES[path]
    parts = path.split(".")
    for pattern, bounds in RANGES.items():
        pat = pattern.split(".")
        if len(pat) == len(parts) and all(p in ("*", q) for p, q in zip(pat, parts, strict=True)):
            return bounds
    return None


def _is_date(value: Any) -> bool:
    if isinstance(value, dt.date):
        return True
    if not isinstance(value, str):
        return False
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _check_leaf(path: str, want: Any, value: Any) -> str | None:
    """What is wrong with one value (None: nothing)."""
    if value is None:
        if want is None or path in NULLABLE:
            return None
        return f"`{path}` is empty (null); give it a value like the project's ({want!r})"
    if path in DATES:
        if not _is_date(value):
            return f"`{path}` is {value!r}, not a date: write it as YYYY-MM-DD"
        return None
    kind = NULLABLE.get(path) or type(want)
    if want is None and path not in NULLABLE:
        return None  # a free-form key the template leaves empty
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
    elif kind is list:
        if not isinstance(value, list):
            return f"`{path}` is {value!r}, not a list: write it like [{', '.join(map(str, want))}]"
        for i, item in enumerate(value):
            problem = _check_leaf(f"{path}", want[0] if want else item, item)
            if problem:
                return problem.replace(f"`{path}`", f"`{path}[{i}]`", 1)
        return None
    else:
        ok = isinstance(value, kind)
    if not ok:
        return (
            f"`{path}` is {value!r}, not {_TYPE_NAMES.get(kind, kind.__name__)}: "
            f"set it like the project's params.yaml ({want!r})"
        )
    if path in CHOICES and value not in CHOICES[path]:
        return f"`{path}` is {value!r}: it must be one of {', '.join(CHOICES[path])}"
    bounds = _range_of(path) if isinstance(value, int | float) else None
    if bounds:
        lo, hi = bounds
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            span = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
            return f"`{path}` is {value!r}, out of range: it must be {span}"
    return None


def _walk(want: Any, value: Any, path: str, complete: bool, out: list[str]) -> None:
    if isinstance(want, dict):
        if not isinstance(value, dict):
            out.append(f"`{path}` is {value!r}, not a section: it holds {', '.join(want)}")
            return
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if key not in want:
                known = [f"{path}.{k}" if path else str(k) for k in want]
                out.append(f"unknown key `{where}`{_nearest(where, known)}")
            else:
                _walk(want[key], item, where, complete, out)
        if complete:
            for key in want:
                if key not in value:
                    where = f"{path}.{key}" if path else str(key)
                    out.append(
                        f"`{where}` is missing: copy it from the project's params.yaml "
                        f"({PROJECT_ROOT / 'params.yaml'})"
                    )
        return
    problem = _check_leaf(path, want, value)
    if problem:
        out.append(problem)


def _across(params: dict[str, Any]) -> list[str]:
    """Rules between keys (of params not checked yet: free-form)."""
    out = []
    v = params.get("validation") or {}
    try:
        if int(v["min_trailing_days"]) > int(v["trailing_days"]):
            out.append(
                "`validation.min_trailing_days` is above `validation.trailing_days`: the "
                "statistics would never be judged; lower it"
            )
        for table, lo in (v.get("min_rows") or {}).items():
            if lo > (v.get("max_rows") or {}).get(table, math.inf):
                out.append(f"`validation.min_rows.{table}` is above `validation.max_rows.{table}`")
        for name in ("tolerance", "reference_tolerance"):
            for stat, band in (v.get(name) or {}).items():
                if band["warning"] > band["critical"]:
                    out.append(
                        f"`validation.{name}.{stat}.warning` is above its critical band: "
                        "a warning band lies inside the critical one"
                    )
    except (KeyError, TypeError, ValueError):
        pass  # a missing or mistyped key is already reported on its own
    address = (params.get("features") or {}).get("ray_address")
    if isinstance(address, str) and not RAY_ADDRESS.fullmatch(address):
        out.append(
            f"`features.ray_address` is {address!r}: write auto, host:port or ray://host:port "
            "(a Ray cluster's head), or null for a Ray in this process"
        )
    return out


RAY_ADDRESS = re.compile(r"auto|(ray://)?[\w.-]+:\d+")


def check_params(params: Any, complete: bool = True) -> list[str]:
    """Every way `params` breaks the schema: the project's params.yaml is the schema (its keys
    and their types), with NULLABLE, DATES, CHOICES and RANGES on top. `complete`: a key the
    project has and `params` lacks is a problem too. One line per problem, saying what to do."""
    if not isinstance(params, dict):
        return [f"params is {type(params).__name__}, not a mapping of sections"]
    out: list[str] = []
    _walk(_template(), params, "", complete, out)
    return out + _across(params)


def checked_params(path: Path, complete: bool = True) -> Params:
    """params.yaml at `path`, raising ParamsError (one line) when it breaks the schema."""
    try:
        params = load_params(path)
    except FileNotFoundError:
        raise ParamsError(
            f"no params.yaml at {path}: is {path.parent} a workspace? Create one with "
            "`couponflow init`"
        ) from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    problems = check_params(params, complete)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ParamsError(f"{path}: {problems[0]}{more}")
    return cast(Params, params)  # the template's keys and types: checked just above


def params_notices(params: Mapping[str, Any]) -> list[str]:
    """What is allowed but worth saying loudly (printed by `couponflow init`)."""
    seeded = int(params["world"]["history_days"])
    needed = int(params["validation"]["min_trailing_days"])
    if seeded < needed:
        return [
            f"NOTE: world.history_days ({seeded}) < validation.min_trailing_days ({needed}): "
            f"the statistics of the first {needed - seeded} DAG days will not be judged (each "
            "validation report says so)"
        ]
    return []


# `--set a.b.c=value` pairs (`couponflow init`, `demo`), each value parsed as YAML: any dotted
# key and any value until check_params reads the params they are set into (set_param), so a
# mapping of objects, not a section type; read only, hence Mapping.
Overrides = Mapping[str, object]


def set_param(params: dict[str, Any], dotted: str, value: object) -> None:
    """Set `a.b.c=value` in a nested params dict (used for `couponflow init --set`), before
    it is checked: free-form, any dotted key."""
    *parents, leaf = dotted.split(".")
    node = params
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
