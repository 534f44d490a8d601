"""DVC stage `report`: the run report an ML engineer reads before trusting a model.

reports/evaluation/report.md with three figures beside it (Qini curves, calibration,
incremental profit against the budget): the gate's decision and why, champion vs
challenger vs baselines, the off-policy values with their intervals, the truth where the
data is simulated, the budget plan shipped with the model, segments and the A/B readout.
Run from the workspace root: `python -m training.report`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from couponflow.config import Workspace  # noqa: E402

REPORT_DIR = Path("reports") / "evaluation"
FIGURES = {
    "qini": "Qini curves: cumulative incremental profit by share targeted",
    "calibration": "Calibration of P(purchase) on the held-out day",
    "budget": "Incremental profit against the daily budget",
}


def _interval(entry: dict[str, float] | None, digits: int = 3) -> str:
    if not entry:
        return "-"
    return f"{entry['value']:+.{digits}f} [{entry['low']:+.{digits}f}, {entry['high']:+.{digits}f}]"


def _number(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _population(evaluation: dict[str, Any]) -> str:
    """Who the whole-population figures cover: every known user, or a sample of them."""
    population = evaluation["population"]
    if population["users"] == population["known_users"]:
        return f"Every user of the day ({population['users']})"
    return (
        f"A fixed-seed sample of {population['users']} of the day's "
        f"{population['known_users']} users (`evaluation.population_sample`)"
    )


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def draw(plots: dict[str, pd.DataFrame], out: Path) -> None:
    """The three figures, one PNG each."""
    fig, ax = plt.subplots(figsize=(8.0, 4.2))
    for policy, frame in plots["qini"].groupby("policy", sort=False):
        ax.plot(frame["fraction"], frame["incremental"], label=policy)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="share of users targeted (best first)", ylabel="incremental profit")
    _finish(fig, ax, out / "qini.png", FIGURES["qini"])

    fig, ax = plt.subplots(figsize=(6.6, 4.6))
    for model, frame in plots["calibration"].groupby("model", sort=False):
        ax.plot(frame["predicted"], frame["observed"], marker="o", label=model)
    top = float(plots["calibration"][["predicted", "observed"]].max().max())
    ax.plot([0, top], [0, top], color="grey", ls="--", lw=0.8, label="perfect")
    ax.set(xlabel="predicted P(purchase)", ylabel="observed purchase rate")
    _finish(fig, ax, out / "calibration.png", FIGURES["calibration"])

    fig, ax = plt.subplots(figsize=(8.0, 4.2))
    budget = plots["budget"]
    for policy, frame in budget.groupby("policy", sort=False):
        style = {"color": "black", "ls": "--"} if policy == "oracle" else {}
        ax.plot(frame["budget"], frame["incremental_profit"], marker=".", label=policy, **style)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="daily coupon budget", ylabel=f"incremental profit ({budget['measure'].iloc[0]})")
    _finish(fig, ax, out / "budget.png", FIGURES["budget"])


def _finish(fig: plt.Figure, ax: plt.Axes, path: Path, title: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(
    evaluation: dict[str, Any], gate: dict[str, Any], model: dict[str, Any], plan: dict[str, Any]
) -> str:
    """The report's Markdown."""
    verdict = "PROMOTE" if gate["promote"] else "REFUSE"
    policies = evaluation["policies"]
    parts = [
        f"# Model {model['version']}: {verdict}",
        f"Evaluated on {evaluation['evaluation_day']} ({evaluation['decisions']} logged "
        f"decisions); trained on {model.get('train_rows', '?')} offers of "
        f"{model['data_days'][0]} .. {model['data_days'][-1]}, code {model.get('code_commit')}, "
        f"device {model.get('device')}.",
        "## The gate",
        _table(
            ["check", "passed", "detail"],
            [[c["check"], "yes" if c["passed"] else "**no**", c["detail"]] for c in gate["checks"]],
        ),
        "## Champion, challenger and baselines on the held-out day",
        "Policy values are profit per decision estimated off-policy from the logged "
        "propensities (IPS, self-normalised IPS, doubly robust with the challenger's reward "
        f"model), each at the same budget, with {evaluation['confidence']:.0%} bootstrap "
        "intervals; the lead is the challenger's paired DR lead.",
        _table(
            [
                "policy",
                "AUC",
                "log loss",
                "ECE",
                "Qini",
                "AUUC",
                "IPS",
                "SNIPS",
                "DR",
                "lead",
                "offer rate",
            ],  # fmt: skip
            [
                [
                    f"{name} {p.get('version', '')}".strip(),
                    _number(p.get("auc")),
                    _number(p.get("log_loss")),
                    _number(p.get("ece")),
                    _number(p.get("qini")),
                    _number(p.get("auuc")),
                    _interval(p["ips"]),
                    _interval(p["snips"]),
                    _interval(p["dr"]),
                    _interval(evaluation["challenger_lead_dr"].get(name)),
                    f"{p['offer_rate']:.1%}",
                ]
                for name, p in policies.items()
            ],
        ),
        f"The logging policy earned {evaluation['logging_policy']['reward_per_decision']:.3f} "
        "per decision that day.",
        f"![{FIGURES['qini']}](qini.png) ![{FIGURES['calibration']}](calibration.png)",
    ]
    if "oracle" in evaluation:
        o = evaluation["oracle"]
        parts += [
            "## The truth (simulated world)",
            f"{_population(evaluation)} decided for at a budget of {o['budget']:.0f}; "
            f"the oracle policy, which sees the hidden traits, earns "
            f"{o['oracle']['incremental_profit']:.1f} spending {o['oracle']['cost']:.1f}.",
            _table(
                [
                    "policy",
                    "true incremental profit",
                    "share of oracle",
                    "true cost",
                    "planned cost",
                    "offers",
                    "challenger's lead",
                ],  # fmt: skip
                [
                    [
                        name,
                        f"{p['incremental_profit']:.1f}",
                        "-" if p["share_of_oracle"] is None else f"{p['share_of_oracle']:.1%}",
                        f"{p['true_cost']:.1f}",
                        f"{p['planned_cost']:.1f}",
                        str(p["offers"]),
                        _interval(o["challenger_lead"].get(name), 1),
                    ]
                    for name, p in o["policies"].items()
                ],
            ),
        ]
    parts += [
        f"![{FIGURES['budget']}](budget.png)",
        "## The budget plan shipped with the model",
        _table(["", ""], [[k, str(v)] for k, v in plan.items()]),
        "## Segments (the challenger's allocation over every user)",
        _table(
            list(evaluation["segments"][0].keys()),
            [
                [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()]
                for row in evaluation["segments"]
            ],
        ),
        "## A/B readout: the served policy against its random holdout",
        _ab(evaluation["ab_readout"]),
    ]
    return "\n\n".join(parts) + "\n"


def _ab(ab: dict[str, Any]) -> str:
    head = f"Policy {ab['policy_version']}: {ab['decisions']} decisions, {ab['holdout']} held out."
    if ab["lift"] is None:
        return f"{head} {ab['note']}."
    return (
        f"{head} Profit per decision {ab['policy_mean']:.3f} vs {ab['holdout_mean']:.3f} in the "
        f"holdout: lift {_interval(ab['lift'])}."
    )


def main() -> None:
    ws = Workspace(Path.cwd())
    out = ws.root / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    read = lambda path: json.loads(path.read_text())  # noqa: E731
    plots = {name: pd.read_csv(ws.metrics / "plots" / f"{name}.csv") for name in FIGURES}
    draw(plots, out)
    text = render(
        read(ws.metrics / "evaluation.json"),
        read(ws.metrics / "gate.json"),
        read(ws.models / "model.json"),
        read(ws.models / "policy.json"),
    )
    (out / "report.md").write_text(text)
    print(f"report: {out / 'report.md'}")


if __name__ == "__main__":
    main()
