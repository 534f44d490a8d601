"""`features.engine: ray` for real, in Ray's local mode (2 CPUs, started once here): the
point-in-time join through Feast's Ray offline store finds the rows and values Feast's file
offline store finds, and materialising through the Ray engine leaves the online store
reading back what the local engine's materialisation leaves.

The same small world is featurised once and copied: one copy runs the default (`local`)
path, the other `ray`; the two are compared value for value.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from couponflow.config import HOME_ENV, Workspace, load_params, set_param
from couponflow.features import COUPON_FEATURES, USER_FEATURES, day_end
from couponflow.landing import read_offline
from feature_repo.store import (
    coupon_stats_at,
    historical_features,
    is_ray,
    materialise_day,
    open_store,
)
from tests.helpers.engines import DAYS, entity_rows, materialised, online_values, with_engine
from tests.helpers.workspaces import N_USERS, simulated_workspace

pytestmark = pytest.mark.integration  # Ray, Feast's stores


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Workspace, Workspace, list]]:
    """(the local workspace, the Ray one, the days): one world, featurised once, copied,
    each copy materialised by its own engine; Ray started once and shut down after."""
    import ray
    from feast.infra.ray_initializer import shutdown_ray

    base = tmp_path_factory.mktemp("ray")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(HOME_ENV, str(base / "local"))
        (base / "local").mkdir()
        local = simulated_workspace(base / "local", days=DAYS)
        shutil.copytree(base / "local", base / "ray")
        local, on_ray = with_engine(base / "local", "local"), with_engine(base / "ray", "ray")
        days = sorted(
            p.name.removeprefix("date=") for p in (local.features / "user_activity").iterdir()
        )
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            materialised(local, days)
            materialised(on_ray, days)
            yield local, on_ray, days
        finally:
            shutdown_ray()


def test_the_point_in_time_join_on_ray_finds_the_file_stores_rows(worlds) -> None:
    local, on_ray, days = worlds
    rows = entity_rows(local, days)
    os.environ[HOME_ENV] = str(local.root)
    expected = historical_features(open_store(local), rows)
    os.environ[HOME_ENV] = str(on_ray.root)
    store = open_store(on_ray)
    assert is_ray(store) and type(store.provider.batch_engine).__name__ == "RayArrowComputeEngine"
    found = historical_features(store, rows)
    # the same rows in the same order, every value and dtype equal: nothing normalised
    pd.testing.assert_frame_equal(found, expected)
    edge = rows["event_timestamp"] == day_end(days[-1]).tz_localize("UTC") + pd.Timedelta(days=7)
    assert found.loc[edge, USER_FEATURES].notna().all().all()
    gone = rows["event_timestamp"] > day_end(days[-1]).tz_localize("UTC") + pd.Timedelta(days=7)
    assert found.loc[gone, [*USER_FEATURES, *COUPON_FEATURES]].isna().all().all()
    known = rows["event_timestamp"] >= day_end(days[0]).tz_localize("UTC")  # a row to see
    assert found.loc[known & ~gone, USER_FEATURES].notna().all().all()
    assert found.loc[~known, USER_FEATURES].isna().all().all()

    coupons = read_offline(local, "coupons", [days[-1]])
    at = day_end(days[-2]) + pd.Timedelta(hours=5)
    pd.testing.assert_frame_equal(
        coupon_stats_at(store, coupons, at), coupon_stats_at(open_store(local), coupons, at)
    )


def test_materialising_on_ray_writes_what_the_local_engine_writes(worlds) -> None:
    local, on_ray, days = worlds
    expected, found = online_values(local, days), online_values(on_ray, days)
    assert found == expected
    assert sum(v is not None for v in found["sessions_30d"]) == N_USERS


@pytest.mark.redis
def test_materialising_on_ray_into_redis_writes_what_the_local_engine_writes(
    worlds, tmp_path: Path
) -> None:
    """The cluster form's store: Ray's tasks write the bulk Redis store (under a Feast
    project of its own, its keys removed after); the values read back are the local
    engine's. A broken write fails the materialisation (Feast's own Ray write logs it
    and reports success)."""
    import redis

    local, on_ray, days = worlds
    client = redis.Redis("127.0.0.1", 6379)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    project = f"couponflow_ray_{uuid.uuid4().hex[:12]}"
    shutil.copytree(on_ray.root / "data", tmp_path / "ws" / "data")  # features, catalogue
    params = load_params(on_ray.params_file)
    for key, value in {
        "online_store": "redis",
        "redis": "127.0.0.1:6379",
        "project": project,
    }.items():
        set_param(params, f"features.{key}", value)
    (tmp_path / "ws" / "params.yaml").write_text(yaml.safe_dump(params))
    ws = Workspace(tmp_path / "ws")
    try:
        materialised(ws, days)
        assert online_values(ws, days) == online_values(local, days)
        (key, *_) = client.scan_iter(match=f"*{project}", count=1000)
        client.delete(key)
        client.set(key, b"not a hash")  # Redis refuses an HSET on it
        with pytest.raises(Exception, match="WRONGTYPE"):
            materialise_day(open_store(ws), days[-1])
    finally:
        for key in client.scan_iter(match=f"*{project}*", count=1000):
            client.delete(key)
