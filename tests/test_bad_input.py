"""The data gate against corruptions nobody listed (issue 17): every batch gets a verdict,
lossless encodings of valid data pass, each corruption of `faults.CORRUPTIONS` and each
corruption across days is quarantined naming the table.column it broke, slow drift is seen
against the fixed reference period, and random data of any dtype and shape gets a verdict
instead of a crash."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from couponflow.config import PROJECT_ROOT, Workspace, load_params
from couponflow.contract import TABLES, normalise
from couponflow.faults import CORRUPTION_TARGETS, CORRUPTIONS, ENCODINGS, FAULTS
from couponflow.landing import load_offline, read_batch, write_batch
from couponflow.world import World
from expectations import trailing
from expectations.validate import validate_batch
from tests.helpers.batches import copy, days_from, land, make_workspace

pytestmark = pytest.mark.integration  # Great Expectations validates real batches

DAY = "2026-01-03"
Batch = dict[str, pd.DataFrame]


@pytest.fixture(scope="module")
def clean() -> Batch:
    """One simulated day of a 300-user world."""
    cfg = load_params(PROJECT_ROOT / "params.yaml")["world"]
    cfg["n_users"] = 300
    return World(cfg).simulate_day(DAY)


@pytest.fixture(scope="module")
def gate(tmp_path_factory) -> Workspace:
    """One workspace for the corpus: each test lands and judges its own batch of DAY (no
    history, so only the rules judge; a rejected batch leaves nothing behind)."""
    return make_workspace(tmp_path_factory.mktemp("gate"), 300)


def blamed(failures: list[str]) -> set[str]:
    return {reason.split(":", 1)[0] for reason in failures}


def assert_quarantined(ws: Workspace, outcome, targets: tuple[str, ...], day: str = DAY) -> None:
    assert not outcome.passed
    assert set(targets) <= blamed(outcome.failures), outcome.failures
    assert outcome.quarantine_path == ws.quarantine_partition(day)
    assert not ws.landing_partition(day).exists()
    assert (outcome.quarantine_path / "REASONS.md").is_file()
    report = json.loads((outcome.quarantine_path / "validation.json").read_text())
    assert report["passed"] is False and report["failures"] == outcome.failures


# -- the corpus: every corruption quarantined, blaming its table.column ------------------------
def test_the_corpus_is_big_enough() -> None:
    assert set(CORRUPTIONS) == set(CORRUPTION_TARGETS)
    assert not set(CORRUPTIONS) & set(FAULTS)
    assert len(CORRUPTIONS) + len(ACROSS_DAYS) >= 40


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_every_corruption_is_quarantined_with_the_right_blame(gate, clean, name) -> None:
    batch = CORRUPTIONS[name](clean, np.random.default_rng(0))
    land(gate, batch)

    outcome = validate_batch(gate, DAY)

    assert_quarantined(gate, outcome, CORRUPTION_TARGETS[name])


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_lossless_encodings_pass_and_load_as_the_contract(gate, clean, name) -> None:
    batch = ENCODINGS[name](clean, np.random.default_rng(0))
    land(gate, batch)

    outcome = validate_batch(gate, DAY)

    assert outcome.passed, outcome.failures
    assert outcome.warnings == []
    loaded = read_batch(gate.landing_partition(DAY))
    for table, frame in clean.items():  # what the offline store gets is the clean batch
        pd.testing.assert_frame_equal(
            TABLES[table].conform(loaded[table]), TABLES[table].conform(frame)
        )


def test_the_clean_batch_still_passes(gate, clean) -> None:
    land(gate, clean)
    outcome = validate_batch(gate, DAY)
    assert outcome.passed and outcome.failures == [], outcome.failures


# -- normalisation ----------------------------------------------------------------------------
def test_zone_aware_timestamps_become_the_contract_clock(clean) -> None:
    orders = clean["orders"].copy()
    orders["ts"] = orders["ts"].dt.tz_localize("UTC").dt.tz_convert("America/New_York")

    normal, problems = normalise(TABLES["orders"], orders)

    assert problems == []
    assert str(normal["ts"].dtype) == "datetime64[ns]"
    pd.testing.assert_series_equal(normal["ts"], clean["orders"]["ts"])


def test_mixed_aware_and_naive_timestamps_are_a_reason_not_a_crash(clean) -> None:
    orders = clean["orders"].copy()
    ts = orders["ts"].astype(object)
    ts.iloc[0] = ts.iloc[0].tz_localize("Asia/Tokyo")
    orders["ts"] = ts

    _, problems = normalise(TABLES["orders"], orders)

    assert problems == ["orders.ts: mixes time-zone-aware and naive timestamps"]


def test_lossy_integers_are_left_for_the_dtype_rule(clean) -> None:
    users = clean["users"].copy()
    users["user_id"] = users["user_id"].astype("uint64")
    users.loc[users.index[-1], "user_id"] = np.uint64(2**63 + 1)

    normal, problems = normalise(TABLES["users"], users)

    assert str(normal["user_id"].dtype) == "uint64" and problems == []


# -- across days: a workspace with one accepted day in the offline store ----------------------
DAY1, DAY2 = "2026-01-02", "2026-01-03"


@pytest.fixture(scope="module")
def two_days(tmp_path_factory) -> tuple[Workspace, Batch, Batch]:
    ws = make_workspace(tmp_path_factory.mktemp("days"), 300)
    world = World(ws.params["world"])
    first, second = world.simulate_day(DAY1), world.simulate_day(DAY2)
    land(ws, first, DAY1)
    assert validate_batch(ws, DAY1).passed
    load_offline(ws, DAY1, read_batch(ws.landing_partition(DAY1)))
    return ws, first, second


def replayed_yesterday(first: Batch, second: Batch) -> Batch:
    """Yesterday's batch again, its event times moved a day."""
    batch = copy(first)
    for table in ("sessions", "offers", "orders"):
        batch[table]["ts"] = batch[table]["ts"] + pd.Timedelta(days=1)
    batch["coupons"] = second["coupons"].copy()
    return batch


def reused_order_ids(first: Batch, second: Batch) -> Batch:
    batch = copy(second)
    batch["orders"].loc[batch["orders"].index[:3], "order_id"] = first["orders"]["order_id"][
        :3
    ].values
    return batch


def reused_session_ids(first: Batch, second: Batch) -> Batch:
    batch = copy(second)
    ids = first["sessions"]["session_id"][:5].values
    batch["sessions"].loc[batch["sessions"].index[:5], "session_id"] = ids
    return batch


def renumbered_users(first: Batch, second: Batch) -> Batch:
    """Every user id shifted by one, in the snapshot and in the events alike."""
    batch = copy(second)
    for table in ("users", "sessions", "offers", "orders"):
        batch[table]["user_id"] = batch[table]["user_id"] + 1
    return batch


def truncated_users(first: Batch, second: Batch) -> Batch:
    """The snapshot cut to its first half (the events of the others dropped with them)."""
    batch = copy(second)
    kept = set(batch["users"]["user_id"][: len(batch["users"]) // 2])
    for table in ("users", "sessions", "offers", "orders"):
        batch[table] = batch[table][batch[table]["user_id"].isin(kept)].reset_index(drop=True)
    return batch


def signups_rewritten(first: Batch, second: Batch) -> Batch:
    batch = copy(second)
    batch["users"].loc[batch["users"].index[:4], "signup_date"] = pd.Timestamp("2025-06-01")
    return batch


ACROSS_DAYS = {
    replayed_yesterday: ("sessions.session_id", "offers.offer_id", "orders.order_id"),
    reused_order_ids: ("orders.order_id",),
    reused_session_ids: ("sessions.session_id",),
    renumbered_users: ("users.user_id", "users.signup_date"),
    truncated_users: ("users.user_id",),
    signups_rewritten: ("users.signup_date",),
}


@pytest.mark.parametrize("corrupt", list(ACROSS_DAYS), ids=lambda f: f.__name__)
def test_corruptions_across_days_are_quarantined(two_days, corrupt) -> None:
    ws, first, second = two_days
    land(ws, corrupt(first, second), DAY2)

    outcome = validate_batch(ws, DAY2)

    assert_quarantined(ws, outcome, ACROSS_DAYS[corrupt], DAY2)


def test_the_next_clean_day_and_a_rerun_of_the_accepted_one_pass(two_days) -> None:
    ws, first, second = two_days
    land(ws, second, DAY2)
    assert validate_batch(ws, DAY2).passed
    land(ws, first, DAY1)  # re-running a date meets its own rows in the store: no duplicate
    assert validate_batch(ws, DAY1).passed


# -- statistics: a slow drift is seen against the fixed reference ------------------------------
def test_a_slow_drift_is_seen_against_the_reference_period(tmp_path) -> None:
    """Amounts x1.02 a day for two weeks, at the default scale (3,000 users; a smaller world's
    daily mean basket is too noisy for a 2 % step): the trailing band follows the drift, the
    reference band does not, so the drift warns within days and is quarantined by the end."""
    ws = make_workspace(tmp_path, 3000)
    world = World(ws.params["world"])
    n_reference = int(ws.params["validation"]["reference_days"])
    days = days_from("2026-01-01", n_reference + 14)
    seen: dict[str, list[str]] = {}
    outcome = None
    for i, day in enumerate(days):
        batch = world.simulate_day(day)
        k = i - n_reference + 1
        if k > 0:
            orders = batch["orders"]
            orders["amount"] = (orders["amount"] * 1.02**k).round(2)
        land(ws, batch, day)
        outcome = validate_batch(ws, day)
        if i < n_reference:
            assert outcome.passed and not outcome.warnings, (day, outcome.failures)
        seen[day] = [r for r in outcome.failures + outcome.warnings if "reference period" in r]

    drifted = [day for day in days[n_reference:] if seen[day]]
    assert drifted, "two weeks of x1.02 a day raised nothing"
    assert all(r.startswith("orders.amount: mean basket") for d in drifted for r in seen[d])
    assert not outcome.passed and "critical band of the reference period" in outcome.failures[0]


def test_the_first_dag_day_after_init_is_judged() -> None:
    params = load_params(PROJECT_ROOT / "params.yaml")
    assert params["world"]["history_days"] >= params["validation"]["min_trailing_days"]


def test_every_table_has_a_volume_check() -> None:
    from expectations.suites import STATISTICS

    assert {s.table for s in STATISTICS if s.measure == "rows"} == set(TABLES)


# -- every batch gets a verdict -----------------------------------------------------------------
def test_an_exception_inside_validation_quarantines_with_the_reason(
    gate, clean, monkeypatch
) -> None:
    from expectations import suites

    def explode(frame, batch):
        raise RuntimeError("a rule nobody tested")

    rule = suites.Derived("boom", "amount", "boom", explode)
    real = suites.derived_rules
    monkeypatch.setattr(
        suites,
        "derived_rules",
        lambda table: [*real(table), rule] if table.name == "orders" else real(table),
    )
    land(gate, clean)

    outcome = validate_batch(gate, DAY)

    assert not outcome.passed
    assert any(
        r.startswith("orders.amount: rule 'boom' could not be evaluated (RuntimeError")
        for r in outcome.failures
    ), outcome.failures
    assert outcome.quarantine_path == gate.quarantine_partition(DAY)


def test_a_crash_outside_the_tables_still_quarantines(gate, clean, monkeypatch) -> None:
    import expectations.validate as validate

    def explode(ws, day):
        raise OSError("disk full")

    monkeypatch.setattr(validate, "_across_days", explode)
    land(gate, clean)

    outcome = validate_batch(gate, DAY)

    assert not outcome.passed
    assert outcome.failures[0].startswith("validation could not finish (OSError: disk full")
    assert (outcome.quarantine_path / "REASONS.md").is_file()
    assert json.loads(outcome.report_path.read_text())["passed"] is False


COLUMNS = [(name, col.name) for name, table in TABLES.items() for col in table.columns]
NOW = pd.Timestamp(DAY)


def _values(n: int) -> st.SearchStrategy:
    """A column of n random values of one random kind."""
    ints = st.integers(-(2**63), 2**63 - 1)
    scalars = st.one_of(
        st.lists(ints, min_size=n, max_size=n).map(lambda v: pd.Series(v, dtype="int64")),
        st.lists(st.integers(0, 2**16), min_size=n, max_size=n).map(
            lambda v: pd.Series(v, dtype="uint32")
        ),
        st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=n, max_size=n).map(
            lambda v: pd.Series(v, dtype="float64")
        ),
        st.lists(st.text(max_size=5), min_size=n, max_size=n).map(
            lambda v: pd.Series(v, dtype=object)
        ),
        st.lists(st.booleans(), min_size=n, max_size=n).map(pd.Series),
        st.lists(st.none() | st.text(max_size=3), min_size=n, max_size=n).map(
            lambda v: pd.Series(v, dtype="string")
        ),
        st.lists(
            st.datetimes(dt.datetime(1700, 1, 1), dt.datetime(2300, 1, 1)),
            min_size=n,
            max_size=n,
        ).map(lambda v: pd.Series(np.array(v, dtype="datetime64[us]"))),
        st.lists(st.integers(-10_000, 10_000), min_size=n, max_size=n).map(
            lambda v: pd.Series(NOW + pd.to_timedelta(v, unit="min")).dt.tz_localize("UTC")
        ),
        st.lists(st.lists(st.integers(0, 9), max_size=2), min_size=n, max_size=n).map(
            lambda v: pd.Series(v, dtype=object)
        ),
        st.lists(st.dates(), min_size=n, max_size=n).map(lambda v: pd.Series(v, dtype=object)),
        st.lists(st.sampled_from(["a", "b", "fashion"]), min_size=n, max_size=n).map(
            lambda v: pd.Series(v, dtype="category")
        ),
    )
    return scalars


@st.composite
def mangled(draw, clean: Batch) -> Batch:
    batch = copy(clean)
    for _ in range(draw(st.integers(1, 3))):
        table, column = draw(st.sampled_from(COLUMNS))
        frame = batch[table]
        shape = draw(st.sampled_from(["column", "rows", "drop", "extra", "empty"]))
        if shape == "column":
            frame[column] = draw(_values(len(frame))).set_axis(frame.index)
        elif shape == "rows":
            k = draw(st.integers(0, len(frame)))
            batch[table] = frame.iloc[:k].reset_index(drop=True)
        elif shape == "drop":
            batch[table] = frame.drop(columns=[column])
        elif shape == "extra":
            frame[f"{column}_2"] = 1
        else:
            batch[table] = frame.iloc[0:0]
    if draw(st.booleans()) and len(batch) > 1:
        del batch[draw(st.sampled_from(sorted(batch)))]
    return batch


def test_random_dtypes_values_and_shapes_get_a_verdict(tmp_path, clean) -> None:
    ws = make_workspace(tmp_path, 300)
    small = {name: frame.head(40).reset_index(drop=True) for name, frame in clean.items()}
    small["users"] = clean["users"]  # events reference users across the whole snapshot

    @settings(
        max_examples=12,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(batch=mangled(small))
    def judged(batch: Batch) -> None:
        try:
            write_batch(ws.landing_partition(DAY), batch)
        except Exception:  # pyarrow cannot even write it: nobody can land it
            assume(False)
        outcome = validate_batch(ws, DAY)  # must not raise
        assert outcome.report_path.is_file()
        if outcome.passed:
            assert ws.landing_partition(DAY).is_dir()
        else:
            assert outcome.failures
            assert outcome.quarantine_path == ws.quarantine_partition(DAY)
            assert not ws.landing_partition(DAY).exists()
            assert all(":" in reason for reason in outcome.failures)
        trailing.record(ws, DAY, None)

    judged()


def test_a_workspace_made_before_the_reference_period_still_validates(tmp_path, clean) -> None:
    import yaml

    ws = make_workspace(tmp_path, 300)
    params = yaml.safe_load(ws.params_file.read_text())
    for key in ("reference_days", "reference_from", "reference_tolerance"):
        del params["validation"][key]
    ws.params_file.write_text(yaml.safe_dump(params))
    ws = Workspace(ws.root)
    land(ws, clean)

    outcome = validate_batch(ws, DAY)

    assert outcome.passed, outcome.failures
