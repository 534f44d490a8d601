"""The deployment files as data: the Kubernetes manifests (docker/k8s) and the compose file
(docker/compose.yaml) parsed with PyYAML and held to the invariants that matter, since no
cluster or Docker daemon is at hand. Fast, no network. `make check-docker` adds
`docker-compose config` and `kubectl kustomize` where those tools are installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from fractions import Fraction
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from couponflow.config import PROJECT_ROOT

DOCKER = PROJECT_ROOT / "docker"
K8S = DOCKER / "k8s"
CANARY_SHARE = Fraction(1, 10)  # docker/k8s/README.md states this share
SECRET_NAME = re.compile(r"(?i)(password|secret|token|api_?key|fernet)")


def manifests() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in manifests() if d["kind"] == kind}


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def deployments() -> tuple[dict[str, Any], dict[str, Any]]:
    found = of_kind("Deployment")
    assert set(found) == {"couponflow-stable", "couponflow-canary"}
    return found["couponflow-stable"], found["couponflow-canary"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def test_every_manifest_file_is_in_the_kustomization() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def test_each_deployment_selects_its_own_pods() -> None:
    for deployment in deployments():
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()
    stable, canary = (d["spec"]["selector"]["matchLabels"] for d in deployments())
    assert stable != canary  # neither Deployment adopts the other's pods


def test_one_service_sends_traffic_to_both_tracks() -> None:
    (service,) = of_kind("Service").values()
    selector = service["spec"]["selector"]
    for deployment in deployments():
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        ports = {p["name"] for c in containers(deployment) for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    assert "couponflow/track" not in selector


def test_replicas_give_the_stated_canary_share() -> None:
    stable, canary = (d["spec"]["replicas"] for d in deployments())
    assert Fraction(canary, stable + canary) == CANARY_SHARE


def test_probes_hit_bentoml_health_endpoints() -> None:
    for deployment in deployments():
        (bento,) = deployment["spec"]["template"]["spec"]["containers"]
        assert bento["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert bento["readinessProbe"]["httpGet"]["path"] == "/readyz"
        # a slow start must not be killed by the liveness probe
        startup = bento["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 90


def test_every_container_has_requests_and_limits() -> None:
    for doc in manifests():
        if doc["kind"] in ("Deployment", "Job"):
            for container in containers(doc):
                for part in ("requests", "limits"):
                    assert {"cpu", "memory"} <= container["resources"][part].keys(), (
                        doc["metadata"]["name"],
                        part,
                    )


def test_workers_fit_the_cpu_request() -> None:
    (config,) = of_kind("ConfigMap").values()
    workers = int(config["data"]["COUPONFLOW_SERVING_WORKERS"])
    for deployment in deployments():
        (bento,) = deployment["spec"]["template"]["spec"]["containers"]
        assert workers <= float(bento["resources"]["requests"]["cpu"])


def test_secrets_come_only_from_secret_refs() -> None:
    assert not of_kind("Secret"), "a Secret object is never committed: create it in-cluster"
    for config in of_kind("ConfigMap").values():
        assert not [k for k in config["data"] if SECRET_NAME.search(k)]
    for doc in manifests():
        if doc["kind"] in ("Deployment", "Job"):
            for container in containers(doc):
                for name, entry in env_of(container).items():
                    if SECRET_NAME.search(name):
                        assert "value" not in entry, name
                        assert "secretKeyRef" in entry["valueFrom"], name


def test_the_api_key_is_optional() -> None:
    for deployment in deployments():
        (bento,) = deployment["spec"]["template"]["spec"]["containers"]
        ref = env_of(bento)["COUPONFLOW_API_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref["optional"] is True  # no Secret: the service runs without a key


def test_both_tracks_share_one_workspace_and_so_one_budget() -> None:
    """The spend store's Redis keys derive from the workspace path: one path, one budget."""
    (config,) = of_kind("ConfigMap").values()
    home = config["data"]["COUPONFLOW_HOME"]
    (claim,) = of_kind("PersistentVolumeClaim")
    for doc in [*deployments(), *of_kind("Job").values()]:
        spec = doc["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == home]
            assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim
            assert container["envFrom"] == [{"configMapRef": {"name": "couponflow"}}]
        # the bento image runs as uid 1034; the workspace must be writable for it
        assert spec["securityContext"]["fsGroup"] == 1034


def test_each_image_serves_the_model_it_packs() -> None:
    """`bentoml containerize couponflow:<v>` packs model couponflow-recommender:<v>."""
    for deployment in deployments():
        (bento,) = deployment["spec"]["template"]["spec"]["containers"]
        image_version = bento["image"].rpartition(":")[2]
        model_tag = env_of(bento)["COUPONFLOW_MODEL_TAG"]["value"]
        assert model_tag == f"couponflow-recommender:{image_version}"


def test_the_workspace_is_initialised_with_every_shared_store_on_redis() -> None:
    """Pods on several nodes share the online store, the spend and the feedback index:
    none may be a SQLite file on the shared volume."""
    (job,) = of_kind("Job").values()
    (init,) = job["spec"]["template"]["spec"]["containers"]
    args = " ".join(init["args"])
    for setting in (
        "features.online_store=redis",
        "features.redis=$(REDIS_ADDRESS)",
        "serving.spend_store=redis",
        "serving.feedback_index=redis",
    ):
        assert setting in args
    (config,) = of_kind("ConfigMap").values()
    assert re.fullmatch(r"[\w.-]+:\d+", config["data"]["REDIS_ADDRESS"])


def test_the_join_and_materialisation_run_on_the_ray_cluster() -> None:
    """The init Job points the workspace at the RayCluster's head (KubeRay's head Service
    `<name>-head-svc`, Ray Client's port); its nodes run the pipeline image, share the
    workspace at the same path, take the token from a Secret and have requests and limits."""
    (job,) = of_kind("Job").values()
    (init,) = job["spec"]["template"]["spec"]["containers"]
    args = " ".join(init["args"])
    assert "features.engine=ray" in args and "features.ray_address=$(RAY_ADDRESS)" in args
    (config,) = of_kind("ConfigMap").values()
    (name, cluster), *_ = of_kind("RayCluster").items()
    assert config["data"]["RAY_ADDRESS"] == f"ray://{name}-head-svc:10001"
    spec = cluster["spec"]
    assert spec["headGroupSpec"]["rayStartParams"]["ray-client-server-port"] == "10001"
    (claim,) = of_kind("PersistentVolumeClaim")
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for pod in (g["template"]["spec"] for g in groups):
        volumes = {v["name"]: v for v in pod["volumes"]}
        (node,) = pod["containers"]
        assert node["image"] == init["image"]
        assert spec["rayVersion"] == "2.60.0"
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= node["resources"][part].keys()
        (mount,) = [
            m for m in node["volumeMounts"] if m["mountPath"] == config["data"]["COUPONFLOW_HOME"]
        ]
        assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim
        token = env_of(node)["RAY_AUTH_TOKEN"]
        assert "value" not in token and "secretKeyRef" in token["valueFrom"]


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl not installed")
def test_kustomize_renders_every_object_into_the_namespace() -> None:
    """`kubectl kustomize` renders offline (no cluster): what `kubectl apply -k` would send."""
    done = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rendered = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert len(rendered) == len(manifests())
    namespaced = [d for d in rendered if d["kind"] != "Namespace"]
    assert {d["metadata"]["namespace"] for d in namespaced} == {"couponflow"}


# -- compose --------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def variables(text: str) -> dict[str, str]:
    """Every ${VAR...} outside comments: name -> its operator and default or message."""
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    return dict(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)([^}]*)\}", code))


def test_compose_runs_the_whole_stack() -> None:
    services = compose()["services"]
    assert {
        "postgres",
        "redis",
        "minio",
        "minio-init",
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-worker",
        "airflow-worker-gpu",
        "bento",
    } <= services.keys()
    gpu = services["airflow-worker-gpu"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.trainer"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    assert "--queues" in gpu["command"]
    env = compose()["x-airflow"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")


def test_compose_initialises_the_workspace_with_every_shared_store_on_redis() -> None:
    (command,) = compose()["services"]["airflow-init"]["command"]
    for setting in (
        "features.online_store=redis",
        "features.redis=${REDIS_ADDRESS:-redis:6379}",
        "serving.spend_store=redis",
        "serving.feedback_index=redis",
    ):
        assert f"--set {setting}" in command


def test_compose_runs_the_join_and_materialisation_on_a_ray_cluster() -> None:
    """A head and workers from the pipeline image, the workspace at the same path, the
    token required; the workspace pointed at the head, every Airflow service holding the
    token and waiting for the head."""
    services = compose()["services"]
    head, worker = services["ray-head"], services["ray-worker"]
    image = compose()["x-airflow"]["image"]
    for node in (head, worker):
        assert node["image"] == image and node["entrypoint"] == ["ray"]
        assert node["volumes"] == compose()["x-airflow"]["volumes"][:1]
        assert node["environment"]["RAY_AUTH_MODE"] == "token"
    assert "--head" in head["command"] and "--ray-client-server-port=10001" in head["command"]
    assert "--address=ray-head:6379" in worker["command"]
    (command,) = services["airflow-init"]["command"]
    assert "--set features.engine=ray" in command
    assert "--set features.ray_address=${RAY_ADDRESS:-ray://ray-head:10001}" in command
    env = compose()["x-airflow"]["environment"]
    assert env["RAY_AUTH_TOKEN"] == head["environment"]["RAY_AUTH_TOKEN"]
    assert compose()["x-airflow"]["depends_on"]["ray-head"] == {"condition": "service_healthy"}


def test_compose_secrets_are_required_never_defaulted() -> None:
    """A secret has no default in the file: compose stops naming it until docker/.env sets it."""
    for name, rest in variables((DOCKER / "compose.yaml").read_text()).items():
        if SECRET_NAME.search(name) and name != "COUPONFLOW_API_KEY":  # the key is optional
            assert rest.startswith(":?"), name


def test_env_example_names_every_variable_and_holds_no_secret() -> None:
    example = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            example[name] = value
    assert variables((DOCKER / "compose.yaml").read_text()).keys() == example.keys()
    for name, value in example.items():
        if SECRET_NAME.search(name):
            assert value == "" or value.startswith("change-me"), name
    assert "docker/.env" in (PROJECT_ROOT / ".gitignore").read_text().split()


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose not installed")
def test_docker_compose_accepts_the_file() -> None:
    done = subprocess.run(
        ["docker-compose", "--env-file", str(DOCKER / ".env.example")]
        + ["-f", str(DOCKER / "compose.yaml"), "--profile", "serve", "config", "-q"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_the_train_task_is_routed_to_the_gpu_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    """docker/airflow_local_settings.py: `train` goes to $COUPONFLOW_TRAIN_QUEUE, nothing else
    moves, and without the variable nothing changes."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("policy", DOCKER / "airflow_local_settings.py")
    policy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(policy)

    def routed(task_id: str) -> str:
        task = SimpleNamespace(dag_id="coupon_retrain", task_id=task_id, queue="default")
        policy.task_policy(task)
        return task.queue

    monkeypatch.delenv(policy.TRAIN_QUEUE_ENV, raising=False)
    assert routed("train") == "default"
    monkeypatch.setenv(policy.TRAIN_QUEUE_ENV, "gpu")
    assert (routed("train"), routed("build_bento")) == ("gpu", "default")
    dag_tasks = (PROJECT_ROOT / "dags" / "coupon_pipeline.py").read_text()
    assert "def train(" in dag_tasks  # the task the policy names still exists
