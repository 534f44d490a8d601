"""DVC stage `dataset`: the training table of logged offers, each with its outcome, the
user's features and the offered coupon's stats as of the moment of the offer (a
point-in-time join through Feast, so no label leaks back from the future), and the
on-demand `relative_value` Feast computes from them. It covers a window of the newest
days (`model.training_days`, plus the early-stopping and evaluation days), so the table,
the reads and the join stop growing with the history kept.

Run from the workspace root: `python -m training.dataset`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from couponflow.config import Workspace
from couponflow.landing import offline_days, read_offline
from couponflow.logs import quiet_libraries

OUTCOME_COLUMNS = ["purchased", "amount", "redeemed", "discount", "reward"]


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
    """Every logged offer of the window's days. Only their partitions of the offline
    tables are read, and the point-in-time join reads only the feature partitions their
    times can reach (feature_repo.store.historical_features)."""
    from feature_repo.store import historical_features, open_store

    days = window(ws)
    offers = read_offline(ws, "offers", days)
    orders = read_offline(ws, "orders", days)
    labelled = label_offers(offers, orders, float(ws.params["world"]["margin"]))
    coupons = read_offline(ws, "coupons", days).drop_duplicates("coupon_id", keep="last")
    labelled = labelled.merge(coupons, on="coupon_id", how="left")
    features = historical_features(
        open_store(ws), labelled.rename(columns={"ts": "event_timestamp"})
    )
    keys = ["user_id", "coupon_id", "event_timestamp", "kind", "value"]
    table = pd.concat(
        [labelled.reset_index(drop=True), features.drop(columns=keys)],
        axis=1,
    )
    return table.dropna(subset=["sessions_7d"])  # offers whose user had no feature row yet


def main() -> None:
    quiet_libraries()
    ws = Workspace(Path.cwd())
    table = build(ws)
    ws.training_set.mkdir(parents=True, exist_ok=True)
    table.to_parquet(ws.training_set / "offers.parquet", index=False)
    print(f"training set: {len(table)} offers over {table['day'].nunique()} days")


if __name__ == "__main__":
    main()
