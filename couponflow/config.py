"""Where things live and which knobs are set: the workspace and its params.yaml.

A workspace is one self-contained home for a deployment (landing zone, offline store,
feature store state, DVC-tracked models and metrics, releases). Every room receives a
`Workspace` rather than building paths of its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
HOME_ENV = "COUPONFLOW_HOME"
REDIS_PASSWORD_ENV = "COUPONFLOW_REDIS_PASSWORD"
DEFAULT_REDIS = "127.0.0.1:6379"


@dataclass(frozen=True)
class Workspace:
    """Paths of one couponflow deployment, all under `root`."""

    root: Path

    @classmethod
    def from_env(cls) -> Workspace:
        """The workspace named by $COUPONFLOW_HOME (default: var/demo in the project)."""
        return cls(Path(os.environ.get(HOME_ENV, PROJECT_ROOT / "var" / "demo")).resolve())

    @cached_property
    def params(self) -> dict[str, Any]:
        return load_params(self.params_file)

    @property
    def params_file(self) -> Path:
        return self.root / "params.yaml"

    @property
    def landing(self) -> Path:
        return self.root / "data" / "landing"

    @property
    def quarantine(self) -> Path:
        return self.root / "data" / "quarantine"

    @property
    def offline(self) -> Path:
        return self.root / "data" / "offline"

    @property
    def features(self) -> Path:
        return self.root / "data" / "features"

    @property
    def feature_store(self) -> Path:
        return self.root / "feature_store"

    @property
    def validation_reports(self) -> Path:
        return self.root / "reports" / "validation"

    @property
    def training_set(self) -> Path:
        return self.root / "data" / "training"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    @property
    def champion(self) -> Path:
        return self.releases / "champion"

    def landing_partition(self, day: str) -> Path:
        return self.landing / f"date={day}"

    def quarantine_partition(self, day: str) -> Path:
        return self.quarantine / f"date={day}"


@dataclass(frozen=True)
class RedisSettings:
    """Where the Redis of the online store and the spend store is: `features.redis`
    (host:port) in params.yaml, and its password, a secret, only from
    $COUPONFLOW_REDIS_PASSWORD (never in params.yaml, which the workspace commits)."""

    host: str
    port: int
    password: str | None

    @classmethod
    def of(cls, ws: Workspace) -> RedisSettings:
        address = ws.params.get("features", {}).get("redis", DEFAULT_REDIS)
        host, _, port = address.partition(":")
        return cls(host, int(port or 6379), os.environ.get(REDIS_PASSWORD_ENV) or None)

    @property
    def feast_connection_string(self) -> str:
        """Feast's form, `host:port[,password=...]` (so the password cannot hold a comma)."""
        address = f"{self.host}:{self.port}"
        return f"{address},password={self.password}" if self.password else address  # secrets: allow


def load_params(path: Path) -> dict[str, Any]:
    with open(path) as fh:
        return yaml.safe_load(fh)


def set_param(params: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c=value` in a nested params dict (used for `couponflow init --set`)."""
    *parents, leaf = dotted.split(".")
    node = params
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
