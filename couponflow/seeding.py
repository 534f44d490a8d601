"""`couponflow init`: a workspace created and its history days seeded (landed, validated,
stored and featurised) before the first DAG run, so that run already has labelled days to
train on. Re-running it resumes a seeding that stopped.
"""

from __future__ import annotations

import sys

import pandas as pd
from tqdm import tqdm

from couponflow.config import Overrides, Workspace


def init_seeded(ws: Workspace, overrides: Overrides) -> Workspace:
    """`init` (and the start of `demo`): the workspace, then its history days seeded. A
    history day the validation quarantines stops the seeding with one line saying why."""
    from couponflow.config import params_notices
    from couponflow.workspace import init_workspace
    from expectations.validate import QuarantinedBatch

    ws = init_workspace(ws.root, overrides)
    from couponflow.landing import offline_days

    for notice in params_notices(ws.params):
        print(notice, flush=True)
    if len(offline_days(ws)) < int(ws.params["world"]["history_days"]):  # resumes, too
        try:
            days = seed_history(ws)
        except QuarantinedBatch as rejected:
            o = rejected.outcome
            sys.exit(
                f"couponflow: error: seeding stopped, {o.day} was quarantined at "
                f"{o.quarantine_path} ({o.failures[0]}); fix the params and re-run init"
            )
        print(f"workspace {ws.root}: seeded {days[0]} .. {days[-1]}", flush=True)
    return ws


def seed_history(ws: Workspace) -> list[str]:
    """Land, validate, store and featurise the history days before the first DAG run, so
    the first run already has enough labelled days to train on. Every day's features go
    to the offline source (training reads them point-in-time); only the newest day needs
    materialising into the online store."""
    from couponflow.landing import land_simulated_day, load_offline, read_batch
    from expectations.validate import require_valid
    from feature_repo.store import materialise_user_features, publish_features

    start = pd.Timestamp(ws.params["world"]["start_date"])
    n_days = int(ws.params["world"]["history_days"])
    days = [str((start + pd.Timedelta(days=i)).date()) for i in range(n_days)]
    for day in tqdm(days, desc="seeding history", unit="day"):
        land_simulated_day(ws, day)
        require_valid(ws, day)
        load_offline(ws, day, read_batch(ws.landing_partition(day)))
        if day == days[-1]:
            materialise_user_features(ws, day)
        else:
            publish_features(ws, day)
    return days
