"""What the pipeline does with a bento: package a trained model (weights, their metadata
and the coupon catalogue they choose from) as a BentoML model, build the service bento
around it, and check it live before release.

BentoML resolves its store from BENTOML_HOME once per process, so every BentoML step runs
in a child process pointed at the workspace's own store; the caller may serve several
workspaces and never imports BentoML.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from couponflow.artefacts import (
    BENTO_NAME,
    CATALOGUE_FILE,
    MODEL_FILES,
    MODEL_NAME,
    MODEL_WEIGHTS,
)
from couponflow.config import PROJECT_ROOT, Workspace
from couponflow.landing import offline_days, read_offline
from serving import MODEL_TAG_ENV
from serving.deploy import bentoml_env

BENTOFILE = PROJECT_ROOT / "serving" / "bentofile.yaml"  # the bento of serving.runtime


class BentoMLStepFailed(RuntimeError):
    """A BentoML child process failed; the message carries the end of its output."""


def store_model(ws: Workspace, model_dir: Path) -> str:
    """Save model.pt, model.json and the newest day's coupon catalogue as the BentoML model
    `couponflow-recommender:<version>`; returns its tag. A version already stored is
    kept as it is, so retried pipeline runs are harmless."""
    from couponflow.model import load_model  # torch: not for the child process below

    _, meta = load_model(model_dir / MODEL_WEIGHTS)  # refuses weights of another feature list
    tag = f"{MODEL_NAME}:{meta['version']}"
    days = offline_days(ws)
    if not days:
        raise ValueError(f"no coupon catalogue in {ws.offline}: load a day first")
    with tempfile.TemporaryDirectory() as tmp:
        catalogue = Path(tmp) / CATALOGUE_FILE
        read_offline(ws, "coupons", [days[-1]]).to_parquet(catalogue, index=False)
        files = [model_dir / name for name in MODEL_FILES] + [catalogue]
        _run([sys.executable, "-m", "serving.deploy.bento", tag, days[-1], *map(str, files)], ws)
    return tag


def build_bento(ws: Workspace, model_tag: str) -> str:
    """Build the service bento around `model_tag`, versioned like the model; returns the
    bento tag. Rebuilding a version replaces it (the code may have changed, and BentoML
    refuses to build over an existing tag)."""
    bento_tag = f"{BENTO_NAME}:{model_tag.partition(':')[2]}"
    _run(_bentoml("delete", "--yes", bento_tag), ws, check=False)
    build = _bentoml(
        "build", "--bentofile", str(BENTOFILE), "--name", BENTO_NAME,
        "--version", bento_tag.partition(":")[2], "--output", "tag", str(PROJECT_ROOT),
    )  # fmt: skip
    out = _run(build, ws, True, **{MODEL_TAG_ENV: model_tag})  # the service declares this model
    return out.strip().splitlines()[-1].removeprefix("__tag__:")


def _bentoml(*args: str) -> list[str]:
    """The `bentoml` CLI of this interpreter's environment."""
    return [sys.executable, "-m", "bentoml", *args]


def _run(cmd: list[str], ws: Workspace, check: bool = True, **env: str) -> str:
    """Run a BentoML step for `ws`, quietly; its stdout, or BentoMLStepFailed."""
    done = subprocess.run(
        cmd, env=bentoml_env(ws, **env), cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    if check and done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-20:]
        raise BentoMLStepFailed(f"{' '.join(cmd[2:4])} failed:\n" + "\n".join(tail))
    return done.stdout


def _create_model(tag: str, catalogue_day: str, files: list[Path]) -> None:
    """In the child process: copy `files` into a new BentoML model, unless it exists."""
    import bentoml

    try:
        bentoml.models.get(tag)
        return
    except bentoml.exceptions.NotFound:
        pass
    with bentoml.models.create(
        tag,
        labels={"project": "couponflow"},
        metadata={"catalogue_day": catalogue_day},
    ) as model:
        for file in files:
            shutil.copy2(file, model.path_of(file.name))


if __name__ == "__main__":
    _create_model(sys.argv[1], sys.argv[2], [Path(p) for p in sys.argv[3:]])
