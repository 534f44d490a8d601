"""Any randomised trial through the same code: a spec and a CSV become the trainer's arrays,
the project's learner finds a planted effect, and `couponflow trial` runs on Hillstrom."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from couponflow.config import HOME_ENV, PROJECT_ROOT
from couponflow.trials import TrialSpec, TrialSpecError, net_value, trial_arrays
from training.trial import budget_policy, crossfit, network_config, training_arrays

HILLSTROM_SPEC = PROJECT_ROOT / "public_data" / "hillstrom.yaml"


def test_the_hillstrom_spec_loads() -> None:
    spec = TrialSpec.load(HILLSTROM_SPEC)
    assert spec.csv == (PROJECT_ROOT.parent / "shared/datasets/hillstrom/hillstrom.csv").resolve()
    assert spec.treatment == "segment"
    assert spec.arm_labels == ["No E-Mail", "Mens E-Mail", "Womens E-Mail"]
    assert list(spec.outcomes) == ["spend", "visits"]
    assert spec.outcome("spend").column == "spend" and spec.outcome("spend").value == 0.3
    assert spec.outcome("visits").column == "visit"
    assert list(spec.cost_per_conversion) == [0.0, 5.0, 5.0]
    assert list(spec.cost_per_customer) == [0.0, 0.0, 0.0]
    assert spec.conversion == "conversion" and spec.propensities is None
    assert spec.covariates.categorical["zip_code"] == ("Urban", "Surburban", "Rural")
    assert spec.network["hidden"] == 32
    with pytest.raises(TrialSpecError, match="unknown outcome 'revenue'"):
        spec.outcome("revenue")


def spec_dict(**changes) -> dict:
    """A valid small spec as parsed YAML, with `changes` applied (None deletes a key)."""
    raw = {
        "name": "tiny",
        "csv": "tiny.csv",
        "treatment": {"column": "arm", "control": "none", "arms": {"A": {"per_customer": 0.1}}},
        "outcomes": {"buys": {"column": "y", "value": 2.0}},
        "covariates": {"numeric": ["x"], "categorical": ["g"]},
    }
    for key, value in changes.items():
        if value is None:
            raw.pop(key)
        else:
            raw[key] = value
    return raw


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"csv": None}, "missing 'csv'"),
        ({"outcome": {}}, r"unknown key\(s\) \['outcome'\]"),
        ({"treatment": {"column": "arm", "arms": ["A"]}}, "treatment: missing 'control'"),
        ({"treatment": {"column": "arm", "control": "A", "arms": ["A"]}}, "labels repeat"),
        ({"treatment": {"column": "arm", "control": "n", "arms": []}}, "at least one treated"),
        (
            {"treatment": {"column": "arm", "control": "n", "arms": {"A": {"per_customer": -1}}}},
            "per_customer: expected a finite number >= 0",
        ),
        (
            {"treatment": {"column": "arm", "control": "n", "arms": {"A": {"per_click": 1}}}},
            "unknown key",
        ),
        (
            {"treatment": {"column": "arm", "control": "n", "arms": {"A": {"per_conversion": 5}}}},
            "needs the `conversion` column",
        ),
        ({"outcomes": {}}, "at least one is needed"),
        ({"outcomes": {"buys": {"value": 1}}}, "missing 'column'"),
        ({"outcomes": {"buys": {"column": "y", "value": "lots"}}}, "expected a number"),
        ({"covariates": {}}, "at least one column"),
        ({"covariates": {"numeric": ["x"], "log": ["x"]}}, "listed twice"),
        ({"covariates": {"splines": ["x"]}}, "unknown key"),
        ({"propensities": {"none": 0.5}}, "one per arm"),
        ({"propensities": {"none": 0.5, "A": 0.6}}, "summing to 1"),
    ],
)
def test_a_bad_spec_says_why(changes: dict, message: str) -> None:
    with pytest.raises(TrialSpecError, match=message):
        TrialSpec.from_dict(spec_dict(**changes))


def test_a_spec_file_that_is_not_a_spec(tmp_path: Path) -> None:
    with pytest.raises(TrialSpecError, match="cannot read spec"):
        TrialSpec.load(tmp_path / "absent.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(TrialSpecError, match="a spec is a mapping"):
        TrialSpec.load(tmp_path / "list.yaml")


def planted(n: int = 6000, seed: int = 0) -> pd.DataFrame:
    """A randomised trial with a planted effect: arm A lifts the buying rate by 0.25 for
    customers with x > 0.5 and by nothing for the others; arm B lowers it by 0.05 for all."""
    rng = np.random.default_rng(seed)
    x = rng.random(n)
    g = rng.choice(["red", "blue", "green"], n)
    arm = rng.choice(["none", "A", "B"], n)
    p = 0.2 + 0.25 * ((arm == "A") & (x > 0.5)) - 0.05 * (arm == "B") + 0.05 * (g == "red")
    bought = rng.random(n) < p
    amount = np.where(bought, rng.lognormal(3.0, 0.5, n), 0.0)
    return pd.DataFrame({"x": x, "g": g, "arm": arm, "y": bought.astype(int), "spend": amount})


def planted_spec(csv: Path) -> TrialSpec:
    return TrialSpec.from_dict(
        {
            "csv": str(csv),
            "treatment": {"column": "arm", "control": "none", "arms": ["A", "B"]},
            "outcomes": {"buys": {"column": "y", "value": 1.0}, "spend": {"column": "spend"}},
            "covariates": {"numeric": ["x"], "categorical": ["g"]},
            "network": {"hidden": 16, "batch_size": 128, "lr": 0.003, "epochs": 25},
        }
    )


def test_the_loader_lays_out_the_trainers_arrays(tmp_path: Path) -> None:
    frame = planted(600)
    frame.to_csv(tmp_path / "t.csv", index=False)
    spec = planted_spec(tmp_path / "t.csv")
    data = trial_arrays(spec)
    assert data.arms == ("none", "A", "B")
    assert data.user_inputs == ("x", "g=blue", "g=green", "g=red")
    assert data.user.dtype == np.float32 and data.user.min() == 0 and data.user.max() == 1
    assert np.array_equal(data.arm, frame["arm"].map({"none": 0, "A": 1, "B": 2}).to_numpy())
    shares = frame["arm"].value_counts(normalize=True)
    assert np.allclose(data.propensity, frame["arm"].map(shares))
    x = data.inputs(data.arm)
    assert x.shape == (600, 4 + 3)
    assert np.array_equal(x[:, 4] == 1, data.arm == 0), "column 0 of the arm block: is_control"
    arrays = training_arrays(data, "spend")
    assert np.array_equal(arrays.purchased, (frame["spend"] > 0).to_numpy(np.float32))
    bought = frame["spend"].to_numpy() > 0
    assert np.allclose(arrays.log_amount[bought], np.log(frame["spend"].to_numpy()[bought]))
    assert np.array_equal(arrays.offered, (data.arm > 0).astype(np.float32))
    assert np.allclose(arrays.weight.mean(), 1.0)
    cost = TrialSpec.from_dict(spec_dict(csv=str(tmp_path / "t.csv")))
    assert cost.cost_per_customer.tolist() == [0.0, 0.1]
    # the net value: 2 per unit of y, less 0.1 for every customer given arm A
    frame2 = frame[frame["arm"] != "B"]
    tiny = trial_arrays(cost, frame2)
    expected = 2.0 * frame2["y"].to_numpy() - 0.1 * (frame2["arm"] == "A").to_numpy()
    assert np.allclose(net_value(cost, tiny, "buys"), expected)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.drop(columns="x"), r"column\(s\) \['x'\] missing"),
        (lambda f: f.assign(arm=f["arm"].replace("B", "C")), r"unknown arm\(s\) \['C'\]"),
        (lambda f: f[f["arm"] != "B"], r"arm\(s\) \['B'\] of the spec have no rows"),
        (lambda f: f.assign(y=-f["y"]), "negative values"),
        (lambda f: f.assign(x=f["x"].where(f.index > 0)), "missing values"),
        (lambda f: f.assign(x="high"), "is not numeric"),
    ],
)
def test_a_csv_the_spec_does_not_fit_says_why(tmp_path: Path, edit, message: str) -> None:
    edit(planted(300)).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(TrialSpecError, match=message):
        trial_arrays(planted_spec(tmp_path / "t.csv"))


def test_an_unlisted_level_is_refused(tmp_path: Path) -> None:
    planted(300).to_csv(tmp_path / "t.csv", index=False)
    raw = spec_dict(csv=str(tmp_path / "t.csv"))
    raw["treatment"] = {"column": "arm", "control": "none", "arms": ["A", "B"]}
    raw["covariates"] = {"categorical": {"g": ["red", "blue"]}}
    with pytest.raises(TrialSpecError, match=r"level\(s\) \['green'\]"):
        trial_arrays(TrialSpec.from_dict(raw))


def test_the_learner_finds_the_planted_uplift(tmp_path: Path) -> None:
    """Cross-fitted, the network predicts arm A's gain positive where it was planted (x >
    0.5) and near zero elsewhere, arm B's negative; the budget policy gives A to the
    customers with x > 0.5 and nobody B."""
    planted().to_csv(tmp_path / "t.csv", index=False)
    spec = planted_spec(tmp_path / "t.csv")
    data = trial_arrays(spec)
    values, seconds = crossfit(spec, data, "buys", 2, 0, network_config(spec))
    gain = values["ours"][:, 1:] - values["ours"][:, :1]
    high = data.user[:, 0] > 0.5
    assert gain[high, 0].mean() > 0.12, "arm A lifts x > 0.5 by 0.25"
    assert abs(gain[~high, 0].mean()) < 0.06
    assert gain[:, 1].mean() < 0, "arm B lowers buying"
    action = budget_policy(values["ours"], 0.5)
    assert (action == 2).sum() == 0
    assert (action[high] == 1).mean() > 0.8 and (action[~high] == 1).mean() < 0.2
    assert seconds["ours"] > 0 and seconds["two_model"] > 0


def test_budget_policy_treats_the_top_share_with_positive_gain() -> None:
    values = np.array([[0.0, 1.0, 2.0], [0.0, 0.5, 0.1], [1.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    assert budget_policy(values, 0.5).tolist() == [2, 0, 0, 1]  # gains 2, .5, -1, 3: top two
    assert budget_policy(values, 0.75).tolist() == [2, 1, 0, 1]
    assert budget_policy(values, 1.0).tolist() == [2, 1, 0, 1], "never a negative gain"


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "couponflow.cli", "trial", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=PROJECT_ROOT,
    )


@pytest.mark.integration  # the CLI in a child process
def test_bad_input_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    planted(300).drop(columns="g").to_csv(tmp_path / "t.csv", index=False)
    spec = spec_dict(csv=str(tmp_path / "t.csv"))
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    done = cli("--spec", str(tmp_path / "spec.yaml"))
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"couponflow trial: column(s) ['g'] missing from {tmp_path / 't.csv'}"
    ]


def test_trial_command_on_a_hillstrom_subsample(tmp_path: Path, monkeypatch, capsys) -> None:
    """`couponflow trial` end to end on 6,000 Hillstrom customers, two folds, three epochs:
    both outcomes, every policy and paired difference with an ordered interval."""
    spec = TrialSpec.load(HILLSTROM_SPEC)
    if not spec.csv.exists():
        pytest.skip(f"public data set absent: {spec.csv}")
    from couponflow.cli import main

    monkeypatch.setenv(HOME_ENV, str(tmp_path / "ws"))
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    out = tmp_path / "figures.json"
    main(["trial", "--spec", str(HILLSTROM_SPEC), "--rows", "6000", "--folds", "2"]
         + ["--epochs", "3", "--n-boot", "100", "--json", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert "hillstrom / spend" in printed and "hillstrom / visits" in printed
    assert "ours - two_model" in printed
    figures = json.loads(out.read_text())
    assert figures["customers"] == 6000 and figures["folds"] == 2
    for name in ("spend", "visits"):
        result = figures["outcomes"][name]
        assert set(result["policies"]) == {"ours", "two_model", "random", "nobody"}
        assert len(result["differences"]) == 5
        for entry in [*result["policies"].values(), *result["differences"].values()]:
            for key in ("net", "outcome"):
                iv = entry[key]
                assert iv["low"] <= iv["value"] <= iv["high"], (name, key, iv)
        for learner in ("ours", "two_model"):
            assert result["policies"][learner]["treated"] <= 1 / 3 + 1e-3
        nobody = result["policies"]["nobody"]
        assert nobody["treated"] == 0.0 and nobody["net"]["value"] > 0
