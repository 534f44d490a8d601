"""The couponflow command line: create a workspace, run the daily DAG through Airflow, and
read back what happened.

    couponflow init   [--workspace DIR] [--set key=value ...]
    couponflow run    DAY [DAY ...]      # `airflow dags test` of the day's three DAGs
    couponflow status                    # the runs' summaries and the live release
    couponflow demo   [--days N]         # init, run N days, print status with a live answer
    couponflow rollback [--reason TEXT]  # the previous release is production again
    couponflow serve                     # the production release behind the front door
    couponflow stop                      # stop the front door and every bento server
    couponflow airflow [--port 8080]     # the Airflow UI over the workspace, until Ctrl-C
    couponflow trial --spec PATH         # our learner vs two-model on a randomised trial

This module parses the arguments and hands each verb, in one call, to the module that owns
its job (`_dispatch`): `init` to couponflow.seeding, `run` to couponflow.airflow_local, `demo`
and `status` to their own modules, `rollback`, `serve` and `stop` to serving.deploy.verbs,
`trial` to training.trial, `airflow` to couponflow.airflow_services. A room's module is
imported inside its verb: the core itself never needs Airflow, Feast, GX or BentoML.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import yaml

from couponflow.airflow_local import run_and_check
from couponflow.config import HOME_ENV, Workspace
from couponflow.demo import demo
from couponflow.landing import next_days, offline_days
from couponflow.logs import quiet_libraries
from couponflow.seeding import init_seeded
from couponflow.status import print_status

DESCRIPTION = " ".join(__doc__.split("\n\n")[0].split())  # the docstring's first paragraph


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (and exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _count(text: str) -> int:
    """A count of at least 1, for `--next` and `--days`."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text} days: give at least 1")
    return n


def _day(text: str) -> str:
    """A date as YYYY-MM-DD."""
    try:
        return str(datetime.date.fromisoformat(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date: write YYYY-MM-DD") from None


def _assignment(text: str) -> tuple[str, Any]:
    """`key=value` of `--set`, the value read as YAML."""
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: write KEY=VALUE, e.g. world.n_users=500")
    try:
        return key, yaml.safe_load(value)
    except ValueError:  # e.g. 2026-02-30: the params schema says what is wrong with it
        return key, value
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not valid YAML") from None


def main(argv: list[str] | None = None) -> None:
    """The command line; an error the user can fix is one line and a non-zero exit."""
    from couponflow.config import ParamsError
    from couponflow.workspace import WorkspaceError

    try:
        _main(argv)
    except (ParamsError, WorkspaceError) as exc:
        sys.exit(f"couponflow: error: {exc}")


def _parser() -> _Parser:
    """The command line: the global options and every verb's, in the help's order."""
    parser = _Parser(
        prog="couponflow",
        description=DESCRIPTION,
        epilog=f"The workspace is --workspace, else ${HOME_ENV}, else var/demo. "
        "`couponflow VERB -h` says more of each verb; docs/runbook.md of everything.",
    )
    parser.add_argument("--workspace", type=Path, help=f"default: ${HOME_ENV} or var/demo")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    _add_day_verbs(sub)
    _add_release_verbs(sub)
    _add_tool_verbs(sub)
    return parser


def _add_day_verbs(sub: Any) -> None:
    """init, run and status."""
    p_init = sub.add_parser(
        "init",
        help="create a workspace and seed its history days",
        description="Create the workspace (params.yaml, a git + DVC project) if it is not "
        "there, and land, validate and store its history days (world.history_days) so the "
        "first run has days to train on. Re-running it on a workspace is harmless.",
    )
    p_init.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", type=_assignment,
        help="a param of the new workspace, dotted (world.n_users=2000); repeatable",
    )  # fmt: skip
    p_run = sub.add_parser(
        "run",
        help="run the DAG for the given days (or the next N)",
        description="Run each day's three DAGs (coupon_ingest, coupon_features, "
        "coupon_retrain) with `airflow dags test`, a line per task as it ends; each DAG's "
        "log is logs/<dag_id>-<day>.log, each day's summary reports/runs/<day>.md.",
    )
    p_run.add_argument(
        "days", nargs="*", type=_day, help="dates, YYYY-MM-DD (default: the next day)"
    )
    p_run.add_argument(
        "--next", type=_count, default=0, metavar="N",
        help="the N days after the newest in the offline store",
    )  # fmt: skip
    p_status = sub.add_parser(
        "status",
        help="what the runs did and the live release",
        description="Each day's summary (outcome, validation, features, the gate's checks, "
        "the release), the production release and the servers on this host.",
    )
    p_status.add_argument(
        "--live", action="store_true",
        help="also ask the serving deployment (its front door) for one recommendation; "
        "starts nothing",
    )  # fmt: skip


def _add_release_verbs(sub: Any) -> None:
    """rollback, serve, stop, then demo (the help lists them in this order)."""
    p_rollback = sub.add_parser(
        "rollback",
        help="make the previous release production again",
        description="The release before the current one becomes production again: traffic "
        "first (the warm standby when it serves that release, else a server started and "
        "checked for it), then the release record and the champion. Refused, with nothing "
        "changed, when there is no earlier release.",
    )
    p_rollback.add_argument(
        "--reason", default="manual rollback", help="why, kept in the release history"
    )
    sub.add_parser(
        "serve",
        help="serve the production release behind the front door (serving.port)",
        description="Start the production release's server and the front door on "
        "serving.host:serving.port of the workspace's params.yaml (127.0.0.1:3300 by "
        "default), unless they already run; they keep running until `couponflow stop`. "
        "A port taken by another process is refused at once and nothing is started: free "
        "it, or set serving.port.",
    )
    sub.add_parser(
        "stop",
        help="stop the front door and every bento server",
        description="Stop the front door and every server of the workspace (live, standby, "
        "candidate). The release record is kept: `couponflow serve` starts it again.",
    )
    p_demo = sub.add_parser(
        "demo",
        help="init, run consecutive days, print the status",
        description="`init`, then `run` the next --days days, then `status --live`; the "
        "servers a release started are stopped at the end unless --keep-serving.",
    )
    p_demo.add_argument("--days", type=_count, default=3, help="days to run (default 3)")
    p_demo.add_argument(
        "--keep-serving", action="store_true", help="leave a released model's servers running"
    )
    p_demo.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", type=_assignment,
        help="a param of the new workspace, dotted; repeatable",
    )  # fmt: skip


def _add_tool_verbs(sub: Any) -> None:
    """trial and airflow."""
    p_trial = sub.add_parser(
        "trial",
        help="our learner vs two-model on a randomised trial",
        description="Cross-fit the project's learner and a two-model baseline on a public "
        "randomised trial described by a YAML spec (public_data/hillstrom.yaml) and print "
        "each policy's value at the budget with paired intervals.",
    )
    p_trial.add_argument("--spec", required=True, type=Path, help="the trial's YAML spec")
    p_trial.add_argument("--outcome", action="append", help="an outcome of the spec (default: all)")
    p_trial.add_argument("--budget-share", type=float, default=1 / 3, help="most treated, a share")
    p_trial.add_argument("--folds", type=int, default=4, help="cross-fitting folds")
    p_trial.add_argument("--seeds", type=int, default=1, help="fold seeds, predictions averaged")
    p_trial.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    p_trial.add_argument("--level", type=float, default=0.95, help="interval level")
    p_trial.add_argument("--rows", type=int, help="a random subsample of this many customers")
    p_trial.add_argument("--epochs", type=int, help="the network's epochs (default: the spec's)")
    p_trial.add_argument("--json", type=Path, help="also write the figures to this file")
    p_ui = sub.add_parser(
        "airflow",
        help="api-server, scheduler and dag-processor: the UI",
        description="The Airflow UI over the workspace's runs (those of `run` and `demo` "
        "too) until Ctrl-C; nothing runs on a clock: trigger coupon_ingest for a date.",
    )
    p_ui.add_argument("--port", type=int, default=8080, help="the UI's port (default 8080)")
    p_ui.add_argument("--user", default="admin", help="the UI's user (default admin)")
    p_ui.add_argument("--password", default="admin", help="local use only (default admin)")


def _main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)

    quiet_libraries()
    if args.workspace:
        os.environ[HOME_ENV] = str(args.workspace.resolve())
    ws = Workspace.from_env()
    os.environ[HOME_ENV] = str(ws.root)
    os.environ.setdefault("BENTOML_HOME", str(ws.root / "bentoml"))
    _check(parser, ws, args)
    _dispatch(ws, args)


def _check(parser: _Parser, ws: Workspace, args: argparse.Namespace) -> None:
    """Refuse, as a usage error, a verb the workspace cannot take yet."""
    if ws.root.exists() and not ws.root.is_dir():
        parser.error(f"workspace {ws.root} is a file, not a folder: pass --workspace a folder")
    if args.verb not in ("init", "demo", "trial") and not ws.params_file.exists():
        parser.error(f"no workspace at {ws.root}: create it with `couponflow init` first")
    if args.verb == "run" and not (args.days or offline_days(ws)):
        parser.error(f"nothing seeded in {ws.root}: re-run `couponflow init`, or name the days")


def _dispatch(ws: Workspace, args: argparse.Namespace) -> None:
    """One call a verb, into the module that owns its job (a room's imported here, when its
    verb runs)."""
    if args.verb == "init":
        init_seeded(ws, dict(args.set))
    if args.verb == "run":
        run_and_check(ws, args.days or next_days(ws, args.next or 1))
    if args.verb == "demo":
        demo(ws, dict(args.set), args.days, args.keep_serving)
    if args.verb == "status":
        print_status(ws, live=args.live)
    if args.verb == "rollback":
        from serving.deploy.verbs import roll_back

        roll_back(ws, args.reason)
    if args.verb == "serve":
        from serving.deploy.verbs import serve

        serve(ws)
    if args.verb == "stop":
        from serving.deploy.verbs import stop

        stop(ws)
    if args.verb == "trial":
        from training.trial import main as trial

        trial(args)
    if args.verb == "airflow":
        from couponflow.airflow_services import run_ui

        run_ui(ws, args.port, args.user, args.password)


if __name__ == "__main__":
    main()
