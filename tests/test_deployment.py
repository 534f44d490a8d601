"""Blue/green roll-out on one host, against real bento servers behind the real front door:
a candidate is checked beside the live release and only then takes traffic, a broken one
never does, traffic moves without failed requests, a rollback switches to the warm
standby, and stopping leaves no process behind."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import torch

from couponflow.config import Workspace
from couponflow.processes import free_port
from serving.deploy.server import Server
from tests.conftest import served_workspace
from tests.helpers.serving import noon_after

pytestmark = pytest.mark.integration  # bentos built, servers and the front door started


def make_model(ws: Workspace, version: str, broken: bool = False) -> tuple[str, str]:
    """A model `version` in ws.models (as training leaves it), stored and built into a
    bento; `broken` fills its weights with NaN, as a corrupted training run might."""
    from couponflow.model import CouponNet, save_model
    from serving.deploy.bento import build_bento, store_model

    net = CouponNet(hidden=64)
    if broken:
        with torch.no_grad():
            for weights in net.parameters():
                weights.fill_(float("nan"))
    meta = {"version": version, "hidden": 64}
    save_model(net, ws.models / "model.pt", meta)
    (ws.models / "model.json").write_text(json.dumps(meta))
    model_tag = store_model(ws, ws.models)
    return model_tag, build_bento(ws, model_tag)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """A served world of its own (its releases and front door must not meet the other
    serving tests'), with a holdout slice big enough to read out; everything stopped at
    the end."""
    from serving.deploy.deployment import stop_deployment

    ws = served_workspace(
        tmp_path_factory.mktemp("deployment") / "ws",
        **{"serving.port": free_port(), "policy.holdout_share": 0.3},
    )
    yield ws
    stop_deployment(ws)


@pytest.fixture(scope="module")
def bento(deployment: Workspace) -> tuple[str, str]:
    """(model tag, bento tag) of the first release."""
    from serving.deploy.bento import build_bento, store_model

    model_tag = store_model(deployment, deployment.models)
    return model_tag, build_bento(deployment, model_tag)


def version_at(ws: Workspace) -> str:
    from serving.deploy.deployment import front_door

    body = {"user_id": 1, "context": {"channel": "test"}}
    return httpx.post(f"{front_door(ws)}/recommend", json=body, timeout=10).json()["model_version"]


def test_a_checked_candidate_takes_traffic_only_when_switched(
    deployment: Workspace,
    bento: tuple[str, str],
) -> None:
    from serving.deploy.deployment import deployment_record, front_door, start_candidate
    from serving.deploy.deployment import switch_to_candidate as switch

    model_tag, bento_tag = bento
    candidate = start_candidate(deployment, model_tag, bento_tag)
    assert candidate["checks"]["golden"] == "passed"
    assert candidate["checks"]["latency"]["p99_ms"] > 0
    assert candidate["checks"]["answer"]["model_version"] == model_tag.partition(":")[2]
    with pytest.raises(httpx.ConnectError):  # checked, but no traffic yet
        httpx.get(f"{front_door(deployment)}/readyz", timeout=2)

    record = switch(deployment, bento_tag, "first release")
    assert record["model_tag"] == model_tag and record["url"] == front_door(deployment)
    assert version_at(deployment) == model_tag.partition(":")[2]
    assert deployment_record(deployment)["live"]["bento_tag"] == bento_tag
    again = switch(deployment, bento_tag, "a retried task")  # idempotent
    assert again["time"] == record["time"] and version_at(deployment) == record["model_version"]


def test_a_new_release_moves_traffic_without_failed_requests(deployment: Workspace) -> None:
    from serving.deploy.deployment import deployment_record, front_door, start_candidate
    from serving.deploy.deployment import switch_to_candidate as switch

    old = deployment_record(deployment)["live"]
    model_tag, bento_tag = make_model(deployment, "test-0002")
    start_candidate(deployment, model_tag, bento_tag)

    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def shopper() -> None:  # one kept-alive client, as a downstream app's pool would be
        with httpx.Client(base_url=front_door(deployment), timeout=10) as client:
            while not stop.is_set():
                answer = client.post("/recommend", json={"user_id": 2, "context": {}})
                seen.append((answer.status_code, answer.json().get("model_version", "")))
                time.sleep(0.01)

    thread = threading.Thread(target=shopper)
    thread.start()
    try:
        time.sleep(1.0)
        switch(deployment, bento_tag, "gate passed")
        time.sleep(2.0)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert {status for status, _ in seen} == {200}, seen
    versions = [version for _, version in seen]
    assert versions[0] == old["model_version"] and versions[-1] == "test-0002"
    switched = versions.index("test-0002")
    assert set(versions[switched:]) == {"test-0002"}  # no flapping back
    record = deployment_record(deployment)
    assert record["standby"]["bento_tag"] == old["bento_tag"]  # kept warm for a rollback
    assert Server.attach(record["standby"]["server"]).running()


def test_a_broken_candidate_never_takes_traffic(deployment: Workspace) -> None:
    from couponflow.report import outcome_of
    from serving.deploy.deployment import CandidateRefused, deployment_record, start_candidate

    before = deployment_record(deployment)
    model_tag, bento_tag = make_model(deployment, "test-broken", broken=True)
    with pytest.raises(CandidateRefused, match="the live release stays"):
        start_candidate(deployment, model_tag, bento_tag)
    after = deployment_record(deployment)
    assert after["candidate"] is None
    assert after["last_refusal"]["bento_tag"] == bento_tag and after["last_refusal"]["reason"]
    assert after["live"] == before["live"] and version_at(deployment) == "test-0002"
    steps = {"land": {}, "validate": {}, "load_offline_store": {}, "features": {}, "train": {}}
    steps["train"] = {"gate": {"promote": True}}
    steps["build_bento"] = {"bento_tag": bento_tag}
    assert outcome_of({**steps, "check_candidate": None}).startswith("check_candidate failed")


def test_rollback_switches_to_the_warm_standby(deployment: Workspace) -> None:
    from serving.deploy.deployment import deployment_record, roll_back
    from serving.deploy.release import current_release

    standby = deployment_record(deployment)["standby"]
    started = time.monotonic()
    record = roll_back(deployment, "conversion dropped")
    took = time.monotonic() - started
    assert record["action"] == "rollback" and record["bento_tag"] == standby["bento_tag"]
    assert current_release(deployment)["bento_tag"] == standby["bento_tag"]
    assert version_at(deployment) == standby["model_version"]
    live = deployment_record(deployment)["live"]
    assert live["server"]["pid"] == standby["server"]["pid"]  # no new server was started
    print(f"rollback to the standby took {took:.2f} s")


def test_the_served_policy_is_read_out_against_its_holdout(deployment: Workspace) -> None:
    """Shoppers through the front door, outcomes reported as a downstream app would, and
    the next run's readout of that day from the feedback logs."""
    from couponflow.contract import HOLDOUT_SUFFIX
    from serving.deploy.deployment import front_door
    from training.served import served_readout

    at = noon_after(deployment, 1)  # a day of its own: its budget and its decisions
    answers = []
    with httpx.Client(base_url=front_door(deployment), timeout=10) as client:
        for user in range(120):
            context = {"channel": "checkout", "now": at.isoformat()}
            body = {"user_id": user % 300, "k": 1, "context": context}
            answers.append(client.post("/recommend", json=body).json())
        for i, answer in enumerate(answers):
            event = {"request_id": answer["request_id"], "event": "purchased", "amount": 40.0}
            if i % 3 == 0:
                assert client.post("/feedback", json=event).status_code == 200
            if i % 6 == 0 and answer["offers"]:
                redeemed = {"request_id": answer["request_id"], "event": "redeemed"}
                assert client.post("/feedback", json=redeemed).status_code == 200
    held = [a for a in answers if a["policy_version"].endswith(HOLDOUT_SUFFIX)]
    assert held and all(a["offers"] == [] for a in held)
    assert 0.15 < len(held) / len(answers) < 0.45  # holdout_share 0.3
    for offer in (o for a in answers if a not in held for o in a["offers"]):
        assert offer["propensity"] <= 0.7 + 1e-9  # the share not held out, times the choice's

    readout = served_readout(deployment, at.date().isoformat(), days=1)  # this day alone
    assert readout["feedback_decisions"] == len(answers)
    assert readout["holdout"] == len(held) and readout["redeemed"] > 0
    assert readout["lift"]["low"] <= readout["lift"]["value"] <= readout["lift"]["high"]


def test_stopping_leaves_no_server_and_the_front_door_closed(deployment: Workspace) -> None:
    from serving.deploy.deployment import deployment_record, front_door, stop_deployment

    record = deployment_record(deployment)
    servers = [Server.attach(record[slot]["server"]) for slot in ("live", "standby")]
    stopped = stop_deployment(deployment)
    assert any(s.startswith("router") for s in stopped) and len(stopped) == 3
    assert not any(server.running() for server in servers)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{front_door(deployment)}/readyz", timeout=2)
    assert deployment_record(deployment)["live"] is None
