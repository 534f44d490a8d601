"""DVC stage `gate`: promote the challenger only if it clears the absolute thresholds in
params.yaml and is no worse than the champion on the same held-out day. The decision and
every reason behind it are written as a DVC metric (metrics/gate.json).

Run from the workspace root: `python -m training.gate`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from couponflow.config import Workspace


def decide(evaluation: dict[str, Any], gate: dict[str, Any]) -> dict[str, Any]:
    """The gate's decision: `promote` and the list of checks with their outcome."""
    ch, champ = evaluation["challenger"], evaluation["champion"]
    checks = [
        {
            "check": "auc >= min_auc",
            "passed": ch["auc"] >= gate["min_auc"],
            "detail": f"{ch['auc']:.4f} vs {gate['min_auc']}",
        }
    ]
    if champ is not None:
        auc_floor = champ["auc"] - gate["max_auc_regression"]
        value_floor = champ["policy_value_snips"] - gate["max_value_regression"]
        checks += [
            {
                "check": "auc no worse than champion's beyond tolerance",
                "passed": ch["auc"] >= auc_floor,
                "detail": f"{ch['auc']:.4f} vs champion {champ['auc']:.4f}",
            },
            {
                "check": "policy value (SNIPS) no worse than champion's",
                "passed": ch["policy_value_snips"] >= value_floor,
                "detail": f"{ch['policy_value_snips']:.4f} vs champion "
                f"{champ['policy_value_snips']:.4f}",
            },
        ]
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
