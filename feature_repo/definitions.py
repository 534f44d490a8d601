"""Feast objects: the user entity, the user-activity feature view and the feature service
that training and serving both read, so a model is served exactly the features it learnt.

Feature names come from couponflow.features; the source is the workspace's parquet
features folder (one partition per date), located through $COUPONFLOW_HOME.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float32

from couponflow.config import Workspace
from couponflow.features import USER_FEATURES

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.INT64,
    description="A shopper",
)

user_activity_source = FileSource(
    name="user_activity_source",
    path=str(Workspace.from_env().features / "user_activity"),
    timestamp_field="event_timestamp",
)

user_activity = FeatureView(
    name="user_activity",
    entities=[user],
    ttl=timedelta(days=7),
    schema=[Field(name=name, dtype=Float32) for name in USER_FEATURES],
    source=user_activity_source,
    online=True,
    description="Browsing, ordering and coupon response over trailing windows, as of day end",
)

recommender_features = FeatureService(
    name="recommender",
    features=[user_activity],
    description="Everything the coupon recommender reads, offline and online",
)

OBJECTS = [user, user_activity_source, user_activity, recommender_features]
