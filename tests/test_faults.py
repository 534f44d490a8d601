"""The fault injector: every named corruption breaks what it says it breaks, and nothing else
of the batch is touched, nor the batch it was given."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from couponflow.contract import EVENTS, TABLES
from couponflow.faults import FAULT_TARGETS, FAULTS
from couponflow.world import World

DAY = pd.Timestamp("2026-01-05")
MAX_REDEMPTION_SHARE = 0.6  # the clean world redeems a coupon on about a quarter of orders


def violations(batch: dict[str, pd.DataFrame], day: pd.Timestamp) -> set[str]:
    """What a contract-minded validator would blame: `table.column`, or `table` for rows."""
    found: set[str] = set()
    keys = {name: set(batch[name][TABLES[name].key].dropna()) for name in ("users", "coupons")}
    for name, table in TABLES.items():
        frame = batch[name]
        if name in EVENTS and frame.empty:
            found.add(name)
        for col in table.columns:
            where = f"{name}.{col.name}"
            if col.name not in frame:
                found.add(where)
                continue
            values = frame[col.name]
            if str(values.dtype) != col.dtype and not (
                col.dtype == "int64" and str(values.dtype) == "Int64"
            ):
                found.add(where)
                continue
            present = values.dropna()
            bad = (
                (not col.nullable and len(present) < len(values))
                or (col.unique and not values.is_unique)
                or (col.min_value is not None and (present < col.min_value).any())
                or (col.max_value is not None and (present > col.max_value).any())
                or (col.allowed is not None and not set(present) <= set(col.allowed))
                or (
                    col.in_batch_day
                    and not present.between(day, day + pd.Timedelta(days=1), "left").all()
                )
                or (
                    col.name in table.references
                    and not set(present) <= keys[table.references[col.name]]
                )
            )
            if bad:
                found.add(where)
    orders, coupons = batch["orders"], batch["coupons"].set_index("coupon_id")
    if "coupon_id" in orders and len(orders):
        used = orders.dropna(subset=["coupon_id"])
        used = used[used["coupon_id"].isin(coupons.index)]
        window = coupons.loc[used["coupon_id"]]
        inside = (window["valid_from"].to_numpy() <= used["ts"].to_numpy()) & (
            used["ts"].to_numpy() < window["valid_to"].to_numpy()
        )
        if not inside.all() or orders["coupon_id"].notna().mean() > MAX_REDEMPTION_SHARE:
            found.add("orders.coupon_id")
    return found


@pytest.fixture(scope="module")
def clean() -> dict[str, pd.DataFrame]:
    from couponflow.config import PROJECT_ROOT, load_params

    cfg = load_params(PROJECT_ROOT / "params.yaml")["world"]
    cfg["n_users"] = 600
    return World(cfg).simulate_day(DAY)


def test_the_clean_batch_has_no_violations(clean) -> None:
    assert violations(clean, DAY) == set()


def test_every_fault_names_its_targets() -> None:
    assert set(FAULT_TARGETS) == set(FAULTS)
    for targets in FAULT_TARGETS.values():
        assert targets and all(t.split(".")[0] in TABLES for t in targets)


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_fault_breaks_exactly_its_targets(clean, name: str) -> None:
    before = {table: frame.copy(deep=True) for table, frame in clean.items()}
    corrupted = FAULTS[name](clean, np.random.default_rng(1))

    for table, frame in before.items():  # the input batch is untouched
        pd.testing.assert_frame_equal(clean[table], frame)
    assert violations(corrupted, DAY) == set(FAULT_TARGETS[name])
    assert set(corrupted) == set(clean)
    for table in clean:
        assert corrupted[table] is not clean[table]


@pytest.mark.parametrize("name", ["null_keys", "negative_amounts", "unknown_coupon_ids"])
def test_the_rng_picks_the_rows(clean, name: str) -> None:
    a = FAULTS[name](clean, np.random.default_rng(1))
    b = FAULTS[name](clean, np.random.default_rng(2))
    again = FAULTS[name](clean, np.random.default_rng(1))
    table = FAULT_TARGETS[name][0].split(".")[0]
    pd.testing.assert_frame_equal(a[table], again[table])
    assert not a[table].equals(b[table])


def test_a_redemption_spike_keeps_every_row_valid(clean) -> None:
    spiked = FAULTS["redemption_spike"](clean, np.random.default_rng(0))
    orders = spiked["orders"]
    assert orders["coupon_id"].notna().mean() > MAX_REDEMPTION_SHARE
    assert len(orders) == len(clean["orders"])
    assert (orders["discount"] <= orders["amount"]).all()
