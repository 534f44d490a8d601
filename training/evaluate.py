"""DVC stage `evaluate`: the challenger, the champion and every baseline judged alike on the
held-out day, each policy budgeted by the same allocation.

- Prediction: AUC, log loss and calibration of P(purchase) and P(redeem) on the logged arms.
- Uplift: Qini curve, Qini coefficient and AUUC of each policy's best coupon over "no
  coupon", from the log reweighted by its propensities (a randomised comparison).
- Policy value: IPS, SNIPS and doubly robust estimates with bootstrap intervals, and
  paired intervals of the challenger's lead over the champion and each baseline.
- Simulated data only: every policy's true incremental profit on the whole population
  from the world's oracle, the oracle policy's at the same budget, profit against budget.
- Segments: offer rate, planned spend and uplift by region, age band and new vs returning.
  These population figures take a fixed-seed sample of `evaluation.population_sample`
  users when more are known.
- The A/B readout: the served policy's realised lift over its random holdout slice.

Writes metrics/evaluation.json (a DVC metric) and the curves under metrics/plots/ (DVC
plots); training/report.py turns them into the run report. Run from the workspace root:
`python -m training.evaluate`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from couponflow.config import Workspace
from couponflow.features import USER_FEATURES, default_user_features
from couponflow.landing import read_offline
from couponflow.logs import quiet_libraries
from couponflow.metrics import (
    TargetTerms,
    ab_readout,
    auuc,
    best_arm_view,
    bootstrap_indices,
    calibration_curve,
    effective_sample_size,
    off_policy_bootstrap,
    prediction_metrics,
    qini_coefficient,
    qini_curve,
)
from couponflow.model import CouponNet, encode, load_model, predict, user_chunks
from couponflow.policy import Scores, allocate, eligible, score, user_cap_mask, with_control
from training.baselines import fit_baselines
from training.train import split_days

SEGMENTS = ("region", "age_band", "new")
ORACLE_BOOTSTRAP = 400  # resamples of users behind the true leads' intervals
POPULATION_SEED = 0  # which users `evaluation.population_sample` draws, the same every run


class Policy(Protocol):
    """What evaluation needs of a policy: arm values to rank by and their expected cost."""

    name: str

    def value_and_cost(
        self, users: np.ndarray, arms: pd.DataFrame
    ) -> tuple[np.ndarray, np.ndarray]: ...


class ModelPolicy:
    """A trained network behind the shared policy maths: an arm's value is its expected
    incremental profit, its cost the expected discount (what the service does)."""

    def __init__(self, name: str, net: CouponNet, version: str, margin: float) -> None:
        self.name, self.net, self.version, self.margin = name, net, version, margin

    def scores(self, users: np.ndarray, arms: pd.DataFrame) -> Scores:
        """The shared `score` of every user and arm, a chunk of users at a time (see
        `user_chunks`): a whole population's pair inputs at once do not fit at scale."""
        parts = [
            score(self.net, users[rows], arms, self.margin) for rows in user_chunks(len(users))
        ]
        return Scores(
            *(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Scores))
        )

    def value_and_cost(
        self, users: np.ndarray, arms: pd.DataFrame
    ) -> tuple[np.ndarray, np.ndarray]:
        """Both from one scoring of the network."""
        s = self.scores(users, arms)
        return s.incremental_profit, s.expected_cost

    def expected_reward(self, users: np.ndarray, arms: pd.DataFrame) -> np.ndarray:
        """Expected profit of every arm, margin on spend less the discount: the reward
        model of the doubly robust estimator."""
        s = self.scores(users, arms)
        return s.p_purchase * self.margin * s.amount - s.expected_cost


@dataclass
class Decisions:
    """Which arm each user gets from one policy under a budget."""

    arms: np.ndarray  # (n,) arm index, 0 = no coupon
    multiplier: float
    value: np.ndarray  # (n, m) the policy's own values (capped users' coupons at -inf)
    cost: np.ndarray  # (n, m) its expected costs

    def chosen(self, matrix: np.ndarray) -> np.ndarray:
        """Each user's entry of a (n, m) matrix at the chosen arm."""
        return matrix[np.arange(len(self.arms)), self.arms]

    def summary(self) -> dict[str, float]:
        return {
            "offer_rate": float((self.arms > 0).mean()),
            "multiplier": self.multiplier,
            "planned_cost": float(self.chosen(self.cost).sum()),
        }


@dataclass
class Priced:
    """One policy's values and expected costs of every arm for a set of users, priced
    once and then decided at any budget."""

    value: np.ndarray  # (n, m), users at their offer cap with coupons at -inf
    cost: np.ndarray

    def decide(self, budget: float) -> Decisions:
        """The policy's greedy choices within `budget`."""
        chosen, multiplier = allocate(self.value, self.cost, budget)
        return Decisions(chosen, multiplier, self.value, self.cost)


def price(policy: Policy, users: np.ndarray, arms: pd.DataFrame, cap: int) -> Priced:
    """Value and cost every arm for every user; users at their offer cap get no coupon."""
    value, cost = policy.value_and_cost(users, arms)
    value = np.array(value, dtype=float)
    value[user_cap_mask(users, cap), 1:] = -np.inf
    return Priced(value, cost)


@dataclass
class Day:
    """Who is decided for on the evaluation day, the arms open, and their budget."""

    users: np.ndarray  # (n, len(USER_FEATURES))
    arms: pd.DataFrame  # with_control(...) with coupon stats as the day began
    budget: float


def logged_arm_index(coupon_ids: pd.Series, arms: pd.DataFrame) -> np.ndarray:
    """Each logged coupon's position in `arms` (0 for "no coupon"; -1 if not open)."""
    position = {cid: i for i, cid in enumerate(arms["coupon_id"]) if isinstance(cid, str)}
    return np.array([0 if pd.isna(c) else position.get(c, -1) for c in coupon_ids])


# -- on the logged decisions of the held-out day -------------------------------------------
def prediction_report(net: CouponNet, users: np.ndarray, table: pd.DataFrame) -> dict[str, Any]:
    """Prediction quality on the arms actually logged: P(purchase) on every decision,
    P(redeem) where a coupon was offered, and the calibration curve of P(purchase)."""
    pred = predict(net, encode(users, table))
    purchased = table["purchased"].to_numpy()
    out: dict[str, Any] = prediction_metrics(purchased, pred["p_purchase"])
    offered = table["coupon_id"].notna().to_numpy()
    redeemed = table["redeemed"].to_numpy()[offered]
    out.update(
        {
            f"redeem_{k}": v
            for k, v in prediction_metrics(redeemed, pred["p_redeem"][offered]).items()
        }
    )
    curve = calibration_curve(purchased, pred["p_purchase"])
    out["calibration"] = {
        "predicted": curve.mean_predicted,
        "observed": curve.observed,
        "count": curve.count,
    }
    return out


def ranks(d: Decisions) -> bool:
    """Whether the policy ranks coupons at all (offering nothing does not): only then has
    it a Qini curve."""
    coupons = d.value[:, 1:]
    finite = coupons[np.isfinite(coupons)]  # users at their cap have none
    return finite.size > 0 and np.ptp(finite) > 0


def uplift_report(d: Decisions, logged: np.ndarray, table: pd.DataFrame) -> dict[str, Any]:
    """Qini and AUUC of each user's best coupon by the policy's own values, against "no
    coupon": rows the log gave that coupon are treated, rows logged without one are the
    controls, each weighted by its inverse propensity so the comparison is randomised."""
    best = 1 + d.value[:, 1:].argmax(axis=1)
    treated, weight = best_arm_view(logged, best, table["propensity"].to_numpy(float))
    args = (d.value[np.arange(len(best)), best], treated, table["reward"].to_numpy(float), weight)
    curve = qini_curve(*args)
    return {
        "qini": float(qini_coefficient(*args)),
        "auuc": float(auuc(*args)),
        "curve": {"fraction": curve.share, "incremental": curve.gain},
    }


def ope_report(
    decided: dict[str, Decisions],
    reward_model: np.ndarray,
    logged: np.ndarray,
    table: pd.DataFrame,
    cfg: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Off-policy values (IPS, SNIPS, DR) of each greedy policy with bootstrap intervals,
    and the challenger's paired DR lead over every other policy."""
    reward = table["reward"].to_numpy(float)
    propensity = table["propensity"].to_numpy(float)
    targets = {
        name: TargetTerms.from_actions(logged, d.arms, reward_model) for name, d in decided.items()
    }
    level = float(cfg["confidence"])
    boot = off_policy_bootstrap(reward, propensity, targets, int(cfg["bootstrap"]), seed=0)
    values = {
        name: {est: b.interval(level).as_dict() for est, b in by_estimator.items()}
        for name, by_estimator in boot.items()
    }
    # every policy on the same resamples, so the differences are paired
    leads = {
        name: (boot["challenger"]["dr"] - boot[name]["dr"]).interval(level).as_dict()
        for name in decided
        if name != "challenger"
    }
    for name, d in decided.items():
        # the logged rows that back this policy's coupon decisions, as equally weighted rows
        backed = (d.arms == logged) & (d.arms > 0)
        values[name]["coupon_evidence"] = effective_sample_size(backed / propensity)
    return values, leads


# -- on everyone known that day ------------------------------------------------------------
def population(
    ws: Workspace,
    day: pd.Timestamp,
    arms: pd.DataFrame,
    budget_per_user: float,
    new_days: int,
    sample: int | None,
) -> tuple[pd.DataFrame, Day]:
    """Every user known on `day`, or a fixed-seed sample of `sample` of them when there are
    more (pricing every policy, the truth and the budget curve on a million users took most
    of the stage), with features as the day began (a user without a feature row gets the
    cold-start vector) and the segments they fall in. The budget is per user, so a sample
    gets its share of the day's."""
    users = read_offline(ws, "users", [str(day.date())])
    if sample is not None and len(users) > sample:
        rows = np.random.default_rng(POPULATION_SEED).choice(len(users), sample, replace=False)
        users = users.iloc[np.sort(rows)]
    before = str((day - pd.Timedelta(days=1)).date())
    path = ws.features / "user_activity" / f"date={before}" / "part.parquet"
    known = pd.read_parquet(path).set_index("user_id")[USER_FEATURES]
    features = known.reindex(users["user_id"]).to_numpy(np.float32)
    features[np.isnan(features).any(axis=1)] = default_user_features()
    new = (day - users["signup_date"]).dt.days.to_numpy() < new_days
    frame = users[["user_id", "region", "age_band"]].assign(new=np.where(new, "new", "returning"))
    return frame.reset_index(drop=True), Day(features, arms, budget_per_user * len(users))


def segment_report(
    segments: pd.DataFrame, d: Decisions, true_gain: np.ndarray | None
) -> list[dict[str, Any]]:
    """Offer rate, planned spend and estimated (and true) uplift per user by segment, so a
    skewed allocation is visible before it ships."""
    frame = segments.assign(
        offered=d.arms > 0,
        planned_cost=d.chosen(d.cost),
        estimated_uplift=np.where(d.arms > 0, d.chosen(d.value), 0.0),
    )
    if true_gain is not None:
        frame["true_uplift"] = d.chosen(true_gain)
    rows = []
    for column in SEGMENTS:
        grouped = frame.groupby(column, observed=True)
        stats = grouped.agg(
            users=("offered", "size"),
            offer_rate=("offered", "mean"),
            planned_cost=("planned_cost", "mean"),
            estimated_uplift=("estimated_uplift", "mean"),
            **({"true_uplift": ("true_uplift", "mean")} if true_gain is not None else {}),
        )
        for level, values in stats.iterrows():
            row = {"segment": column, "level": str(level), **values.to_dict()}
            rows.append({**row, "users": int(row["users"])})
    return rows


@dataclass
class GroundTruth:
    """The oracle's view of the population: true incremental profit and cost per arm."""

    gain: np.ndarray
    cost: np.ndarray
    oracle: Any  # couponflow.oracle.Oracle
    truth: Any  # couponflow.oracle.Truth


def simulated_truth(
    ws: Workspace, day: pd.Timestamp, users: pd.DataFrame, arms: pd.DataFrame
) -> GroundTruth:
    """The world's ground truth for these users and arms (simulated data only)."""
    from couponflow.oracle import Oracle
    from couponflow.world import World

    oracle = Oracle(World(ws.params["world"]))
    truth = oracle.truth(day, users["user_id"].to_numpy())
    column = truth.arm_index(list(arms["coupon_id"]))
    return GroundTruth(truth.incremental_profit[:, column], truth.cost[:, column], oracle, truth)


def true_leads(per_user: dict[str, np.ndarray], level: float) -> dict[str, dict[str, float]]:
    """The challenger's true lead over every other policy, summed over users, with a
    bootstrap interval over users; the resamples come in blocks (`bootstrap_indices`):
    drawn at once they were ~7 GB at a million users."""
    diffs = {
        name: per_user["challenger"] - gain
        for name, gain in per_user.items()
        if name != "challenger"
    }
    totals: dict[str, list[np.ndarray]] = {name: [] for name in diffs}
    n = len(per_user["challenger"])
    for resample in bootstrap_indices(n, ORACLE_BOOTSTRAP, seed=0):
        for name, diff in diffs.items():
            totals[name].append(diff[resample].sum(axis=1))
    tails = [(1 - level) / 2, (1 + level) / 2]
    leads = {}
    for name, diff in diffs.items():
        low, high = np.quantile(np.concatenate(totals[name]), tails)
        leads[name] = {"value": float(diff.sum()), "low": float(low), "high": float(high)}
    return leads


def oracle_report(
    truth: GroundTruth, decided: dict[str, Decisions], budget: float, level: float
) -> dict[str, Any]:
    """True incremental profit and cost of each policy's choices, the oracle policy's at
    the same budget and each policy's share of it, and the challenger's lead over every
    other policy with a bootstrap interval over users."""
    best, _ = truth.oracle.policy_value(truth.truth, budget)
    per_user = {name: d.chosen(truth.gain) for name, d in decided.items()}
    policies = {}
    for name, d in decided.items():
        gain = float(per_user[name].sum())
        policies[name] = {
            "incremental_profit": gain,
            "true_cost": float(d.chosen(truth.cost).sum()),
            "offers": int((d.arms > 0).sum()),
            "share_of_oracle": gain / best.incremental_profit if best.incremental_profit else None,
            **d.summary(),
        }
    leads = true_leads(per_user, level)
    return {
        "users": len(truth.gain),
        "budget": budget,
        "oracle": {
            "incremental_profit": best.incremental_profit,
            "cost": best.cost,
            "offers": best.offers,
        },
        "policies": policies,
        "challenger_lead": leads,
    }


def budget_curve(
    priced: dict[str, Priced],
    budget: float,
    multiples: list[float],
    truth: GroundTruth | None,
    reward_model: np.ndarray,
) -> pd.DataFrame:
    """Incremental profit against the budget for every policy: true (and the oracle's)
    on simulated data, else as the challenger's model expects it."""
    gain = truth.gain if truth else reward_model - reward_model[:, :1]
    rows = []
    for k in multiples:
        for name, p in priced.items():
            total = p.decide(budget * k).chosen(gain).sum()
            rows.append({"policy": name, "budget": budget * k, "incremental_profit": total})
        if truth is not None:
            best, _ = truth.oracle.policy_value(truth.truth, budget * k)
            rows.append(
                {
                    "policy": "oracle",
                    "budget": budget * k,
                    "incremental_profit": best.incremental_profit,
                }
            )
    frame = pd.DataFrame(rows)
    frame["measure"] = "true" if truth else "estimated by the challenger"
    return frame


# -- the stage ------------------------------------------------------------------------------
def load_policies(ws: Workspace, margin: float) -> dict[str, ModelPolicy]:
    """The challenger (models/) and, when there is one, the champion (releases/champion)."""
    policies = {}
    for name, path in (("challenger", ws.models), ("champion", ws.champion)):
        if (path / "model.pt").exists():
            net, meta = load_model(path / "model.pt")
            policies[name] = ModelPolicy(name, net, meta["version"], margin)
    return policies


def evaluate(ws: Workspace) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """Everything the gate and the report need; returns the metrics and the plot tables."""
    from feature_repo.store import coupon_stats_at, open_store

    params = ws.params
    cfg, policy_cfg = params["evaluation"], params["policy"]
    margin, cap = float(params["world"]["margin"]), int(policy_cfg["max_offers_7d"])
    budget_per_user = float(policy_cfg["budget_per_user"])
    table = pd.read_parquet(ws.training_set / "offers.parquet")
    _, _, day = split_days(table)
    day = pd.Timestamp(day)
    date = str(day.date())
    coupons = coupon_stats_at(open_store(ws), read_offline(ws, "coupons", [date]), day)
    arms = with_control(eligible(coupons, day))

    held = table[table["day"] == day].reset_index(drop=True)
    logged = logged_arm_index(held["coupon_id"], arms)
    held, logged = held[logged >= 0].reset_index(drop=True), logged[logged >= 0]
    n_users = len(read_offline(ws, "users", [date]))
    n_offers = len(read_offline(ws, "offers", [date]))
    # The day's budget prorated to the decisions logged, as the service would pace it.
    logged_day = Day(
        held[USER_FEATURES].to_numpy(np.float32),
        arms,
        budget_per_user * n_users * len(held) / max(n_offers, 1),
    )

    models = load_policies(ws, margin)
    challenger = models["challenger"]
    max_weight = float(params["model"]["max_inverse_propensity"])
    baselines = fit_baselines(table[table["day"] < day], max_weight)
    policies: dict[str, Policy] = {**models, **{b.name: b for b in baselines}}

    decided = {
        name: price(p, logged_day.users, arms, cap).decide(logged_day.budget)
        for name, p in policies.items()
    }
    reward_model = challenger.expected_reward(logged_day.users, arms)
    values, leads = ope_report(decided, reward_model, logged, held, cfg)
    uplift = {name: uplift_report(d, logged, held) for name, d in decided.items() if ranks(d)}

    sample = cfg.get("population_sample")
    segments, everyone = population(
        ws,
        day,
        arms,
        budget_per_user,
        int(cfg["new_user_days"]),
        None if sample is None else int(sample),
    )
    priced = {name: price(p, everyone.users, arms, cap) for name, p in policies.items()}
    on_everyone = {name: p.decide(everyone.budget) for name, p in priced.items()}
    truth = simulated_truth(ws, day, segments, arms) if cfg["oracle"] else None
    everyone_reward = challenger.expected_reward(everyone.users, arms)

    report: dict[str, Any] = {
        "evaluation_day": date,
        "confidence": float(cfg["confidence"]),
        "decisions": len(held),
        "budget_per_decision": logged_day.budget / max(len(held), 1),
        "logging_policy": {"reward_per_decision": float(held["reward"].mean())},
        "policies": {},
        "challenger_lead_dr": leads,
        "ab_readout": ab_readout(held, float(cfg["confidence"])),
        "population": {"users": len(segments), "known_users": n_users},
        "segments": segment_report(
            segments, on_everyone["challenger"], truth.gain if truth else None
        ),
    }
    calibration = []
    for name, policy in policies.items():
        entry: dict[str, Any] = {"kind": "model" if name in models else "baseline"}
        if isinstance(policy, ModelPolicy):
            entry["version"] = policy.version
            prediction = prediction_report(policy.net, logged_day.users, held)
            curve = prediction.pop("calibration")
            calibration.append(pd.DataFrame(curve).assign(model=name))
            entry.update(prediction)
        entry.update({k: v for k, v in uplift.get(name, {}).items() if k != "curve"})
        entry.update(values[name])
        entry.update(decided[name].summary())
        report["policies"][name] = entry
    if truth is not None:
        report["oracle"] = oracle_report(
            truth, on_everyone, everyone.budget, float(cfg["confidence"])
        )
    plots = {
        "qini": pd.concat(
            [pd.DataFrame(u["curve"]).assign(policy=name) for name, u in uplift.items()]
        ),
        "calibration": pd.concat(calibration),
        "budget": budget_curve(
            priced, everyone.budget, list(cfg["budget_multiples"]), truth, everyone_reward
        ),
    }
    return report, plots


def main() -> None:
    quiet_libraries()
    ws = Workspace(Path.cwd())
    report, plots = evaluate(ws)
    ws.metrics.mkdir(parents=True, exist_ok=True)
    (ws.metrics / "evaluation.json").write_text(json.dumps(report, indent=2, default=float))
    (ws.metrics / "plots").mkdir(exist_ok=True)
    for name, frame in plots.items():
        frame.to_csv(ws.metrics / "plots" / f"{name}.csv", index=False)
    ch = report["policies"]["challenger"]
    print(f"challenger {ch['version']}: auc {ch['auc']:.3f}, DR {ch['dr']['value']:.3f}/decision")


if __name__ == "__main__":
    main()
