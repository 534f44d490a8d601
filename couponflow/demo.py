"""`couponflow demo`: the project end to end on one machine in one command. A workspace is
created and seeded, the next days run through Airflow, the status printed with one live
answer, and the servers a release started stopped (a demo leaves nothing running).
"""

from __future__ import annotations

from couponflow.airflow_local import run_days
from couponflow.config import Overrides, Workspace
from couponflow.landing import next_days
from couponflow.seeding import init_seeded
from couponflow.status import print_status


def demo(ws: Workspace, overrides: Overrides, days: int, keep_serving: bool) -> None:
    """`init`, then `run` the next `days` days, then `status --live`; the servers are
    stopped at the end unless `keep_serving`. A rejected day does not stop the demo: the
    status says what happened to it."""
    ws = init_seeded(ws, overrides)
    run_days(ws, next_days(ws, days))
    print_status(ws, live=True)
    if not keep_serving:
        from serving.deploy.verbs import stop

        stop(ws)  # a demo leaves no server behind; `couponflow serve` starts it again
