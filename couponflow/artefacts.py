"""The names of what training ships and serving runs, which both rooms must agree on:
the files of a trained model in `ws.models` (and the champion's copy), the coupon
catalogue packed beside them, and the BentoML model and bento they become.

Kept in the core (no BentoML here) so training, the service's runtime and the deployment
tooling each import the one spelling.
"""

from __future__ import annotations

MODEL_WEIGHTS = "model.pt"  # couponflow.model.save_model's file
MODEL_RECORD = "model.json"  # the model's metadata: version, feature list, training figures
POLICY_FILE = "policy.json"  # the budget plan (training/budget.py, couponflow.policy.BudgetPlan)
MODEL_FILES = (MODEL_WEIGHTS, MODEL_RECORD, POLICY_FILE)  # what training writes to ws.models
CATALOGUE_FILE = "coupons.parquet"  # the coupon catalogue snapshot inside the BentoML model
MODEL_NAME = "couponflow-recommender"  # the BentoML model: <MODEL_NAME>:<model version>
BENTO_NAME = "couponflow"  # the bento: <BENTO_NAME>:<model version>
