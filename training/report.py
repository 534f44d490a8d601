"""DVC stage `report`: the run report an ML engineer reads before trusting a model.

reports/evaluation/report.md with three figures beside it (Qini curves, calibration,
incremental profit against the budget): the gate's decision and why, champion vs
challenger vs baselines, the off-policy values with their intervals, the truth where the
data is simulated, the budget plan shipped with the model, segments and the A/B readout.
Run from the workspace root: `python -m training.report`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from couponflow.config import Workspace  # noqa: E402
from couponflow.evaluation import EvaluationReport, refit_line, render_lines  # noqa: E402
from couponflow.policy import BudgetPlan  # noqa: E402
from couponflow.records import GateDecision, ModelRecord  # noqa: E402

REPORT_DIR = Path("reports") / "evaluation"
FIGURES = {
    "qini": "Qini curves: cumulative incremental profit by share targeted",
    "calibration": "Calibration of P(purchase) on the judged days",
    "budget": "Incremental profit against the daily budget",
}


def _number(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _population(population: dict[str, int]) -> str:
    """Who the whole-population figures cover: every known user, or a sample of them."""
    if population["users"] == population["known_users"]:
        return f"Every user of the day ({population['users']})"
    return (
        f"A fixed-seed sample of {population['users']} of the day's "
        f"{population['known_users']} users (`evaluation.population_sample`)"
    )


def _plan_value(value: Any) -> str:
    """A budget plan's value for a person: floats to 3 significant figures or 2 decimals."""
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) >= 1 else f"{value:.3g}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def draw(plots: dict[str, pd.DataFrame], out: Path) -> None:
    """The three figures, one PNG each."""
    fig, ax = plt.subplots(figsize=(8.0, 4.2))
    for policy, frame in plots["qini"].groupby("policy", sort=False):
        ax.plot(frame["fraction"], frame["incremental"], label=policy)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(
        xlabel="share of logged decisions targeted (best first)",
        ylabel="cumulative incremental profit\n(money, over the judged days' logged decisions)",
    )
    _finish(fig, ax, out / "qini.png", FIGURES["qini"])

    fig, ax = plt.subplots(figsize=(6.6, 4.6))
    for model, frame in plots["calibration"].groupby("model", sort=False):
        ax.plot(frame["predicted"], frame["observed"], marker="o", label=model)
        if "count" in frame and model == plots["calibration"]["model"].iloc[0]:  # once
            for x, y, n in zip(frame["predicted"], frame["observed"], frame["count"], strict=True):
                ax.annotate(
                    f"{n:,}",
                    (x, y),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                )
    top = float(plots["calibration"][["predicted", "observed"]].max().max())
    ax.plot([0, top], [0, top], color="grey", ls="--", lw=0.8, label="perfect")
    ax.set(
        xlabel="predicted P(purchase), equal-count bins (decisions per bin beside each point)",
        ylabel="observed purchase rate",
    )
    _finish(fig, ax, out / "calibration.png", FIGURES["calibration"])

    fig, ax = plt.subplots(figsize=(8.0, 4.2))
    budget = plots["budget"]
    for policy, frame in budget.groupby("policy", sort=False):
        style: dict[str, Any] = {"color": "black", "ls": "--"} if policy == "oracle" else {}
        ax.plot(
            frame["budget"],
            frame["incremental_profit"],
            marker=".",
            label=policy,
            **style,
        )
    ax.axhline(0, color="grey", lw=0.8)
    measure = budget["measure"].iloc[0]
    ylabel = (
        "true incremental profit of the day (money)"
        if measure == "true"
        else "incremental profit the challenger expects (money)"
    )
    ax.set(xlabel="daily coupon budget (money)", ylabel=ylabel)
    _finish(fig, ax, out / "budget.png", FIGURES["budget"])


def _finish(fig: plt.Figure, ax: plt.Axes, path: Path, title: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _estimators_table(evaluation: EvaluationReport) -> str:
    """Every policy's prediction, uplift and off-policy figures, one row each."""
    header = ["policy", "AUC", "log loss", "ECE", "Qini", "AUUC", "IPS", "SNIPS", "DR",
              "offer rate"]  # fmt: skip
    rows = [
        [
            f"{name} {p.version or ''}".strip(),
            _number((p.prediction or {}).get("auc")),
            _number((p.prediction or {}).get("log_loss")),
            _number((p.prediction or {}).get("ece")),
            _number(p.qini),
            _number(p.auuc),
            p.ips.text(),
            p.snips.text(),
            p.dr.text(),
            f"{p.offer_rate:.1%}",
        ]
        for name, p in evaluation.policies.items()
    ]
    return _table(header, rows)


def _truth_section(evaluation: EvaluationReport) -> list[str]:
    """The whole-population truth (simulated world only; none on public data)."""
    o = evaluation.oracle
    if o is None:
        return []
    return [
        "## The truth on the whole population (simulated world)",
        f"{_population(evaluation.population)} decided for at a budget of {o.budget:.0f}; "
        f"the oracle policy, which sees the hidden traits, earns {o.oracle_policy:.1f}.",
        _table(
            [
                "policy",
                "true incremental profit",
                "share of oracle",
                "true cost",
                "planned cost",
                "offers",
                "challenger's lead",
            ],
            [
                [
                    name,
                    f"{p['incremental_profit']:.1f}",
                    f"{p['share_of_oracle']:.1%}",
                    f"{p['true_cost']:.1f}",
                    f"{p['planned_cost']:.1f}",
                    f"{p['offers']:.0f}",
                    o.challenger_lead[name].text(1) if name in o.challenger_lead else "-",
                ]
                for name, p in o.policies.items()
            ],
        ),  # fmt: skip
    ]


def _segments_section(evaluation: EvaluationReport) -> list[str]:
    if not evaluation.segments:
        return []
    return [
        "## Segments (the challenger's allocation over every user)",
        _table(
            list(evaluation.segments[0].keys()),
            [
                [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()]
                for row in evaluation.segments
            ],
        ),
    ]


def render(
    evaluation: EvaluationReport,
    gate: GateDecision,
    model: ModelRecord,
    plan: BudgetPlan,
) -> str:
    """The report's Markdown: the evaluation and the verdict by the one renderer
    (couponflow.evaluation.render_lines, as the run summary and the CLI print them), then
    what only the run report shows: every estimator, the figures, the whole-population
    truth, the budget plan and the segments."""
    verdict = "PROMOTE" if gate["promote"] else "REFUSE"
    parts = [
        f"# Model {model['version']}: {verdict}",
        f"Trained on {model.get('train_rows', '?')} offers of {model['data_days'][0]} .. "
        f"{model.get('early_stopping_day', model['data_days'][-1])} (early stopping on the "
        f"last), code {model.get('code_commit')}, device {model.get('device')}.",
        *filter(None, [refit_line(model)]),
        "## Evaluation and the gate",
        "\n".join(render_lines(evaluation, gate)),
        "## Every estimator",
        f"Profit per decision off-policy ({evaluation.estimator}; the DR reward model is "
        "gradient boosting cross-fitted over users, not the challenger), each policy at the "
        f"same budget, {evaluation.confidence:.0%} bootstrap intervals.",
        _estimators_table(evaluation),
        f"![{FIGURES['qini']}](qini.png) ![{FIGURES['calibration']}](calibration.png)",
        *_truth_section(evaluation),
        f"![{FIGURES['budget']}](budget.png)",
        "## The budget plan shipped with the model",
        _table(["", ""], [[k, _plan_value(v)] for k, v in asdict(plan).items()]),
        *_segments_section(evaluation),
    ]
    return "\n\n".join(parts) + "\n"


def main() -> None:
    ws = Workspace(Path.cwd())
    out = ws.root / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    read = lambda path: json.loads(path.read_text())  # noqa: E731
    plots = {name: pd.read_csv(ws.metrics / "plots" / f"{name}.csv") for name in FIGURES}
    draw(plots, out)
    text = render(
        EvaluationReport.read(ws.metrics / "evaluation.json"),
        read(ws.metrics / "gate.json"),
        read(ws.models / "model.json"),
        BudgetPlan.read(ws.models / "policy.json"),
    )
    (out / "report.md").write_text(text)
    print(f"report: {out / 'report.md'}")


if __name__ == "__main__":
    main()
