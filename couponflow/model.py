"""The recommender network and its inputs.

For a user and an arm (a coupon, or "no coupon") it estimates P(purchase), the expected
order amount if they buy, and P(redeem). One encoding of (user, arm) serves training,
offline evaluation and the live service.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from couponflow.contract import ALL_CATEGORIES, CATEGORIES, COUPON_KINDS
from couponflow.features import COUPON_FEATURES, USER_FEATURES, relative_value

ARM_FEATURES: list[str] = [
    "is_control",
    *[f"kind_{k}" for k in COUPON_KINDS],
    "value_scaled",
    "min_spend_scaled",
    "site_wide",
    "category_affinity",
    "relative_value",
]
N_INPUTS = len(USER_FEATURES) + len(COUPON_FEATURES) + len(ARM_FEATURES)
_AFFINITY = [USER_FEATURES.index(f"affinity_{c}") for c in CATEGORIES]
_BASKET = USER_FEATURES.index("avg_basket_30d")


def encode_arms(user_features: np.ndarray, coupons: pd.DataFrame) -> np.ndarray:
    """Arm features for each user row and the coupon in the same row of `coupons`.

    `user_features` is (n, len(USER_FEATURES)); `coupons` has n rows with the coupon
    columns, a row of NaN/None `coupon_id` meaning "no coupon".
    """
    n = len(coupons)
    control = coupons["coupon_id"].isna().to_numpy()
    kind = coupons["kind"].fillna("").to_numpy()
    value = coupons["value"].fillna(0).to_numpy(dtype=np.float32)
    min_spend = coupons["min_spend"].fillna(0).to_numpy(dtype=np.float32)
    category = coupons["category"].fillna(ALL_CATEGORIES).to_numpy()
    out = np.zeros((n, len(ARM_FEATURES)), dtype=np.float32)
    out[:, 0] = control
    for i, k in enumerate(COUPON_KINDS):
        out[:, 1 + i] = kind == k
    out[:, 5] = value / 20.0
    out[:, 6] = min_spend / 100.0
    site_wide = category == ALL_CATEGORIES
    out[:, 7] = site_wide & ~control
    cat_idx = np.array([CATEGORIES.index(c) if c in CATEGORIES else 0 for c in category])
    affinity = user_features[np.arange(n), np.array(_AFFINITY)[cat_idx]]
    out[:, 8] = np.where(control, 0.0, np.where(site_wide, 1.0, affinity))
    out[:, 9] = relative_value(coupons["kind"], coupons["value"], user_features[:, _BASKET])
    return out


def encode(user_features: np.ndarray, coupons: pd.DataFrame) -> np.ndarray:
    """The network's input rows: squashed user features and coupon stats (`coupons` must
    carry COUPON_FEATURES; zeros for "no coupon" or a coupon without a record yet) beside
    the arm's features."""
    stats = coupons[COUPON_FEATURES].astype("float64").fillna(0.0).to_numpy(np.float32)
    counts = np.log1p(np.maximum(np.hstack([user_features, stats]), 0))
    return np.hstack([counts, encode_arms(user_features, coupons)])


class CouponNet(nn.Module):
    """A shared trunk with three heads: purchase logit, log-amount, redeem logit."""

    def __init__(self, n_inputs: int = N_INPUTS, hidden: int = 64) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(n_inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.heads = nn.Linear(hidden, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.trunk(x))


def predict(net: CouponNet, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """P(purchase), expected amount given purchase, and P(redeem), on the CPU."""
    with torch.inference_mode():
        out = net(torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))).numpy()
    return {
        "p_purchase": 1.0 / (1.0 + np.exp(-out[:, 0])),
        "amount": np.exp(np.clip(out[:, 1], -5.0, 10.0)),
        "p_redeem": 1.0 / (1.0 + np.exp(-out[:, 2])),
    }


def save_model(net: CouponNet, path: Path, meta: dict[str, Any]) -> None:
    """Save weights with what is needed to rebuild and trust them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        **meta,
        "user_features": USER_FEATURES,
        "coupon_features": COUPON_FEATURES,
        "arm_features": ARM_FEATURES,
    }
    torch.save({"state_dict": net.state_dict(), "meta": meta}, path)


def load_model(path: Path) -> tuple[CouponNet, dict[str, Any]]:
    """Load a saved model for inference; refuses one built on another feature list."""
    blob = torch.load(path, map_location="cpu", weights_only=False)
    meta = blob["meta"]
    inputs = (meta["user_features"], meta.get("coupon_features"), meta["arm_features"])
    if inputs != (USER_FEATURES, COUPON_FEATURES, ARM_FEATURES):
        raise ValueError(f"{path} was trained on a different feature list")
    net = CouponNet(hidden=int(meta["hidden"]))
    net.load_state_dict(blob["state_dict"])
    net.eval()
    return net, meta
