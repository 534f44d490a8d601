"""`features.engine`: local vs ray (Ray's local mode) vs Feast's Spark offline store and
compute engine (Spark's local mode) on the point-in-time join and on materialisation,
seconds and peak memory.

A throwaway workspace holds `--days` days of synthetic feature partitions of both views
(every user's row each day, as `publish_features` writes them) and entity rows shaped as
the dataset stage's: `--offers` a user on each of the last 3 days at a random time of
the day, a coupon each (a tenth "no coupon"). Each variant runs in a process of its own,
alternated `--rounds` times: `historical_features` over the entity rows, then
`materialise_day` of the last day into a fresh online store. Peak memory is the largest
resident set of the process and its children together (Ray's raylet and workers are its
children in local mode; their shared object store pages count once per process that
touched them, so Ray's figure is an upper bound), sampled every 0.1 s. Ray's start-up
(`ray.init`) is timed apart.

`spark` is measured here only (it is no `features.engine`): the same `historical_features`
and `materialise_day`, on a store whose views read their partitions through a SparkSource
(parquet), with Feast's Spark offline store (its SQL point-in-time join, the ttl applied
in the join) and its Spark compute engine (`spark.engine`: Spark reads the day, Feast's
write node hands the rows to the bulk SQLite store as protobufs, from one Spark
partition: SQLite takes one writer), in Spark's local mode (`local[--cpus]`). Spark's
driver JVM and its Python workers are children of the process: counted in the peak.
Starting the Spark session is timed apart, as `ray.init`. It needs pyspark, which this
project does not install (and Java 17):

    pip install --no-deps --target /tmp/spark-libs "pyspark==4.3.0" py4j
    PYTHONPATH=.:/tmp/spark-libs .venv/bin/python -m benchmarks.bench_engine --variants local spark

    .venv/bin/python -m benchmarks.bench_engine --users 100000 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import psutil
import pyarrow.parquet as pq
import yaml
from feast import FeatureStore, RepoConfig

from couponflow.config import HOME_ENV, PROJECT_ROOT, Workspace, load_params, set_param
from couponflow.features import COUPON_FEATURES, USER_FEATURES, day_end

START = pd.Timestamp("2026-01-01")


def build(root: Path, users: int, coupons: int, days: int, offers: float) -> pd.DataFrame:
    """The base workspace's partitions under `root`, and the entity rows."""
    rng = np.random.default_rng(0)
    dates = [(START + pd.Timedelta(days=i)).strftime("%Y-%m-%d") for i in range(days)]
    ids = np.array([f"C{i:03d}" for i in range(coupons)], dtype=object)
    for view, names, keys, key in (
        ("user_activity", USER_FEATURES, np.arange(users), "user_id"),
        ("coupon_stats", COUPON_FEATURES, ids, "coupon_id"),
    ):
        for date in dates:
            frame = pd.DataFrame(
                rng.gamma(1.0, 5.0, (len(keys), len(names))).astype("float32"), columns=names
            )
            frame.insert(0, key, keys)
            frame["event_timestamp"] = day_end(date).tz_localize("UTC")
            target = root / "data" / "features" / view / f"date={date}"
            target.mkdir(parents=True)
            frame.to_parquet(target / "part.parquet", index=False)
    rows = []
    for date in dates[-3:]:
        n = int(users * offers)
        at = pd.Timestamp(date) + pd.to_timedelta(rng.uniform(0, 86_400, n), unit="s")
        coupon = rng.choice(ids, n).astype(object)
        coupon[rng.random(n) < 0.1] = None
        rows.append(
            pd.DataFrame(
                {
                    "user_id": rng.integers(0, users, n),
                    "coupon_id": coupon,
                    "event_timestamp": at.tz_localize("UTC"),
                    "kind": np.where(pd.isna(coupon), np.full(n, None, dtype=object), "percent"),
                    "value": 10.0,
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def workspace(base: Path, root: Path, spark: bool = False, **features: object) -> Workspace:
    shutil.copytree(base, root)
    if spark:
        microsecond_stamps(root / "data" / "features")
    params = load_params(PROJECT_ROOT / "params.yaml")
    for name, value in features.items():
        set_param(params, f"features.{name}", value)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return Workspace(root)


SPARK_MISSING = (
    "spark needs pyspark (not installed by this project): pip install --no-deps --target "
    '/tmp/spark-libs "pyspark==4.3.0" py4j, then PYTHONPATH=.:/tmp/spark-libs (and Java 17)'
)


def spark_conf(cpus: int) -> dict[str, str]:
    """Spark's local mode on `cpus` cores, as Feast's docs configure its Spark store, with
    shuffles in 2 partitions a core (Spark's 200 are for clusters: every one is a task) and
    the entity rows' nanoseconds dropped as pandas goes to Arrow (Spark keeps microseconds;
    Arrow's safe cast refuses, and Spark then converts row by row)."""
    return {
        "spark.master": f"local[{cpus}]",
        "spark.ui.enabled": "false",
        "spark.eventLog.enabled": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.pandas.convertToArrowArraySafely": "false",
        "spark.sql.shuffle.partitions": str(2 * cpus),
        "spark.driver.memory": "4g",
    }


def microsecond_stamps(features: Path) -> None:
    """Rewrite every feature partition with its timestamps in microseconds: Spark reads no
    nanosecond parquet timestamps (PARQUET_TYPE_ILLEGAL), which pandas writes by default
    (`publish_features` included). Exact here: the rows are stamped at midnight."""
    for part in features.glob("*/date=*/*.parquet"):
        pq.write_table(pq.read_table(part), part, coerce_timestamps="us")


@contextlib.contextmanager
def spark_sources() -> Iterator[None]:
    """While it lasts, the FileSource of feature_repo.definitions (the views' sources) and of
    feature_repo.store (the join's narrowed window) is a SparkSource of the same parquet
    folder: Feast's Spark store and engine read nothing else."""
    from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

    import feature_repo.definitions
    import feature_repo.store

    def source(**fields: object) -> SparkSource:
        return SparkSource(file_format="parquet", **fields)  # type: ignore[arg-type]

    with (
        mock.patch.object(feature_repo.definitions, "FileSource", source),
        mock.patch.object(feature_repo.store, "FileSource", source),
    ):
        yield


def spark_store(ws: Workspace, cpus: int) -> FeatureStore:
    """The workspace's store (open_store's) with Feast's Spark offline store and Spark
    compute engine in place of the file store and the local engine, on a Spark session
    started here (local mode). Call it inside `spark_sources`."""
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    from feature_repo.store import REPO_DIR, open_store

    conf = spark_conf(cpus)
    os.environ["PYSPARK_PYTHON"] = sys.executable  # Spark's Python workers run Feast's write
    SparkSession.builder.config(conf=SparkConf().setAll(list(conf.items()))).getOrCreate()
    raw = open_store(ws).config.model_dump(by_alias=True)
    raw["offline_store"] = {"type": "spark", "spark_conf": conf}
    raw["batch_engine"] = {"type": "spark.engine", "spark_conf": conf}
    return FeatureStore(config=RepoConfig(**raw), repo_path=str(REPO_DIR))


class PeakMemory:
    """The largest summed resident set of this process and its descendants."""

    def __init__(self) -> None:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # a worker that just exited
                    total += proc.memory_info().rss
            self.peak = max(self.peak, total)
            time.sleep(0.1)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(
    ws: Workspace, entities: pd.DataFrame, last: str, cpus: int, steps: list[str], spark: bool
) -> dict[str, float]:
    """Join the entity rows (timed, peak), then materialise the last day (timed, peak);
    a step left out of `steps` reads as NaN. `spark`: on Feast's Spark store and engine."""
    if not spark:
        return _measure(ws, entities, last, cpus, steps, spark)
    from pyspark.sql import SparkSession

    with spark_sources():
        try:
            return _measure(ws, entities, last, cpus, steps, spark)
        finally:  # the driver JVM and its workers go with the session
            if session := SparkSession.getActiveSession():
                session.stop()


def _measure(
    ws: Workspace, entities: pd.DataFrame, last: str, cpus: int, steps: list[str], spark: bool
) -> dict[str, float]:
    from feature_repo.store import (
        apply_definitions,
        historical_features,
        materialise_day,
        open_store,
    )

    os.environ[HOME_ENV] = str(ws.root)
    nan = float("nan")
    out = dict.fromkeys(["init_s", "join_s", "join_gb", "join_nan", "mat_s", "mat_gb"], nan)
    out["init_s"] = 0.0
    if ws.params["features"].get("engine") == "ray":
        import ray

        started = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        out["init_s"] = time.perf_counter() - started
    if spark:
        started = time.perf_counter()
        store = spark_store(ws, cpus)
        out["init_s"] = time.perf_counter() - started
    else:
        store = open_store(ws)
    apply_definitions(store)
    if "join" in steps:
        with PeakMemory() as peak:
            started = time.perf_counter()
            table = historical_features(store, entities)
            out["join_s"] = time.perf_counter() - started
        out["join_gb"] = peak.peak / 2**30
        out["join_nan"] = float(table[USER_FEATURES[0]].isna().mean())
    if "materialise" in steps:
        if spark:  # SQLite takes one writer (as Ray's engine has one writer task): Feast's
            # write node writes each partition of its input (the de-duplicating shuffle's),
            # and two at once met "database is locked" at 100k users
            from pyspark.sql import SparkSession

            SparkSession.builder.getOrCreate().conf.set("spark.sql.shuffle.partitions", "1")
        with PeakMemory() as peak:
            started = time.perf_counter()
            materialise_day(store, last)
            out["mat_s"] = time.perf_counter() - started
        out["mat_gb"] = peak.peak / 2**30
    return out


def run_apart(
    ws: Workspace, entities: pd.DataFrame, last: str, cpus: int, steps: list[str], spark: bool
) -> dict[str, float]:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        result = pool.apply(measure, (ws, entities, last, cpus, steps, spark))
    return {**result, "load": os.getloadavg()[0]}


VARIANTS = {
    "local": {"engine": "local"},
    "ray": {"engine": "ray"},
    "ray-feast": {"engine": "ray", "online_write": "feast"},  # Feast's own write on Ray
    "spark": {"engine": "local"},  # the local store, its offline side swapped: spark_store
}
SPARK = {"spark"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--coupons", type=int, default=20)
    parser.add_argument("--days", type=int, default=10, help="feature partitions kept")
    parser.add_argument("--offers", type=float, default=1.0, help="entity rows a user a day")
    parser.add_argument("--cpus", type=int, default=2, help="Ray's and Spark's CPUs (local mode)")
    parser.add_argument("--variants", nargs="+", default=["local", "ray"], choices=VARIANTS)
    parser.add_argument("--rounds", type=int, default=1, help="each variant, alternated")
    parser.add_argument(
        "--steps", nargs="+", default=["join", "materialise"], choices=["join", "materialise"]
    )
    args = parser.parse_args()
    if SPARK & set(args.variants) and importlib.util.find_spec("pyspark") is None:
        parser.exit(2, SPARK_MISSING + "\n")
    scratch = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    try:
        entities = build(scratch / "base", args.users, args.coupons, args.days, args.offers)
        last = (START + pd.Timedelta(days=args.days - 1)).strftime("%Y-%m-%d")
        print(f"{args.users:,} users, {args.days} days kept, {len(entities):,} entity rows")
        print("round variant       init    join  join GB  NaN share  materialise  mat GB  load")
        results: dict[str, list[dict[str, float]]] = {v: [] for v in args.variants}
        for i in range(args.rounds):
            for variant in args.variants:
                spark = variant in SPARK
                root = scratch / f"{variant}-{i}"
                ws = workspace(scratch / "base", root, spark, **VARIANTS[variant])
                r = run_apart(ws, entities, last, args.cpus, args.steps, spark)
                results[variant].append(r)
                print(row(str(i + 1), variant, r))
                shutil.rmtree(ws.root, ignore_errors=True)
        if args.rounds > 1:
            for variant, runs in results.items():
                median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                print(row("median", variant, median))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def row(label: str, variant: str, r: dict[str, float]) -> str:
    return (
        f"{label:>5} {variant:9} {r['init_s']:>7.1f}s {r['join_s']:>6.1f}s {r['join_gb']:>8.2f} "
        f"{r['join_nan']:>10.3f} {r['mat_s']:>11.1f}s {r['mat_gb']:>7.2f} {r['load']:>5.1f}"
    )


if __name__ == "__main__":
    main()
