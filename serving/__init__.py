"""Serving, in three rooms by job:

- `serving.runtime`: what runs inside the bento's workers (the BentoML service, the live
  policy `recommender`, the shared `spend` store, the `feedback` log, API key `auth`,
  `problems` (error bodies), Prometheus `metrics`). Never imports `serving.deploy`, so the
  bento packs only this room (serving/bentofile.yaml).
- `serving.deploy`: the tooling around it, run by the pipeline and the CLI (the BentoML
  model and `bento` build, the `server` lifecycle, candidate checks `smoke`, the blue/green
  `deployment` behind the front door `router`, the `release` record and rollback).
- `serving.client`: the client downstream apps call the service with (httpx only).

Names the runtime and the tooling share (the environment a server is started with) live
here, so importing them stays cheap; the names of the artefacts training ships are the
core's (couponflow.artefacts).
"""

from __future__ import annotations

from couponflow.artefacts import MODEL_NAME

MODEL_TAG_ENV = "COUPONFLOW_MODEL_TAG"  # the BentoML model a server's service loads
DEFAULT_MODEL_TAG = f"{MODEL_NAME}:latest"
WORKERS_ENV = "COUPONFLOW_SERVING_WORKERS"
ACCESS_LOG_ENV = "COUPONFLOW_ACCESS_LOG"  # 1: BentoML logs every request
