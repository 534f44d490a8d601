"""DVC stage `dataset`: the training table of logged offers, each with its outcome, the
user's features and the offered coupon's stats as of the moment of the offer (a
point-in-time join through Feast, so no label leaks back from the future), and the
on-demand `relative_value` Feast computes from them.

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


def build(ws: Workspace) -> pd.DataFrame:
    """Every logged offer from the second offline day on (the first has no features yet)."""
    from feature_repo.store import historical_features, open_store

    days = offline_days(ws)[1:]
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
