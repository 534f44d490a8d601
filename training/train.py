"""DVC stage `train`: fit the CouponNet on logged offers, weighting each by its inverse
logging propensity so the heuristic's choices and the randomised slice both count without
bias. Early-stops on the last training day; the newest day is kept for evaluation.

Run from the workspace root: `python -m training.train`.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F
from tqdm import tqdm

from couponflow.config import PROJECT_ROOT, Workspace
from couponflow.features import USER_FEATURES
from couponflow.model import CouponNet, encode, save_model


def split_days(table: pd.DataFrame) -> tuple[list, pd.Timestamp, pd.Timestamp]:
    """Time split: (training days, early-stopping day, evaluation day)."""
    days = sorted(table["day"].unique())
    if len(days) < 3:
        raise ValueError(f"need at least 3 days of labelled offers, have {len(days)}")
    return days[:-2], days[-2], days[-1]


def tensors(
    table: pd.DataFrame, max_weight: float, device: torch.device
) -> dict[str, torch.Tensor]:
    """Inputs, targets and inverse-propensity weights, moved to `device` once."""
    x = encode(table[USER_FEATURES].to_numpy(np.float32), table)
    as_t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32), device=device)  # noqa: E731
    return {
        "x": as_t(x),
        "purchased": as_t(table["purchased"]),
        "log_amount": as_t(np.log(table["amount"].clip(lower=1.0))),
        "redeemed": as_t(table["redeemed"]),
        "offered": as_t(table["coupon_id"].notna()),
        "weight": as_t(np.minimum(1.0 / table["propensity"].to_numpy(), max_weight)),
    }


def loss_fn(out: torch.Tensor, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """Weighted sum of the three heads' losses; amount only where a purchase happened,
    redemption only where a coupon was offered."""
    w = b["weight"]
    purchase = F.binary_cross_entropy_with_logits(out[:, 0].float(), b["purchased"], weight=w)
    bought = b["purchased"] * w
    amount = (bought * (out[:, 1].float() - b["log_amount"]) ** 2).sum() / bought.sum().clamp(min=1)
    offered = b["offered"] * w
    redeem = F.binary_cross_entropy_with_logits(out[:, 2].float(), b["redeemed"], reduction="none")
    redeem = (offered * redeem).sum() / offered.sum().clamp(min=1)
    return purchase + 0.5 * amount + redeem


def fit(table: pd.DataFrame, cfg: dict[str, Any]) -> tuple[CouponNet, dict[str, Any]]:
    """Train with early stopping; returns the best network (on CPU) and its training log."""
    torch.manual_seed(int(cfg["seed"]))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    use_amp = device.type == "cuda"
    train_days, stop_day, _ = split_days(table)
    train = tensors(table[table["day"].isin(train_days)], cfg["max_inverse_propensity"], device)
    valid = tensors(table[table["day"] == stop_day], cfg["max_inverse_propensity"], device)
    net = CouponNet(hidden=int(cfg["hidden"])).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=float(cfg["lr"]))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    gen = torch.Generator(device="cpu").manual_seed(int(cfg["seed"]))
    n, bs = len(train["x"]), int(cfg["batch_size"])
    best, best_state, history, patience = float("inf"), None, [], int(cfg.get("patience", 2))
    bar = tqdm(range(int(cfg["epochs"])), desc="train", unit="epoch", leave=False)
    for epoch in bar:
        net.train()
        order = torch.randperm(n, generator=gen).to(device)
        for start in range(0, n, bs):
            idx = order[start : start + bs]
            batch = {k: v[idx] for k, v in train.items()}
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                loss = loss_fn(net(batch["x"]), batch)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        net.eval()
        with torch.inference_mode():
            val_loss = float(loss_fn(net(valid["x"]), valid))
        history.append({"epoch": epoch, "valid_loss": val_loss})
        bar.set_postfix(valid_loss=f"{val_loss:.4f}")
        if val_loss < best - 1e-5:
            best = val_loss
            best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        elif epoch - min(h["epoch"] for h in history if h["valid_loss"] == best) >= patience:
            break
    net = net.cpu()
    net.load_state_dict(best_state)
    net.eval()
    return net, {"device": device.type, "epochs_run": len(history), "history": history}


def code_commit() -> str:
    """The project's git commit, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ws = Workspace(Path.cwd())
    table = pd.read_parquet(ws.training_set / "offers.parquet")
    cfg = ws.params["model"]
    net, log = fit(table, cfg)
    data_days = sorted(str(pd.Timestamp(d).date()) for d in table["day"].unique())
    train_days, stop_day, eval_day = split_days(table)
    weights = b"".join(v.numpy().tobytes() for v in net.state_dict().values())
    version = f"{data_days[-1].replace('-', '')}-{hashlib.sha256(weights).hexdigest()[:8]}"
    meta = {
        "version": version,
        "hidden": int(cfg["hidden"]),
        "data_days": data_days,
        "train_rows": int(table["day"].isin(train_days).sum()),
        "early_stopping_day": str(pd.Timestamp(stop_day).date()),
        "evaluation_day": str(pd.Timestamp(eval_day).date()),
        "params": cfg,
        "code_commit": code_commit(),
        **log,
    }
    save_model(net, ws.models / "model.pt", meta)
    (ws.models / "model.json").write_text(json.dumps(meta, indent=2))
    print(f"model {version}: {log['epochs_run']} epochs on {log['device']}")


if __name__ == "__main__":
    main()
