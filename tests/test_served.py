"""The served readout pools the days it covers before reading a lift off the holdout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import training.served
from couponflow.config import PROJECT_ROOT, Workspace, load_params


def test_the_served_readout_pools_recent_days_and_says_if_the_lift_is_significant(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    params = load_params(PROJECT_ROOT / "params.yaml")
    params["evaluation"]["days"] = 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    rng = np.random.default_rng(0)

    def outcomes(ws: Workspace, day: str) -> pd.DataFrame:
        if day == "2026-01-04":  # a day without feedback is left out, not an error
            return pd.DataFrame(columns=["policy_version", "reward", "redeemed"])
        held = rng.random(3_000) < 0.2
        return pd.DataFrame(
            {
                "policy_version": np.where(held, "v1:holdout", "v1"),
                "reward": rng.normal(1.0, 2.0, 3_000) + np.where(held, 0.0, 0.4),
                "redeemed": False,
            }
        )

    monkeypatch.setattr(training.served, "served_outcomes", outcomes)
    readout = training.served.served_readout(Workspace(tmp_path), "2026-01-06")
    assert readout["days"] == ["2026-01-05", "2026-01-06"]
    assert readout["feedback_decisions"] == 6_000
    assert readout["significant"] and readout["lift"]["low"] > 0
    one = training.served.served_readout(Workspace(tmp_path), "2026-01-06", days=1)
    assert one["days"] == ["2026-01-06"] and one["feedback_decisions"] == 3_000
