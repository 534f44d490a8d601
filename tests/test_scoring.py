"""Scoring a population: in pieces of rows, in chunks of users, members side by side in
forked processes. The answers must be the single pass's, to the bit where the cut is the
same, whatever the number of processes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.ensemble import HistGradientBoostingRegressor

import couponflow.model as model
from couponflow.features import USER_FEATURES, default_user_features
from couponflow.model import CouponEnsemble, CouponNet, encode_pairs, predict, predict_members
from couponflow.policy import Scores, score
from tests.helpers.known_effect import ARMS, MARGIN
from training.baselines import in_pieces
from training.scoring import member_groups, score_users, scoring_processes


def trained_looking_ensemble(members: int = 3) -> CouponEnsemble:
    """An ensemble whose every layer is non-zero (a fresh net's coupon effect is exactly
    zero, which would hide a row or member answered by the wrong piece)."""
    torch.manual_seed(0)
    net = CouponEnsemble([CouponNet() for _ in range(members)], credibility=0.5)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net


def varied_users(n: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    scale = rng.uniform(0.2, 2.0, (n, len(USER_FEATURES))).astype(np.float32)
    return np.stack([default_user_features()] * n) * scale


def test_scores_in_pieces_are_the_single_pass_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    net, users = trained_looking_ensemble(), varied_users(23)
    pairs = encode_pairs(users, model.ArmTable.from_frame(ARMS))
    whole = predict_members(net, pairs, per_user=len(ARMS))
    mean = predict(net, pairs, per_user=len(ARMS))
    # a piece of 2 users' blocks (and a last one of 1); then less than one block: one user
    for rows in (2 * len(ARMS) + 1, 1):
        monkeypatch.setattr(model, "PIECE_ROWS", rows)
        pieces = predict_members(net, pairs, per_user=len(ARMS))
        for head, values in whole.items():
            np.testing.assert_allclose(pieces[head], values, rtol=1e-5)
        np.testing.assert_allclose(
            predict(net, pairs, per_user=len(ARMS))["p_purchase"], mean["p_purchase"], rtol=1e-5
        )


def same_scores(a: Scores, b: Scores) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in Scores.__dataclass_fields__)


def chunk_by_chunk(net: model.Recommender, users: np.ndarray) -> Scores:
    """What one process scores: `score` of each chunk of users, joined."""
    chunks = [score(net, users[rows], ARMS, MARGIN) for rows in model.user_chunks(len(users))]
    return Scores(
        *(np.concatenate([getattr(c, f) for c in chunks]) for f in Scores.__dataclass_fields__)
    )


@pytest.mark.integration  # forked scoring processes
@pytest.mark.parametrize("processes", [1, 2, 3])
def test_scores_on_several_processes_are_the_chunks_scores_to_the_bit(
    monkeypatch: pytest.MonkeyPatch, processes: int
) -> None:
    monkeypatch.setattr(model, "USERS_PER_CHUNK", 7)  # 23 users: chunks of 7, 7, 7 and 2
    net, users = trained_looking_ensemble(), varied_users(23)
    got = score_users(net, users, ARMS, MARGIN, processes)
    assert same_scores(got, chunk_by_chunk(net, users))
    assert not got.incremental_profit.flags.writeable


@pytest.mark.integration  # forked scoring processes
def test_a_single_network_scores_on_several_processes_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model, "USERS_PER_CHUNK", 5)
    net, users = trained_looking_ensemble(1).members[0], varied_users(12)
    assert isinstance(net, CouponNet)
    assert same_scores(score_users(net, users, ARMS, MARGIN, 2), chunk_by_chunk(net, users))


def test_members_are_shared_out_evenly_and_each_once() -> None:
    assert member_groups(5, 2) == [range(0, 3), range(3, 5)]
    assert member_groups(2, 4) == [range(0, 1), range(1, 2)]
    assert member_groups(1, 2) == [range(0, 1)]


def test_one_scoring_process_for_one_task_a_small_population_or_a_busy_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import training.scoring as scoring

    many = scoring.MIN_FORKED_PAIRS
    monkeypatch.setattr(scoring, "learner_threads", lambda: 2)
    assert scoring_processes(1, many) == 1
    assert scoring_processes(10, many) == 2
    assert scoring_processes(10, many - 1) == 1
    monkeypatch.setattr(scoring, "learner_threads", lambda: 1)
    assert scoring_processes(10, many) == 1


def test_trees_in_pieces_answer_to_the_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(400, 6)), rng.normal(size=400)
    trees = HistGradientBoostingRegressor(max_iter=20, random_state=0).fit(x, y)
    whole = trees.predict(x)
    monkeypatch.setattr(model, "PIECE_ROWS", 64)  # 6 pieces and a short one
    assert np.array_equal(in_pieces(trees.predict, x), whole)
