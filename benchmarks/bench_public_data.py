"""The project's estimators and models on real public data.

    .venv/bin/python benchmarks/bench_public_data.py [--only obd|hillstrom] [--n-boot 1000]

Open Bandit: the Bernoulli Thompson Sampling policy's click rate, estimated off-policy from
the uniform-random policy's log (IPS, SNIPS, DR with a cross-fitted logistic click model, and
that model alone, DM, whose interval omits the model's own fitting noise), against the rate
BTS logged itself; each with a bootstrap interval, and the relative error of each point
estimate. The published relative errors (obp's examples/obd/README.md) are for the full-size
logs; these 10,000-row samples hold 46 and 69 clicks, so the intervals are what to read.

Figures print; nothing is asserted (tests/test_public_data.py asserts).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from couponflow.config import PROJECT_ROOT, load_params
from couponflow.metrics import (
    Bootstrapped,
    TargetTerms,
    off_policy_bootstrap,
    on_policy_value,
)
from couponflow.public_data import load_obd, obd_click_model, obd_target_terms

PUBLIC = load_params(PROJECT_ROOT / "params.yaml")["public_data"]
PUBLISHED_OBD = {"dm": 0.157, "ips": 0.311, "dr": 0.292}  # full-size "men" campaign, obp


def show(label: str, b: Bootstrapped, level: float, scale: float = 1.0, unit: str = "") -> str:
    iv = b.interval(level)
    return (
        f"{label:<28} {iv.value * scale:8.4f}{unit}  "
        f"[{iv.low * scale:.4f}, {iv.high * scale:.4f}]{unit}"
    )


def obd(n_boot: int, level: float, seed: int) -> dict[str, Any]:
    """Thompson Sampling's click rate from the random log, against its own."""
    t0 = time.perf_counter()
    random, bts = (load_obd(PUBLIC["obd"], p) for p in ("random", "bts"))
    t1 = time.perf_counter()
    q = obd_click_model(random, seed=seed)
    t2 = time.perf_counter()
    terms = obd_target_terms(random, bts, q)
    reward = random.log["reward"].to_numpy(float)
    # The click model alone (DM) is a DR estimate that never uses the logged clicks.
    dm = TargetTerms(np.zeros(len(reward)), np.zeros(len(reward)), terms.q_expected)
    boot = off_policy_bootstrap(
        reward, random.log["propensity"].to_numpy(), {"bts": terms, "dm": dm}, n_boot, seed
    )
    t3 = time.perf_counter()
    truth = on_policy_value(bts.log["reward"].to_numpy(float), n_boot, seed + 1)
    estimates = boot["bts"] | {"dm": boot["dm"]["dr"]}

    print(f"\nOpen Bandit, campaign {PUBLIC['obd']['campaign']}: BTS click rate (%)")
    print(f"  {len(random.log):,} random rows ({int(reward.sum())} clicks), ", end="")
    print(f"{len(bts.log):,} BTS rows ({int(bts.log['reward'].sum())} clicks)")
    print(f"  {'':<28} {'value':>9}  {level:.0%} bootstrap interval")
    print("  " + show("BTS logged (truth)", truth, level, 100))
    result: dict[str, Any] = {"truth": truth.interval(level).as_dict()}
    for name in ("ips", "snips", "dr", "dm"):
        rel = abs(estimates[name].value - truth.value) / truth.value
        published = PUBLISHED_OBD.get(name)
        ref = f"  (published, full size: {published:.3f})" if published else ""
        fixed = " (model held fixed)" if name == "dm" else ""
        print("  " + show(f"{name} from random log{fixed}", estimates[name], level, 100), end="")
        print(f"  rel. error {rel:.3f}{ref}")
        result[name] = estimates[name].interval(level).as_dict() | {"relative_error": rel}
    print(
        f"  timings: load {t1 - t0:.2f}s, click model (5-fold) {t2 - t1:.2f}s, "
        f"{n_boot} bootstrap resamples {t3 - t2:.2f}s"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["obd", "hillstrom"])
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.only in (None, "obd"):
        obd(args.n_boot, args.level, args.seed)


if __name__ == "__main__":
    main()
