"""The simulated marketplace: shoppers with hidden causal traits, a coupon catalogue that
changes over time, and daily events logged by a known logging policy with exact propensities.

One part per job, composed by `World` (simulator.py):

- population.py: the segments, each user's traits, the daily signups
- catalogue.py: standing coupons, weekly promotions, the coupons valid on a day
- activity.py: the weekly season and the day's browsing sessions
- logging_policy.py: the heuristic, uniform exploration and holdout, exact propensities
- exposure.py: who was offered a coupon on recent days (coupon fatigue)
- outcomes.py: the causal model, stated once, and the order sampler
- tables.py: a day's events as the contract's tables
- streams.py: the random streams and the draws the parts share

Every causal formula lives in outcomes.py once; the sampler draws from it and
`couponflow.oracle` takes its exact expectations, so the ground truth is the truth of the
very process that produced the data. docs/world.md states the model.

Deterministic for a seed: the population, the catalogue and each day's events come from
their own random streams keyed by `(seed, stream, date)`, so any day can be regenerated alone.
The package imports only the core (couponflow.contract), never a tool room.
"""

from couponflow.world.activity import SEASON_AMPLITUDE
from couponflow.world.catalogue import AMOUNT, FREE_SHIPPING, KIND_CODE, PERCENT, THRESHOLD
from couponflow.world.logging_policy import REFERENCE_BASKET, Decisions, LoggingPolicy
from couponflow.world.outcomes import (
    BASKET_SPREAD,
    CATEGORY_PULL,
    MAX_APPEAL,
    MAX_RELEVANCE,
    TOP_UP,
    TOP_UP_RANGE,
    TOP_UP_REACH,
    DayContext,
    Outcome,
)
from couponflow.world.population import (
    DEFAULT_MIX,
    SEGMENT_ANNOYANCE,
    SEGMENT_BASE,
    SEGMENT_SENSITIVITY,
    SEGMENTS,
    Population,
)
from couponflow.world.simulator import World
from couponflow.world.tables import OFFER_SECONDS

__all__ = [
    "AMOUNT",
    "BASKET_SPREAD",
    "CATEGORY_PULL",
    "DEFAULT_MIX",
    "FREE_SHIPPING",
    "KIND_CODE",
    "MAX_APPEAL",
    "MAX_RELEVANCE",
    "OFFER_SECONDS",
    "PERCENT",
    "REFERENCE_BASKET",
    "SEASON_AMPLITUDE",
    "SEGMENTS",
    "SEGMENT_ANNOYANCE",
    "SEGMENT_BASE",
    "SEGMENT_SENSITIVITY",
    "THRESHOLD",
    "TOP_UP",
    "TOP_UP_RANGE",
    "TOP_UP_REACH",
    "DayContext",
    "Decisions",
    "LoggingPolicy",
    "Outcome",
    "Population",
    "World",
]
