"""Feature-store operations the pipeline and the service call: publish a day's features,
apply the definitions, materialise incrementally, read offline (training) and online.

Kept beside the definitions because it owns Feast; it declares no Feast objects itself.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from feast import FeatureStore, RepoConfig

from couponflow.config import HOME_ENV, Workspace
from couponflow.features import USER_FEATURES, compute_user_features

REPO_DIR = Path(__file__).resolve().parent
FEATURE_REFS = [f"user_activity:{name}" for name in USER_FEATURES]

logging.getLogger("feast").setLevel(logging.WARNING)


def open_store(ws: Workspace) -> FeatureStore:
    """The workspace's feature store: feature_store.yaml, with the online store chosen
    by `features.online_store` in params.yaml (sqlite by default, or redis)."""
    os.environ[HOME_ENV] = str(ws.root)  # the definitions locate their source through it
    with open(REPO_DIR / "feature_store.yaml") as fh:
        raw = yaml.safe_load(os.path.expandvars(fh.read()))
    settings = ws.params.get("features", {})
    if settings.get("online_store", "sqlite") == "redis":
        raw["online_store"] = {
            "type": "redis",
            "connection_string": settings.get("redis", "127.0.0.1:6379"),
            "key_ttl_seconds": 7 * 86_400,
        }
    ws.feature_store.mkdir(parents=True, exist_ok=True)
    return FeatureStore(config=RepoConfig(repo_path=REPO_DIR, **raw), repo_path=str(REPO_DIR))


def apply_definitions(store: FeatureStore) -> None:
    """`feast apply` for our definitions (idempotent)."""
    from feature_repo.definitions import OBJECTS

    store.apply(OBJECTS)


def publish_user_features(ws: Workspace, day: str) -> Path:
    """Compute users' features as of the end of `day` into the offline features folder."""
    frame = compute_user_features(ws, day)
    target = ws.features / "user_activity" / f"date={day}"
    target.mkdir(parents=True, exist_ok=True)
    frame["event_timestamp"] = frame["event_timestamp"].dt.tz_localize("UTC")
    frame.to_parquet(target / "part.parquet.tmp", index=False)
    (target / "part.parquet.tmp").replace(target / "part.parquet")
    return target


def materialise_day(store: FeatureStore, day: str) -> None:
    """Load the rows stamped at the end of `day` into the online store; re-running a date
    rewrites the same rows."""
    end_of_day = pd.Timestamp(day, tz="UTC") + pd.Timedelta(days=1)
    with contextlib.redirect_stdout(io.StringIO()):  # Feast prints a banner and a bar per view
        store.materialize(
            start_date=(end_of_day - pd.Timedelta(seconds=1)).to_pydatetime(),
            end_date=(end_of_day + pd.Timedelta(seconds=1)).to_pydatetime(),
            feature_views=["user_activity"],
        )


def historical_user_features(store: FeatureStore, entities: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time user features for rows of (user_id, event_timestamp), in input order."""
    entity_df = entities[["user_id", "event_timestamp"]].copy()
    entity_df["event_timestamp"] = pd.to_datetime(entity_df["event_timestamp"], utc=True)
    entity_df["row"] = np.arange(len(entity_df))
    frame = store.get_historical_features(
        entity_df=entity_df, features=store.get_feature_service("recommender")
    ).to_df()
    return frame.sort_values("row").reset_index(drop=True)


def online_user_features(store: FeatureStore, user_id: int) -> np.ndarray | None:
    """One user's feature vector from the online store, or None if the store has no row."""
    row = store.get_online_features(features=FEATURE_REFS, entity_rows=[{"user_id": user_id}])
    values = row.to_dict()
    vector = [values[name][0] for name in USER_FEATURES]
    if any(v is None for v in vector):
        return None
    return np.asarray(vector, dtype=np.float32)


def materialise_user_features(ws: Workspace, day: str) -> dict[str, object]:
    """The pipeline's feature step for `day`: compute, apply definitions, materialise."""
    path = publish_user_features(ws, day)
    store = open_store(ws)
    apply_definitions(store)
    materialise_day(store, day)
    rows = len(pd.read_parquet(path / "part.parquet"))
    return {"users": rows, "features": len(USER_FEATURES), "values": rows * len(USER_FEATURES)}
