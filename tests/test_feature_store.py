"""The Feast feature store for real: a small simulated world featurised day by day through
the pipeline's own step, then read point in time (training) and online (serving).

Proves training-serving consistency (the offline join and the online store agree for a
user and time), that no later row leaks into an earlier offer, that re-running a date is
idempotent and never rolls the online store back, and runs the same materialise-then-read
path against the real Redis on 127.0.0.1:6379 when it is reachable.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from couponflow.config import (
    HOME_ENV,
    PROJECT_ROOT,
    REDIS_PASSWORD_ENV,
    Workspace,
    load_params,
    set_param,
)
from couponflow.features import (
    COUPON_FEATURES,
    USER_FEATURES,
    compute_user_features,
    day_end,
    relative_value,
)
from couponflow.landing import load_offline, read_offline
from couponflow.model import ARM_FEATURES, encode_arms
from couponflow.policy import with_control
from couponflow.processes import free_port, listening
from feature_repo.store import (
    USER_REFS,
    OnlineUserReader,
    apply_definitions,
    coupon_stats_at,
    historical_features,
    materialise_day,
    materialise_user_features,
    online_coupon_stats,
    online_user_features,
    open_store,
    publish_features,
)

pytestmark = pytest.mark.integration  # Feast stores, and Redis

N_USERS = 200
N_DAYS = 4
REDIS = ("127.0.0.1", 6379)


def redis_reachable() -> bool:
    try:
        with socket.create_connection(REDIS, timeout=0.5):
            return True
    except OSError:
        return False


def featurised_workspace(root: Path, **features: object) -> tuple[Workspace, list[str]]:
    """A small world's offline store, each day run through the DAG's feature step."""
    from couponflow.world import World

    root.mkdir(parents=True)
    params = load_params(PROJECT_ROOT / "params.yaml")
    set_param(params, "world.n_users", N_USERS)
    for key, value in features.items():
        set_param(params, f"features.{key}", value)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    ws = Workspace(root)
    world = World(params["world"])
    start = pd.Timestamp(params["world"]["start_date"])
    days = [(start + pd.Timedelta(days=i)).strftime("%Y-%m-%d") for i in range(N_DAYS)]
    for day in days:
        load_offline(ws, day, world.simulate_day(day))
        summary = materialise_user_features(ws, day)
        assert summary["users"] == N_USERS and summary["online"] == [
            "user_activity",
            "coupon_stats",
        ]
    return ws, days


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Workspace, list]]:
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("features") / "ws"
        mp.setenv(HOME_ENV, str(root))
        yield featurised_workspace(root)


def requests_at(ws: Workspace, day: str, users: list[int], at: pd.Timestamp) -> pd.DataFrame:
    """Entity rows as training builds them: each user offered each coupon of `day`'s
    catalogue and "no coupon", at time `at`."""
    arms = with_control(read_offline(ws, "coupons", [day]))
    rows = arms.merge(pd.DataFrame({"user_id": users}), how="cross")
    return rows.assign(event_timestamp=at)


def assert_offline_and_online_agree(ws: Workspace, days: list[str]) -> None:
    """For users at a time after the last day, the point-in-time join that builds training
    sets returns exactly what the service reads online, the on-demand relative value
    included, and the model encodes that value with the same function."""
    store = open_store(ws)
    users = list(range(0, N_USERS, 7))
    at = day_end(days[-1]) + pd.Timedelta(hours=3)
    requests = requests_at(ws, days[-1], users, at)
    features = historical_features(store, requests)
    offline = pd.concat(
        [requests, features[[*USER_FEATURES, *COUPON_FEATURES, "relative_value"]]], axis=1
    )

    reader = OnlineUserReader(store)

    async def read_on_a_loop() -> list:  # as the service reads (one loop: Redis binds to it)
        return [await reader.read_async(user) for user in users]

    on_a_loop = dict(zip(users, asyncio.run(read_on_a_loop()), strict=True))
    for user, rows in offline.groupby("user_id"):
        online = online_user_features(store, int(user))
        assert online is not None
        np.testing.assert_array_equal(on_a_loop[user], online)
        np.testing.assert_array_equal(rows[USER_FEATURES].to_numpy(np.float32)[0], online)
        request = [
            {"user_id": int(user), "kind": None if pd.isna(k) else k, "value": v}
            for k, v in zip(rows["kind"], rows["value"], strict=True)
        ]
        odfv = store.get_online_features(
            features=["offer_value:relative_value"], entity_rows=request
        ).to_dict()
        np.testing.assert_array_equal(odfv["relative_value"], rows["relative_value"].to_numpy())
        encoded = encode_arms(rows[USER_FEATURES].to_numpy(np.float32), rows)
        np.testing.assert_array_equal(
            encoded[:, ARM_FEATURES.index("relative_value")],
            rows["relative_value"].to_numpy(np.float32),
        )

    coupons = read_offline(ws, "coupons", [days[-1]])
    served = online_coupon_stats(store, coupons).set_index("coupon_id")[COUPON_FEATURES]
    joined = offline[offline["coupon_id"].notna()].drop_duplicates("coupon_id")
    joined = joined.set_index("coupon_id")[COUPON_FEATURES].astype("float64")
    pd.testing.assert_frame_equal(joined.loc[served.index], served, check_names=False)
    assert offline.loc[offline["coupon_id"].isna(), COUPON_FEATURES].isna().all().all()


def assert_rerun_is_idempotent(ws: Workspace, days: list[str]) -> None:
    """Re-running the last date rewrites the same rows (and a fixed partition's rows);
    re-running an older date leaves the online store on the newest day."""
    store = open_store(ws)
    user = 3
    before = online_user_features(store, user)
    assert materialise_day(store, days[-1]) == ["user_activity", "coupon_stats"]
    np.testing.assert_array_equal(online_user_features(store, user), before)

    partition = ws.features / "user_activity" / f"date={days[-1]}" / "part.parquet"
    fixed = pd.read_parquet(partition)
    fixed.loc[fixed["user_id"] == user, "sessions_30d"] = 99.0
    fixed.to_parquet(partition, index=False)
    materialise_day(store, days[-1])
    assert online_user_features(store, user)[USER_FEATURES.index("sessions_30d")] == 99.0

    publish_features(ws, days[-1])
    assert materialise_day(store, days[-1]) == ["user_activity", "coupon_stats"]
    assert materialise_day(store, days[0]) == []  # a backfill never rolls online back
    np.testing.assert_array_equal(online_user_features(store, user), before)


def test_offline_and_online_values_agree(sqlite_store) -> None:
    assert_offline_and_online_agree(*sqlite_store)


def test_the_feature_service_names_what_the_model_reads(sqlite_store) -> None:
    ws, _ = sqlite_store
    service = open_store(ws).get_feature_service("recommender")
    listed = [f.name for view in service.feature_view_projections for f in view.features]
    assert listed == [*USER_FEATURES, *COUPON_FEATURES, "relative_value"]


def test_an_offer_sees_only_the_previous_day(sqlite_store) -> None:
    ws, days = sqlite_store
    store = open_store(ws)
    offers = read_offline(ws, "offers", [days[2]]).rename(columns={"ts": "event_timestamp"})
    offers = offers.merge(read_offline(ws, "coupons", [days[2]]), on="coupon_id", how="left")
    joined = historical_features(store, offers)
    expected = compute_user_features(ws, days[1]).set_index("user_id").loc[offers["user_id"]]
    np.testing.assert_array_equal(
        joined[USER_FEATURES].to_numpy(np.float32), expected[USER_FEATURES].to_numpy()
    )
    first = historical_features(store, offers.assign(event_timestamp=pd.Timestamp(days[0])))
    assert first[USER_FEATURES].isna().all().all()  # nothing is known before the first day ends
    edge = historical_features(store, offers.assign(event_timestamp=day_end(days[1])))
    np.testing.assert_array_equal(edge[USER_FEATURES].to_numpy(np.float32), joined[USER_FEATURES])


def test_coupon_stats_point_in_time_for_evaluation(sqlite_store) -> None:
    ws, days = sqlite_store
    coupons = read_offline(ws, "coupons", [days[2]])
    stats = coupon_stats_at(open_store(ws), coupons, pd.Timestamp(days[2]))
    published = pd.read_parquet(ws.features / "coupon_stats" / f"date={days[1]}").set_index(
        "coupon_id"
    )
    known = stats["coupon_id"].isin(published.index).to_numpy()
    np.testing.assert_allclose(
        stats.loc[known, COUPON_FEATURES].to_numpy(),
        published.loc[stats.loc[known, "coupon_id"], COUPON_FEATURES].to_numpy(),
    )


def test_publishing_a_date_twice_writes_the_same_partition(sqlite_store) -> None:
    ws, days = sqlite_store
    partition = ws.features / "coupon_stats" / f"date={days[1]}" / "part.parquet"
    before = pd.read_parquet(partition)
    assert publish_features(ws, days[1])["user_activity"] == N_USERS
    pd.testing.assert_frame_equal(pd.read_parquet(partition), before)


def test_rerunning_a_date_is_idempotent(sqlite_store) -> None:
    assert_rerun_is_idempotent(*sqlite_store)


def test_relative_value_online_matches_the_function(sqlite_store) -> None:
    ws, _ = sqlite_store
    store = open_store(ws)
    basket = online_user_features(store, 5)[USER_FEATURES.index("avg_basket_30d")]
    odfv = store.get_online_features(
        features=["offer_value:relative_value"],
        entity_rows=[{"user_id": 5, "kind": "amount_off", "value": 10.0}],
    ).to_dict()
    assert odfv["relative_value"] == list(relative_value(["amount_off"], [10.0], [basket]))


def test_materialising_in_batches_writes_what_one_batch_writes(
    sqlite_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's default batch holds all N_USERS rows; written 7 rows at a time (Feast's
    online_write_batch_size, from `features.online_write_batch`) the day's online rows are
    the same, the last, short batch included."""
    ws, days = sqlite_store
    assert open_store(ws).config.materialization_config.online_write_batch_size > N_USERS
    batched = Workspace(tmp_path / "batched")
    params = load_params(ws.params_file)
    set_param(params, "features.online_write_batch", 7)
    batched.root.mkdir()
    batched.params_file.write_text(yaml.safe_dump(params))
    shutil.copytree(ws.features, batched.features)
    monkeypatch.setenv(HOME_ENV, str(batched.root))
    store = open_store(batched)
    assert store.config.materialization_config.online_write_batch_size == 7
    apply_definitions(store)
    assert materialise_day(store, days[-1]) == ["user_activity", "coupon_stats"]

    everyone = [{"user_id": user} for user in range(N_USERS)]
    many = store.get_online_features(features=USER_REFS, entity_rows=everyone).to_dict()
    one = open_store(ws).get_online_features(features=USER_REFS, entity_rows=everyone).to_dict()
    assert many == one
    assert all(v is not None for name in USER_FEATURES for v in many[name])


@pytest.mark.redis
def test_the_same_path_on_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Materialise (7 rows a write), read and re-run against the real Redis, under a Feast
    project of its own (every key carries it), then remove every key the test wrote."""
    import redis

    if not redis_reachable():
        pytest.skip("no Redis on 127.0.0.1:6379")
    project = f"couponflow_test_{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "ws"))
    client = redis.Redis(*REDIS)
    ws = None
    try:
        ws, days = featurised_workspace(
            tmp_path / "ws", online_store="redis", project=project, online_write_batch=7
        )
        assert open_store(ws).config.online_store.type == "redis"
        assert any(client.scan_iter(match=f"*{project}", count=1000))
        assert_offline_and_online_agree(ws, days)
        assert_rerun_is_idempotent(ws, days)
    finally:
        if ws is not None:
            open_store(ws).teardown()
        for key in client.scan_iter(match=f"*{project}", count=1000):
            client.delete(key)
        assert not any(client.scan_iter(match=f"*{project}", count=1000))


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[int]:
    """A Redis of the test's own that wants a password (`secret`), on a free port."""
    import subprocess

    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server on this machine")
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--requirepass", "secret", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not listening(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_redis_with_a_password_is_reached_with_it_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, private_redis: int
) -> None:
    """Both Redis users, Feast's online store and the spend store, take the password from
    $COUPONFLOW_REDIS_PASSWORD (it is never in params.yaml); without it they are refused."""
    import redis

    from serving.runtime.spend import open_spend

    monkeypatch.setenv(HOME_ENV, str(tmp_path / "ws"))
    monkeypatch.setenv(REDIS_PASSWORD_ENV, "secret")
    where = f"127.0.0.1:{private_redis}"
    ws, days = featurised_workspace(tmp_path / "ws", online_store="redis", redis=where)
    assert "secret" not in ws.params_file.read_text()
    assert online_user_features(open_store(ws), 3) is not None
    params = load_params(ws.params_file)
    set_param(params, "serving.spend_store", "redis")
    ws.params_file.write_text(yaml.safe_dump(params))
    ws = Workspace(ws.root)
    assert open_spend(ws).add(days[-1], 1.0, limit=10.0)

    monkeypatch.delenv(REDIS_PASSWORD_ENV)
    with pytest.raises(redis.AuthenticationError):
        open_spend(ws).read(days[-1])
    with pytest.raises(redis.RedisError, match="unauthenticated|NOAUTH|Authentication"):
        online_user_features(open_store(ws), 3)
