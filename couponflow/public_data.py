"""Real public data in the project's shapes: the Hillstrom e-mail experiment as a landing-zone
batch of the data contract, and the Open Bandit Dataset's logs as tidy bandit feedback.

Hillstrom lets the same labelling, uplift metrics and allocation run on a real randomised
experiment; the Open Bandit logs let the off-policy estimators be checked against a policy's
own logged click rate. Paths come from params.yaml's `public_data` section, relative to the
project root; the files are read where they are, never copied into the repository.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import OneHotEncoder

from couponflow.config import PROJECT_ROOT, HillstromParams, ObdParams
from couponflow.contract import ALL_CATEGORIES, TABLES, coupon_cost
from couponflow.metrics import TargetTerms
from couponflow.trials import TrialArrays, TrialSpec, trial_arrays

# Hillstrom has no region, age or device; the contract requires them, so they carry the
# nearest covariates as codes (the raw ones come back in `HillstromData.covariates`).
HILLSTROM_REGION = {"Urban": "north", "Surburban": "south", "Rural": "west"}  # zip_code
HILLSTROM_DEVICE = {"Phone": "mobile", "Web": "desktop", "Multichannel": "tablet"}  # channel
HILLSTROM_AGE_BAND = {  # history_segment, in order
    "1) $0 - $100": "18-24",
    "2) $100 - $200": "25-34",
    "3) $200 - $350": "35-44",
    "4) $350 - $500": "45-54",
    "5) $500 - $750": "55+",
    "6) $750 - $1,000": "55+",
    "7) $1,000 +": "55+",
}
HILLSTROM_ARMS = {"Mens E-Mail": "HM-MENS", "Womens E-Mail": "HM-WOMENS", "No E-Mail": None}
HILLSTROM_COVARIATES = [
    "recency",
    "history_segment",
    "history",
    "mens",
    "womens",
    "zip_code",
    "newbie",
    "channel",
]
HILLSTROM_POLICY = "hillstrom-2008-random"
HILLSTROM_SPEC = "public_data/hillstrom.yaml"  # the experiment as a trial, for uplift learners


def resolve(path: str | Path) -> Path:
    """A params path: absolute as given, relative to the project root otherwise."""
    path = Path(path)
    return path if path.is_absolute() else (PROJECT_ROOT / path).resolve()


@dataclass
class HillstromData:
    """The experiment as one batch of the contract, plus what the contract has no room for."""

    day: pd.Timestamp
    batch: dict[str, pd.DataFrame]  # users, coupons, sessions, offers, orders
    covariates: pd.DataFrame  # user_id and Hillstrom's raw pre-period columns


def _hillstrom_users(raw: pd.DataFrame, day: pd.Timestamp, user_id: np.ndarray) -> pd.DataFrame:
    """The customers as users, their traits mapped onto the contract's."""
    # newbie: first purchase within the last twelve months; nothing finer is known.
    signup = day - pd.to_timedelta(np.where(raw["newbie"] == 1, 182, 730), unit="D")
    return pd.DataFrame(
        {
            "user_id": user_id,
            "signup_date": signup,
            "region": raw["zip_code"].map(HILLSTROM_REGION),
            "age_band": raw["history_segment"].map(HILLSTROM_AGE_BAND),
            "device": raw["channel"].map(HILLSTROM_DEVICE),
        }
    )


def _hillstrom_coupons(kind: str, value: float, day: pd.Timestamp) -> pd.DataFrame:
    """The two e-mails as coupons of the configured kind and value."""
    return pd.DataFrame(
        {
            "coupon_id": ["HM-MENS", "HM-WOMENS"],
            "kind": kind,
            "value": value,
            "min_spend": 0.0,
            "category": ALL_CATEGORIES,
            "valid_from": day,
            "valid_to": day + pd.Timedelta(days=14),  # the two weeks outcomes were tracked
            "budget_share": 0.5,
        }
    )


def load_hillstrom(cfg: HillstromParams) -> HillstromData:
    """Map the Hillstrom experiment (params `public_data.hillstrom`) into the contract.

    Customers are users; each of the two e-mails is a coupon whose cost is the configured
    kind and value, redeemed by every e-mailed customer who converts; the no-e-mail arm is
    logged as controls. Every customer has one offer (propensity 1/3, the design's), a visit
    is one session and a conversion is one order of `spend` dollars, all on `cfg["date"]`:
    offers at 08:00, visits at 12:00, orders at 18:00, so every order follows its offer.
    """
    raw = pd.read_csv(resolve(cfg["path"]))
    day = pd.Timestamp(cfg["date"]).normalize()
    n = len(raw)
    user_id = np.arange(n, dtype="int64")
    arm = raw["segment"].map(HILLSTROM_ARMS)
    users = _hillstrom_users(raw, day, user_id)
    kind, value = str(cfg["email_kind"]), float(cfg["email_value"])
    coupons = _hillstrom_coupons(kind, value, day)
    offers = pd.DataFrame(
        {
            "offer_id": [f"hm-o{i}" for i in range(n)],
            "user_id": user_id,
            "coupon_id": pd.array(arm.tolist(), dtype="string"),
            "ts": day + pd.Timedelta(hours=8),
            "policy_version": HILLSTROM_POLICY,
            "propensity": 1.0 / 3.0,
            "slice": "explore",  # the whole trial is randomised
        }
    )
    visited = raw["visit"].to_numpy() == 1
    sessions = pd.DataFrame(
        {
            "session_id": [f"hm-s{i}" for i in np.flatnonzero(visited)],
            "user_id": user_id[visited],
            "ts": day + pd.Timedelta(hours=12),
            "category": "fashion",  # men's and women's merchandise
            "page_views": 1,
        }
    )
    bought = raw["conversion"].to_numpy() == 1
    amount = raw["spend"].to_numpy(float)[bought]
    redeemed = arm[bought].to_numpy(object)
    discount = np.where(
        pd.isna(redeemed), 0.0, coupon_cost(np.full(len(amount), kind), value, amount)
    )
    orders = pd.DataFrame(
        {
            "order_id": [f"hm-r{i}" for i in np.flatnonzero(bought)],
            "user_id": user_id[bought],
            "ts": day + pd.Timedelta(hours=18),
            "amount": amount,
            "category": "fashion",
            "coupon_id": pd.array(redeemed.tolist(), dtype="string"),
            "discount": np.round(discount, 2),
        }
    )
    frames = {"users": users, "coupons": coupons, "sessions": sessions}
    frames |= {"offers": offers, "orders": orders}
    batch = {name: TABLES[name].conform(frame) for name, frame in frames.items()}
    covariates = raw[HILLSTROM_COVARIATES].assign(user_id=user_id)
    return HillstromData(day, batch, covariates[["user_id", *HILLSTROM_COVARIATES]])


def hillstrom_spec(cfg: HillstromParams) -> TrialSpec:
    """Hillstrom as a randomised trial: the spec at params `public_data.hillstrom.spec`
    (couponflow.trials), reading the CSV at the params' `path`."""
    spec = TrialSpec.load(resolve(cfg.get("spec", HILLSTROM_SPEC)))
    return replace(spec, csv=resolve(cfg["path"]))


def hillstrom_arrays(cfg: HillstromParams) -> TrialArrays:
    """Hillstrom (params `public_data.hillstrom`) encoded for uplift learners through the
    generic trial loader: the covariates as the user block, arm 0 the no-e-mail control, then
    the men's and the women's e-mail; outcomes `visit`, `spend`, and `conversion`."""
    return trial_arrays(hillstrom_spec(cfg))


@dataclass
class BanditLog:
    """One policy's Open Bandit log: a row per impression, and the items' own features."""

    policy: str  # "random" or "bts"
    log: pd.DataFrame  # timestamp, action, position, reward, propensity, context columns
    items: pd.DataFrame  # item_id and item_feature_*
    context_columns: list[str]

    @property
    def n_actions(self) -> int:
        return len(self.items)


def load_obd(cfg: ObdParams, policy: str) -> BanditLog:
    """The Open Bandit Dataset log of `policy` ("random" or "bts") for params `public_data.obd`.

    Columns: timestamp (UTC), action (item_id), position (1-3), reward (click), propensity
    (the logging policy's probability of that item at that position), then the context:
    user_feature_0..3 (hashed categoricals) and user_item_affinity_0..33.
    """
    folder = resolve(cfg["path"]) / policy / cfg["campaign"]
    raw = pd.read_csv(folder / f"{cfg['campaign']}.csv", index_col=0)
    raw.columns = [c.replace("-", "_") for c in raw.columns]
    context = [c for c in raw.columns if c.startswith(("user_feature_", "user_item_affinity_"))]
    log = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(raw["timestamp"], utc=True),
            "action": raw["item_id"].astype("int64"),
            "position": raw["position"].astype("int64"),
            "reward": raw["click"].astype("int64"),
            "propensity": raw["propensity_score"].astype(float),
        }
    )
    log = pd.concat([log, raw[context]], axis=1).reset_index(drop=True)
    items = pd.read_csv(folder / "item_context.csv", index_col=0).reset_index(drop=True)
    return BanditLog(policy, log, items, context)


def action_distribution(bandit: BanditLog) -> pd.DataFrame:
    """How often the policy showed each item at each position over its log: a (position x
    action) table of probabilities, rows summing to 1.

    For a policy whose choice does not depend on the user's context, as Bernoulli Thompson
    Sampling's does not, this is its average action distribution over the logged period: the
    target probabilities with which another policy's log estimates its click rate.
    """
    counts = pd.crosstab(bandit.log["position"], bandit.log["action"])
    counts = counts.reindex(columns=range(bandit.n_actions), fill_value=0)
    return counts.div(counts.sum(axis=1), axis=0)


def obd_click_model(bandit: BanditLog, folds: int = 5, c: float = 0.1, seed: int = 0) -> np.ndarray:
    """Cross-fitted click probability of every item at each logged row's position, (rows,
    items): the reward model of a doubly robust estimate from this log.

    An L2-regularised logistic regression on the user's context (one-hot hashed features and
    log item affinities), the item, the position and the user's affinity for that item; each
    fold's rows are scored by a model fitted without them, so no row's own click leaks into
    its prediction.
    """
    log, m = bandit.log, bandit.n_actions
    n = len(log)
    hashed = [c for c in bandit.context_columns if c.startswith("user_feature_")]
    affinity = np.log1p(log[[f"user_item_affinity_{a}" for a in range(m)]].to_numpy(float))
    user = np.hstack([OneHotEncoder(sparse_output=False).fit_transform(log[hashed]), affinity])
    position = np.eye(3)[log["position"].to_numpy() - 1]

    def design(rows: np.ndarray, action: np.ndarray) -> np.ndarray:
        own = affinity[rows, action][:, None]
        return np.hstack([user[rows], np.eye(m)[action], position[rows], own])

    clicked = log["reward"].to_numpy()
    logged = design(np.arange(n), log["action"].to_numpy())
    q = np.zeros((n, m))
    split = StratifiedKFold(folds, shuffle=True, random_state=seed).split(logged, clicked)
    for fit_rows, rows in split:
        model = LogisticRegression(C=c, max_iter=1000).fit(logged[fit_rows], clicked[fit_rows])
        for a in range(m):
            q[rows, a] = model.predict_proba(design(rows, np.full(len(rows), a)))[:, 1]
    return q


def obd_target_terms(
    logged: BanditLog, target: BanditLog, q: np.ndarray | None = None
) -> TargetTerms:
    """The `target` policy (its average action distribution per position, as
    `action_distribution` derives it) seen through another policy's log, with reward-model
    terms when `q` (rows, items) is given."""
    position = logged.log["position"].to_numpy() - 1
    pi = action_distribution(target).to_numpy()[position]
    return TargetTerms.from_probabilities(logged.log["action"].to_numpy(), pi, q)
