"""Shared fixtures. Every test that touches a tool gets its own workspace under tmp, so
tests never see the demo's state or ~/bentoml, and Airflow keeps its metadata in tmp."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

_AIRFLOW_HOME = tempfile.mkdtemp(prefix="couponflow-airflow-")
os.environ.setdefault("AIRFLOW_HOME", _AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).resolve().parent.parent / "dags")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("FEAST_USAGE", "False")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

TINY_WORLD = {"world.n_users": 400, "world.history_days": 5}


@pytest.fixture
def tiny_params() -> dict:
    """The project's params with a tiny world."""
    from couponflow.config import PROJECT_ROOT, load_params, set_param

    params = load_params(PROJECT_ROOT / "params.yaml")
    for key, value in TINY_WORLD.items():
        set_param(params, key, value)
    return params


def value_cost(
    n: int, m: int, seed: int = 0, mean_return: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Random (value, cost) matrices for policy tests: arm 0 ("no coupon") worth 0 at
    cost 0, coupons costing > 0 and worth `mean_return` times their cost on average."""
    rng = np.random.default_rng(seed)
    cost = np.zeros((n, m))
    cost[:, 1:] = rng.gamma(2.0, 1.0, (n, m - 1))
    value = np.zeros((n, m))
    value[:, 1:] = cost[:, 1:] * rng.normal(mean_return, 1.0, (n, m - 1))
    return value, cost


@pytest.fixture
def redis_prefix_clean() -> Iterator[str]:
    """A unique Redis key prefix on 127.0.0.1:6379 (skips when no Redis answers), and no key
    of it left behind."""
    import uuid

    import redis

    from serving.spend import redis_client

    client = redis_client("127.0.0.1:6379")
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    prefix = f"couponflow-test:{uuid.uuid4().hex}"
    yield prefix
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    assert not list(client.scan_iter(f"{prefix}:*"))
