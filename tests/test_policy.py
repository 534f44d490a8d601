"""The policy maths shared by evaluation, the budget plan and the service."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from couponflow.contract import coupon_cost
from couponflow.features import USER_FEATURES, default_user_features
from couponflow.model import CouponNet
from couponflow.policy import (
    INELIGIBLE,
    allocate,
    best_arms,
    choose,
    eligible,
    exploration_cost,
    lagrangian,
    score,
    solve_multiplier,
    user_cap_mask,
    with_control,
)
from tests.conftest import value_cost
from tests.helpers.catalogue import catalogue


def spend(value: np.ndarray, cost: np.ndarray, multiplier: float) -> float:
    return float(cost[np.arange(len(cost)), best_arms(value, cost, multiplier)].sum())


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


@pytest.mark.parametrize(
    ("category", "expected"), [(None, ["A", "B"]), ("fashion", ["A", "B"]), ("home", ["A"])]
)
def test_a_request_category_rules_out_coupons_of_other_categories(
    category: str | None, expected: list[str]
) -> None:
    now = pd.Timestamp("2026-01-02")
    assert list(eligible(catalogue(), now, category)["coupon_id"]) == expected


def test_users_at_the_offer_cap_are_flagged() -> None:
    users = np.stack([default_user_features()] * 3)
    users[:, USER_FEATURES.index("offers_7d")] = [4, 5, 6]
    assert user_cap_mask(users, 5).tolist() == [False, True, True]
    assert not user_cap_mask(users, None).any()


def test_scores_put_control_at_zero_and_cost_only_on_coupons() -> None:
    arms = with_control(catalogue())
    users = np.stack([default_user_features()] * 2)
    s = score(CouponNet(), users, arms, margin=0.3)
    assert s.incremental_profit.shape == (2, 4)
    np.testing.assert_allclose(s.incremental_profit[:, 0], 0.0)
    np.testing.assert_allclose(s.expected_cost[:, 0], 0.0)
    assert (s.expected_cost[:, 1:] > 0).all()
    assert len(USER_FEATURES) == users.shape[1]


def test_lagrangian_penalises_cost_and_keeps_control_and_ineligible_arms() -> None:
    arms = with_control(catalogue())
    s = score(CouponNet(), default_user_features()[None, :], arms, margin=0.3)
    value = s.incremental_profit.copy()
    value[0, 2] = INELIGIBLE
    cheap, dear = (lagrangian(value, s.expected_cost, m) for m in (0.0, 2.0))
    assert (dear[:, [1, 3]] < cheap[:, [1, 3]]).all()
    assert (dear[:, 0] == 0).all() and dear[0, 2] == INELIGIBLE


def test_a_costly_multiplier_turns_every_offer_off() -> None:
    arms = with_control(catalogue())
    s = score(CouponNet(), default_user_features()[None, :], arms, margin=0.3)
    assert (best_arms(s.incremental_profit, s.expected_cost, 1e6) == 0).all()


def test_the_multiplier_is_the_smallest_that_fits_the_budget() -> None:
    value, cost = value_cost(2_000, 6)
    unconstrained = spend(value, cost, 0.0)
    for share in (0.2, 0.5, 0.9):
        budget = share * unconstrained
        multiplier = solve_multiplier(value, cost, budget)
        assert multiplier > 0
        assert spend(value, cost, multiplier) <= budget
        assert spend(value, cost, multiplier * (1 - 1e-6)) > budget  # any smaller overspends
        assert spend(value, cost, multiplier) > 0.98 * budget  # whole users are indivisible


def test_spend_falls_as_the_multiplier_rises() -> None:
    value, cost = value_cost(500, 5, seed=3)
    spends = [spend(value, cost, m) for m in np.linspace(0, 5, 50)]
    assert all(a >= b for a, b in zip(spends, spends[1:], strict=False))


def test_a_zero_budget_gives_no_coupons() -> None:
    value, cost = value_cost(1_000, 5)
    arms, multiplier = allocate(value, cost, 0.0)
    assert (arms == 0).all() and multiplier > 0


def test_a_huge_budget_gives_the_unconstrained_best_arm() -> None:
    value, cost = value_cost(1_000, 5)
    arms, multiplier = allocate(value, cost, 1e12)
    assert multiplier == 0.0
    np.testing.assert_array_equal(arms, value.argmax(axis=1))
    assert (arms > 0).mean() > 0.5


def test_ineligible_arms_are_never_allocated() -> None:
    value, cost = value_cost(1_000, 5)
    value[:500, 1:] = INELIGIBLE  # e.g. users at their offer cap
    value[500:, 2] = INELIGIBLE  # e.g. a coupon of another category
    arms, _ = allocate(value, cost, 1e12)
    assert (arms[:500] == 0).all() and (arms[500:] != 2).all() and (arms[500:] > 0).any()


def test_ties_go_to_the_lower_arm() -> None:
    value = np.array([[0.0, 1.0, 1.0], [0.0, 0.0, -1.0]])
    cost = np.array([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    arms, multiplier = allocate(value, cost, 10.0)
    assert arms.tolist() == [1, 0] and multiplier == 0.0


def test_a_negative_budget_is_refused() -> None:
    value, cost = value_cost(10, 3)
    with pytest.raises(ValueError, match="budget"):
        solve_multiplier(value, cost, -1.0)


def test_with_exploration_the_multiplier_fits_what_choose_spends() -> None:
    value, cost = value_cost(400, 5, seed=5)
    value[:100, 1:] = INELIGIBLE
    epsilon, budget = 0.2, 0.4 * spend(value, cost, 0.0)
    multiplier = solve_multiplier(value, cost, budget, epsilon=epsilon)
    planned = (1 - epsilon) * spend(value, cost, multiplier)
    planned += epsilon * exploration_cost(value, cost).sum()
    assert 0.97 * budget < planned <= budget
    rng, draws = np.random.default_rng(0), 100
    net = lagrangian(value, cost, multiplier)
    spent = sum(
        cost[u, arm] for _ in range(draws) for u in range(len(value)) for arm, _ in
        choose(net[u], 1, epsilon, rng)
    ) / draws  # fmt: skip
    assert spent == pytest.approx(planned, rel=0.03)


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


def test_exploration_skips_ineligible_and_unaffordable_arms() -> None:
    value = np.array([0.0, 1.0, INELIGIBLE, 2.0, 0.5])
    cost = np.array([0.0, 1.0, 1.0, 5.0, 1.0])
    rng = np.random.default_rng(2)
    draws = [choose(value, 1, 1.0, rng, cost, allowance=2.0) for _ in range(6_000)]
    chosen = [picks[0][0] if picks else 0 for picks in draws]
    assert set(chosen) == {0, 1, 4}  # arm 2 is ineligible, arm 3 costs more than is left
    np.testing.assert_allclose(
        np.bincount(chosen, minlength=5)[[0, 1, 4]] / 6_000, 1 / 3, atol=0.02
    )
    assert all(p == pytest.approx(1 / 3) for picks in draws for _, p in picks)


def test_a_slate_stays_within_the_allowance() -> None:
    value = np.array([0.0, 3.0, 2.0, 1.0])
    cost = np.array([0.0, 1.0, 1.0, 1.0])
    picks = choose(value, 3, 0.0, np.random.default_rng(0), cost, allowance=2.5)
    assert [arm for arm, _ in picks] == [1, 2]


def test_no_coupon_when_nothing_adds_profit() -> None:
    value = np.array([0.0, -0.5, -2.0])
    assert choose(value, 3, 0.0, np.random.default_rng(0)) == []


def test_slate_never_repeats_a_coupon() -> None:
    value = np.array([0.0, 3.0, 2.0, 1.0])
    picks = choose(value, 3, 0.0, np.random.default_rng(0))
    assert [arm for arm, _ in picks] == [1, 2, 3]


@pytest.mark.parametrize(
    ("now", "category"),
    [("2026-01-02", None), ("2026-01-02", "fashion"), ("2026-01-02", "home"), ("2026-02-15", None)],
)
def test_prepared_arms_decide_exactly_like_frames(now: str, category: str | None) -> None:
    """The service prepares the catalogue once; offline code passes frames: the open arms
    and every score must be the same either way."""
    from couponflow.policy import Arms

    moment = pd.Timestamp(now)
    frame = with_control(eligible(catalogue(), moment, category))
    arms = Arms.of(catalogue()).open(moment, category)
    assert list(arms.coupon_ids) == [None, *frame["coupon_id"].iloc[1:]]
    users = np.stack([default_user_features()] * 3)
    users[:, USER_FEATURES.index("avg_basket_30d")] = [20.0, 50.0, 120.0]
    net = CouponNet()
    torch.manual_seed(0)
    for parameter in net.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    a, b = score(net, users, arms, margin=0.3), score(net, users, frame, margin=0.3)
    for field in ("p_purchase", "amount", "p_redeem", "expected_cost", "incremental_profit"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
