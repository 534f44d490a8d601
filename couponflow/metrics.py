"""Offline metrics: prediction quality and off-policy estimates of a policy's value."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score


def calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: the mean |observed - predicted| rate over equal-count bins."""
    order = np.argsort(p)
    err = 0.0
    for chunk in np.array_split(order, bins):
        if len(chunk):
            err += len(chunk) * abs(y[chunk].mean() - p[chunk].mean())
    return float(err / len(y))


def prediction_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """AUC, log loss and calibration error of probabilities `p` for binary outcomes `y`."""
    y = np.asarray(y, dtype=float)
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    auc = float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")
    return {
        "auc": auc,
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "ece": calibration_error(y, p),
    }


def ips_values(
    reward: np.ndarray, logged_propensity: np.ndarray, target_propensity: np.ndarray
) -> dict[str, float]:
    """Inverse-propensity (IPS) and self-normalised (SNIPS) estimates of the target policy's
    mean reward per decision, from logs of another policy."""
    w = np.asarray(target_propensity) / np.asarray(logged_propensity)
    reward = np.asarray(reward, dtype=float)
    total = w.sum()
    return {
        "ips": float((w * reward).mean()),
        "snips": float((w * reward).sum() / total) if total > 0 else float("nan"),
        "matched": int((w > 0).sum()),
    }
