"""DVC stage `gate`: promote the challenger only when the evidence says it is better.

- Against the champion: its doubly robust policy value must lead the champion's with the
  lower bound of the paired bootstrap interval (level `evaluation.confidence`) above
  `gate.min_lift_over_champion`, and prediction may not regress beyond tolerance.
- With no champion yet: it must beat every baseline (offering nothing included), the lower
  bound of its paired DR lead over each above `gate.min_lift_over_baselines`.
- Always: a floor on AUC, a ceiling on calibration error, and enough logged evidence for
  the coupons it would offer (the effective sample size of the rows behind its estimate;
  a few heavily weighted rows make an overconfident bootstrap).

The decision and every reason behind it are a DVC metric (metrics/gate.json) and go into
the run report. Run from the workspace root: `python -m training.gate`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from couponflow.config import Workspace


def _check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"check": name, "passed": bool(passed), "detail": detail}


def _lead(lead: dict[str, float]) -> str:
    return f"{lead['value']:+.4f} [{lead['low']:+.4f}, {lead['high']:+.4f}] per decision"


def decide(evaluation: dict[str, Any], gate: dict[str, Any]) -> dict[str, Any]:
    """The gate's decision: `promote` and the list of checks with their outcome."""
    policies = evaluation["policies"]
    ch, champ = policies["challenger"], policies.get("champion")
    leads = evaluation["challenger_lead_dr"]
    checks = [
        _check(
            "AUC of P(purchase) at least the floor",
            ch["auc"] >= gate["min_auc"],
            f"{ch['auc']:.4f} vs floor {gate['min_auc']}",
        ),
        _check(
            "calibration error of P(purchase) within bounds",
            ch["ece"] <= gate["max_ece"],
            f"{ch['ece']:.4f} vs ceiling {gate['max_ece']}",
        ),
    ]
    if ch["offer_rate"] > 0:
        checks.append(
            _check(
                "enough logged evidence for the coupons it would offer",
                ch["coupon_evidence"] >= gate["min_coupon_evidence"],
                f"effective sample {ch['coupon_evidence']:.1f} logged rows vs at least "
                f"{gate['min_coupon_evidence']}",
            )
        )
    if champ is not None:
        lead = leads["champion"]
        checks += [
            _check(
                "DR policy value beats the champion's with confidence",
                lead["low"] > gate["min_lift_over_champion"],
                f"lead {_lead(lead)}; lower bound must exceed {gate['min_lift_over_champion']}",
            ),
            _check(
                "AUC no worse than the champion's beyond tolerance",
                ch["auc"] >= champ["auc"] - gate["max_auc_regression"],
                f"{ch['auc']:.4f} vs champion {champ['auc']:.4f} "
                f"(tolerance {gate['max_auc_regression']})",
            ),
            _check(
                "log loss no worse than the champion's beyond tolerance",
                ch["log_loss"] <= champ["log_loss"] + gate["max_log_loss_regression"],
                f"{ch['log_loss']:.4f} vs champion {champ['log_loss']:.4f} "
                f"(tolerance {gate['max_log_loss_regression']})",
            ),
        ]
    else:
        for name, entry in policies.items():
            if entry["kind"] != "baseline":
                continue
            lead = leads[name]
            checks.append(
                _check(
                    f"first model beats the {name} baseline (DR)",
                    lead["low"] > gate["min_lift_over_baselines"],
                    f"lead {_lead(lead)}; lower bound must exceed "
                    f"{gate['min_lift_over_baselines']}",
                )
            )
    return {
        "promote": all(c["passed"] for c in checks),
        "challenger": ch["version"],
        "champion": champ["version"] if champ else None,
        "checks": checks,
    }


def main() -> None:
    ws = Workspace(Path.cwd())
    evaluation = json.loads((ws.metrics / "evaluation.json").read_text())
    decision = decide(evaluation, ws.params["gate"])
    (ws.metrics / "gate.json").write_text(json.dumps(decision, indent=2))
    print(f"gate: {'PROMOTE' if decision['promote'] else 'REFUSE'} {decision['challenger']}")


if __name__ == "__main__":
    main()
