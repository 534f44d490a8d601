"""Training-room logic that needs no tool: labels, the time split, the train stage and the
gate."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from couponflow.config import PROJECT_ROOT, load_params
from couponflow.evaluation import refit_line
from couponflow.model import N_ARM_INPUTS, N_USER_INPUTS, load_model
from training import train
from training.dataset import label_offers
from training.train import split_days


def test_labels_only_count_orders_after_the_offer() -> None:
    offers = pd.DataFrame(
        {
            "offer_id": ["o1", "o2", "o3"],
            "user_id": [1, 2, 3],
            "coupon_id": pd.array(["A", None, "B"], dtype="string"),
            "ts": pd.to_datetime(["2026-01-02 01:00", "2026-01-02 01:00", "2026-01-02 12:00"]),
            "propensity": [0.5, 0.5, 0.5],
        }
    )
    orders = pd.DataFrame(
        {
            "user_id": [1, 2, 3],
            "ts": pd.to_datetime(["2026-01-02 09:00", "2026-01-02 09:00", "2026-01-02 09:00"]),
            "amount": [50.0, 30.0, 80.0],
            "coupon_id": pd.array(["A", None, None], dtype="string"),
            "discount": [5.0, 0.0, 0.0],
        }
    )
    out = label_offers(offers, orders, margin=0.3).set_index("offer_id")
    assert out.loc["o1", "purchased"] and out.loc["o1", "redeemed"]
    assert out.loc["o1", "reward"] == pytest.approx(0.3 * 50 - 5)
    assert out.loc["o2", "purchased"] and not out.loc["o2", "redeemed"]
    assert not out.loc["o3", "purchased"]  # the order came before the offer
    assert out.loc["o3", "reward"] == 0


def test_time_split_keeps_the_newest_day_for_evaluation() -> None:
    table = pd.DataFrame({"day": pd.to_datetime(["2026-01-02", "2026-01-03", "2026-01-04"] * 2)})
    train, stop, evaluate = split_days(table)
    assert list(train) == [pd.Timestamp("2026-01-02")]
    assert stop == pd.Timestamp("2026-01-03") and evaluate == [pd.Timestamp("2026-01-04")]


def test_time_split_judges_several_days_after_training_and_early_stopping() -> None:
    days = pd.date_range("2026-01-02", periods=7)
    train, stop, evaluate = split_days(pd.DataFrame({"day": days}), evaluation_days=3)
    assert list(train) == list(days[:3]) and stop == days[3] and list(evaluate) == list(days[4:])
    # a short log keeps a training day and the early-stopping day before what it judges
    train, stop, evaluate = split_days(pd.DataFrame({"day": days[:4]}), evaluation_days=3)
    assert list(train) == [days[0]] and stop == days[1] and list(evaluate) == list(days[2:4])


def test_time_split_needs_three_days() -> None:
    with pytest.raises(ValueError, match="at least 3 days"):
        split_days(pd.DataFrame({"day": pd.to_datetime(["2026-01-02", "2026-01-03"])}))


def _three_day_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **model: object) -> None:
    """A workspace whose training table holds three days of 2,000 offers of a known coupon
    effect, with a small fast network (`model` over params.yaml's), as the working folder."""
    from tests.helpers.known_effect import known_effect_log

    days = pd.to_datetime(["2026-01-02", "2026-01-03", "2026-01-04"])
    table = pd.concat(
        [known_effect_log(2_000, seed=i).assign(day=d) for i, d in enumerate(days)],
        ignore_index=True,
    )
    (tmp_path / "data" / "training").mkdir(parents=True)
    table.to_parquet(tmp_path / "data" / "training" / "offers.parquet", index=False)
    params = load_params(PROJECT_ROOT / "params.yaml")
    params["model"] = {**params["model"], "epochs": 2, "hidden": 16, **model}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)


def test_train_stage_writes_a_reproducible_model_and_its_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _three_day_workspace(tmp_path, monkeypatch, refit=False)
    train.main()
    record = json.loads((tmp_path / "models" / "model.json").read_text())
    net, meta = load_model(tmp_path / "models" / "model.pt")
    assert meta["version"] == record["version"] and record["version"].startswith("20260104-")
    assert (record["n_user"], record["n_arm"], record["hidden"]) == (
        N_USER_INPUTS,
        N_ARM_INPUTS,
        16,
    )
    assert record["train_rows"] == 2_000 and record["valid_rows"] == 2_000
    assert record["early_stopping_day"] == "2026-01-03"
    assert record["evaluation_day"] == "2026-01-04"
    assert record["device"] in {"cpu", "cuda"} and record["samples_per_second"] > 0
    assert record["members"] == len(record["epochs_run"])
    assert record["epochs_run"][0] == len(record["history"]) <= 2
    assert {"code_commit", "params", "data_days", "data_version"} <= record.keys()
    assert len(record["data_version"]["training_set"]) == 16
    assert record["refit"] is None and refit_line(record) is None  # the judged model ships
    twin, _ = load_model(tmp_path / "models" / "model.pt", judged=True)
    assert train.model_version(twin, "2026-01-04") == record["version"]

    train.main()  # same data, same seed: the same model version
    assert (
        json.loads((tmp_path / "models" / "model.json").read_text())["version"] == meta["version"]
    )


def test_the_refit_ships_and_keeps_the_judged_twin_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With model.refit the model trained up to the day before the newest (early stopping on
    the newest) ships under its own version; the held-out twin the evaluation judges is in
    the same file, `load_model(judged=True)`, and the record names it."""
    _three_day_workspace(tmp_path, monkeypatch, refit=True)
    train.main()
    record = json.loads((tmp_path / "models" / "model.json").read_text())
    refit = record["refit"]
    assert refit["train_rows"] == 4_000 and refit["early_stopping_day"] == "2026-01-04"
    assert record["train_rows"] == 2_000 and record["early_stopping_day"] == "2026-01-03"
    assert refit["shipped"] == (refit["newest_day_loss"] <= refit["judged_newest_day_loss"])
    shipped, _ = load_model(tmp_path / "models" / "model.pt")
    twin, _ = load_model(tmp_path / "models" / "model.pt", judged=True)
    assert train.model_version(twin, "2026-01-04") == refit["judged_version"]
    assert train.model_version(shipped, "2026-01-04") == record["version"]
    assert (record["version"] != refit["judged_version"]) == refit["shipped"]
    line = refit_line(record)  # what the run report and the run summary say
    assert line is not None and refit["judged_version"] in line
    assert line.startswith("The candidate is the refit") == refit["shipped"]


def test_a_refit_that_fits_the_newest_day_worse_does_not_ship(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refit gone wrong (injected: untrained networks) fits the newest day, new to both
    models, worse than the held-out twin: the twin ships, and the record says why."""
    from couponflow.model import CouponEnsemble, CouponNet

    _three_day_workspace(tmp_path, monkeypatch, refit=True)
    real_fit, calls = train.fit_ensemble, []

    def twin_then_broken(*args, **kwargs):
        calls.append(1)
        net, log = real_fit(*args, **kwargs)
        if len(calls) == 1:
            return net, log
        broken = [CouponNet(N_USER_INPUTS, N_ARM_INPUTS, 16) for _ in net.members]
        return CouponEnsemble(broken, net.credibility), log

    monkeypatch.setattr(train, "fit_ensemble", twin_then_broken)
    train.main()
    record = json.loads((tmp_path / "models" / "model.json").read_text())
    refit = record["refit"]
    assert len(calls) == 2 and not refit["shipped"]
    assert refit["newest_day_loss"] > refit["judged_newest_day_loss"]
    assert record["version"] == refit["judged_version"]
    shipped, _ = load_model(tmp_path / "models" / "model.pt")
    assert train.model_version(shipped, "2026-01-04") == refit["judged_version"]
    assert "the candidate is the twin" in str(refit_line(record))


def test_the_stage_builds_its_arrays_from_the_file_a_batch_at_a_time(tmp_path: Path) -> None:
    """`from_parquet` (the stage never holds the whole table) gives `from_table`'s arrays
    of the chosen days exactly, the weights' shares and mean over all those rows; they are
    views of one packed array, which `packed()` hands out without a copy."""
    import numpy as np

    from tests.helpers.known_effect import known_effect_log

    days = pd.to_datetime(["2026-01-02", "2026-01-03", "2026-01-04"])
    table = pd.concat(
        [known_effect_log(1_500, seed=i).assign(day=d) for i, d in enumerate(days)],
        ignore_index=True,
    )
    path = tmp_path / "offers.parquet"
    table.to_parquet(path, index=False, row_group_size=1_000)
    built = train.TrainingArrays.from_parquet(path, list(days[:2]), 10.0, batch_rows=700)
    expected = train.TrainingArrays.from_table(table[table["day"].isin(days[:2])], 10.0)
    for name in ("x", *train.TARGETS):
        assert np.array_equal(getattr(built, name), getattr(expected, name)), name
    assert built.packed().data_ptr() == built.packed().data_ptr()
    rows = np.array([5, 5, 0, 2_999, 17])
    assert np.array_equal(built.take(rows).packed().numpy(), expected.take(rows).packed().numpy())


def test_a_bootstrap_member_gathers_its_rows_as_a_copy_would() -> None:
    """`fit(..., sample=rows)` walks the resample without copying it: the same network as
    fitting `train.take(rows)`."""
    import numpy as np

    from tests.helpers.known_effect import known_effect_log

    data = train.TrainingArrays.from_table(known_effect_log(3_000, seed=1), 10.0)
    valid = train.TrainingArrays.from_table(known_effect_log(1_000, seed=2), 10.0)
    rows = train.bootstrap_users(np.arange(3_000) // 3, seed=1)
    cfg = {"seed": 1, "hidden": 8, "epochs": 2, "batch_size": 256, "lr": 0.003, "patience": 5}
    gathered, _ = train.fit(data, valid, cfg, sample=rows)
    copied, _ = train.fit(data.take(rows), valid, cfg)
    assert train.model_version(gathered, "2026-01-04") == train.model_version(copied, "2026-01-04")
