"""tools/check_secrets.py, the committed-secrets check `make lint` runs: it catches each kind
of secret and lets placeholders and code through. The fakes are assembled at run time so
this file holds none itself."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from couponflow.config import PROJECT_ROOT

spec = importlib.util.spec_from_file_location(
    "check_secrets", PROJECT_ROOT / "tools" / "check_secrets.py"
)
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)

KEY_HEADER = "-----BEGIN " + "RSA PRIVATE KEY-----"


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (KEY_HEADER, "private key"),
        ("aws_access_key_id = " + "AKIA" + "Q3EXAMPLE7KEY4ZX", "AWS access key id"),
        ("token: " + "ghp_" + "a1B2" * 9, "GitHub token"),
        ("SQL_ALCHEMY_CONN: postgresql://airflow:" + "hunter22" + "@db/airflow", "in URL"),
        ("REDIS_URL=redis://:" + "s3cr3tpass" + "@redis:6379/0", "in URL"),
        ("db_password = '" + "Tr0ub4dor&3" + "'", "literal credential"),
        ("  api_key: " + "9f8e7d6c5b4a3210", "literal credential"),
        ("AIRFLOW_JWT_SECRET=" + "q9WmZ2xK7vLp", "literal credential"),
    ],
)
def test_each_kind_of_secret_is_caught(line: str, kind: str) -> None:
    found = check.findings(Path("f.yaml"), line)
    assert any(kind in finding for finding in found)
    assert all(finding.endswith("...") for finding in found)  # values are masked


@pytest.mark.parametrize(
    "line",
    [
        "POSTGRES_PASSWORD=change-me",
        "COUPONFLOW_API_KEY=",
        "    AIRFLOW__API_AUTH__JWT_SECRET: ${AIRFLOW_JWT_SECRET:?set it in docker/.env}",
        "conn: postgresql+psycopg2://${POSTGRES_USER:-airflow}:${POSTGRES_PASSWORD:?x}@pg/db",
        "  - features.redis=$(REDIS_ADDRESS)",
        "API_KEY_ENV = 'COUPONFLOW_API_KEY'",
        "key = os.environ[API_KEY_ENV]",
        "secretKeyRef: {name: couponflow-api, key: api-key, optional: true}",
        'API_KEY = "test-key-0123"',
        "redis://user:password@host:6379",
    ],
)
def test_placeholders_and_code_pass(line: str) -> None:
    assert check.findings(Path("f.yaml"), line) == []


def test_a_marked_fake_passes() -> None:
    assert check.findings(Path("f.py"), KEY_HEADER + "  # " + check.ALLOW) == []


def test_env_files_and_secret_objects_are_refused() -> None:
    assert check.findings(Path("docker/.env"), "")
    assert check.findings(Path("docker/.env.example"), "") == []
    assert check.findings(Path("k8s/s.yaml"), "apiVersion: v1\nkind: Secret\n")


def test_the_repository_holds_no_secret() -> None:
    assert check.scan(check.tracked_files(PROJECT_ROOT)) == []
