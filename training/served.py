"""What the served policy realised: the A/B readout of a day's live decisions against the
service's random holdout slice, from the feedback downstream apps reported.

Each decision the service made for a shopper (golden checks left out) is one row; its
realised profit is the margin on what the shopper bought after it, less the cost of a
redeemed coupon, as the world and the oracle price them (couponflow.contract.coupon_cost).
A decision nobody reported on earned nothing: feedback is the record of outcomes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from couponflow.config import Workspace
from couponflow.contract import GOLDEN, coupon_cost
from couponflow.landing import offline_days, read_feedback, read_offline
from couponflow.metrics import ab_readout
from couponflow.records import ServedReadout


def served_outcomes(ws: Workspace, day: str) -> pd.DataFrame:
    """One row per shopper decision of `day`: request_id, user_id, policy_version (the
    holdout's tagged), offered coupon, amount bought and whether it was redeemed, and the
    realised profit `reward`."""
    decisions = pd.DataFrame(read_feedback(ws, day, "decisions"))
    columns = ["request_id", "user_id", "policy_version", "coupon_id", "amount", "redeemed"]
    if decisions.empty:
        return pd.DataFrame(columns=[*columns, "reward"])
    if "channel" in decisions:
        decisions = decisions[decisions["channel"] != GOLDEN["channel"]].copy()
    decisions["coupon_id"] = [o[0]["coupon_id"] if o else None for o in decisions["offers"]]
    events = pd.DataFrame(
        read_feedback(ws, day, "events"), columns=["request_id", "event", "amount"]
    )
    bought = events[events["event"] == "purchased"].groupby("request_id")["amount"].sum()
    redeemed = set(events.loc[events["event"] == "redeemed", "request_id"])
    table = decisions.assign(
        amount=decisions["request_id"].map(bought).fillna(0.0).astype(float),
        redeemed=decisions["request_id"].isin(redeemed) & decisions["coupon_id"].notna(),
    )[columns]
    coupons = _catalogue(ws, day).set_index("coupon_id")
    offered = table["coupon_id"].where(table["coupon_id"].isin(coupons.index))
    cost = np.where(
        table["redeemed"] & offered.notna(),
        coupon_cost(
            offered.map(coupons["kind"]).fillna("").to_numpy(object),
            offered.map(coupons["value"]).fillna(0.0).to_numpy(float),
            table["amount"].to_numpy(float),
        ),
        0.0,
    )
    margin = float(ws.params["world"]["margin"])
    return table.assign(reward=margin * table["amount"].to_numpy(float) - cost)


def served_readout(ws: Workspace, day: str, days: int | None = None) -> ServedReadout:
    """The A/B readout of the served decisions of `day` and the `days - 1` days before it
    (default `evaluation.days`), pooled (what each DAG run reports for the day before its
    own): one day's holdout slice is a few percent of the requests, too few to see a lift,
    so the readout pools days and says whether the lift is significant."""
    level = float(ws.params["evaluation"]["confidence"])
    n = int(days or ws.params["evaluation"].get("days", 1))
    span = [str((pd.Timestamp(day) - pd.Timedelta(days=k)).date()) for k in range(n)][::-1]
    parts = [served_outcomes(ws, d).assign(day=pd.Timestamp(d)) for d in span]
    table = pd.concat([p for p in parts if len(p)] or parts[-1:], ignore_index=True)
    decisions = int(len(table))
    if table.empty:
        return {"day": day, "feedback_decisions": decisions, "lift": None,
                "note": "no served decisions were reported"}  # fmt: skip
    readout: ServedReadout = {
        "day": day,
        "feedback_decisions": decisions,
        **ab_readout(table, level),
    }
    return {**readout, "redeemed": int(table["redeemed"].sum())}


def _catalogue(ws: Workspace, day: str) -> pd.DataFrame:
    """The coupons as of `day` (the newest snapshot up to it), to price redemptions."""
    known = [d for d in offline_days(ws) if d <= day]
    return (
        read_offline(ws, "coupons", known[-1:])
        if known
        else pd.DataFrame(columns=["coupon_id", "kind", "value"])
    )
