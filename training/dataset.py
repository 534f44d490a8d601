"""DVC stage `dataset`: the training table of logged offers, each with its outcome, the
user's features and the offered coupon's stats as of the moment of the offer (a
point-in-time join through Feast, so no label leaks back from the future), and the
on-demand `relative_value` Feast computes from them. It covers a window of the newest
days (`model.training_days`, plus the early-stopping and evaluation days), so the table,
the reads and the join stop growing with the history kept.

Run from the workspace root: `python -m training.dataset`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from couponflow.config import Workspace
from couponflow.landing import offline_days, read_offline
from couponflow.logs import quiet_libraries

if TYPE_CHECKING:
    from feast import FeatureStore

OUTCOME_COLUMNS = ["purchased", "amount", "redeemed", "discount", "reward"]
CHUNK_ROWS = 1_000_000  # logged offers built at a time, in whole days: bounds the stage's memory


def label_offers(offers: pd.DataFrame, orders: pd.DataFrame, margin: float) -> pd.DataFrame:
    """Attach each offer's same-day outcome: did the user buy after it, how much, did they
    redeem the offered coupon, and the platform's profit (the policy's reward)."""
    offers = offers.assign(day=offers["ts"].dt.normalize())
    orders = orders.assign(day=orders["ts"].dt.normalize())
    joined = offers.merge(
        orders[["user_id", "day", "ts", "amount", "coupon_id", "discount"]],
        on=["user_id", "day"],
        how="left",
        suffixes=("", "_order"),
    )
    after = joined["ts_order"] > joined["ts"]
    joined["amount"] = joined["amount"].where(after, 0.0)
    joined["discount"] = joined["discount"].where(after, 0.0)
    joined["redeemed"] = (after & (joined["coupon_id_order"] == joined["coupon_id"])).fillna(False)
    per_offer = joined.groupby("offer_id", sort=False).agg(
        amount=("amount", "sum"), discount=("discount", "sum"), redeemed=("redeemed", "max")
    )
    out = offers.merge(per_offer, left_on="offer_id", right_index=True)
    out["purchased"] = out["amount"] > 0
    out["reward"] = margin * out["amount"] - out["discount"]
    return out


def window(ws: Workspace) -> list[str]:
    """The offline days the training table covers: the newest `model.training_days` + 1
    (early stopping) + `evaluation.days` of them (training.train.split_days takes them
    apart in that order), never the first offline day, which has no features yet."""
    days = offline_days(ws)[1:]
    training_days = ws.params["model"].get("training_days")  # absent (older workspaces): all
    if training_days is None:
        return days
    if not isinstance(training_days, int) or isinstance(training_days, bool) or training_days < 1:
        raise ValueError(f"model.training_days is {training_days!r}: a whole number >= 1")
    return days[-(training_days + 1 + int(ws.params["evaluation"].get("days", 1))) :]


def build(ws: Workspace) -> pd.DataFrame:
    """Every logged offer of the window's days (the stage writes them chunk by chunk, see
    `write`; this is the whole table in memory, for tests and small workspaces)."""
    return pd.concat(list(build_chunks(ws)), ignore_index=True)


def day_chunks(ws: Workspace, days: list[str]) -> Iterator[list[str]]:
    """`days` in runs of consecutive days holding about CHUNK_ROWS logged offers each
    (whole days, at least one), counted from the partitions' metadata."""
    run: list[str] = []
    count = 0
    for day in days:
        part = ws.offline / "offers" / f"date={day}" / "part.parquet"
        run.append(day)
        count += pq.read_metadata(part).num_rows if part.exists() else 0
        if count >= CHUNK_ROWS:
            yield run
            run, count = [], 0
    if run or not days:
        yield run


def build_chunks(ws: Workspace) -> Iterator[pd.DataFrame]:
    """The window's training table in chunks of whole days (`day_chunks`), in day order.
    Each chunk is labelled and joined on its own: an offer's label comes from its own
    day's orders and its features from the point-in-time join of its own timestamp, so
    the chunks together are the table built at once, and the stage's memory is one
    chunk's work, whatever the window holds (at 1M users a 33-day window is ~18M offers).
    Only the window's partitions of the offline tables are read, and the point-in-time
    join reads only the feature partitions the chunk's times can reach
    (feature_repo.store.historical_features)."""
    from feature_repo.store import open_store

    days = window(ws)
    store = open_store(ws)
    coupons = read_offline(ws, "coupons", days).drop_duplicates("coupon_id", keep="last")
    for chunk in day_chunks(ws, days):
        yield _build_days(ws, store, chunk, coupons)


def _build_days(
    ws: Workspace, store: FeatureStore, days: list[str], coupons: pd.DataFrame
) -> pd.DataFrame:
    """The training table's rows of `days`: their offers labelled, with the catalogue's
    `coupons` and the features as of each offer."""
    from feature_repo.store import historical_features

    offers = read_offline(ws, "offers", days)
    orders = read_offline(ws, "orders", days)
    labelled = label_offers(offers, orders, float(ws.params["world"]["margin"]))
    del offers, orders
    labelled = labelled.merge(coupons, on="coupon_id", how="left")
    features = historical_features(store, labelled.rename(columns={"ts": "event_timestamp"}))
    keys = ["user_id", "coupon_id", "event_timestamp", "kind", "value"]
    table = pd.concat(
        [labelled.reset_index(drop=True), features.drop(columns=keys)],
        axis=1,
    )
    return table.dropna(subset=["sessions_7d"])  # offers whose user had no feature row yet


def write(ws: Workspace, path: Path) -> tuple[int, int]:
    """The training table written to `path` a chunk at a time (the file is replaced whole
    when done); its rows and days. Every chunk is converted to the first one's schema, so
    a column a chunk happens to hold only nulls in keeps its type."""
    tmp = path.with_name(path.name + ".tmp")
    writer: pq.ParquetWriter | None = None
    rows, days = 0, set()
    try:
        for chunk in build_chunks(ws):
            if writer is None:
                schema = pa.Schema.from_pandas(chunk, preserve_index=False)
                writer = pq.ParquetWriter(tmp, schema)
            writer.write_table(pa.Table.from_pandas(chunk, schema=schema, preserve_index=False))
            rows += len(chunk)
            days.update(chunk["day"].unique())
    finally:
        if writer is not None:
            writer.close()
    tmp.replace(path)
    return rows, len(days)


def main() -> None:
    quiet_libraries()
    ws = Workspace(Path.cwd())
    ws.training_set.mkdir(parents=True, exist_ok=True)
    rows, days = write(ws, ws.training_set / "offers.parquet")
    print(f"training set: {rows} offers over {days} days")


if __name__ == "__main__":
    main()
