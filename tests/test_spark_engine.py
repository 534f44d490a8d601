"""Feast's Spark offline store and compute engine, as benchmarks/bench_engine.py's `spark`
variant runs them (Spark's local mode, 2 cores): the point-in-time join finds the rows and
values Feast's file offline store finds, and materialising through the Spark engine leaves
the online store reading back what the local engine's materialisation leaves.

Spark is no `features.engine` (docs/scaling.md, "Spark, measured"): this checks that the
benchmark measured a join that gives the project's answer. Optional: skipped without
pyspark, which the project does not install (the benchmark's docstring says how to).
The world and the entity rows are the Ray test's (tests/helpers/engines.py).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pandas as pd
import pytest
from feast import FeatureStore

from benchmarks.bench_engine import microsecond_stamps, spark_sources, spark_store
from couponflow.config import HOME_ENV, Workspace
from couponflow.features import COUPON_FEATURES, USER_FEATURES, day_end
from couponflow.landing import read_offline
from feature_repo.store import (
    apply_definitions,
    coupon_stats_at,
    historical_features,
    materialise_day,
    open_store,
)
from tests.helpers.engines import DAYS, entity_rows, materialised, online_values, with_engine
from tests.helpers.workspaces import N_USERS, simulated_workspace

pyspark = pytest.importorskip(
    "pyspark.sql", reason="pyspark is not installed (benchmarks/bench_engine.py)"
)

pytestmark = pytest.mark.integration  # Spark's JVM, Feast's stores


@pytest.fixture(scope="module")
def worlds(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Workspace, Workspace, list, FeatureStore]]:
    """(the local workspace, the Spark one, the days, the Spark store): one world,
    featurised once, copied (the copy's partitions rewritten in microseconds, which Spark
    reads); the Spark session started once and stopped after. The Spark store is used
    inside `spark_sources` (its views and windows SparkSources), the local one outside."""
    base = tmp_path_factory.mktemp("spark")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(HOME_ENV, str(base / "local"))
        (base / "local").mkdir()
        simulated_workspace(base / "local", days=DAYS)
        shutil.copytree(base / "local", base / "spark")
        local, on_spark = with_engine(base / "local", "local"), with_engine(base / "spark", "local")
        microsecond_stamps(on_spark.features)
        days = sorted(
            p.name.removeprefix("date=") for p in (local.features / "user_activity").iterdir()
        )
        materialised(local, days)
        try:
            os.environ[HOME_ENV] = str(on_spark.root)
            yield local, on_spark, days, spark_store(on_spark, cpus=2)
        finally:
            if session := pyspark.SparkSession.getActiveSession():
                session.stop()


def test_the_point_in_time_join_on_spark_finds_the_file_stores_rows(worlds) -> None:
    local, on_spark, days, store = worlds
    rows = entity_rows(local, days)
    os.environ[HOME_ENV] = str(local.root)
    expected = historical_features(open_store(local), rows)
    coupons = read_offline(local, "coupons", [days[-1]])
    at = day_end(days[-2]) + pd.Timedelta(hours=5)
    wanted = coupon_stats_at(open_store(local), coupons, at)
    os.environ[HOME_ENV] = str(on_spark.root)
    with spark_sources():
        apply_definitions(store)
        assert store.config.offline_store.type == "spark"
        assert type(store.provider.batch_engine).__name__ == "SparkComputeEngine"
        found = historical_features(store, rows)
        stats = coupon_stats_at(store, coupons, at)
    # the same rows in the same order, every value and dtype equal: nothing normalised
    pd.testing.assert_frame_equal(found, expected)
    gone = rows["event_timestamp"] > day_end(days[-1]).tz_localize("UTC") + pd.Timedelta(days=7)
    assert found.loc[gone, [*USER_FEATURES, *COUPON_FEATURES]].isna().all().all()
    pd.testing.assert_frame_equal(stats, wanted)


def test_materialising_on_spark_writes_what_the_local_engine_writes(worlds) -> None:
    local, on_spark, days, store = worlds
    os.environ[HOME_ENV] = str(on_spark.root)
    with spark_sources():
        apply_definitions(store)
        for day in days:
            assert materialise_day(store, day) == ["user_activity", "coupon_stats"]
    found = online_values(on_spark, days)  # read through the workspace's usual store
    assert found == online_values(local, days)
    assert sum(v is not None for v in found["sessions_30d"]) == N_USERS
