"""Workspaces with simulated days in the offline store, for the training and serving tests
that need a world but no server."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from couponflow.config import PROJECT_ROOT, Workspace, load_params, set_param
from couponflow.model import CouponNet

N_USERS = 300


def simulated_workspace(root: Path, days: int = 3) -> Workspace:
    """`days` simulated days of a 300-user world in the offline store, their feature
    partitions and an untrained model."""
    from couponflow.landing import load_offline
    from couponflow.model import save_model
    from couponflow.world import World
    from feature_repo.store import publish_features

    params = load_params(PROJECT_ROOT / "params.yaml")
    set_param(params, "world.n_users", N_USERS)
    set_param(params, "policy.holdout_share", 0.0)  # every decision the policy's own
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    ws = Workspace(root)
    world = World(params["world"])
    start = pd.Timestamp(params["world"]["start_date"])
    for i in range(days):
        day = str((start + pd.Timedelta(days=i)).date())
        load_offline(ws, day, world.simulate_day(day))
        publish_features(ws, day)
    save_model(CouponNet(), ws.models / "model.pt", {"version": "test"})
    return ws
