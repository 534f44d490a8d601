"""Any randomised trial in the learner's shapes: a CSV and a small spec (`TrialSpec`, a YAML
file) become arrays whose rows are [user block | arm block], as `couponflow.model` lays out
its inputs, with the logged arm, the outcomes and each row's net value.

The spec names the treatment column and its arms (which one is the control), the outcome
variants (a column and a value per unit: margin per dollar, value per visit), the cost of
each treated arm per customer and per conversion, the pre-treatment covariates (numeric,
log, ordinal, categorical; categorical ones one-hot) and, optionally, the design's arm
probabilities (default: the arms' shares in the file, which a randomised design makes its
propensities). `public_data/hillstrom.yaml` is the Hillstrom e-mail experiment's.

The covariates become a user block of columns in 0..1: numeric and log(1 + x) columns scaled
by the file's min and max, ordinal levels by rank, categorical levels one-hot. The arm block
is one-hot over the arms with the control first, so its column 0 is `is_control`, what
CouponNet's uplift term reads.

    spec = TrialSpec.load("public_data/hillstrom.yaml")
    data = trial_arrays(spec)
    reward = net_value(spec, data, "spend")  # value x outcome - cost, per customer
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

COVARIATE_KINDS = ("numeric", "log", "ordinal", "categorical")
SPEC_KEYS = frozenset(
    ("name", "csv", "treatment", "outcomes", "conversion", "covariates", "propensities", "network")
)


class TrialSpecError(ValueError):
    """A spec, or a CSV read through it, that cannot describe a trial: one line says why."""


@dataclass(frozen=True)
class Arm:
    """A treatment arm: its label in the treatment column and what it costs."""

    label: str
    per_customer: float = 0.0  # every customer given the arm
    per_conversion: float = 0.0  # every given customer who converts (`TrialSpec.conversion`)


@dataclass(frozen=True)
class Outcome:
    """An outcome variant: the column (non-negative) and the value of one unit of it."""

    name: str
    column: str
    value: float


@dataclass(frozen=True)
class Covariates:
    """Pre-treatment columns by how they are encoded. Ordinal and categorical columns map to
    their levels in order (None: the file's levels, sorted)."""

    numeric: tuple[str, ...] = ()
    log: tuple[str, ...] = ()
    ordinal: dict[str, tuple[str, ...] | None] = field(default_factory=dict)
    categorical: dict[str, tuple[str, ...] | None] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.log, *self.ordinal, *self.categorical]


@dataclass(frozen=True)
class TrialSpec:
    """A randomised trial: where its CSV is and how to read it (see the module docstring)."""

    name: str
    csv: Path
    treatment: str  # the column holding each customer's arm
    control: str  # its label of the control arm
    arms: tuple[Arm, ...]  # the treated arms, in order: arm 1, 2, ...
    outcomes: dict[str, Outcome]
    covariates: Covariates
    conversion: str | None = None  # 0/1 column that per-conversion costs count
    propensities: dict[str, float] | None = None  # label -> probability; None: the shares
    # the learner's settings over params.yaml `model` (and training/trial.py's amount_by_arm)
    network: dict[str, Any] = field(default_factory=dict)

    @property
    def arm_labels(self) -> list[str]:
        """Every arm's label, the control first: the arm index of the arrays."""
        return [self.control, *(a.label for a in self.arms)]

    @property
    def cost_per_customer(self) -> np.ndarray:
        return np.array([0.0, *(a.per_customer for a in self.arms)])

    @property
    def cost_per_conversion(self) -> np.ndarray:
        return np.array([0.0, *(a.per_conversion for a in self.arms)])

    def outcome(self, name: str) -> Outcome:
        if name not in self.outcomes:
            raise TrialSpecError(f"unknown outcome {name!r}; the spec has {list(self.outcomes)}")
        return self.outcomes[name]

    @property
    def columns(self) -> list[str]:
        """Every CSV column the spec reads."""
        outcomes = [o.column for o in self.outcomes.values()]
        extra = [self.conversion] if self.conversion else []
        return list(dict.fromkeys([self.treatment, *outcomes, *extra, *self.covariates.columns]))

    @classmethod
    def load(cls, path: str | Path) -> TrialSpec:
        """A spec from its YAML file; a relative `csv` is relative to that file's folder."""
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except OSError as err:
            raise TrialSpecError(f"cannot read spec {path}: {err.strerror}") from None
        except yaml.YAMLError as err:
            raise TrialSpecError(f"spec {path} is not YAML: {err}") from None
        return cls.from_dict(raw, path.resolve().parent)

    @classmethod
    def from_dict(cls, raw: Any, base: Path = Path(".")) -> TrialSpec:
        """A spec from its parsed YAML, checked: every error is a TrialSpecError."""
        if not isinstance(raw, dict):
            raise TrialSpecError("a spec is a mapping (name, csv, treatment, outcomes, ...)")
        _only(raw, SPEC_KEYS, "spec")
        for key in ("csv", "treatment", "outcomes", "covariates"):
            if key not in raw:
                raise TrialSpecError(f"spec: missing {key!r}")
        csv = Path(str(raw["csv"]))
        treatment = _mapping(raw["treatment"], "treatment")
        _only(treatment, {"column", "control", "arms"}, "treatment")
        for key in ("column", "control", "arms"):
            if key not in treatment:
                raise TrialSpecError(f"treatment: missing {key!r}")
        control = str(treatment["control"])
        arms = _arms(treatment["arms"])
        labels = [control, *(a.label for a in arms)]
        if len(set(labels)) != len(labels):
            raise TrialSpecError(f"treatment: arm labels repeat: {labels}")
        conversion = raw.get("conversion")
        if conversion is None and any(a.per_conversion for a in arms):
            raise TrialSpecError("a cost per conversion needs the `conversion` column")
        outcomes = {
            str(name): _outcome(str(name), entry)
            for name, entry in _mapping(raw["outcomes"], "outcomes").items()
        }
        if not outcomes:
            raise TrialSpecError("outcomes: at least one is needed")
        propensities = raw.get("propensities")
        if propensities is not None:
            propensities = {
                str(k): float(v) for k, v in _mapping(propensities, "propensities").items()
            }
            if set(propensities) != set(labels):
                raise TrialSpecError(
                    f"propensities: give one per arm {labels}, got {list(propensities)}"
                )
            if min(propensities.values()) <= 0 or abs(sum(propensities.values()) - 1) > 1e-6:
                raise TrialSpecError("propensities: each above 0, summing to 1")
        network = dict(_mapping(raw.get("network") or {}, "network"))
        return cls(
            name=str(raw.get("name") or csv.stem),
            csv=csv if csv.is_absolute() else (base / csv).resolve(),
            treatment=str(treatment["column"]),
            control=control,
            arms=arms,
            outcomes=outcomes,
            covariates=_covariates(raw["covariates"]),
            conversion=None if conversion is None else str(conversion),
            propensities=propensities,
            network=network,
        )


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise TrialSpecError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _only(raw: dict, allowed: set[str] | frozenset[str], where: str) -> None:
    unknown = sorted(set(map(str, raw)) - allowed)
    if unknown:
        raise TrialSpecError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _number(value: Any, where: str, minimum: float | None = 0.0) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TrialSpecError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(number) or (minimum is not None and number < minimum):
        raise TrialSpecError(f"{where}: expected a finite number >= {minimum}, got {value!r}")
    return number


def _arms(raw: Any) -> tuple[Arm, ...]:
    """Treated arms: a list of labels (no costs) or a mapping label -> {per_customer,
    per_conversion}."""
    if isinstance(raw, list):
        raw = {label: None for label in raw}
    raw = _mapping(raw, "treatment.arms")
    if not raw:
        raise TrialSpecError("treatment.arms: at least one treated arm is needed")
    arms = []
    for label, costs in raw.items():
        costs = _mapping(costs or {}, f"treatment.arms.{label}")
        _only(costs, {"per_customer", "per_conversion"}, f"treatment.arms.{label}")
        arms.append(
            Arm(
                str(label),
                _number(costs.get("per_customer", 0.0), f"{label}.per_customer"),
                _number(costs.get("per_conversion", 0.0), f"{label}.per_conversion"),
            )
        )
    return tuple(arms)


def _outcome(name: str, raw: Any) -> Outcome:
    raw = _mapping(raw, f"outcomes.{name}")
    _only(raw, {"column", "value"}, f"outcomes.{name}")
    if "column" not in raw:
        raise TrialSpecError(f"outcomes.{name}: missing 'column'")
    return Outcome(name, str(raw["column"]), _number(raw.get("value", 1.0), f"{name}.value", None))


def _covariates(raw: Any) -> Covariates:
    raw = _mapping(raw, "covariates")
    _only(raw, set(COVARIATE_KINDS), "covariates")

    def names(kind: str) -> tuple[str, ...]:
        value = raw.get(kind) or []
        if not isinstance(value, list):
            raise TrialSpecError(f"covariates.{kind}: expected a list of columns")
        return tuple(map(str, value))

    def levelled(kind: str) -> dict[str, tuple[str, ...] | None]:
        value = raw.get(kind) or {}
        if isinstance(value, list):
            return {str(c): None for c in value}
        return {
            str(c): None if levels is None else tuple(map(str, levels))
            for c, levels in _mapping(value, f"covariates.{kind}").items()
        }

    cov = Covariates(names("numeric"), names("log"), levelled("ordinal"), levelled("categorical"))
    if not cov.columns:
        raise TrialSpecError("covariates: at least one column is needed")
    if len(set(cov.columns)) != len(cov.columns):
        raise TrialSpecError(f"covariates: a column is listed twice: {cov.columns}")
    return cov


@dataclass(frozen=True)
class TrialArrays:
    """A trial as arrays, a row per customer: the encoded covariates (the user block of the
    learner's inputs), the logged arm (0 = control), the outcome and conversion columns, and
    the probability of the logged arm."""

    user: np.ndarray  # (n, len(user_inputs)) float32, each column in 0..1
    arm: np.ndarray  # (n,) int64 index into `arms`
    outcomes: dict[str, np.ndarray]  # CSV column -> (n,) float64, every outcome column
    conversion: np.ndarray  # (n,) float64 0/1; zeros when the spec names no conversion column
    propensity: np.ndarray  # (n,) probability of the logged arm
    user_inputs: tuple[str, ...]  # the user block's column names
    arms: tuple[str, ...]  # arm labels, the control first

    @property
    def n_arms(self) -> int:
        return len(self.arms)

    def __len__(self) -> int:
        return len(self.arm)

    def subset(self, rows: np.ndarray) -> TrialArrays:
        cut = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("user", "arm", "conversion", "propensity"):
            cut[name] = cut[name][rows]
        cut["outcomes"] = {k: v[rows] for k, v in self.outcomes.items()}
        return TrialArrays(**cut)

    def inputs(self, arm: np.ndarray | int) -> np.ndarray:
        """[user block | arm block] rows for `arm` (one per customer, or one for all); the arm
        block is one-hot over the arms, so its column 0 is `is_control`."""
        arm = np.broadcast_to(np.asarray(arm), (len(self),))
        return np.hstack([self.user, np.eye(self.n_arms, dtype=np.float32)[arm]])


def read_trial(spec: TrialSpec, csv: str | Path | None = None) -> pd.DataFrame:
    """The spec's columns of its CSV (or of `csv`), labels and levels read as text."""
    path = Path(csv) if csv is not None else spec.csv
    text = [spec.treatment, *spec.covariates.ordinal, *spec.covariates.categorical]
    try:
        header = pd.read_csv(path, nrows=0).columns
    except FileNotFoundError:
        raise TrialSpecError(f"csv not found: {path}") from None
    missing = [c for c in spec.columns if c not in header]
    if missing:
        raise TrialSpecError(f"column(s) {missing} missing from {path}")
    return pd.read_csv(path, usecols=spec.columns, dtype={c: str for c in text})


def trial_arrays(spec: TrialSpec, frame: pd.DataFrame | None = None) -> TrialArrays:
    """The trial's arrays from `frame` (default: the spec's CSV), checked against the spec:
    a missing column, an arm label the spec does not know (or an arm without rows), a
    missing value, a negative outcome or an unlisted level is a TrialSpecError."""
    frame = read_trial(spec) if frame is None else frame
    missing = [c for c in spec.columns if c not in frame.columns]
    if missing:
        raise TrialSpecError(f"column(s) {missing} missing from the trial's data")
    empty = [c for c in spec.columns if frame[c].isna().any()]
    if empty:
        raise TrialSpecError(f"column(s) {empty} have missing values")
    labels = spec.arm_labels
    logged = frame[spec.treatment].astype(str)
    unknown = sorted(set(logged) - set(labels))
    if unknown:
        raise TrialSpecError(
            f"unknown arm(s) {unknown} in column {spec.treatment!r}: the spec has {labels}"
        )
    arm = logged.map({label: i for i, label in enumerate(labels)}).to_numpy(np.int64)
    counts = np.bincount(arm, minlength=len(labels))
    if (counts == 0).any():
        absent = [labels[i] for i in np.flatnonzero(counts == 0)]
        raise TrialSpecError(f"arm(s) {absent} of the spec have no rows in the data")
    outcomes = {}
    for column in dict.fromkeys(o.column for o in spec.outcomes.values()):
        values = _numeric(frame, column)
        if (values < 0).any():
            raise TrialSpecError(f"outcome column {column!r} has negative values")
        outcomes[column] = values
    conversion = np.zeros(len(frame))
    if spec.conversion:
        conversion = _numeric(frame, spec.conversion)
        if not np.isin(conversion, (0.0, 1.0)).all():
            raise TrialSpecError(f"conversion column {spec.conversion!r} must be 0 or 1")
    if spec.propensities is None:
        share = counts / counts.sum()  # a randomised design: the arms' shares
    else:
        share = np.array([spec.propensities[label] for label in labels])
    user, names = encode_covariates(spec.covariates, frame)
    return TrialArrays(user, arm, outcomes, conversion, share[arm], names, tuple(labels))


def _numeric(frame: pd.DataFrame, column: str) -> np.ndarray:
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(np.float64)
    if not np.isfinite(values).all():
        raise TrialSpecError(f"column {column!r} is not numeric")
    return values


def _scaled(values: np.ndarray) -> np.ndarray:
    low, high = values.min(), values.max()
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def _levels(
    frame: pd.DataFrame, column: str, levels: tuple[str, ...] | None
) -> tuple[np.ndarray, list[str]]:
    values = frame[column].astype(str)
    listed: list[str] = list(levels) if levels is not None else sorted(values.unique())
    unlisted = sorted(set(values) - set(listed))
    if unlisted:
        raise TrialSpecError(f"column {column!r} has level(s) {unlisted} the spec does not list")
    return values.map({level: i for i, level in enumerate(listed)}).to_numpy(np.int64), listed


def encode_covariates(cov: Covariates, frame: pd.DataFrame) -> tuple[np.ndarray, tuple[str, ...]]:
    """The user block, (n, columns) float32 in 0..1, and its column names: numeric columns
    min-max scaled, log columns log(1 + x) then scaled, ordinal levels as rank / (levels - 1),
    categorical levels one-hot (`column=level`)."""
    columns, names = [], []
    for column in cov.numeric:
        columns.append(_scaled(_numeric(frame, column)))
        names.append(column)
    for column in cov.log:
        values = _numeric(frame, column)
        if (values < 0).any():
            raise TrialSpecError(f"log covariate {column!r} has negative values")
        columns.append(_scaled(np.log1p(values)))
        names.append(f"log_{column}")
    for column, given in cov.ordinal.items():
        codes, levels = _levels(frame, column, given)
        columns.append(codes / max(len(levels) - 1, 1))
        names.append(column)
    for column, given in cov.categorical.items():
        codes, levels = _levels(frame, column, given)
        columns.extend(codes == i for i in range(len(levels)))
        names.extend(f"{column}={level}" for level in levels)
    user = np.column_stack([np.asarray(c, dtype=np.float32) for c in columns])
    return user, tuple(names)


def net_value(spec: TrialSpec, data: TrialArrays, outcome: str) -> np.ndarray:
    """Each customer's realised net value under the arm they got: the outcome's value per
    unit times the outcome, less the arm's cost per customer and per conversion."""
    o = spec.outcome(outcome)
    cost = spec.cost_per_customer[data.arm] + spec.cost_per_conversion[data.arm] * data.conversion
    return o.value * data.outcomes[o.column] - cost
