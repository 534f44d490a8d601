"""Feature-store operations the pipeline, training and the service call: publish a day's
features, apply the definitions, materialise incrementally, read offline (point in time,
for training and evaluation) and online (for serving).

Kept beside the definitions because it owns Feast; it declares no Feast objects itself.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sqlite3
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from feast import FeatureStore, FeatureView, FileSource, RepoConfig
from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.types import Float32

from couponflow.config import HOME_ENV, RedisSettings, Workspace
from couponflow.features import (
    COUPON_FEATURES,
    USER_FEATURES,
    compute_coupon_stats,
    compute_user_features,
    day_end,
)
from couponflow.landing import write_partition
from feature_repo import bulk

REPO_DIR = Path(__file__).resolve().parent
# Each batch view and the computation of its rows for a day.
VIEWS: dict[str, Callable[[Workspace, str], pd.DataFrame]] = {
    "user_activity": compute_user_features,
    "coupon_stats": compute_coupon_stats,
}
USER_REFS = [f"user_activity:{name}" for name in USER_FEATURES]
COUPON_REFS = [f"coupon_stats:{name}" for name in COUPON_FEATURES]
WINDOW = pd.Timedelta(seconds=1)  # materialise [day end - 1 s, day end + 1 s): that day only

logging.getLogger("feast").setLevel(logging.WARNING)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Feast prints a banner and a progress bar per view on materialise, and it and dask
    warn about pandas and their own deprecations: none of it is ours to act on."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", "On demand feature view is an experimental")
        yield


# `features.online_write` -> (the SQLite store, the Redis store, the batch engine) Feast is
# configured with: ours, which write a batch at once (feature_repo/bulk.py), or Feast's own.
WRITERS = {
    "bulk": (bulk.SQLITE, bulk.REDIS, bulk.ENGINE),
    "feast": ("sqlite", "redis", "local"),
}
# The batch engine of `features.engine: ray`: Feast's Ray engine with the bulk stores' write
# (Feast's own write with its own stores, `online_write: feast`): feature_repo/ray_engine.py.
RAY_ENGINE = "feature_repo.ray_engine.RayArrowComputeEngine"
# Feast's Ray offline store joins a view broadcast (the view's rows handed to every task,
# the entity rows split among them) below this size, and above it by its "windowed" join,
# which matches an entity row only with feature rows of the same hour: a row stamped at
# midnight would never reach an offer made at noon. Always broadcast: the rows a join reads
# are bounded by the reachable partitions (`_ray_groups`), not by the history kept.
RAY_BROADCAST_MB = 1_000_000


def open_store(ws: Workspace) -> FeatureStore:
    """The workspace's feature store: feature_store.yaml, with the online store chosen
    by `features.online_store` in params.yaml (sqlite by default, or redis), the Feast
    project by `features.project` (its name prefixes every Redis key), the rows per
    online-store write by `features.online_write_batch`, and how materialisation writes
    by `features.online_write` (`bulk`: feature_repo/bulk.py's engine and stores; `feast`:
    Feast's stock ones, another SQLite layout: re-materialise after switching)."""
    os.environ[HOME_ENV] = str(ws.root)  # the definitions locate their source through it
    with open(REPO_DIR / "feature_store.yaml") as fh:
        raw = yaml.safe_load(os.path.expandvars(fh.read()))
    settings = ws.params.get("features", {})
    raw["project"] = settings.get("project", raw["project"])
    writer = settings.get("online_write", "bulk")
    if writer not in WRITERS:
        raise ValueError(f"features.online_write is {writer!r}: one of {', '.join(WRITERS)}")
    sqlite_type, redis_type, engine = WRITERS[writer]
    raw["online_store"]["type"] = sqlite_type
    raw["batch_engine"] = {"type": engine}
    if settings.get("engine", "local") == "ray":
        raw["offline_store"], raw["batch_engine"] = ray_stores(ws)
    if settings.get("online_store", "sqlite") == "redis":
        raw["online_store"] = {
            "type": redis_type,
            "connection_string": RedisSettings.of(ws).feast_connection_string,
            "key_ttl_seconds": 7 * 86_400,
            "skip_dedup": True,  # rewrite a re-run date like SQLite does; see materialise_day
        }
    batching = raw["materialization"]
    batching["online_write_batch_size"] = int(
        settings.get("online_write_batch", batching["online_write_batch_size"])
    )
    ws.feature_store.mkdir(parents=True, exist_ok=True)
    with _quiet():
        return FeatureStore(config=RepoConfig(repo_path=REPO_DIR, **raw), repo_path=str(REPO_DIR))


def ray_stores(ws: Workspace) -> tuple[dict[str, object], dict[str, object]]:
    """The offline store and batch engine of `features.engine: ray`: Feast's Ray ones, on
    the cluster at `features.ray_address` (`ray://head:10001`, `auto`), or, when it is
    null, on a Ray started in this process with `features.ray_cpus` CPUs (local mode)."""
    settings = ws.params.get("features", {})
    address = settings.get("ray_address")
    ray = {
        "ray_address": address,
        # local mode only: Feast passes ray_conf to ray.init, which refuses num_cpus
        # when it joins a cluster
        "ray_conf": None if address else {"num_cpus": int(settings.get("ray_cpus", 2))},
        "broadcast_join_threshold_mb": RAY_BROADCAST_MB,
    }
    offline = {"type": "ray", "storage_path": str(ws.feature_store / "ray"), **ray}
    return offline, {"type": RAY_ENGINE, **ray}


def is_ray(store: FeatureStore) -> bool:
    """Whether the point-in-time join runs on Feast's Ray offline store."""
    return getattr(store.config.offline_store, "type", None) == "ray"


def is_sqlite(store: FeatureStore) -> bool:
    """Whether the online store is a SQLite file (Feast's store or ours)."""
    return isinstance(store.config.online_store, SqliteOnlineStoreConfig)


def apply_definitions(store: FeatureStore) -> None:
    """`feast apply` for our definitions, reading the workspace open_store set (idempotent);
    a SQLite online store is put in WAL mode, so that serving's reads never wait for a
    materialisation's writes (Feast opens it in SQLite's default mode, where they would
    wait, up to 5 s each). The mode is kept in the file, for every connection after."""
    from feature_repo.definitions import feast_objects

    with _quiet():
        store.apply(feast_objects(Workspace.from_env().features))
    if is_sqlite(store):
        with contextlib.closing(sqlite3.connect(store.config.online_store.path)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")


def publish_features(ws: Workspace, day: str) -> dict[str, int]:
    """Compute every batch view's rows as of the end of `day` into its offline partition
    (replacing it whole); returns rows written per view."""
    rows = {}
    for view, compute in VIEWS.items():
        frame = compute(ws, day)
        frame["event_timestamp"] = frame["event_timestamp"].dt.tz_localize("UTC")
        write_partition(frame, ws.features / view / f"date={day}")
        rows[view] = len(frame)
    return rows


def materialise_day(store: FeatureStore, day: str) -> list[str]:
    """Load the rows stamped at the end of `day` into the online store and return the views
    written. Re-running a date rewrites the same rows; a view already holding a later
    day is left alone, so backfilling an old date never rolls the online store back."""
    end = day_end(day).tz_localize("UTC")
    fresh = [
        view
        for view in VIEWS
        if (latest := store.get_feature_view(view).most_recent_end_time) is None
        or pd.Timestamp(latest) <= end + WINDOW
    ]
    if fresh:
        with _quiet():
            store.materialize(
                start_date=(end - WINDOW).to_pydatetime(),
                end_date=(end + WINDOW).to_pydatetime(),
                feature_views=fresh,
            )
    return fresh


def historical_features(store: FeatureStore, entities: pd.DataFrame) -> pd.DataFrame:
    """The recommender's features for rows of (user_id, coupon_id, event_timestamp, kind,
    value), each as it was at its timestamp (point in time), in input order: user activity,
    the coupon's stats (NaN for a null coupon, "no coupon") and the on-demand
    `relative_value`, computed by Feast's own on-demand view from the joined rows."""
    rows = entities[["user_id", "coupon_id", "event_timestamp", "kind", "value"]]
    rows = rows.reset_index(drop=True).astype({"coupon_id": object})
    rows["event_timestamp"] = pd.to_datetime(rows["event_timestamp"], utc=True)
    table = pd.concat(
        [
            rows,
            _point_in_time(store, rows[["user_id", "event_timestamp"]], USER_REFS),
            _point_in_time(store, rows[["coupon_id", "event_timestamp"]], COUPON_REFS),
        ],
        axis=1,
    )
    offer_value = store.get_on_demand_feature_view("offer_value")
    inputs = pa.Table.from_pandas(table[["avg_basket_30d", "kind", "value"]], preserve_index=False)
    with _quiet():
        derived = offer_value.transform_arrow(inputs)
    table["relative_value"] = derived.column("relative_value").to_numpy()
    return table


def _point_in_time(store: FeatureStore, keys: pd.DataFrame, refs: list[str]) -> pd.DataFrame:
    """The features `refs` (of one view) of each row of (join key, event_timestamp) as they
    were at that time (NaN for a null key or no row), in row order. Feast is asked once per
    distinct pair: its file offline store keeps one row per (join keys, timestamp), so a
    user offered two coupons at the same moment would otherwise lose one of the rows.

    The pairs are joined in chunks of consecutive days (JOIN_ROWS pairs or so each), each
    against only the partitions its times can reach (`reachable_partitions`): Feast's file
    store reads its whole source and then matches every entity row with every row of its
    key, so the source read and the match both grew with the history kept."""
    key = keys.columns[0]
    names = [ref.split(":")[1] for ref in refs]
    distinct = keys.dropna().drop_duplicates().reset_index(drop=True)
    distinct["pair"] = np.arange(len(distinct))
    if distinct.empty:
        return pd.DataFrame(np.nan, index=keys.index, columns=names)
    view = store.get_feature_view(refs[0].split(":")[0])
    pieces = _ray_groups(view, distinct) if is_ray(store) else _chunks(distinct)
    joined = pd.concat(
        [_join_window(store, view, chunk, refs, dates) for chunk, dates in pieces],
        ignore_index=True,
    )
    pair = keys.merge(distinct, on=[key, "event_timestamp"], how="left")["pair"]
    return joined.set_index("pair")[names].reindex(pair.fillna(-1)).reset_index(drop=True)


JOIN_ROWS = 1_000_000  # entity rows per Feast join, in whole days: bounds its memory
# ... and days per join: Feast matches each entity row with every source row of its key,
# about one a day of the chunk plus one (`_narrowed_source`), so a chunk of many small
# days costs as much as one of many rows (100k events a day: 18 days, 8.5 GB).
JOIN_DAYS = 2


def _chunks(rows: pd.DataFrame) -> Iterator[tuple[pd.DataFrame, None]]:
    """`rows` in chunks of whole consecutive days, each reaching JOIN_ROWS or JOIN_DAYS
    days or the end (with None: each joined against the partitions its times can reach)."""
    day = rows["event_timestamp"].dt.floor("D")
    sizes = day.value_counts().sort_index()
    start, count, days = None, 0, 0
    for when, size in sizes.items():
        start = when if start is None else start
        count += size
        days += 1
        if count >= JOIN_ROWS or days >= JOIN_DAYS or when == sizes.index[-1]:
            yield rows[(day >= start) & (day <= when)], None
            start, count, days = None, 0, 0


def _ray_groups(view: FeatureView, rows: pd.DataFrame) -> Iterator[tuple[pd.DataFrame, list[str]]]:
    """`rows` grouped by the partitions each row's time may see, with those partitions, for
    Feast's Ray offline store, which does not apply the view's ttl: its join takes the
    latest row at or before the time however old. A row at time t sees partition D when
    day_end(D) (its rows' stamp) lies in [t - ttl, t], the file store's rule; the rows of
    one group all see the same partitions, so the Ray join over them alone is exact.
    Groups are about a day each (one per day's inside, one per midnight)."""
    dates = _partition_dates(view)
    stamps = np.array([day_end(d) for d in dates], dtype="datetime64[ns]")
    times = pd.to_datetime(rows["event_timestamp"], utc=True).dt.tz_convert(None).to_numpy()
    newest = np.searchsorted(stamps, times, side="right")
    ttl = pd.Timedelta(view.ttl) if view.ttl else None
    oldest = np.searchsorted(stamps, times - ttl.to_timedelta64(), side="left") if ttl else 0
    for (lo, hi), group in rows.groupby([np.broadcast_to(oldest, len(rows)), newest]):
        for start in range(0, len(group), JOIN_ROWS):
            yield group.iloc[start : start + JOIN_ROWS], dates[lo:hi]


def _partition_dates(view: FeatureView) -> list[str]:
    return sorted(p.name.removeprefix("date=") for p in Path(view.batch_source.path).glob("date=*"))


def reachable_partitions(
    dates: list[str], first: pd.Timestamp, last: pd.Timestamp, ttl: pd.Timedelta | None
) -> list[str]:
    """The partition dates a point-in-time join of times in [first, last] can use, when
    partition D holds rows stamped within [D, day_end(D)] (publish_features stamps them
    at day_end): D >= first - ttl - 1 day, so that its rows are not too old (no bound
    without a ttl), and D <= last, so that they are not too new."""
    first, last = (pd.Timestamp(t).tz_localize(None) for t in (first, last))
    low = (first - ttl - pd.Timedelta(days=1)).ceil("D") if ttl else None
    return [
        d
        for d in dates
        if (low is None or pd.Timestamp(d) >= low) and pd.Timestamp(d) <= last.floor("D")
    ]


def _join_window(
    store: FeatureStore,
    view: FeatureView,
    rows: pd.DataFrame,
    refs: list[str],
    keep: list[str] | None = None,
) -> pd.DataFrame:
    """Feast's point-in-time join of `rows` with `view`, its file source narrowed to the
    partitions `keep` (by default those the rows' times can reach) and, within them, to
    what the rows' times can use (`_narrowed_source`, written to a scratch folder, the
    view's copy pointing there; the registered view keeps its whole folder), through the
    same provider join FeatureStore.get_historical_features runs."""
    source = view.batch_source
    root = Path(source.path)
    times = pd.to_datetime(rows["event_timestamp"], utc=True).dt.tz_convert(None)
    if keep is None:
        ttl = pd.Timedelta(view.ttl) if view.ttl else None
        keep = reachable_partitions(_partition_dates(view), times.min(), times.max(), ttl)
    if not keep:  # nothing known yet at those times
        names = [ref.split(":")[1] for ref in refs]
        empty = rows.assign(**dict.fromkeys(names, np.nan))
        return _declared_dtypes(view, empty) if is_ray(store) else empty
    with tempfile.TemporaryDirectory(prefix=f"{view.name}-window-") as window:
        key = rows.columns[0]
        narrowed = _narrowed_source(
            [root / f"date={date}" for date in keep],
            key,
            source.timestamp_field,
            rows[key].drop_duplicates().to_numpy(),
            times.min(),
        )
        (Path(window) / "date=window").mkdir()
        pq.write_table(narrowed, Path(window) / "date=window" / "part.parquet")
        del narrowed
        view.batch_source = FileSource(
            name=source.name,
            path=window,
            timestamp_field=source.timestamp_field,
            created_timestamp_column=source.created_timestamp_column,
            field_mapping=source.field_mapping,
        )
        try:
            with _quiet():
                job = store.provider.get_historical_features(
                    config=store.config,
                    feature_views=[view],
                    feature_refs=refs,
                    entity_df=rows,
                    registry=store.registry,
                    project=store.project,
                    full_feature_names=False,
                )
                return _declared_dtypes(view, job.to_df()) if is_ray(store) else job.to_df()
        finally:  # the next chunk narrows the whole folder again, not this deleted window
            view.batch_source = source


def _declared_dtypes(view: FeatureView, frame: pd.DataFrame) -> pd.DataFrame:
    """The join's features as the file store returns them: Feast's Ray store widens Float32
    features to float64 (its pandas path's habit); back to float32 (exact: the values were
    float32 in the partitions). On Ray, also the type of the NaN columns of a group with
    nothing to read, so that every group has its features' one type."""
    floats = {f.name: "float32" for f in view.features if f.dtype == Float32}
    return frame.astype({name: kind for name, kind in floats.items() if name in frame})


def _narrowed_source(
    partitions: list[Path], key: str, stamp: str, keys: np.ndarray, first: pd.Timestamp
) -> pa.Table:
    """The rows of `partitions` a point-in-time join of `keys` at times from `first` on
    can pick, and the same answer from them: only the rows of `keys`, and of those stamped
    at or before `first` only each key's newest (with its ties). For a time t >= first the
    join takes the newest row stamped <= t within the ttl: one stamped after `first` (all
    kept), else the newest stamped by `first`; an older one is never newer, nor inside
    the ttl when that one is not. Feast's file store matches every entity row with every
    row of its key in the source, so a chunk of two days at 1M users met ~10 partitions
    of 1.1M rows (~7 GB); this keeps about one partition per day of the chunk, plus one.
    Read a partition at a time (`pyarrow`); schemas as written."""
    wanted = pa.array(keys)
    first = pd.Timestamp(first).tz_localize("UTC")
    older: pa.Table | None = None
    newer: list[pa.Table] = []
    for folder in partitions:
        for file in sorted(folder.glob("*.parquet")):
            table = pq.read_table(file)
            column = table.column(key)
            table = table.filter(pc.is_in(column, value_set=wanted.cast(column.type)))
            when = pd.to_datetime(table.column(stamp).to_pandas(), utc=True)
            after = (when > first).to_numpy()
            newer.append(table.filter(after))
            before = table.filter(~after)
            older = (
                before
                if older is None
                else pa.concat_tables([older, before], promote_options="permissive")
            )
            frame = pd.DataFrame(
                {
                    "key": older.column(key).to_pandas(),
                    "at": pd.to_datetime(older.column(stamp).to_pandas(), utc=True),
                }
            )
            newest = frame.groupby("key", sort=False)["at"].transform("max")
            older = older.filter((frame["at"] == newest).to_numpy())
    kept = [t for t in [older, *newer] if t is not None]
    return pa.concat_tables(kept, promote_options="permissive")


def coupon_stats_at(
    store: FeatureStore, coupons: pd.DataFrame, as_of: pd.Timestamp
) -> pd.DataFrame:
    """`coupons` with each coupon's stats as they were at `as_of` (point in time), for
    judging a policy on a past day with what it would have known."""
    keys = pd.DataFrame(
        {
            "coupon_id": coupons["coupon_id"].astype(object).to_numpy(),
            "event_timestamp": pd.Timestamp(as_of).tz_localize("UTC"),
        }
    )
    stats = _point_in_time(store, keys, COUPON_REFS).astype("float64")
    return pd.concat([coupons.reset_index(drop=True), stats], axis=1)


def online_coupon_stats(store: FeatureStore, coupons: pd.DataFrame) -> pd.DataFrame:
    """`coupons` with each coupon's latest stats from the online store. The service reads
    them once and keeps them with the catalogue: one online read per coupon per request
    would cost a millisecond each."""
    rows = [{"coupon_id": str(c)} for c in coupons["coupon_id"]]
    values = store.get_online_features(features=COUPON_REFS, entity_rows=rows).to_dict()
    stats = pd.DataFrame({name: values[name] for name in COUPON_FEATURES}, dtype="float64")
    return pd.concat([coupons.reset_index(drop=True), stats], axis=1)


class OnlineUserReader:
    """Reads one user's feature vector from the online store, or None if it has no row.

    Straight through the provider's `online_read`, the call every online store implements:
    `get_online_features` resolves feature references, builds a response proto and converts
    it to Python on every call, which cost a serving request ~0.25 ms of its ~0.35 ms read
    (SQLite; see benchmarks/bench_serving.py). The view is resolved once, here: its
    definition changes only with a release, which starts new workers.

    `read_async` is the read for an event loop: SQLite is a local file read of ~0.1 ms
    which never waits for a writer (the store is in WAL mode, see apply_definitions), so
    it runs in place: a hand-over to a thread cost more than the read, and on a busy
    worker the thread waited for the GIL (a 23 ms mean read under load). Redis goes
    through Feast's asyncio client.
    """

    def __init__(self, store: FeatureStore) -> None:
        view = store.get_feature_view("user_activity")
        self._read = partial(store.provider.online_read, store.config, view)
        self._read_async = partial(store.provider.online_read_async, store.config, view)
        self.in_place = is_sqlite(store)

    def __call__(self, user_id: int) -> np.ndarray | None:
        # A fresh list each call: Feast's Redis store appends its timestamp key to it.
        return _vector(self._read([_user_key(user_id)], list(USER_FEATURES)))

    async def read_async(self, user_id: int) -> np.ndarray | None:
        if self.in_place:
            return self(user_id)
        return _vector(await self._read_async([_user_key(user_id)], list(USER_FEATURES)))


def _user_key(user_id: int) -> EntityKeyProto:
    return EntityKeyProto(join_keys=["user_id"], entity_values=[ValueProto(int64_val=user_id)])


def _vector(rows: list[tuple[object, dict[str, ValueProto] | None]]) -> np.ndarray | None:
    """The one row `online_read` returned as USER_FEATURES, or None when any is missing."""
    [(_, values)] = rows
    if not values:
        return None
    vector = []
    for name in USER_FEATURES:
        value = values.get(name)
        kind = value.WhichOneof("val") if value is not None else None
        if kind is None:
            return None
        vector.append(getattr(value, kind))
    return np.asarray(vector, dtype=np.float32)


def online_user_features(store: FeatureStore, user_id: int) -> np.ndarray | None:
    """One user's feature vector from the online store, or None if the store has no row
    (a reader per call: a caller reading many users keeps an OnlineUserReader)."""
    return OnlineUserReader(store)(user_id)


def push_user_features(
    store: FeatureStore, user_id: int, features: np.ndarray, at: pd.Timestamp
) -> None:
    """Write one user's whole feature row to the online store through the push source, as
    of `at` (naive UTC); the next materialisation replaces it with the day's batch row."""
    from feast.data_source import PushMode

    from feature_repo.definitions import USER_PUSH_SOURCE

    row = pd.DataFrame([np.asarray(features, dtype=np.float32)], columns=USER_FEATURES)
    row.insert(0, "user_id", np.int64(user_id))
    row["event_timestamp"] = pd.Timestamp(at).tz_localize("UTC")
    with _quiet():
        store.push(USER_PUSH_SOURCE, row, to=PushMode.ONLINE)


def materialise_user_features(ws: Workspace, day: str) -> dict[str, object]:
    """The pipeline's feature step for `day`: compute the users' and coupons' rows, apply
    the definitions, materialise the day. The seconds publishing and materialising took
    are returned too (`seconds`, the one part a re-run changes): at scale they are the
    step's cost, and rows/s its health."""
    started = time.perf_counter()
    rows = publish_features(ws, day)
    published = time.perf_counter()
    store = open_store(ws)
    apply_definitions(store)
    applied = time.perf_counter()
    online = materialise_day(store, day)
    return {
        "seconds": {
            "publish": round(published - started, 1),
            "materialise": round(time.perf_counter() - applied, 1),
        },
        "users": rows["user_activity"],
        "coupons": rows["coupon_stats"],
        "features": len(USER_FEATURES),
        "coupon_features": len(COUPON_FEATURES),
        "values": rows["user_activity"] * len(USER_FEATURES)
        + rows["coupon_stats"] * len(COUPON_FEATURES),
        "online": online,
    }
