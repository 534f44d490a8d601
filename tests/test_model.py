"""The recommender network and its trainer.

Behaviour is checked on a model trained on a synthetic log whose causal effect is known:
half the shoppers are price sensitive (visible as a high redemption rate), a category
coupon only moves shoppers who like that category, and the logging policy is uniform with
exact propensities. Unit tests pin the input layout, the gate on the coupon's effect, the
weights and early stopping.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as F

import training.train
from couponflow.contract import CATEGORIES
from couponflow.features import COUPON_FEATURES, USER_FEATURES, default_user_features
from couponflow.model import (
    ARM_FEATURES,
    EFFECT,
    N_ARM_INPUTS,
    N_USER_INPUTS,
    CouponNet,
    encode,
    load_model,
    predict,
    save_model,
)
from couponflow.policy import score, with_control
from tests.helpers.known_effect import ARMS, MARGIN, known_effect_log
from training.train import (
    TrainingArrays,
    bootstrap_users,
    fit,
    fit_ensemble,
    inverse_propensity_weights,
    member_processes,
    model_version,
)

CFG = {
    "seed": 0,
    "hidden": 32,
    "epochs": 40,
    "batch_size": 512,
    "lr": 0.005,
    "patience": 4,
    "max_inverse_propensity": 20.0,
}


def shopper(sensitive: bool, likes: str | None = None, orders: float = 0.0) -> np.ndarray:
    """One user's feature row: price sensitive or not, optionally loving one category."""
    row = default_user_features()
    row[USER_FEATURES.index("offers_30d")] = 4.0
    row[USER_FEATURES.index("redemption_rate_30d")] = 0.6 if sensitive else 0.05
    row[USER_FEATURES.index("orders_30d")] = orders
    row[USER_FEATURES.index("avg_basket_30d")] = 60.0
    if likes:
        for c in CATEGORIES:
            row[USER_FEATURES.index(f"affinity_{c}")] = float(c == likes)
    return row


@pytest.fixture(scope="module")
def trained() -> tuple[CouponNet, dict]:
    train = TrainingArrays.from_table(known_effect_log(60_000, seed=1), 20.0)
    valid = TrainingArrays.from_table(known_effect_log(15_000, seed=2), 20.0)
    return fit(train, valid, CFG)


def arm(coupon_id: str) -> int:
    return int(np.flatnonzero(ARMS["coupon_id"].fillna("") == coupon_id)[0])


# -- behaviour --------------------------------------------------------------------------


def test_purchase_probability_rises_with_the_coupon_value(trained: tuple) -> None:
    net, _ = trained
    s = score(net, shopper(sensitive=True)[None, :], ARMS, MARGIN)
    p = s.p_purchase[0, [0, arm("A5"), arm("A10"), arm("A15")]]
    assert np.all(np.diff(p) > 0), p
    assert p[-1] > 2 * p[0]  # true: 0.17 vs 0.03


def test_a_category_lover_gets_that_category_coupon(trained: tuple) -> None:
    net, _ = trained
    for likes, coupon in [("home", "HOME10"), ("electronics", "ELEC10")]:
        s = score(net, shopper(sensitive=True, likes=likes)[None, :], ARMS, MARGIN)
        assert s.incremental_profit[0].argmax() == arm(coupon), (likes, s.incremental_profit)
        assert s.incremental_profit[0, arm(coupon)] > 0


def test_no_coupon_when_every_coupon_loses_money(trained: tuple) -> None:
    net, _ = trained
    users = np.stack([shopper(sensitive=False, orders=k) for k in (2.0, 3.0, 4.0)])
    s = score(net, users, ARMS, MARGIN)
    assert (s.incremental_profit[:, 1:] < 0).all(), s.incremental_profit
    assert (s.incremental_profit.argmax(axis=1) == 0).all()


def test_same_data_and_seed_give_the_same_model() -> None:
    train = TrainingArrays.from_table(known_effect_log(4_000, seed=3), 20.0)
    valid = TrainingArrays.from_table(known_effect_log(1_000, seed=4), 20.0)
    cfg = {**CFG, "epochs": 3}
    threads = torch.get_num_threads()
    first, log = fit(train, valid, cfg)
    assert torch.get_num_threads() == threads  # the caller's setting is given back
    again, _ = fit(train, valid, cfg)
    other, _ = fit(train, valid, {**cfg, "seed": 1})
    assert model_version(first, "2026-01-09") == model_version(again, "2026-01-09")
    assert model_version(first, "2026-01-09") != model_version(other, "2026-01-09")
    assert log["device"] in {"cpu", "cuda"} and log["samples_per_second"] > 0


def test_matrix_products_take_the_branch_every_cpu_runs_alike() -> None:
    """Importing the project (as every stage and server does before torch computes) puts
    torch's MKL on its AVX2 branch (couponflow/__init__.py), not the CPU's own."""
    import ctypes

    library = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        branch_of = ctypes.CDLL(str(library)).mkl_serv_cbwr_get
    except (OSError, AttributeError):
        pytest.skip("this torch has no MKL")
    branch_of.restype = ctypes.c_int
    if os.environ.get("MKL_CBWR", "AVX2") != "AVX2":
        pytest.skip("MKL_CBWR is set otherwise in this environment")
    cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if "GenuineIntel" not in cpu or " avx2" not in cpu:
        pytest.skip("MKL's AVX2 branch runs on Intel CPUs with AVX2 only")
    assert branch_of(1) == 10  # MKL_CBWR_BRANCH: MKL_CBWR_AVX2 (AUTO is 2, COMPATIBLE 3)


def test_scores_do_not_depend_on_the_callers_thread_count() -> None:
    """A stage scores with the machine's core count unless told otherwise; MKL's
    reproducible branch rounds a product differently with another thread count, so scoring
    pins its own (`SCORING_THREADS`) and hands the caller's setting back."""
    train = TrainingArrays.from_table(known_effect_log(2_000, seed=3), 20.0)
    net, _ = fit(train, train, {**CFG, "hidden": 64, "epochs": 1})
    # 20,000 rows: split over 3 threads, MKL rounded some of them another way
    rows = TrainingArrays.from_table(known_effect_log(20_000, seed=5), 20.0).x
    previous = torch.get_num_threads()
    try:
        outputs = []
        for threads in (1, 3):
            torch.set_num_threads(threads)
            outputs.append(predict(net, rows))
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(previous)
    for head in outputs[0]:
        assert np.array_equal(outputs[0][head], outputs[1][head]), head


# Trains and scores a small network in a child process; prints its version and a hash of
# its scores. The child imports the project before torch computes anything, as a stage does.
_TRAIN_AND_SCORE = """
import hashlib, sys
import numpy as np, torch
from tests.helpers.known_effect import known_effect_log
from training.train import TrainingArrays, fit, model_version
from couponflow.model import predict
train = TrainingArrays.from_table(known_effect_log(6_000, seed=1), 10.0)
valid = TrainingArrays.from_table(known_effect_log(20_000, seed=2), 10.0)
cfg = {"seed": 1, "hidden": 64, "epochs": 4, "batch_size": 512, "lr": 0.003, "patience": 5}
net, _ = fit(train, valid, cfg)
torch.set_num_threads(int(sys.argv[1]))  # the stage's own default: the machine's cores
out = predict(net, valid.x)
print(model_version(net, "2026-01-04"), hashlib.sha256(out["p_purchase"].tobytes()).hexdigest())
"""


@pytest.mark.integration  # child processes, each its own MKL
def test_the_same_data_trains_and_scores_the_same_network_on_another_cpu() -> None:
    """MKL picks its kernels by the CPU unless told otherwise: a machine it sees as AVX2
    only (another generation, another vendor) trained a different network from the same
    data and seed, and the demo's challenger truly earned another figure. MKL is told to
    see it as AVX2-only in one child, which also scores with another thread count."""
    import os
    import subprocess
    import sys

    from couponflow.config import PROJECT_ROOT

    def child(threads: int, **env: str) -> str:
        base = {k: v for k, v in os.environ.items() if not k.startswith("MKL_")}
        done = subprocess.run(
            [sys.executable, "-c", _TRAIN_AND_SCORE, str(threads)],
            env={**base, "PYTHONPATH": str(PROJECT_ROOT), **env},
            cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        return done.stdout.strip().splitlines()[-1]

    assert child(1) == child(3, MKL_ENABLE_INSTRUCTIONS="AVX2")


@pytest.mark.integration  # a process group of trainers
def test_data_parallel_training_shares_the_work_and_learns() -> None:
    """The multi-GPU path (DistributedDataParallel, one process per device) run on the CPU
    over gloo: two processes each train on half of every epoch and end with one network
    that has learned what a single process learns."""
    train = TrainingArrays.from_table(known_effect_log(8_000, seed=5), 20.0)
    valid = TrainingArrays.from_table(known_effect_log(2_000, seed=6), 20.0)
    cfg = {**CFG, "epochs": 4, "device": "cpu"}
    single, single_log = fit(train, valid, cfg)
    parallel, log = fit(train, valid, {**cfg, "processes": 2})
    assert (log["processes"], single_log["processes"]) == (2, 1)
    assert log["epochs_run"] == len(log["history"]) >= 1
    first, last = log["history"][0]["valid_loss"], min(h["valid_loss"] for h in log["history"])
    assert last < first  # it learned
    single_best = min(h["valid_loss"] for h in single_log["history"])
    assert last < single_best * 1.05  # half the steps per epoch, about the same fit
    assert model_version(parallel, "2026-01-09") != model_version(single, "2026-01-09")


def test_members_differ_by_seed_on_every_row_unless_bootstrapped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`model.bootstrap`: off, every member trains on every row from its own seed; on, each
    member but the first trains on its own resample of the shoppers."""
    train = TrainingArrays.from_table(known_effect_log(2_000, seed=5), 20.0)
    valid = TrainingArrays.from_table(known_effect_log(500, seed=6), 20.0)
    users = np.arange(len(train)) % 300
    seen: list[tuple[int, np.ndarray | None]] = []
    real_fit = training.train.fit

    def recording_fit(*args: object, **kwargs: object) -> tuple:
        cfg, sample = args[2], args[5]
        seen.append((cfg["seed"], None if sample is None else np.array(sample)))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(training.train, "fit", recording_fit)
    cfg = {**CFG, "epochs": 1, "device": "cpu", "members": 3, "member_processes": 1}
    deep, _ = fit_ensemble(train, valid, users, cfg)
    assert [(seed, sample is None) for seed, sample in seen] == [(0, True), (1, True), (2, True)]
    first, second = (m.state_dict() for m in deep.members[:2])
    assert any(not torch.equal(first[k], second[k]) for k in first)  # their seeds differ

    seen.clear()
    fit_ensemble(train, valid, users, {**cfg, "bootstrap": True})
    assert [seed for seed, _ in seen] == [0, 1, 2] and seen[0][1] is None
    for i in (1, 2):
        assert np.array_equal(seen[i][1], bootstrap_users(users, seed=i))


@pytest.mark.integration  # forked trainers
@pytest.mark.parametrize("bootstrap", [False, True])
def test_members_trained_side_by_side_are_the_members_trained_one_by_one(
    bootstrap: bool,
) -> None:
    """`model.member_processes`: the ensemble's members fitted in forked processes at once
    hold, bit for bit, the weights fitted one after another in this process."""
    train = TrainingArrays.from_table(known_effect_log(4_000, seed=5), 20.0)
    valid = TrainingArrays.from_table(known_effect_log(1_000, seed=6), 20.0)
    users = np.arange(len(train)) % 700
    cfg = {**CFG, "epochs": 3, "device": "cpu", "members": 3, "bootstrap": bootstrap}
    alone, alone_log = fit_ensemble(train, valid, users, {**cfg, "member_processes": 1})
    together, log = fit_ensemble(train, valid, users, {**cfg, "member_processes": 2})
    assert (alone_log["member_processes"], log["member_processes"]) == (1, 2)
    assert len(together.members) == 3 and log["epochs_run"] == alone_log["epochs_run"]
    for one, other in zip(alone.members, together.members, strict=True):
        for (name, a), b in zip(one.state_dict().items(), other.state_dict().values(), strict=True):
            assert torch.equal(a, b), name
    assert not together.members[0].training  # returned ready to score, as fit's are


def test_member_processes_follow_the_config_the_device_and_the_members() -> None:
    cfg = {**CFG, "device": "cpu", "members": 5}
    assert member_processes({**cfg, "member_processes": 3}) == 3
    assert member_processes({**cfg, "member_processes": 9}) == 5  # no more than the members
    assert member_processes({**cfg, "members": 1, "member_processes": 3}) == 1
    assert member_processes({**cfg, "processes": 2, "member_processes": 3}) == 1  # ranks instead
    assert member_processes({**cfg, "device": "cuda", "member_processes": 3}) == 1
    assert 1 <= member_processes(cfg) <= min(os.cpu_count() or 1, 5)  # by the load


# -- the inputs and the network -----------------------------------------------------------


def test_inputs_are_a_user_block_then_an_arm_block() -> None:
    users = np.stack([shopper(sensitive=True, likes="home")] * len(ARMS))
    coupons = ARMS.copy()
    coupons.loc[1:, COUPON_FEATURES] = 3.0  # a coupon's track record
    x = encode(users, coupons)
    assert x.shape == (len(ARMS), N_USER_INPUTS + N_ARM_INPUTS) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, :N_USER_INPUTS], np.log1p(users))  # same user in each row
    is_control = x[:, N_USER_INPUTS]
    np.testing.assert_array_equal(is_control, [1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(x[0, N_USER_INPUTS + 1 :], 0.0)  # no coupon: nothing else
    stats = x[1:, N_USER_INPUTS + len(ARM_FEATURES) :]
    np.testing.assert_allclose(stats, np.log1p(3.0))
    affinity = x[:, N_USER_INPUTS + ARM_FEATURES.index("category_affinity")]
    np.testing.assert_array_equal(affinity, [0, 1, 1, 1, 1, 0])  # site-wide counts as liked


def test_the_coupon_effect_is_gated_by_is_control() -> None:
    torch.manual_seed(0)
    net = CouponNet(n_user=3, n_arm=2, hidden=8)
    control = torch.tensor([[0.1, 0.2, 0.3, 1.0, 0.0], [0.1, 0.2, 0.3, 1.0, 5.0]])
    coupon = control.clone()
    coupon[:, 3] = 0.0
    with torch.no_grad():
        assert torch.equal(net(coupon), net(control))  # untrained: no coupon changes anything
        for m in (net.base, net.appeal, net.delta):
            torch.nn.init.normal_(m[-1].weight)
        assert torch.equal(net(control)[0], net(control)[1])  # the arm block is ignored
        user = net.base(control[:, :3])
        torch.testing.assert_close(net(control), user[:, :3])
        sensitivity, aversion = F.softplus(user[:, 3]), user[:, 4]
        delta = net.delta(coupon)
        purchase = sensitivity * F.softplus(net.appeal(coupon[:, 3:]))[:, 0] - aversion
        effect = torch.cat([purchase[:, None] + delta[:, :1], delta[:, 1:]], dim=1)
        torch.testing.assert_close(net(coupon), user[:, :3] + effect)
        assert not torch.allclose(net(coupon), net(control))


def test_the_purchase_effect_is_the_users_sensitivity_times_the_offers_appeal() -> None:
    """Beside the free-form term, two offers' purchase effects differ for a shopper in
    proportion to how much that shopper responds: a more sensitive shopper moves more
    between a weak and a strong offer."""
    torch.manual_seed(2)
    net = CouponNet(n_user=3, n_arm=2, hidden=8)
    with torch.no_grad():
        for m in (net.base, net.appeal):
            torch.nn.init.normal_(m[-1].weight)
        users = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.1, 0.5]])
        arms = torch.tensor([[0.0, 0.0], [0.0, 3.0]])  # two coupons, is_control 0
        x = torch.cat([users.repeat_interleave(2, 0), arms.repeat(2, 1)], dim=1)
        purchase = net(x, per_user=2)[:, 0].view(2, 2)
        user = net.base(users)
        appeal = F.softplus(net.appeal(arms))[:, 0]
        spread = purchase[:, 1] - purchase[:, 0]
        torch.testing.assert_close(spread, F.softplus(user[:, 3]) * (appeal[1] - appeal[0]))


def test_predict_returns_probabilities_and_amounts() -> None:
    users = np.stack([shopper(sensitive=True)] * len(ARMS))
    out = predict(CouponNet(), encode(users, ARMS))
    for p in (out["p_purchase"], out["p_redeem"]):
        assert ((p > 0) & (p < 1)).all()
    assert (out["amount"] > 0).all()
    np.testing.assert_allclose(out["p_purchase"], out["p_purchase"][0])  # no effect yet


def test_saved_model_round_trips_and_refuses_another_layout(tmp_path: Path) -> None:
    net = CouponNet(hidden=16)
    path = tmp_path / "model.pt"
    save_model(net, path, {"version": "v1"})
    loaded, meta = load_model(path)
    assert meta["version"] == "v1" and meta["hidden"] == 16
    assert (meta["n_user"], meta["n_arm"]) == (N_USER_INPUTS, N_ARM_INPUTS)
    x = encode(np.stack([shopper(sensitive=False)] * len(ARMS)), ARMS)
    np.testing.assert_array_equal(predict(loaded, x)["p_purchase"], predict(net, x)["p_purchase"])

    blob = torch.load(path, weights_only=False)
    blob["meta"]["user_features"] = USER_FEATURES[:-1]
    torch.save(blob, path)
    with pytest.raises(ValueError, match="different feature list"):
        load_model(path)
    blob["meta"]["user_features"] = USER_FEATURES
    del blob["meta"]["n_arm"]  # a model from before the user/arm split
    torch.save(blob, path)
    with pytest.raises(ValueError, match="different feature list"):
        load_model(path)
    blob["meta"]["n_arm"] = N_ARM_INPUTS
    del blob["meta"]["effect"]  # a model from before the factorised effect
    torch.save(blob, path)
    with pytest.raises(ValueError, match="free-form network.*retrain it"):
        load_model(path)


# -- the trainer ------------------------------------------------------------------------


def test_weights_are_clipped_inverse_propensities_with_mean_one() -> None:
    w = inverse_propensity_weights(np.array([0.5, 0.25, 0.01, 0.01]), max_weight=20.0)
    assert w.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(w / w[0], [1.0, 2.0, 10.0, 10.0], rtol=1e-6)  # 100 clipped to 20
    assert inverse_propensity_weights(np.full(3, 1 / 3), 20.0) == pytest.approx(np.ones(3))


def test_arrays_from_a_table() -> None:
    table = known_effect_log(50, seed=5)
    arrays = TrainingArrays.from_table(table, 20.0)
    assert arrays.x.shape == (50, N_USER_INPUTS + N_ARM_INPUTS) and len(arrays) == 50
    np.testing.assert_array_equal(arrays.offered, table["coupon_id"].notna())
    np.testing.assert_array_equal(arrays.purchased, table["purchased"])
    bought = table["purchased"].to_numpy()
    np.testing.assert_allclose(arrays.log_amount[bought], np.log(table["amount"][bought]), 1e-6)
    assert arrays.weight.dtype == np.float32 and arrays.weight.mean() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="rows"):
        TrainingArrays(arrays.x, arrays.purchased[:-1], *[np.zeros(50)] * 4)


def test_fit_trains_any_layout_and_stops_early() -> None:
    rng = np.random.default_rng(0)

    def noise(n: int) -> TrainingArrays:
        """Targets unrelated to the inputs: nothing to learn, so validation stalls."""
        x = rng.normal(size=(n, 6)).astype(np.float32)
        x[:, 4] = rng.random(n) < 0.5  # is_control of a 4 + 2 layout
        return TrainingArrays(
            x, rng.random(n) < 0.3, np.zeros(n), rng.random(n) < 0.1, 1 - x[:, 4], np.ones(n)
        )

    cfg = {**CFG, "epochs": 50, "patience": 2, "lr": 0.05}
    net, log = fit(noise(3_000), noise(1_000), cfg, n_user=4, n_arm=2)
    assert net.layout() == {"n_user": 4, "n_arm": 2, "hidden": CFG["hidden"], "effect": EFFECT}
    assert log["epochs_run"] < 50
    assert log["epochs_run"] == log["best_epoch"] + 1 + cfg["patience"]
    losses = [h["valid_loss"] for h in log["history"]]
    assert min(losses) == losses[log["best_epoch"]]
    with pytest.raises(ValueError, match="layout"):
        fit(noise(100), noise(100), cfg)  # 6 columns are not the coupon layout


def test_a_long_epoch_is_checked_every_check_rows_and_trains_the_same_steps() -> None:
    """`model.check_rows`: an epoch longer than it is checked on the early-stopping day
    every check_rows rows (whole batches) and `patience` counts those checks; the steps are
    the epoch's own, so at each epoch's end the weights are those of training it whole (the
    same validation loss, bit for bit). An epoch that fits is one check, as before."""
    train = TrainingArrays.from_table(known_effect_log(4_000, seed=5), 20.0)
    valid = TrainingArrays.from_table(known_effect_log(1_000, seed=6), 20.0)
    cfg = {**CFG, "epochs": 3, "batch_size": 512, "device": "cpu", "patience": 100}
    _, whole = fit(train, valid, cfg)
    _, fits = fit(train, valid, {**cfg, "check_rows": 10_000})
    _, pieces = fit(train, valid, {**cfg, "check_rows": 1_500})
    n = len(train)
    assert whole["history"] == fits["history"] and len(whole["history"]) == 3
    rows = [h["rows"] for h in pieces["history"]]
    assert rows == [e * n + r for e in range(3) for r in (1_024, 2_048, 3_072, n)]
    ends = [h for h in pieces["history"] if h["rows"] % n == 0]
    assert [h["valid_loss"] for h in ends] == [h["valid_loss"] for h in whole["history"]]
    assert pieces["epochs_run"] == 3

    rng = np.random.default_rng(3)
    x = rng.normal(size=(4_000, N_USER_INPUTS + N_ARM_INPUTS)).astype(np.float32)
    x[:, N_USER_INPUTS] = rng.random(4_000) < 0.5
    outcomes = (rng.random(4_000) < 0.3, np.zeros(4_000), rng.random(4_000) < 0.1)
    noise = TrainingArrays(x, *outcomes, 1 - x[:, N_USER_INPUTS], np.ones(4_000))
    stop = {**cfg, "epochs": 50, "patience": 3, "lr": 0.05, "check_rows": 1_500}
    _, log = fit(noise, valid, stop)
    losses = [h["valid_loss"] for h in log["history"]]
    assert len(losses) == int(np.argmin(losses)) + 1 + 3 < 50 * 4  # three checks, not epochs


def test_pair_encoding_equals_encoding_each_pair() -> None:
    """Scoring a catalogue encodes every (user, arm) pair at once; it must give exactly the
    inputs of encoding each pair's own row, control and coupon stats included."""
    from couponflow.model import encode, encode_pairs

    rng = np.random.default_rng(3)
    users = rng.gamma(1.0, 3.0, (5, len(USER_FEATURES))).astype(np.float32)
    m = 7
    arms = with_control(
        pd.DataFrame(
            {
                "coupon_id": [f"C{i}" for i in range(m)],
                "kind": (["percent_off", "amount_off", "threshold_off", "free_shipping"] * 2)[:m],
                "value": rng.choice([5.0, 10.0, 20.0], m),
                "min_spend": rng.choice([0.0, 50.0], m),
                "category": [*CATEGORIES[:5], "all", "all"],
                "valid_from": pd.Timestamp("2026-01-01"),
                "valid_to": pd.Timestamp("2026-02-01"),
                "budget_share": 0.1,
                **{f: rng.gamma(1.0, 10.0, m) for f in COUPON_FEATURES},
            }
        ).astype({"coupon_id": "string", "kind": "string", "category": "string"})
    )
    for some in (users[:1], users):  # one user (the service's case) and several
        tiled = arms.iloc[np.tile(np.arange(len(arms)), len(some))].reset_index(drop=True)
        expected = encode(np.repeat(some, len(arms), axis=0), tiled)
        np.testing.assert_array_equal(encode_pairs(some, arms), expected)


def test_scoring_pairs_runs_base_once_per_user_with_the_same_outputs() -> None:
    """`per_user` only shares the user-only `base` across a user's arms: every output must
    equal the row-by-row forward pass."""
    torch.manual_seed(1)
    net = CouponNet(hidden=16)
    for m in (net.base, net.appeal, net.delta):  # a coupon effect, so every part counts
        torch.nn.init.normal_(m[-1].weight)
    users, m = 4, 6
    x = torch.rand(users * m, N_USER_INPUTS + N_ARM_INPUTS)
    x[:, :N_USER_INPUTS] = x[::m, :N_USER_INPUTS].repeat_interleave(m, dim=0)  # user-major
    x[::m, N_USER_INPUTS] = 1.0  # each user's first arm is "no coupon"
    with torch.no_grad():
        torch.testing.assert_close(net(x, per_user=m), net(x))
