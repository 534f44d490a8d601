"""DAG integrity: every DAG file imports cleanly, and the day's three DAGs have the tasks,
edges, Assets, retries, timeouts and alerts the architecture promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from couponflow.alerts import task_failed

pytestmark = pytest.mark.integration  # Airflow parses the DAG files

DAGS = Path(__file__).resolve().parent.parent / "dags"
CHAINS = {
    "coupon_ingest": ["land", "validate", "load_offline_store", "summary"],
    "coupon_features": ["features", "summary"],
    "coupon_retrain": ["train", "gate", "build_bento", "check_candidate", "release", "summary"],
}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_every_dag_file_imports(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert set(CHAINS) <= set(dagbag.dags)


@pytest.mark.parametrize("dag_id", CHAINS)
def test_tasks_and_edges(dagbag, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    chain = CHAINS[dag_id]
    edges = {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids}
    # beside the chain: the served readout reads feedback, forget_feedback prunes its index
    beside = {"served_readout", "forget_feedback"} if dag_id == "coupon_retrain" else set()
    assert set(dag.task_ids) == {*chain, *beside}
    assert all((task, "summary") in edges for task in beside)
    for upstream, downstream in zip(chain, chain[1:], strict=False):
        assert (upstream, downstream) in edges, f"missing edge {upstream} -> {downstream}"


def test_assets_join_the_dags(dagbag) -> None:
    """Ingestion produces the validated batch, features consume it and produce the
    features, retraining consumes those."""
    ingest, features, retrain = (dagbag.dags[d] for d in CHAINS)
    validated = ingest.get_task("load_offline_store").outlets
    materialised = features.get_task("features").outlets
    assert len(validated) == 1 and len(materialised) == 1
    assert ingest.schedule == "@daily"
    assert features.schedule == validated
    assert retrain.schedule == materialised


@pytest.mark.parametrize("dag_id", CHAINS)
def test_one_run_at_a_time_and_summary_always_runs(dagbag, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    assert dag.max_active_runs == 1
    assert dag.get_task("summary").trigger_rule == "all_done"


def test_transient_steps_retry_with_backoff_and_verdicts_do_not(dagbag) -> None:
    tasks = {t.task_id: t for d in CHAINS for t in dagbag.dags[d].tasks}
    for name in ("land", "features", "build_bento"):
        assert tasks[name].retries >= 2, name
        assert tasks[name].retry_exponential_backoff > 1, name
        assert tasks[name].max_retry_delay is not None, name
    for name in ("validate", "train", "gate", "check_candidate", "release", "summary"):
        assert tasks[name].retries == 0, name
    for dag_id in CHAINS:
        for task in dagbag.dags[dag_id].tasks:
            assert task.execution_timeout is not None, task.task_id
            alerts = task_failed in (task.on_failure_callback or [])
            # a failing summary only repeats the failure of a step that already alerted
            assert alerts == (task.task_id != "summary"), (dag_id, task.task_id)


def test_a_late_model_is_checked_daily(dagbag) -> None:
    deadline = dagbag.dags["coupon_model_deadline"]
    assert deadline.task_ids == ["check_model_on_time"]
    assert deadline.schedule == "0 6 * * *"


def test_the_release_path_follows_the_gate_and_the_candidate_check(dagbag) -> None:
    """Nothing takes traffic but a checked candidate of a promoted model."""
    retrain = dagbag.dags["coupon_retrain"]
    assert retrain.get_task("build_bento").upstream_task_ids == {"train", "gate"}
    assert retrain.get_task("release").upstream_task_ids == {"check_candidate"}


def test_dag_file_has_no_heavy_top_level_imports() -> None:
    for path in DAGS.glob("*.py"):
        top_level = [
            line for line in path.read_text().splitlines() if line.startswith(("import ", "from "))
        ]
        heavy = ("torch", "feast", "great_expectations", "bentoml", "pandas", "dvc")
        assert not [line for line in top_level if any(h in line for h in heavy)], path
