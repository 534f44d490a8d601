"""Feast objects: the user and coupon entities, their feature views, the on-demand view of
a coupon's value to a user, and the feature service naming everything the recommender
reads. Training joins these views point in time and the service reads the same views
online, so a model is served exactly the features it learnt.

Feature names and computations come from couponflow.features; each batch view's source is
a workspace's parquet features folder (one partition per date). `user_activity` also takes
pushes (`user_activity_push`): the service's feedback updates a user's counters online
between two materialisations.
"""

import inspect
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from feast import (
    Entity,
    FeatureService,
    FeatureView,
    Field,
    FileSource,
    OnDemandFeatureView,
    PushSource,
    RequestSource,
    ValueType,
)
from feast.types import Float32, Float64, String

from couponflow.features import COUPON_FEATURES, USER_FEATURES

TTL = timedelta(days=7)  # a row older than this is missing, not stale truth
USER_PUSH_SOURCE = "user_activity_push"

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.INT64,
    description="A shopper",
)

coupon = Entity(
    name="coupon",
    join_keys=["coupon_id"],
    value_type=ValueType.STRING,
    description="A coupon of the catalogue",
)

offer_request = RequestSource(
    name="offer_request",
    schema=[Field(name="kind", dtype=String), Field(name="value", dtype=Float64)],
    description="The coupon being scored (null kind: no coupon)",
)


def offer_value(inputs: pd.DataFrame) -> pd.DataFrame:
    # Feast re-creates this function from its source text: import inside, not at the top.
    from couponflow.features import relative_value

    values = relative_value(inputs["kind"], inputs["value"], inputs["avg_basket_30d"])
    return pd.DataFrame({"relative_value": values}, index=inputs.index)


def feast_objects(features_dir: Path) -> list[Any]:
    """Every object to `feast apply`, the batch views reading `features_dir` (a workspace's
    features folder: built per call, since one process may serve several workspaces)."""
    user_activity = FeatureView(
        name="user_activity",
        entities=[user],
        ttl=TTL,
        schema=[Field(name=name, dtype=Float32) for name in USER_FEATURES],
        # Batch rows from the day's parquet; the service pushes a user's fresh counters
        # between materialisations (materialisation and training read the batch source).
        source=PushSource(
            name=USER_PUSH_SOURCE,
            batch_source=FileSource(
                name="user_activity_source",
                path=str(features_dir / "user_activity"),
                timestamp_field="event_timestamp",
            ),
        ),
        online=True,
        description="Browsing, ordering and coupon response over 1, 7 and 30 days, as of day end",
    )
    coupon_stats = FeatureView(
        name="coupon_stats",
        entities=[coupon],
        ttl=TTL,
        schema=[Field(name=name, dtype=Float32) for name in COUPON_FEATURES],
        source=FileSource(
            name="coupon_stats_source",
            path=str(features_dir / "coupon_stats"),
            timestamp_field="event_timestamp",
        ),
        online=True,
        description="Each coupon's offers, redemptions and spend over 30 days, as of day end",
    )
    on_demand = OnDemandFeatureView(
        name="offer_value",
        sources=[user_activity[["avg_basket_30d"]], offer_request],
        schema=[Field(name="relative_value", dtype=Float64)],
        udf=offer_value,
        udf_string=inspect.getsource(offer_value),  # what Feast re-creates the function from
        mode="pandas",
        description="The coupon's discount relative to the user's usual basket",
    )
    recommender = FeatureService(
        name="recommender",
        features=[user_activity, coupon_stats, on_demand],
        description="Everything the coupon recommender reads, offline and online",
    )
    return [
        user,
        coupon,
        offer_request,
        user_activity.stream_source,
        user_activity.batch_source,
        coupon_stats.batch_source,
        user_activity,
        coupon_stats,
        on_demand,
        recommender,
    ]
