"""Evaluation at scale: the bounds that let the evaluate stage run on a million users must
not change what it measures. Pricing a population a chunk of users at a time gives the
one-pass prices, the true leads' resamples drawn in blocks give the one-draw intervals,
and the population sample is the same users every run with its share of the budget.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.ensemble import HistGradientBoostingRegressor
from threadpoolctl import threadpool_info

import couponflow.metrics
import couponflow.model
from couponflow.config import PROJECT_ROOT, Workspace, load_params, set_param
from couponflow.cpu import load_aware_threads
from couponflow.features import USER_FEATURES
from couponflow.model import CouponNet, encode_pairs
from couponflow.policy import eligible, with_control
from tests.helpers.known_effect import ARMS, MARGIN, known_effect_log
from training.baselines import GB_PARAMS, ResponseModel, TwoModelUplift, fit_baselines
from training.evaluate import (
    ModelPolicy,
    Policy,
    RewardModel,
    arm_features,
    population,
    price,
    true_leads,
)

MAX_WEIGHT = 20.0


@pytest.fixture(scope="module")
def policies() -> dict[str, Policy]:
    """A network whose coupon term is not zero (an untrained one prices every coupon
    alike) and every baseline, fitted on a known-effect log (with few boosting rounds:
    these tests are about the chunks, not the fit)."""
    log = known_effect_log(1_000, seed=3)
    log["reward"] = MARGIN * log["amount"] - log["discount"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(GB_PARAMS, "max_iter", 20)
        baselines = fit_baselines(log, MAX_WEIGHT)
    torch.manual_seed(0)
    net = CouponNet(hidden=16)
    for m in (net.base, net.appeal, net.delta):
        torch.nn.init.normal_(m[-1].weight, std=0.1)
    net.eval()
    model = ModelPolicy("challenger", net, "test", MARGIN)
    return {"challenger": model, **{b.name: b for b in baselines}}


def test_pricing_in_user_chunks_gives_the_one_pass_prices(
    policies: dict[str, Policy], monkeypatch: pytest.MonkeyPatch
) -> None:
    users = known_effect_log(200, seed=4)[USER_FEATURES].to_numpy(np.float32)
    whole = {name: price(p, users, ARMS, cap=5) for name, p in policies.items()}
    monkeypatch.setattr(couponflow.model, "USERS_PER_CHUNK", 7)  # 29 chunks, the last of 4
    assert len(couponflow.model.user_chunks(len(users))) == 29
    # the baselines' shared predictions forget what they kept for the one-pass call, so
    # they price these users again instead of answering from the rows kept
    response = policies["response"]
    assert isinstance(response, ResponseModel)
    response.cost_model.pairs.forget()
    chunked = {name: price(p, users.copy(), ARMS, cap=5) for name, p in policies.items()}
    for name, p in whole.items():
        if name == "challenger":  # torch may sum a smaller batch in another order
            np.testing.assert_allclose(chunked[name].value, p.value, rtol=1e-5, atol=1e-9)
            np.testing.assert_allclose(chunked[name].cost, p.cost, rtol=1e-5, atol=1e-9)
        else:
            np.testing.assert_array_equal(chunked[name].value, p.value, err_msg=name)
            np.testing.assert_array_equal(chunked[name].cost, p.cost, err_msg=name)


def test_the_reward_model_predicts_every_arm_in_chunks_as_in_one_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = known_effect_log(1_000, seed=3)
    log["reward"] = MARGIN * log["amount"] - log["discount"]
    x = np.column_stack([log[USER_FEATURES].to_numpy(np.float32), arm_features(log)])
    model = HistGradientBoostingRegressor(max_iter=20, random_state=0).fit(x, log["reward"])
    users = known_effect_log(200, seed=4)[USER_FEATURES].to_numpy(np.float32)
    block = arm_features(ARMS)
    m = len(block)
    one_pass = model.predict(
        np.column_stack([np.repeat(users, m, axis=0), np.tile(block, (len(users), 1))])
    ).reshape(len(users), m)
    monkeypatch.setattr(couponflow.model, "USERS_PER_CHUNK", 7)  # 29 chunks, the last of 4
    np.testing.assert_array_equal(RewardModel._every_arm(model, users, block), one_pass)


def test_the_baselines_share_one_cost_prediction(policies: dict[str, Policy]) -> None:
    """Every baseline prices the same users with one cost model: it predicts them once,
    and hands out a read-only array, so no policy can change another's costs."""
    users = known_effect_log(50, seed=5)[USER_FEATURES].to_numpy(np.float32)
    costs = [
        p.value_and_cost(users, ARMS)[1] for name, p in policies.items() if name != "challenger"
    ]
    assert all(cost is costs[0] for cost in costs)
    assert not costs[0].flags.writeable
    again = policies["response"].value_and_cost(users.copy(), ARMS)[1]
    assert again is not costs[0]
    np.testing.assert_array_equal(again, costs[0])


def test_the_baselines_never_predict_no_coupon_and_answer_as_if_they_had(
    policies: dict[str, Policy],
) -> None:
    """Pricing only the coupon columns gives what predicting every arm and setting "no
    coupon" to 0 gave, bit for bit; arms without "no coupon" first are refused."""
    users = known_effect_log(60, seed=6)[USER_FEATURES].to_numpy(np.float32)
    pairs = encode_pairs(users, ARMS)
    response, uplift = policies["response"], policies["two_model_uplift"]
    assert isinstance(response, ResponseModel) and isinstance(uplift, TwoModelUplift)
    m = len(ARMS)
    cost = np.maximum(response.cost_model.model.predict(pairs).reshape(-1, m), 0.0)
    p_redeem = response.model.predict_proba(pairs)[:, 1].reshape(-1, m)
    with_coupon = uplift.treated.predict(pairs).reshape(-1, m)
    gain = with_coupon - uplift.control.predict(pairs[::m, : len(USER_FEATURES)])[:, None]
    for old, (value, new_cost) in (
        (p_redeem, response.value_and_cost(users, ARMS)),
        (gain, uplift.value_and_cost(users, ARMS)),
    ):
        old[:, 0] = 0.0
        np.testing.assert_array_equal(value, old)
        cost[:, 0] = 0.0
        np.testing.assert_array_equal(new_cost, cost)
    with pytest.raises(ValueError, match="no coupon"):
        response.value(users, ARMS.iloc[1:])


def test_rows_priced_last_are_not_predicted_again_and_answer_the_same(
    policies: dict[str, Policy], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The baselines' learners predict only the rows of new users that are not, byte for
    byte, rows of the users priced last against the same arms (the last judged day's users
    are in the population); the answers are those of predicting every row anew."""
    response = policies["response"]
    assert isinstance(response, ResponseModel)
    shared = response.cost_model.pairs
    first = known_effect_log(50, seed=8)[USER_FEATURES].to_numpy(np.float32)
    new = known_effect_log(30, seed=9)[USER_FEATURES].to_numpy(np.float32)
    users = np.concatenate([new[:10], first[20:40], new[10:]])  # 50 rows, 30 new
    predicted = []
    learners = dict(shared.learners)
    for name, learner in learners.items():

        def counted(chunk: np.ndarray, pairs: np.ndarray, learner=learner) -> np.ndarray:
            predicted.append(len(chunk))
            return learner(chunk, pairs)

        shared.learners[name] = counted
    try:
        baselines = {n: p for n, p in policies.items() if n != "challenger"}
        for p in baselines.values():
            p.value_and_cost(first, ARMS)
        predicted.clear()
        reused = {n: p.value_and_cost(users, ARMS) for n, p in baselines.items()}
        assert predicted == [30] * len(learners)  # the 20 rows of `first` were kept
        shared.forget()
        anew = {n: p.value_and_cost(users.copy(), ARMS) for n, p in baselines.items()}
        assert predicted == [30] * len(learners) + [50] * len(learners)
        for name, (value, cost) in reused.items():
            np.testing.assert_array_equal(value, anew[name][0], err_msg=name)
            np.testing.assert_array_equal(cost, anew[name][1], err_msg=name)
        other_arms = ARMS.copy()  # other arms: nothing is reused
        predicted.clear()
        response.value(first, other_arms)
        assert predicted == [50] * len(learners)
    finally:
        shared.learners.update(learners)
        shared.forget()


def test_the_challenger_scores_a_population_once_for_its_prices_and_rewards(
    policies: dict[str, Policy],
) -> None:
    challenger = policies["challenger"]
    assert isinstance(challenger, ModelPolicy)
    users = known_effect_log(40, seed=7)[USER_FEATURES].to_numpy(np.float32)
    first = challenger.scores(users, ARMS)
    assert challenger.scores(users, ARMS) is first
    assert not first.incremental_profit.flags.writeable
    again = challenger.scores(users.copy(), ARMS)  # other users: scored anew, the same
    assert again is not first
    np.testing.assert_array_equal(again.expected_cost, first.expected_cost)


def test_true_lead_intervals_do_not_depend_on_the_resampling_blocks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(1)
    per_user = {
        name: rng.normal(0.1 * i, 1.0, 301) for i, name in enumerate(("challenger", "a", "b"))
    }
    level = 0.9
    monkeypatch.setattr(couponflow.metrics, "BOOTSTRAP_BLOCK", 1_000)  # 3 resamples a block
    leads = true_leads(per_user, level)
    resample = np.random.default_rng(0).integers(0, 301, (400, 301))  # all at once
    for name in ("a", "b"):
        diff = per_user["challenger"] - per_user[name]
        low, high = np.quantile(diff[resample].sum(axis=1), [0.05, 0.95])
        assert leads[name] == {"value": float(diff.sum()), "low": low, "high": high}


def test_the_population_sample_is_fixed_and_gets_its_share_of_the_budget(tmp_path: Path) -> None:
    from couponflow.landing import load_offline
    from couponflow.world import World
    from feature_repo.store import publish_features

    params = load_params(PROJECT_ROOT / "params.yaml")
    set_param(params, "world.n_users", 300)
    ws = Workspace(tmp_path)
    world = World(params["world"])
    days = ["2026-01-01", "2026-01-02"]
    for day in days:
        load_offline(ws, day, world.simulate_day(day))
    publish_features(ws, days[0])
    day = pd.Timestamp(days[1])
    arms = with_control(eligible(world.catalogue(day), day))

    everyone, whole = population(ws, day, arms, 0.05, 30, sample=None)
    assert len(everyone) == 300 and whole.budget == pytest.approx(0.05 * 300)
    same, _ = population(ws, day, arms, 0.05, 30, sample=300)
    pd.testing.assert_frame_equal(same, everyone)

    sampled, part = population(ws, day, arms, 0.05, 30, sample=120)
    again, _ = population(ws, day, arms, 0.05, 30, sample=120)
    pd.testing.assert_frame_equal(sampled, again)
    assert len(sampled) == 120 and part.budget == pytest.approx(0.05 * 120)
    assert sampled["user_id"].is_monotonic_increasing
    rows = everyone.reset_index().merge(sampled, on=list(sampled.columns))["index"]
    np.testing.assert_array_equal(part.users, whole.users[rows.to_numpy()])


# -- the judged days: pooled, randomised, through the real gate ----------------------------
def known_gain_days(n: int, days: int, seed: int) -> list:
    """Days of a uniformly randomised log (the explore slice) over "no coupon" and two
    coupons of known true gain: coupon 1 earns x per user (x ~ N(0, 1)), coupon 2 loses
    0.5 for everyone."""
    from training.evaluate import EvalDay

    rng = np.random.default_rng(seed)
    arms = pd.DataFrame({"coupon_id": [None, "C1", "C2"]})
    out = []
    for k in range(days):
        x = rng.normal(size=n)
        gain = np.column_stack([np.zeros(n), x, np.full(n, -0.5)])
        logged = rng.integers(0, 3, n)
        reward = 1.0 + gain[np.arange(n), logged] + rng.normal(scale=2.0, size=n)
        rows = pd.DataFrame(
            {
                "user_id": np.arange(n) + k * n,
                "reward": reward,
                "propensity": 1 / 3,
                "slice": "explore",
            }
        )
        day = EvalDay(f"2026-01-0{k + 5}", rows, x[:, None], arms, logged, float(n))
        day.true_gain = gain
        out.append(day)
    return out


def gate_on(days: list, values: dict[str, list[np.ndarray]]) -> dict[str, dict]:
    """Each candidate (value matrices per day) judged as a first model by the real gate."""
    from couponflow.config import PROJECT_ROOT, load_params
    from couponflow.evaluation import NO_COUPON
    from training.evaluate import Priced, build_report, decide_days, judge
    from training.gate import decide

    gate = load_params(PROJECT_ROOT / "params.yaml")["gate"]
    cost = [np.where(np.arange(3) > 0, 0.1, 0.0) * np.ones((len(d.rows), 1)) for d in days]
    none = [np.where(np.arange(3) > 0, -1.0, 0.0) * np.ones((len(d.rows), 1)) for d in days]
    priced = {
        name: [Priced(v, c) for v, c in zip(vs, cost, strict=True)]
        for name, vs in {**values, NO_COUPON: none}.items()
    }
    q = [np.zeros((len(d.rows), 3)) for d in days]  # DR with no model: IPS, still unbiased
    judged = judge(days, decide_days(days, priced), q, 0.9, 200)
    kinds = {name: "candidate" for name in priced}
    return {name: decide(build_report(judged, name, {}, kinds, None), gate) for name in values}


def test_the_gate_passes_the_oracle_and_refuses_harmful_policies_on_a_big_sample() -> None:
    days = known_gain_days(4_000, 3, seed=5)
    truth = [d.true_gain for d in days]
    verdicts = gate_on(
        days,
        {
            "oracle": truth,
            "everyone_coupon_2": [np.where(np.arange(3) == 2, 1.0, 0.0) * t for t in truth],
            "anti_calibrated": [-t for t in truth],
        },
    )
    assert verdicts["oracle"]["promote"], verdicts["oracle"]["checks"]
    assert not verdicts["everyone_coupon_2"]["promote"]
    anti = verdicts["anti_calibrated"]
    assert not anti["promote"]
    assert any("anti-calibrated" in c["check"] and not c["passed"] for c in anti["checks"])


def test_pooling_days_shrinks_the_standard_error_of_the_lead() -> None:
    from couponflow.evaluation import NO_COUPON
    from training.evaluate import Priced, decide_days, judge

    days = known_gain_days(1_000, 4, seed=6)
    se = []
    for k in (1, 4):
        part = days[:k]
        none = [np.where(np.arange(3) > 0, -1.0, 0.0) * np.ones((1_000, 1)) for _ in part]
        cost = [np.zeros((1_000, 3)) for _ in part]
        priced = {
            "oracle": [Priced(d.true_gain, c) for d, c in zip(part, cost, strict=True)],
            NO_COUPON: [Priced(v, c) for v, c in zip(none, cost, strict=True)],
        }
        q = [np.zeros((1_000, 3)) for _ in part]
        judged = judge(part, decide_days(part, priced), q, 0.9, 300)
        se.append(judged.lead("oracle", NO_COUPON).se)
    assert se[1] == pytest.approx(se[0] / 2, rel=0.25)  # 1 / sqrt(4 days)


def test_bench_gate_runs_at_tiny_scale() -> None:
    """benchmarks/bench_gate.py end to end on one small world, so it cannot rot."""
    import argparse

    from benchmarks.bench_gate import CANDIDATES, bench
    from couponflow.config import PROJECT_ROOT, load_params

    args = argparse.Namespace(
        cases=1, users=400, train_days=2, eval_days=2, rows="all", confidence=0.9,
        bootstrap=50, first_seed=3,
    )  # fmt: skip
    gate = load_params(PROJECT_ROOT / "params.yaml")["gate"]
    frame = bench(args, gate)
    assert list(frame["candidate"]) == list(CANDIDATES)
    assert frame["true_lead"].notna().all() and (frame["se"] >= 0).all()
    oracle = frame[frame["candidate"] == "oracle"]
    assert oracle["true_lead"].item() > 0 and oracle["se"].item() > 0


def test_the_baselines_read_the_newest_days_within_their_rows(tmp_path: Path) -> None:
    """The judged days always, and of the days before them the newest whole ones within
    `evaluation.baseline_rows` (at least one); every day when they fit or with null."""
    from training.evaluate import read_judged_and_fitted

    days = pd.date_range("2026-01-01", periods=6, freq="D", tz="UTC")
    table = pd.DataFrame({"day": days.repeat([5, 4, 3, 3, 2, 2]), "x": range(19)})
    path = tmp_path / "offers.parquet"
    table.to_parquet(path)
    first = days[4]  # judged: the 5th and 6th

    def read(rows: int | None) -> list[int]:
        got = read_judged_and_fitted(path, table["day"], first, rows)
        return sorted(got["day"].dt.day.unique().tolist())

    assert read(None) == read(15) == [1, 2, 3, 4, 5, 6]
    assert read(6) == [3, 4, 5, 6] and read(5) == [4, 5, 6] and read(1) == [4, 5, 6]
    pd.testing.assert_frame_equal(read_judged_and_fitted(path, table["day"], first, None), table)


def test_the_decision_sample_keeps_whole_users_the_same_every_run() -> None:
    """Above `evaluation.decision_sample` the judged days keep about that many decisions:
    all of a sampled user's, on every judged day, the same users every run; the days the
    baselines fit on are untouched, and at or under the sample nothing is cut."""
    from training.evaluate import judged_sample

    rng = np.random.default_rng(0)
    days = pd.date_range("2026-01-01", periods=4, freq="D", tz="UTC")
    table = pd.DataFrame(
        {"day": days.repeat(6_000), "user_id": rng.integers(0, 5_000, 24_000).astype(str)}
    )
    first = days[2]
    judged = table[table["day"] >= first]

    whole, logged = judged_sample(table, first, None)
    assert whole is table and logged == len(judged) == 12_000
    assert judged_sample(table, first, 12_000)[0] is table

    cut, logged = judged_sample(table, first, 3_000)
    assert logged == 12_000
    pd.testing.assert_frame_equal(cut[cut["day"] < first], table[table["day"] < first])
    kept = cut[cut["day"] >= first]
    assert 2_500 < len(kept) < 3_500
    sampled = set(kept["user_id"])
    assert kept.equals(judged[judged["user_id"].isin(sampled)])  # whole users, every day
    pd.testing.assert_frame_equal(judged_sample(table, first, 3_000)[0], cut)


def test_a_sampled_report_says_how_many_decisions_were_logged() -> None:
    from couponflow.evaluation import render_lines
    from tests.helpers.evaluation import evaluation, model

    report = evaluation(model("c"))
    report.logged_decisions = report.decisions
    assert f": {report.decisions} logged decisions (" in render_lines(report)[0]
    report.logged_decisions = report.decisions * 9
    line = render_lines(report)[0]
    assert f"{report.decisions} of {report.decisions * 9} logged decisions" in line
    assert "evaluation.decision_sample" in line


def test_the_stage_shows_its_steps_beyond_one_chunk_of_decisions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The progress line names each long step while it runs and counts it when it ends; a
    judged log of one user chunk (the tests' and tiny worlds' scale) keeps the stage quiet."""
    from types import SimpleNamespace

    from training.evaluate import Steps

    def days(*sizes: int) -> list:
        return [SimpleNamespace(rows=range(n)) for n in sizes]

    small = Steps.for_stage(days(5_000, 5_000), folds=2)
    assert small.bar.disable and small.bar.total == 1 + 2 + 2 + 1
    with small.step("fitting the baselines"):
        pass
    small.close()
    assert capsys.readouterr().err == ""

    big = Steps.for_stage(days(15_000, 15_000), folds=2)
    assert not big.bar.disable
    with big.step("pricing 2026-01-20's 15,000 decisions"):
        pass
    with big.step("the population"):
        assert "the population" in capsys.readouterr().err
    assert big.bar.n == 2
    big.close()


@pytest.mark.parametrize(("load", "threads"), [(0.5, os.cpu_count()), (40.0, 1)])
def test_the_learners_take_every_core_only_while_one_is_idle(
    load: float, threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    with load_aware_threads() as chosen:
        used = {p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"}
    assert chosen == threads
    assert used == {threads}  # scikit-learn's OpenMP runtime is loaded by the imports above


def test_the_baselines_answer_the_same_on_any_thread_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The load picks the learners' threads (couponflow.cpu): it may change how long the
    evaluate stage takes, never what it finds."""
    log = known_effect_log(1_000, seed=3)
    log["reward"] = MARGIN * log["amount"] - log["discount"]
    users = known_effect_log(200, seed=4)[USER_FEATURES].to_numpy(np.float32)
    monkeypatch.setitem(GB_PARAMS, "max_iter", 20)
    answers = []
    for load in (0.0, 40.0):  # every core, then one
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        answers.append(
            {b.name: b.value_and_cost(users, ARMS) for b in fit_baselines(log, MAX_WEIGHT)}
        )
    for name, (value, cost) in answers[0].items():
        np.testing.assert_array_equal(value, answers[1][name][0], err_msg=name)
        np.testing.assert_array_equal(cost, answers[1][name][1], err_msg=name)
