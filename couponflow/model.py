"""The recommender network and its inputs.

For a user and an arm (a coupon, or "no coupon") it estimates P(purchase), the expected
order amount if they buy, and P(redeem). One encoding of (user, arm) serves training,
offline evaluation and the live service.

The network is uplift-aware: its outputs are `base(user) + (1 - is_control) * delta(user,
arm)`. The coupon's effect is a term of its own, learned from the difference between
offered and not-offered users, rather than a small difference between two large
predictions; and a network that has learned nothing about a coupon predicts no effect.
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
# Inputs are [user block | arm block]: the squashed USER_FEATURES, then ARM_FEATURES (column
# 0 of the arm block is `is_control`) and the squashed COUPON_FEATURES of the arm.
N_USER_INPUTS = len(USER_FEATURES)
N_ARM_INPUTS = len(ARM_FEATURES) + len(COUPON_FEATURES)
N_INPUTS = N_USER_INPUTS + N_ARM_INPUTS
_AFFINITY = np.array([USER_FEATURES.index(f"affinity_{c}") for c in CATEGORIES])
_BASKET = USER_FEATURES.index("avg_basket_30d")


def _codes(values: pd.Series, labels: tuple[str, ...]) -> np.ndarray:
    """Each value's position in `labels`, -1 for a missing or other value (vectorised)."""
    return pd.Categorical(values, categories=list(labels)).codes.astype(np.int64)


def encode_arms(user_features: np.ndarray, coupons: pd.DataFrame) -> np.ndarray:
    """ARM_FEATURES for each user row and the coupon in the same row of `coupons`.

    `user_features` is (n, len(USER_FEATURES)); `coupons` has n rows with the coupon
    columns, a row of NaN/None `coupon_id` meaning "no coupon".
    """
    n = len(coupons)
    control = coupons["coupon_id"].isna().to_numpy()
    kind = _codes(coupons["kind"], COUPON_KINDS)
    category = _codes(coupons["category"], CATEGORIES)  # -1: site-wide (or no coupon)
    out = np.zeros((n, len(ARM_FEATURES)), dtype=np.float32)
    out[:, 0] = control
    out[np.flatnonzero(kind >= 0), 1 + kind[kind >= 0]] = 1.0
    out[:, 5] = coupons["value"].fillna(0).to_numpy(dtype=np.float32) / 20.0
    out[:, 6] = coupons["min_spend"].fillna(0).to_numpy(dtype=np.float32) / 100.0
    site_wide = (coupons["category"] == ALL_CATEGORIES).fillna(False).to_numpy(dtype=bool)
    out[:, 7] = site_wide & ~control
    affinity = user_features[np.arange(n), _AFFINITY[np.maximum(category, 0)]]
    out[:, 8] = np.where(control, 0.0, np.where(category >= 0, affinity, 1.0))
    out[:, 9] = relative_value(coupons["kind"], coupons["value"], user_features[:, _BASKET])
    return out


def _squash(counts: np.ndarray, out: np.ndarray) -> None:
    """Counts, amounts and rates on one scale, written into `out`: log(1 + x), negatives
    read as 0."""
    np.maximum(counts, 0.0, out=out)
    np.log1p(out, out=out)


def encode(user_features: np.ndarray, coupons: pd.DataFrame) -> np.ndarray:
    """The network's input rows, (n, N_INPUTS) float32: [user block | arm block].

    `coupons` must carry COUPON_FEATURES (NaN for a coupon without a record yet); "no
    coupon" rows get zeros for them, so the arm block of the control is all zeros except
    `is_control`.
    """
    arms = encode_arms(user_features, coupons)
    stats = coupons[COUPON_FEATURES].astype("float64").fillna(0.0).to_numpy(np.float32)
    stats[arms[:, 0] == 1.0] = 0.0
    out = np.empty((len(coupons), N_INPUTS), dtype=np.float32)
    _squash(np.asarray(user_features, dtype=np.float32), out[:, :N_USER_INPUTS])
    out[:, N_USER_INPUTS : N_USER_INPUTS + len(ARM_FEATURES)] = arms
    _squash(stats, out[:, N_USER_INPUTS + len(ARM_FEATURES) :])
    return out


def _mlp(n_inputs: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_inputs, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 3),
    )


class CouponNet(nn.Module):
    """(purchase logit, log amount, redeem logit) = base(user) + (1 - is_control) *
    delta(user, arm).

    `base` reads the user block only; `delta` reads the whole row. Its last layer starts
    at zero, so before training every coupon is predicted to change nothing.
    """

    def __init__(
        self, n_user: int = N_USER_INPUTS, n_arm: int = N_ARM_INPUTS, hidden: int = 64
    ) -> None:
        super().__init__()
        self.n_user, self.n_arm, self.hidden = n_user, n_arm, hidden
        self.base = _mlp(n_user, hidden)
        self.delta = _mlp(n_user + n_arm, hidden)
        nn.init.zeros_(self.delta[-1].weight)
        nn.init.zeros_(self.delta[-1].bias)

    def layout(self) -> dict[str, int]:
        """What it takes to rebuild this network: input block sizes and width."""
        return {"n_user": self.n_user, "n_arm": self.n_arm, "hidden": self.hidden}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        treated = 1.0 - x[:, self.n_user : self.n_user + 1]
        return self.base(x[:, : self.n_user]) + treated * self.delta(x)


def predict(net: CouponNet, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """P(purchase), expected amount given purchase, and P(redeem), on the CPU."""
    with torch.inference_mode():
        out = net(torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))).numpy()
    return {
        "p_purchase": 1.0 / (1.0 + np.exp(-out[:, 0])),
        "amount": np.exp(np.clip(out[:, 1], -5.0, 10.0)),
        "p_redeem": 1.0 / (1.0 + np.exp(-out[:, 2])),
    }


def _inputs() -> dict[str, Any]:
    """The feature lists and block sizes a saved model was trained on."""
    return {
        "user_features": USER_FEATURES,
        "coupon_features": COUPON_FEATURES,
        "arm_features": ARM_FEATURES,
        "n_user": N_USER_INPUTS,
        "n_arm": N_ARM_INPUTS,
    }


def save_model(net: CouponNet, path: Path, meta: dict[str, Any]) -> None:
    """Save weights with what is needed to rebuild and trust them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**meta, **_inputs(), **net.layout()}
    torch.save({"state_dict": net.state_dict(), "meta": meta}, path)


def load_model(path: Path) -> tuple[CouponNet, dict[str, Any]]:
    """Load a saved model for inference; refuses one built on another feature list or
    input layout (an older model's weights would be read against the wrong columns)."""
    blob = torch.load(path, map_location="cpu", weights_only=False)
    meta = blob["meta"]
    if {k: meta.get(k) for k in _inputs()} != _inputs():
        raise ValueError(f"{path} was trained on a different feature list")
    net = CouponNet(meta["n_user"], meta["n_arm"], int(meta["hidden"]))
    net.load_state_dict(blob["state_dict"])
    net.eval()
    return net, meta
