"""DVC stage `evaluate`: the challenger and the current champion scored on the same
held-out day: prediction quality on the logged arm, and the value of the policy each
induces, estimated off-policy from the logging policy's propensities.

Run from the workspace root: `python -m training.evaluate`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from couponflow.config import Workspace
from couponflow.features import USER_FEATURES
from couponflow.landing import read_offline
from couponflow.metrics import ips_values, prediction_metrics
from couponflow.model import CouponNet, encode, load_model, predict
from couponflow.policy import eligible, greedy_arms, score, with_control
from feature_repo.store import coupon_stats_at, open_store


def logged_arm_index(table: pd.DataFrame, arms: pd.DataFrame) -> np.ndarray:
    """Each logged offer's arm position in `arms` (0 for "no coupon", -1 if not offered now)."""
    position = {cid: i for i, cid in enumerate(arms["coupon_id"]) if isinstance(cid, str)}
    return np.array([0 if pd.isna(c) else position.get(c, -1) for c in table["coupon_id"]])


def evaluate_model(
    net: CouponNet, table: pd.DataFrame, arms: pd.DataFrame, margin: float, multiplier: float
) -> dict[str, Any]:
    """Prediction metrics and the greedy policy's estimated value on one day's offers."""
    users = table[USER_FEATURES].to_numpy(np.float32)
    logged = predict(net, encode(users, table))
    metrics = prediction_metrics(table["purchased"].to_numpy(), logged["p_purchase"])
    choice = greedy_arms(score(net, users, arms, margin), multiplier)
    target = (choice == logged_arm_index(table, arms)).astype(float)
    value = ips_values(table["reward"].to_numpy(), table["propensity"].to_numpy(), target)
    return {
        **metrics,
        "policy_value_ips": value["ips"],
        "policy_value_snips": value["snips"],
        "offer_rate": float((choice > 0).mean()),
    }


def evaluate(ws: Workspace) -> dict[str, Any]:
    table = pd.read_parquet(ws.training_set / "offers.parquet")
    day = table["day"].max()
    held_out = table[table["day"] == day].reset_index(drop=True)
    coupons = read_offline(ws, "coupons", [str(pd.Timestamp(day).date())])
    coupons = coupon_stats_at(open_store(ws), coupons, pd.Timestamp(day))  # as the day began
    arms = with_control(eligible(coupons, pd.Timestamp(day)))
    margin = float(ws.params["world"]["margin"])
    multiplier = float(ws.params["policy"]["cost_multiplier"])

    report: dict[str, Any] = {
        "evaluation_day": str(pd.Timestamp(day).date()),
        "offers": len(held_out),
    }
    challenger, meta = load_model(ws.models / "model.pt")
    report["challenger"] = {"version": meta["version"]}
    report["challenger"].update(evaluate_model(challenger, held_out, arms, margin, multiplier))
    champion_file = ws.champion / "model.pt"
    if champion_file.exists():
        champion, champion_meta = load_model(champion_file)
        report["champion"] = {"version": champion_meta["version"]}
        report["champion"].update(evaluate_model(champion, held_out, arms, margin, multiplier))
    else:
        report["champion"] = None
    never = (held_out["coupon_id"].isna()).astype(float)
    report["baselines"] = {
        "no_coupon_snips": ips_values(held_out["reward"], held_out["propensity"], never)["snips"],
        "logging_policy": float(held_out["reward"].mean()),
    }
    return report


def main() -> None:
    ws = Workspace(Path.cwd())
    report = evaluate(ws)
    ws.metrics.mkdir(parents=True, exist_ok=True)
    (ws.metrics / "evaluation.json").write_text(json.dumps(report, indent=2))
    c = report["challenger"]
    print(f"challenger {c['version']}: auc {c['auc']:.3f}, value {c['policy_value_snips']:.3f}")


if __name__ == "__main__":
    main()
