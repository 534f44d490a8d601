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
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from feast.infra.online_stores.redis import RedisOnlineStoreConfig

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
    COUPON_REFS,
    USER_REFS,
    OnlineUserReader,
    _user_key,
    apply_definitions,
    coupon_stats_at,
    historical_features,
    materialise_day,
    materialise_user_features,
    online_coupon_stats,
    online_user_features,
    open_store,
    publish_features,
    push_user_features,
)

pytestmark = pytest.mark.integration  # Feast stores, and Redis

N_USERS = 200
N_DAYS = 5
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


def test_a_training_window_reads_and_covers_only_its_days(
    sqlite_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`model.training_days: 1` with `evaluation.days: 1`: the training table covers the
    newest three of the four labelled days (train, early stop, evaluate), its rows those
    of the whole history's table on those days; the stage read only those days' offline
    partitions, and the join only the feature partitions their times can reach."""
    import feature_repo.store as store_module
    import training.dataset as dataset

    ws, days = sqlite_store
    full = dataset.build(ws)
    assert sorted(full["day"].dt.strftime("%Y-%m-%d").unique()) == days[1:]

    windowed = Workspace(tmp_path / "windowed")
    windowed.root.mkdir()
    shutil.copytree(ws.offline, windowed.offline)
    params = load_params(ws.params_file)
    set_param(params, "model.training_days", 1)
    set_param(params, "evaluation.days", 1)
    windowed.params_file.write_text(yaml.safe_dump(params))
    read, reached = [], []
    reading, reaching = dataset.read_offline, store_module.reachable_partitions
    monkeypatch.setattr(dataset, "read_offline", lambda w, t, d: read.extend(d) or reading(w, t, d))
    monkeypatch.setattr(
        store_module,
        "reachable_partitions",
        lambda *a: reached.extend(out := reaching(*a)) or out,
    )
    monkeypatch.setattr(store_module, "open_store", lambda _: open_store(ws))  # ws's features
    table = dataset.build(windowed)

    assert dataset.window(windowed) == days[-3:] and set(read) == set(days[-3:])
    assert reached and set(reached) <= set(days)  # the ttl (7 days) reaches the whole history
    assert sorted(table["day"].dt.strftime("%Y-%m-%d").unique()) == days[-3:]
    expected = full[full["day"] >= pd.Timestamp(days[-3])].reset_index(drop=True)
    pd.testing.assert_frame_equal(table.reset_index(drop=True), expected)


def test_the_benchmarks_simulated_table_is_the_dataset_stage_table(sqlite_store) -> None:
    """benchmarks/simulated.py computes the features with the project's code, without Feast,
    so bench_uplift can afford many seeded worlds: its training table must be the one the
    dataset stage builds through Feast's point-in-time join, offer for offer and column
    for column, or the harness would measure a learner the stages never train. Only the
    catalogue's `budget_share`, read by neither (the stage takes each coupon's newest
    catalogue row, the harness its row of the offer's day), may differ."""
    import training.dataset as dataset
    from benchmarks.simulated import SimulatedLog, training_table
    from couponflow.world import World

    ws, days = sqlite_store
    real = dataset.build(ws)
    harness = training_table(SimulatedLog(ws, World(ws.params["world"]), days), days[1:])
    assert len(real) > 100 and set(real.columns) == set(harness.columns)
    real, harness = (t.sort_values("offer_id").reset_index(drop=True) for t in (real, harness))
    columns = [c for c in real.columns if c != "budget_share"]
    pd.testing.assert_frame_equal(harness[columns], real[columns], check_dtype=False, rtol=1e-5)


def test_a_join_in_chunks_of_a_day_gives_the_whole_join(
    sqlite_store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The join split into a chunk per day (JOIN_ROWS of 1) and the training table built
    a day at a time (CHUNK_ROWS of 1) give the table of one join of every day: each
    chunk reads its own narrowed source (a chunk once read the folder the one before had
    removed, and every later chunk joined nothing)."""
    import feature_repo.store as store_module
    import training.dataset as dataset

    ws, days = sqlite_store
    whole = dataset.build(ws)
    monkeypatch.setattr(store_module, "JOIN_ROWS", 1)
    monkeypatch.setattr(dataset, "CHUNK_ROWS", 1)
    assert len(list(dataset.day_chunks(ws, dataset.window(ws)))) == len(days) - 1
    pd.testing.assert_frame_equal(dataset.build(ws), whole)
    requests = whole[["user_id", "coupon_id", "ts", "kind", "value"]]
    requests = requests.rename(columns={"ts": "event_timestamp"})
    by_day = historical_features(open_store(ws), requests)  # several chunks in one call
    assert by_day["sessions_7d"].notna().all()
    pd.testing.assert_frame_equal(
        by_day[USER_FEATURES].reset_index(drop=True),
        whole[USER_FEATURES].reset_index(drop=True),
        check_dtype=False,
    )


def test_join_chunks_are_whole_days_bounded_in_rows_and_in_days() -> None:
    """Five small days join two at a time (JOIN_DAYS): Feast matches each entity row with
    a source row per day of its chunk, so many small days cost like many rows."""
    from feature_repo.store import JOIN_DAYS, _chunks

    times = pd.date_range("2026-01-02 09:00", periods=5, freq="D", tz="UTC").repeat(3)
    chunks = [chunk for chunk, _ in _chunks(pd.DataFrame({"event_timestamp": times}))]
    days = [c["event_timestamp"].dt.day.unique().tolist() for c in chunks]
    assert JOIN_DAYS == 2 and days == [[2, 3], [4, 5], [6]]


def test_a_narrowed_source_keeps_what_a_join_from_its_first_time_can_pick(
    tmp_path: Path,
) -> None:
    """Of the rows stamped by the chunk's first time only each key's newest (ties kept),
    every row stamped after it, and only the keys asked for."""
    from feature_repo.store import _narrowed_source

    stamp = lambda day: pd.Timestamp(day, tz="UTC")  # noqa: E731
    rows = [  # (user, stamp): user 1 every day, user 2 not since the 3rd, user 3 not asked
        *[(1, stamp(f"2026-01-0{d}")) for d in (2, 3, 4, 5, 6)],
        (2, stamp("2026-01-02")), (2, stamp("2026-01-03")), (2, stamp("2026-01-03")),
        (3, stamp("2026-01-05")),
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["user_id", "event_timestamp"]).assign(x=range(len(rows)))
    folders = []
    for day, part in frame.groupby(frame["event_timestamp"].dt.strftime("%Y-%m-%d")):
        folders.append(tmp_path / f"date={day}")
        folders[-1].mkdir()
        part.to_parquet(folders[-1] / "part.parquet", index=False)
    kept = _narrowed_source(folders, "user_id", "event_timestamp", np.array([1, 2]),
                            pd.Timestamp("2026-01-04 08:00")).to_pandas()  # fmt: skip
    got = sorted(zip(kept["user_id"], kept["event_timestamp"].dt.day, strict=True))
    assert got == [(1, 4), (1, 5), (1, 6), (2, 3), (2, 3)]


def test_a_join_reads_the_partitions_its_times_can_reach() -> None:
    """Rows stamped at the end of their day, a 7-day ttl: times on the 15th reach back to
    the partition of the 8th (stamped the 9th, 0:00) and no later than the 14th's."""
    from feature_repo.store import reachable_partitions

    dates = [f"2026-01-{d:02d}" for d in range(1, 21)]
    at = pd.Timestamp("2026-01-15 12:00", tz="UTC")
    week = pd.Timedelta(days=7)
    got = reachable_partitions(dates, at, at, week)
    assert got[0] == "2026-01-08" and got[-1] == "2026-01-15"
    assert reachable_partitions(dates, at - pd.Timedelta(days=3), at, None) == dates[:15]


def writer_workspaces(
    source: Workspace, root: Path, day: str, project: str = "couponflow", **features: object
) -> dict[str, Workspace]:
    """The same offline features materialised on `day` by Feast's stock write and by
    feature_repo/bulk.py's, in two workspaces (Feast projects `<project>_<writer>`); a few
    of the copy's values are null or NaN (Feast writes both as an empty value)."""
    partition = pd.read_parquet(source.features / "user_activity" / f"date={day}")
    partition.loc[partition.index[:5], "sessions_7d"] = np.nan
    partition.loc[partition.index[7], USER_FEATURES] = np.nan
    spaces = {}
    for writer in ("feast", "bulk"):
        ws = Workspace(root / writer)
        params = load_params(source.params_file)
        settings = {**features, "online_write": writer, "project": f"{project}_{writer}"}
        for key, value in settings.items():
            set_param(params, f"features.{key}", value)
        ws.root.mkdir(parents=True)
        ws.params_file.write_text(yaml.safe_dump(params))
        shutil.copytree(source.features, ws.features)
        partition.to_parquet(ws.features / "user_activity" / f"date={day}" / "part.parquet")
        store = open_store(ws)
        apply_definitions(store)
        assert materialise_day(store, day) == ["user_activity", "coupon_stats"]
        spaces[writer] = Workspace(ws.root)
    return spaces


def assert_reads_agree(spaces: dict[str, Workspace], coupons: list[str]) -> None:
    """Every user (and one unknown), every coupon: `get_online_features` and the raw
    `online_read` (timestamps included) of the bulk write equal those of Feast's own."""
    users = [{"user_id": user} for user in [*range(N_USERS), N_USERS + 5]]
    stores = {writer: open_store(ws) for writer, ws in spaces.items()}
    for refs, rows in ((USER_REFS, users), (COUPON_REFS, [{"coupon_id": c} for c in coupons])):
        read = {
            writer: store.get_online_features(features=refs, entity_rows=rows).to_dict()
            for writer, store in stores.items()
        }
        assert read["bulk"] == read["feast"]
    assert read["bulk"]["coupon_id"] == coupons and None not in read["bulk"][COUPON_FEATURES[0]]
    view = {writer: store.get_feature_view("user_activity") for writer, store in stores.items()}
    keys = [_user_key(user) for user in range(0, N_USERS, 3)]
    raw = {  # a fresh list of names each: Feast's Redis store appends to it
        writer: store.provider.online_read(store.config, view[writer], keys, list(USER_FEATURES))
        for writer, store in stores.items()
    }
    assert raw["bulk"] == raw["feast"]


def test_the_bulk_write_reads_back_as_feasts_own(sqlite_store, tmp_path: Path) -> None:
    """SQLite: feature_repo/bulk.py's engine and store (7 rows a write: several batches)
    against Feast's stock materialisation of the same rows, nulls and NaNs included; a
    store Feast wrote, opened with the bulk store, reads Feast's rows until its first bulk
    materialisation; a push to each store reads back the same."""
    from feature_repo import bulk

    ws, days = sqlite_store
    spaces = writer_workspaces(ws, tmp_path, days[-1], online_write_batch=7)
    stores = {writer: open_store(w) for writer, w in spaces.items()}
    assert stores["bulk"].config.online_store.type == bulk.SQLITE
    assert stores["feast"].config.online_store.type == "sqlite"
    coupons = sorted(read_offline(ws, "coupons", [days[-1]])["coupon_id"].astype(str))
    assert_reads_agree(spaces, coupons)
    with sqlite3.connect(stores["bulk"].config.online_store.path) as conn:
        count = 'SELECT COUNT(*) FROM "couponflow_bulk_user_activity{}"'
        (rows,) = conn.execute(count.format("__rows")).fetchone()
        (values,) = conn.execute(count.format("")).fetchone()
    assert (rows, values) == (N_USERS, 0)  # one row a user, none in Feast's layout

    upgraded = Workspace(tmp_path / "upgraded")
    shutil.copytree(spaces["feast"].root, upgraded.root)
    params = load_params(upgraded.params_file)
    set_param(params, "features.online_write", "bulk")
    upgraded.params_file.write_text(yaml.safe_dump(params))
    upgraded = Workspace(upgraded.root)
    assert_reads_agree({"feast": spaces["feast"], "bulk": upgraded}, coupons)
    store = open_store(upgraded)
    apply_definitions(store)
    materialise_day(store, days[-1])
    assert_reads_agree({"feast": spaces["feast"], "bulk": upgraded}, coupons)
    with pytest.raises(ValueError, match="online_write"):
        params["features"]["online_write"] = "fast"
        upgraded.params_file.write_text(yaml.safe_dump(params))
        open_store(Workspace(upgraded.root))

    vector = np.arange(len(USER_FEATURES), dtype=np.float32)
    for store in stores.values():
        push_user_features(store, 11, vector, day_end(days[-1]) + pd.Timedelta(hours=1))
    assert_reads_agree(spaces, coupons)
    np.testing.assert_array_equal(online_user_features(stores["bulk"], 11), vector)


@pytest.mark.redis
def test_the_bulk_write_on_redis_stores_feasts_bytes(sqlite_store, tmp_path: Path) -> None:
    """Redis: the bulk write leaves every entity's hash byte for byte as Feast's stock
    write does (each under a Feast project of the test's own), with the same expiry, and
    reads back the same; an error reply raises; every key the test wrote is removed."""
    import redis

    if not redis_reachable():
        pytest.skip("no Redis on 127.0.0.1:6379")
    ws, days = sqlite_store
    client = redis.Redis(*REDIS)
    project = f"couponflow_test_{uuid.uuid4().hex[:12]}"
    try:
        spaces = writer_workspaces(
            ws, tmp_path, days[-1], project, online_store="redis", online_write_batch=7
        )
        coupons = sorted(read_offline(ws, "coupons", [days[-1]])["coupon_id"].astype(str))
        assert_reads_agree(spaces, coupons)
        keys = {
            writer: sorted(client.scan_iter(match=f"*{project}_{writer}", count=1000))
            for writer in spaces
        }
        assert len(keys["bulk"]) == N_USERS + len(coupons)
        suffix = len(f"{project}_bulk")
        assert [k[:-suffix] for k in keys["bulk"]] == [k[: -suffix - 1] for k in keys["feast"]]
        for bulk_key, feast_key in zip(keys["bulk"], keys["feast"], strict=True):
            assert client.hgetall(bulk_key) == client.hgetall(feast_key)
            assert abs(client.ttl(bulk_key) - client.ttl(feast_key)) <= 60
            assert client.ttl(bulk_key) > 6 * 86_400
        client.delete(keys["bulk"][3])
        client.set(keys["bulk"][3], b"not a hash")  # Redis refuses an HSET on it
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            materialise_day(open_store(spaces["bulk"]), days[-1])
    finally:
        for key in client.scan_iter(match=f"*{project}_*", count=1000):
            client.delete(key)


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
        assert isinstance(open_store(ws).config.online_store, RedisOnlineStoreConfig)
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


def test_feast_imported_through_the_repo_skips_typeguards_instrumentation() -> None:
    """A process that opens the store imports Feast through `feature_repo`, which turns
    typeguard's `@typechecked` into a no-op first (~3 s an import): Feast's decorated
    classes then run their own code, not typeguard's recompiled copy. In a fresh
    interpreter, since this one may have imported Feast before the package."""
    import subprocess
    import sys

    probe = (
        "import {first}\n"
        "import feast.data_source as d\n"
        "print('TypeCheckMemo' in d.PushSource.__init__.__code__.co_names)"
    )
    seen = {
        first: subprocess.run(
            [sys.executable, "-c", probe.format(first=first)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for first in ("feast", "feature_repo.store")
    }
    assert seen == {"feast": "True", "feature_repo.store": "False"}
