"""`World`: the parts composed into one marketplace defined by params.yaml's `world:`
section. It wires them together, sets the price level (the price shock) and caches the day's
context, and keeps the methods other modules call (`simulate_day`, `context`, `outcome`...)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from couponflow.contract import TABLES
from couponflow.world.activity import browse, season
from couponflow.world.catalogue import Catalogue
from couponflow.world.exposure import Exposure, offered_mask
from couponflow.world.logging_policy import Decisions, LoggingPolicy
from couponflow.world.outcomes import DayContext, Outcome, draw_orders, outcome
from couponflow.world.population import Population, Shoppers, segment_mix
from couponflow.world.streams import DETAIL, OUTCOME, day_rng
from couponflow.world.tables import offers_table, orders_table, sessions_table


def _day(day: str | pd.Timestamp) -> pd.Timestamp:
    return pd.Timestamp(day).normalize()


class World:
    """A marketplace defined by the `world` section of params.yaml."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.seed = int(cfg["seed"])
        self.start = _day(cfg["start_date"])
        self.n_users = int(cfg["n_users"])
        self.margin = float(cfg["margin"])
        drift = cfg.get("drift") or {}
        mix = segment_mix(cfg.get("segment_mix"))
        self.shoppers = Shoppers(
            self.seed,
            self.start,
            self.n_users,
            mix,
            new_per_day=round(float(drift.get("new_users_per_day", 0.0)) * self.n_users),
            new_mix=segment_mix(drift.get("new_user_mix") or cfg.get("segment_mix")),
        )
        self.coupon_catalogue = Catalogue(
            self.seed, self.start, int(cfg["n_coupons"]), int(drift.get("new_coupons_per_week", 0))
        )
        self.logging_policy = LoggingPolicy(
            self.seed,
            offers_per_user=float(cfg["offers_per_user"]),
            random_share=float(cfg["random_share"]),
            holdout_share=float(cfg.get("holdout_share", 0.0)),
        )
        self.offers_seen = Exposure(int(cfg.get("fatigue_window_days", 7)), self._replay_offers)
        shock_date = drift.get("price_shock_date")
        self.shock_date = pd.Timestamp(shock_date) if shock_date else None
        self.price_shock = float(drift.get("price_shock", 0.0))
        self._context: DayContext | None = None

    # -- the parts, by day ----------------------------------------------------------------
    def users_on(self, day: str | pd.Timestamp) -> int:
        """How many users have signed up by the end of `day` (new ones arrive with drift)."""
        return self.shoppers.users_on(_day(day))

    def population_on(self, day: str | pd.Timestamp) -> Population:
        """The users signed up by the end of `day`, with their hidden traits."""
        return self.shoppers.on(_day(day))

    def catalogue(self, day: str | pd.Timestamp) -> pd.DataFrame:
        """Every coupon launched by `day` that may still be valid on it (and the standing ones)."""
        return self.coupon_catalogue.on(day)

    def active_coupons(self, day: str | pd.Timestamp) -> pd.DataFrame:
        """The coupons valid on `day`, each with an equal share of the day's budget."""
        return self.coupon_catalogue.active(day)

    def exposure(self, day: str | pd.Timestamp) -> np.ndarray:
        """Per user, on how many of the `fatigue_window_days` before `day` the logging policy
        offered them a coupon (what wears their response down)."""
        day = _day(day)
        return self.offers_seen.counts(day, self.users_on(day))

    def _decide(
        self, day: pd.Timestamp, coupons: pd.DataFrame
    ) -> tuple[Decisions, tuple[np.ndarray, np.ndarray]]:
        """The day's browsing and the logging policy's decisions on it."""
        pop = self.population_on(day)
        sessions = browse(self.seed, day, pop, float(self.cfg["sessions_per_user"]))
        n = self.users_on(day)
        return self.logging_policy.decide(day, n, coupons, *sessions), sessions

    def _replay_offers(self, day: pd.Timestamp) -> np.ndarray:
        """Who was offered a coupon on a past day, regenerated from that day's streams."""
        decisions, _ = self._decide(day, self.active_coupons(day))
        return offered_mask(decisions.reached, decisions.arm, self.users_on(day))

    # -- the causal model -----------------------------------------------------------------
    def context(self, day: str | pd.Timestamp) -> DayContext:
        """The day's season, prices, catalogue and every user's recent coupon exposure."""
        day = _day(day)
        if self._context is None or self._context.day != day:
            self.population_on(day)  # draw the cohorts who joined by then
            shocked = self.shock_date is not None and day >= self.shock_date
            self._context = DayContext(
                day=day,
                n_users=self.users_on(day),
                coupons=self.active_coupons(day),
                exposure=self.exposure(day),
                season=season(day),
                price=1.0 + (self.price_shock if shocked else 0.0),
            )
        return self._context

    def outcome(
        self,
        ctx: DayContext,
        users: np.ndarray,
        arm: np.ndarray,
        coupons: pd.DataFrame | None = None,
    ) -> Outcome:
        """The outcome distribution for each (user, arm) pair on the context's day; `arm`
        indexes `coupons` (default: the day's catalogue), -1 meaning "no coupon"."""
        return outcome(self.shoppers.drawn, ctx, users, arm, coupons)

    def purchase_probability(
        self, day: str | pd.Timestamp, users: np.ndarray, arm: np.ndarray
    ) -> np.ndarray:
        """P(purchase on `day`) for users holding arm `arm` of the day's catalogue (-1: none)."""
        return self.outcome(self.context(day), users, arm).p_purchase

    def draw_orders(self, rng: np.random.Generator, out: Outcome) -> dict[str, np.ndarray]:
        """Sample who buys and what: category, amount, coupon redeemed and discount (one
        order at most per pair of `out`)."""
        return draw_orders(rng, out, self.shoppers.drawn.preference_cdf)

    # -- one day of events ----------------------------------------------------------------
    def simulate_day(self, day: str | pd.Timestamp) -> dict[str, pd.DataFrame]:
        """The landing-zone batch for `day`: user and coupon snapshots and the day's events."""
        ctx = self.context(day)
        day, n, coupons = ctx.day, ctx.n_users, ctx.coupons
        decisions, (session_user, session_category) = self._decide(day, coupons)
        self.offers_seen.remember(day, offered_mask(decisions.reached, decisions.arm, n))
        held = np.full(n, -1)
        held[decisions.reached] = decisions.arm
        out = self.outcome(ctx, np.arange(n), held)
        orders = self.draw_orders(day_rng(self.seed, OUTCOME, day), out)

        rng = day_rng(self.seed, DETAIL, day)
        coupon_ids = np.append(coupons["coupon_id"].to_numpy(object), None)
        policy_version = self.cfg["policy_version"]
        return {
            "users": TABLES["users"].conform(self.population_on(day).users),
            "coupons": coupons.copy(),
            "sessions": sessions_table(rng, day, session_user, session_category),
            "offers": offers_table(rng, day, decisions, coupon_ids, policy_version),
            "orders": orders_table(rng, day, orders, coupon_ids),
        }
