"""The coupon policy: eligibility, expected incremental profit, the budget's multiplier,
an exploring choice and online pacing.

The same functions run in offline evaluation, the budget plan and the live service, so
what the gate measured is what shoppers get.

Conventions: value and cost matrices are (users, arms); arm 0 is "no coupon", worth 0 at
cost 0; an arm a user may not get is worth -inf (`INELIGIBLE`). A policy gives each user
the arm maximising value - multiplier * cost (ties to the lower arm, so to "no coupon"),
the multiplier being the price of a unit of budget.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from couponflow.contract import ALL_CATEGORIES, coupon_cost
from couponflow.features import USER_FEATURES
from couponflow.model import ArmTable, CouponEnsemble, Recommender, encode_pairs, predict_members

INELIGIBLE = -np.inf
_OFFERS_7D = USER_FEATURES.index("offers_7d")


# -- eligibility ----------------------------------------------------------------------------
def open_mask(
    valid_from: np.ndarray,
    valid_to: np.ndarray,
    scope: np.ndarray,
    now: pd.Timestamp,
    category: str | None = None,
) -> np.ndarray:
    """Which coupons may be offered at `now`: valid then and, when the request names a
    `category`, site-wide or of that category (a fashion coupon is no use on an
    electronics page). The one eligibility rule, for frames and prepared arms alike."""
    moment = np.datetime64(pd.Timestamp(now).to_datetime64(), "ns")
    ok = (valid_from <= moment) & (valid_to > moment)
    if category is not None:
        ok &= np.isin(scope, [ALL_CATEGORIES, category])
    return ok


def eligible(coupons: pd.DataFrame, now: pd.Timestamp, category: str | None = None) -> pd.DataFrame:
    """The coupons of a catalogue frame that may be offered at `now` (see `open_mask`)."""
    ok = open_mask(
        coupons["valid_from"].to_numpy("datetime64[ns]"),
        coupons["valid_to"].to_numpy("datetime64[ns]"),
        coupons["category"].astype(object).to_numpy(),
        now,
        category,
    )
    return coupons[ok].reset_index(drop=True)


def with_control(coupons: pd.DataFrame) -> pd.DataFrame:
    """The arms for scoring: a "no coupon" row (all null) first, then the coupons."""
    control = pd.DataFrame({c: [None] for c in coupons.columns}).astype(coupons.dtypes)
    return pd.concat([control, coupons], ignore_index=True)


@dataclass(frozen=True)
class Arms:
    """A catalogue prepared once for many decisions: arm 0 is "no coupon", then every
    coupon. Per request, eligibility is a mask and scoring indexes these arrays, so the
    live service does no frame work per request (offline code may pass frames instead)."""

    coupon_ids: np.ndarray  # object, None for "no coupon"
    table: ArmTable
    valid_from: np.ndarray  # datetime64[ns]
    valid_to: np.ndarray
    scope: np.ndarray  # object: a category, "all", or "" for "no coupon"

    @classmethod
    def of(cls, coupons: pd.DataFrame) -> Arms:
        """From a catalogue frame with the coupon columns and COUPON_FEATURES."""
        frame = with_control(coupons)
        return cls(
            coupon_ids=frame["coupon_id"]
            .astype(object)
            .where(frame["coupon_id"].notna(), None)
            .to_numpy(),
            table=ArmTable.from_frame(frame),
            valid_from=frame["valid_from"].to_numpy("datetime64[ns]"),
            valid_to=frame["valid_to"].to_numpy("datetime64[ns]"),
            scope=frame["category"].astype("string").fillna("").to_numpy(dtype=object),
        )

    def open(self, now: pd.Timestamp, category: str | None = None) -> Arms:
        """The arms a decision at `now` for a page of `category` may choose: "no coupon"
        and the eligible coupons."""
        ok = open_mask(self.valid_from, self.valid_to, self.scope, now, category)
        ok[0] = True
        return self.take(np.flatnonzero(ok))

    def take(self, rows: np.ndarray) -> Arms:
        """The arms at `rows`, in that order (keep row 0 first: "no coupon")."""
        return Arms(
            self.coupon_ids[rows],
            self.table.take(rows),
            self.valid_from[rows],
            self.valid_to[rows],
            self.scope[rows],
        )


def user_cap_mask(user_features: np.ndarray, max_offers_7d: int | None) -> np.ndarray:
    """Users already offered `max_offers_7d` coupons or more in 7 days (None: no cap): they
    get no coupon, so nobody is flooded. Callers set those rows' coupon arms INELIGIBLE."""
    if max_offers_7d is None:
        return np.zeros(len(user_features), dtype=bool)
    return np.asarray(user_features)[:, _OFFERS_7D] >= max_offers_7d


# -- scores ---------------------------------------------------------------------------------
@dataclass
class Scores:
    """Per-user, per-arm estimates, shaped (users, arms); arm 0 is "no coupon".

    `incremental_profit` is what the policy ranks by: the expected gain over "no coupon"
    less `credibility` standard deviations of it across an ensemble's members, so a coupon
    is offered where its gain is credible, not where one fit's noise made it look good
    (the winner's curse of taking the best of many noisy estimates). `expected_gain` and
    `gain_sd` are the mean and spread; with one network the spread is 0.
    """

    p_purchase: np.ndarray
    amount: np.ndarray
    p_redeem: np.ndarray
    expected_cost: np.ndarray
    incremental_profit: np.ndarray
    expected_gain: np.ndarray
    gain_sd: np.ndarray


def score(
    net: Recommender, user_features: np.ndarray, arms: pd.DataFrame | Arms, margin: float
) -> Scores:
    """Expected incremental profit of every arm over "no coupon", net of the coupon's cost,
    per member of an ensemble, then discounted by its spread (see `Scores`).

    `user_features` is (n_users, n_features); `arms` is a frame from `with_control` or
    prepared `Arms`.
    """
    table = arms.table if isinstance(arms, Arms) else ArmTable.from_frame(arms)
    return scores_of_members(member_heads(net, user_features, table), table, margin, net)


def member_heads(
    net: Recommender, user_features: np.ndarray, table: ArmTable, members: range | None = None
) -> dict[str, np.ndarray]:
    """Every (or each of `members`') member's heads, (members, users * arms), user-major:
    what `score` combines. Apart so an ensemble's members can answer in separate
    processes (training.evaluate): a member's answer does not depend on the others."""
    pairs = encode_pairs(user_features, table)
    return predict_members(net, pairs, per_user=len(table.control), members=members)


def scores_of_members(
    heads: dict[str, np.ndarray], table: ArmTable, margin: float, net: Recommender
) -> Scores:
    """`Scores` from every member's heads (`member_heads`, all of `net`'s members)."""
    m = len(table.control)
    n = heads["p_purchase"].shape[1] // m
    pred = {k: v.reshape(-1, n, m) for k, v in heads.items()}
    kind = np.broadcast_to(table.kind_name[None, None, 1:], (1, n, m - 1))
    value = np.broadcast_to(table.value.astype(float)[None, None, 1:], (1, n, m - 1))
    cost = np.zeros_like(pred["p_redeem"], dtype=float)
    cost[:, :, 1:] = pred["p_redeem"][:, :, 1:] * coupon_cost(kind, value, pred["amount"][:, :, 1:])
    gross = pred["p_purchase"] * margin * pred["amount"] - cost
    gain = gross - gross[:, :, :1]
    mean, sd = gain.mean(axis=0), gain.std(axis=0)
    credibility = net.credibility if isinstance(net, CouponEnsemble) else 0.0
    return Scores(
        pred["p_purchase"].mean(axis=0),
        pred["amount"].mean(axis=0),
        pred["p_redeem"].mean(axis=0),
        cost.mean(axis=0),
        mean - credibility * sd,
        mean,
        sd,
    )


# -- the budget -----------------------------------------------------------------------------
def lagrangian(value: np.ndarray, cost: np.ndarray, multiplier: float) -> np.ndarray:
    """What the policy maximises: value less the multiplier times cost; "no coupon" is
    worth exactly 0 and an INELIGIBLE arm stays so."""
    out = np.asarray(value, dtype=float) - multiplier * np.asarray(cost, dtype=float)
    out[..., 0] = 0.0
    return out


def best_arms(value: np.ndarray, cost: np.ndarray, multiplier: float) -> np.ndarray:
    """Each row's greedy arm at `multiplier` (0 when no coupon is worth its cost)."""
    return lagrangian(value, cost, multiplier).argmax(axis=1)


def exploration_cost(value: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Per row, the mean cost of a uniformly explored arm: `choose` explores uniformly over
    the eligible arms, "no coupon" included."""
    open_ = np.isfinite(value)
    open_[:, 0] = True
    return np.where(open_, cost, 0.0).sum(axis=1) / open_.sum(axis=1)


def solve_multiplier(
    value: np.ndarray, cost: np.ndarray, budget: float, epsilon: float = 0.0, rtol: float = 1e-9
) -> float:
    """The smallest multiplier >= 0 whose policy keeps the total expected cost over all rows
    within `budget`: the greedy arm of each row, or with `epsilon` the epsilon-greedy mix
    `choose` makes (its exploration spend does not depend on the multiplier).

    Bisection over the multiplier, each step one vectorised argmax over the rows; the
    result is within `rtol` (relative) above the exact breakpoint. For a budget per decision,
    pass that budget times the number of rows. Zero-cost coupons are free, so they stay
    offered even at budget 0. If exploration alone overspends, the multiplier that turns
    every greedy offer off is returned.
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    value, cost = np.asarray(value, dtype=float), np.asarray(cost, dtype=float)
    if epsilon >= 1.0:
        return 0.0  # every decision explores: the multiplier changes nothing
    explored = epsilon * float(exploration_cost(value, cost).sum())
    greedy_budget = (budget - explored) / (1.0 - epsilon)
    # Rows whose coupons are all worth <= 0 keep "no coupon" at every multiplier >= 0.
    active = value[:, 1:].max(axis=1, initial=-np.inf) > 0
    value, cost = value[active], cost[active]
    rows = np.arange(len(value))

    def spend(multiplier: float) -> float:
        return float(cost[rows, best_arms(value, cost, multiplier)].sum())

    # Above the highest value-to-cost ratio no coupon with a cost is worth offering.
    paid = (cost > 0) & np.isfinite(value)
    paid[:, 0] = False
    if not paid.any() or spend(0.0) <= greedy_budget:
        return 0.0
    lo, hi = 0.0, float((value[paid] / cost[paid]).max()) * (1 + 1e-12)  # past rounding
    while hi - lo > rtol * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if spend(mid) > greedy_budget else (lo, mid)
    return hi


def allocate(value: np.ndarray, cost: np.ndarray, budget: float) -> tuple[np.ndarray, float]:
    """Each row's arm under a total `budget` and the multiplier that priced it: how every
    policy (ours, each baseline, the oracle) is budgeted, so they are compared alike."""
    multiplier = solve_multiplier(value, cost, budget)
    return best_arms(value, cost, multiplier), multiplier


# -- the exploring choice -------------------------------------------------------------------
def choose(
    value: np.ndarray,
    k: int,
    epsilon: float,
    rng: np.random.Generator,
    cost: np.ndarray | None = None,
    allowance: float = math.inf,
) -> list[tuple[int, float]]:
    """Up to k coupon arms (indices > 0) for one user, with the propensity of each choice.

    `value` is the user's row of `lagrangian`. Each slot is epsilon-greedy over the
    eligible arms left (including "no coupon", which ends the slate); with `cost`, arms
    costing more than what is left of `allowance` are not eligible (the pacer's hard stop).
    The propensity is the exact probability of that slot's choice given the earlier slots.
    Array work per slot, not a Python loop over the arms: the live service runs this on
    every request, with a few hundred arms.
    """
    value = np.asarray(value, dtype=float)
    open_ = value > INELIGIBLE
    open_[0] = True
    left = np.flatnonzero(open_)  # ascending, so argmax's first maximum is the lowest arm
    picks: list[tuple[int, float]] = []
    for _ in range(k):
        if cost is not None:
            left = left[(left == 0) | (cost[left] <= allowance)]
        greedy = int(left[np.argmax(value[left])])  # ties go to the lower arm (control)
        arm = int(rng.choice(left)) if rng.random() < epsilon else greedy
        propensity = epsilon / len(left) + (1 - epsilon) * (arm == greedy)
        if arm == 0:
            break
        picks.append((arm, float(propensity)))
        left = left[left != arm]
        if cost is not None:
            allowance -= float(cost[arm])
    return picks


def choose_or_hold_out(
    value: np.ndarray,
    k: int,
    epsilon: float,
    rng: np.random.Generator,
    holdout_share: float,
    cost: np.ndarray | None = None,
    allowance: float = math.inf,
) -> tuple[list[tuple[int, float]], bool]:
    """The served decision: with probability `holdout_share` a random holdout (no coupon
    whatever the scores: the control slice the A/B readout compares the policy with), else
    `choose`, whose propensities then include the share not held out. Returns (picks,
    held out)."""
    if rng.random() < holdout_share:
        return [], True
    picks = choose(value, k, epsilon, rng, cost, allowance)
    return [(arm, (1 - holdout_share) * p) for arm, p in picks], False


# -- the day's plan and online pacing -------------------------------------------------------
@dataclass(frozen=True)
class BudgetPlan:
    """The day's spending plan, shipped beside the model (models/policy.json): the
    multiplier that spends `daily_budget` over the expected decisions, and what it plans.

    Costs are expected redeemed costs; `planned_*` include exploration.
    """

    day: str  # the day planned for
    multiplier: float
    daily_budget: float
    expected_decisions: float
    budget_per_decision: float
    epsilon: float
    planned_offer_rate: float  # share of decisions that make an offer
    planned_spend: float  # over the expected decisions

    def split(self, workers: int) -> BudgetPlan:
        """One of `workers` equal shares of the day, for a worker pacing on its own count
        (requests are spread evenly, so each sees its share of the decisions)."""
        return replace(
            self,
            daily_budget=self.daily_budget / workers,
            expected_decisions=self.expected_decisions / workers,
            planned_spend=self.planned_spend / workers,
        )

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> BudgetPlan:
        return cls(**json.loads(path.read_text()))


@dataclass(frozen=True)
class DaySpend:
    """A day's expected spend so far and the decisions it was spent over."""

    cost: float = 0.0
    decisions: int = 0


class SpendStore(Protocol):
    """Where the day's spend is counted: in process for now, shared by every worker later
    (the counter must then be atomic across them, e.g. a Redis script)."""

    def read(self, day: str) -> DaySpend: ...

    def add(self, day: str, cost: float, limit: float) -> bool:
        """Count one decision on `day` and, atomically, add `cost` to its spend if the
        spend stays within `limit`; whether the cost was added."""
        ...

    def refund(self, day: str, cost: float) -> None:
        """Take back `cost` that an accepted `add` committed on `day`, when its offers were
        never made after all; the decision stays counted."""
        ...


class LocalSpend:
    """A thread-safe in-process SpendStore (one worker's view of the day)."""

    def __init__(self) -> None:
        self._days: dict[str, DaySpend] = {}
        self._lock = threading.Lock()

    def read(self, day: str) -> DaySpend:
        with self._lock:
            return self._days.get(day, DaySpend())

    def add(self, day: str, cost: float, limit: float) -> bool:
        with self._lock:
            now = self._days.get(day, DaySpend())
            fits = now.cost + cost <= limit
            self._days[day] = DaySpend(now.cost + (cost if fits else 0.0), now.decisions + 1)
            return fits

    def refund(self, day: str, cost: float) -> None:
        with self._lock:
            now = self._days.get(day, DaySpend())
            self._days[day] = DaySpend(max(0.0, now.cost - cost), now.decisions)


@dataclass(frozen=True)
class Pace:
    """What a decision may do now: the multiplier to price cost at, and the budget left."""

    multiplier: float
    allowance: float


PACING_GAIN = 25.0  # log(1 + multiplier) moves by this per unit of budget spent off plan
MAX_SHIFT = 3.0  # ... and by at most this much (a factor of e^3 on 1 + multiplier)


class Pacer:
    """Online pacing of the plan's budget over the day's decisions.

    The plan expects `budget_per_decision` spent per decision; spend ahead of that pace
    raises the multiplier (fewer, cheaper offers), spend behind lowers it, by
    PACING_GAIN times the gap as a share of the day's budget, in log(1 + multiplier) so a
    plan at 0 can still be raised; bounded by MAX_SHIFT. The gap is cumulative, so the
    controller needs no state of its own beyond the spend store, which every worker can
    share. A hard stop: no offer is made whose cost would take the day past its budget.
    """

    def __init__(
        self,
        plan: BudgetPlan,
        store: SpendStore,
        gain: float = PACING_GAIN,
        max_shift: float = MAX_SHIFT,
    ) -> None:
        self.plan, self.store, self.gain, self.max_shift = plan, store, gain, max_shift

    def multiplier(self, spent: DaySpend) -> float:
        """The multiplier to use after `spent` (pure: a function of the plan and spend)."""
        budget = self.plan.daily_budget
        if budget <= 0:
            return self.plan.multiplier
        target = min(budget, spent.decisions * self.plan.budget_per_decision)
        shift = np.clip(self.gain * (spent.cost - target) / budget, -self.max_shift, self.max_shift)
        return max(0.0, math.expm1(math.log1p(self.plan.multiplier) + shift))

    def pace(self, day: str) -> Pace:
        """The multiplier and the budget left for a decision on `day`."""
        spent = self.store.read(day)
        return Pace(self.multiplier(spent), max(0.0, self.plan.daily_budget - spent.cost))

    def record(self, day: str, cost: float) -> bool:
        """Count a decision that costs `cost`; False if the budget ran out meanwhile (another
        decision spent it first), in which case its offers must not be made."""
        return self.store.add(day, cost, self.plan.daily_budget)

    def refund(self, day: str, cost: float) -> None:
        """Give back a recorded decision's `cost` whose offers were withdrawn."""
        self.store.refund(day, cost)
