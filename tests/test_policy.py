"""The policy maths shared by evaluation and the service."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from couponflow.contract import coupon_cost
from couponflow.features import COUPON_FEATURES, USER_FEATURES, default_user_features
from couponflow.model import CouponNet
from couponflow.policy import choose, eligible, greedy_arms, lagrangian, score, with_control


def catalogue() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "coupon_id": ["A", "B", "C"],
            "kind": ["percent_off", "amount_off", "free_shipping"],
            "value": [10.0, 5.0, 6.0],
            "min_spend": [0.0, 0.0, 0.0],
            "category": ["all", "fashion", "all"],
            "valid_from": pd.to_datetime(["2026-01-01", "2026-01-01", "2026-02-01"]),
            "valid_to": pd.to_datetime(["2026-03-01", "2026-01-03", "2026-03-01"]),
            "budget_share": [0.3, 0.3, 0.4],
            **dict.fromkeys(COUPON_FEATURES, [0.0, 0.0, 0.0]),
        }
    ).astype({"coupon_id": "string", "kind": "string", "category": "string"})


def test_coupon_cost_by_kind() -> None:
    cost = coupon_cost(
        np.array(["percent_off", "amount_off", "amount_off", "free_shipping"]),
        np.array([10.0, 5.0, 50.0, 6.0]),
        np.array([80.0, 80.0, 20.0, 80.0]),
    )
    np.testing.assert_allclose(cost, [8.0, 5.0, 20.0, 6.0])


def test_eligibility_respects_validity_windows() -> None:
    now = pd.Timestamp("2026-01-10")
    assert list(eligible(catalogue(), now)["coupon_id"]) == ["A"]


def test_scores_put_control_at_zero_and_cost_only_on_coupons() -> None:
    arms = with_control(catalogue())
    users = np.stack([default_user_features()] * 2)
    s = score(CouponNet(), users, arms, margin=0.3)
    assert s.incremental_profit.shape == (2, 4)
    np.testing.assert_allclose(s.incremental_profit[:, 0], 0.0)
    np.testing.assert_allclose(s.expected_cost[:, 0], 0.0)
    assert (s.expected_cost[:, 1:] > 0).all()
    assert len(USER_FEATURES) == users.shape[1]


def test_a_costly_multiplier_turns_every_offer_off() -> None:
    arms = with_control(catalogue())
    s = score(CouponNet(), default_user_features()[None, :], arms, margin=0.3)
    assert (greedy_arms(s, cost_multiplier=1e6) == 0).all()


@pytest.mark.parametrize("epsilon", [0.0, 0.2])
def test_choice_propensities_are_the_true_choice_frequencies(epsilon: float) -> None:
    value = np.array([0.0, 0.5, 2.0, -1.0])  # arm 2 is greedy
    rng = np.random.default_rng(1)
    draws = [choose(value, 1, epsilon, rng) for _ in range(20_000)]
    counts = np.zeros(4)
    for picks in draws:
        counts[picks[0][0] if picks else 0] += 1
    freq = counts / len(draws)
    expected = np.full(4, epsilon / 4)
    expected[2] += 1 - epsilon
    np.testing.assert_allclose(freq, expected, atol=0.01)
    for picks in draws:
        for arm, propensity in picks:
            assert propensity == pytest.approx(expected[arm])


def test_no_coupon_when_nothing_adds_profit() -> None:
    value = np.array([0.0, -0.5, -2.0])
    assert choose(value, 3, 0.0, np.random.default_rng(0)) == []


def test_slate_never_repeats_a_coupon() -> None:
    value = np.array([0.0, 3.0, 2.0, 1.0])
    picks = choose(value, 3, 0.0, np.random.default_rng(0))
    assert [arm for arm, _ in picks] == [1, 2, 3]


def test_lagrangian_penalises_cost() -> None:
    arms = with_control(catalogue())
    s = score(CouponNet(), default_user_features()[None, :], arms, margin=0.3)
    cheap, dear = lagrangian(s, 0.0), lagrangian(s, 2.0)
    assert (dear[:, 1:] < cheap[:, 1:]).all()
    assert (dear[:, 0] == 0).all()
