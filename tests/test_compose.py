"""docker-compose.yml: valid for Compose, and shaped the way docs/airflow.md promises.

There is no Docker engine here, so nothing is started. Validation is Debian's
``docker-compose config`` (1.29: it checks the file against the Compose schema it ships
and resolves interpolation, anchors and merges), run with ``.env.example`` and a clean
environment; the structural checks then read its resolved output and the raw file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

PROJECT_DIR = Path(__file__).resolve().parent.parent
COMPOSE_FILE = PROJECT_DIR / "docker-compose.yml"
ENV_EXAMPLE = PROJECT_DIR / ".env.example"
DOCKERFILE = PROJECT_DIR / "docker" / "airflow.Dockerfile"

AIRFLOW_SERVICES = {
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
}
ONE_SHOT_SERVICES = {"airflow-init", "es-setup", "stancewatch-setup", "kibana-setup"}
CELERY_SERVICES = {"redis", "airflow-worker"}
EXPECTED_SERVICES = (
    AIRFLOW_SERVICES
    | ONE_SHOT_SERVICES
    | CELERY_SERVICES
    | {"elasticsearch", "kibana", "postgres", "mailpit"}
)
# Host ports as documented in docs/airflow.md and .env.example, all on loopback.
DOCUMENTED_PORTS = {
    "elasticsearch": {9200},
    "kibana": {5601},
    "airflow-apiserver": {8080},
    "mailpit": {8025, 1025},
}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|_KEY$|TOKEN|FERNET", re.IGNORECASE)


def _docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("docker-compose is missing (scripts/install-system-deps installs it)")
    pytest.skip("docker-compose not installed (scripts/install-system-deps installs it)")


def _compose_config(env_file: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    # A clean environment: variables of the developer's shell would override .env values.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    return subprocess.run(
        [
            _docker_compose(),
            "--project-directory",
            str(PROJECT_DIR),
            "--env-file",
            str(env_file),
            "-f",
            str(COMPOSE_FILE),
            *extra,
            "config",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_DIR,
        env=env,
        check=False,
    )


def _env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=VALUE: {line!r}"
            values[key.strip()] = value
    return values


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    result = _compose_config(ENV_EXAMPLE)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    data = yaml.safe_load(result.stdout)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_compose_file_is_valid_with_the_example_env(resolved: dict[str, Any]) -> None:
    assert set(resolved["services"]) == EXPECTED_SERVICES


def test_celery_profile_is_valid(tmp_path: Path) -> None:
    result = _compose_config(ENV_EXAMPLE, "--profile", "celery")
    assert result.returncode == 0, result.stderr


def test_secrets_are_required_not_defaulted(tmp_path: Path) -> None:
    """Without a .env the file refuses to resolve, naming the missing secret, instead of
    starting a stack with a password someone committed."""
    empty = tmp_path / "empty.env"
    empty.write_text("", encoding="utf-8")
    result = _compose_config(empty)
    assert result.returncode != 0
    assert re.search(r"set [A-Z_]+ in \.env", result.stderr), result.stderr


def test_every_service_has_a_healthcheck_or_is_one_shot(resolved: dict[str, Any]) -> None:
    depended_on_as_completed: set[str] = set()
    for service in resolved["services"].values():
        for name, dep in (service.get("depends_on") or {}).items():
            if dep.get("condition") == "service_completed_successfully":
                depended_on_as_completed.add(name)
    for name, service in resolved["services"].items():
        labels = service.get("labels") or {}
        if name in ONE_SHOT_SERVICES:
            assert labels.get("org.stancewatch.one-shot") == "true", name
            assert service.get("restart") == "no", f"{name}: one-shot must not restart"
            # Set-up steps gate the services that need them (kibana-setup is the last step).
            if name != "kibana-setup":
                assert name in depended_on_as_completed, f"{name}: nothing waits for it"
        else:
            test = (service.get("healthcheck") or {}).get("test")
            assert test and test != ["NONE"], f"{name}: no healthcheck"
            assert service.get("restart") in ("unless-stopped", "always"), name


def test_dependencies_wait_for_health(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    for name, service in services.items():
        for dep_name, dep in (service.get("depends_on") or {}).items():
            expected = (
                "service_completed_successfully"
                if dep_name in ONE_SHOT_SERVICES
                else "service_healthy"
            )
            assert dep.get("condition") == expected, f"{name} -> {dep_name}"
    # Only the celery profile may depend on the celery profile's services.
    for name, service in services.items():
        if name not in CELERY_SERVICES:
            assert not set(service.get("depends_on") or {}) & CELERY_SERVICES, name
    for name in CELERY_SERVICES:
        assert services[name].get("profiles") == ["celery"], name


def test_data_lives_in_named_volumes_and_only_dags_and_config_are_bind_mounted(
    resolved: dict[str, Any],
) -> None:
    declared = set(resolved.get("volumes") or {})
    assert declared >= {"es-data", "postgres-data", "airflow-logs", "stancewatch-data"}
    used: set[str] = set()
    for name, service in resolved["services"].items():
        for volume in service.get("volumes") or []:
            source, _target, *mode = str(volume).split(":")
            if source.startswith("/"):  # bind mount, resolved to an absolute path
                rel = os.path.relpath(source, PROJECT_DIR)
                assert rel in ("dags", "config"), f"{name}: unexpected bind mount {volume}"
                assert mode == ["ro"], f"{name}: {rel} must be mounted read-only"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
                used.add(source)
    assert used == declared, f"declared but unused volumes: {declared - used}"


def test_ports_are_bound_to_loopback_as_documented(resolved: dict[str, Any]) -> None:
    published: dict[str, set[int]] = {}
    for name, service in resolved["services"].items():
        for port in service.get("ports") or []:
            match = re.fullmatch(r"(?P<ip>[\d.]+):(?P<host>\d+):(?P<container>\d+)(/tcp)?", port)
            assert match, f"{name}: port {port!r} is not bound to an explicit address"
            assert match["ip"] == "127.0.0.1", f"{name}: {port} is not loopback-only"
            published.setdefault(name, set()).add(int(match["host"]))
    assert published == DOCUMENTED_PORTS
    docs = (PROJECT_DIR / "docs" / "airflow.md").read_text(encoding="utf-8")
    for ports in DOCUMENTED_PORTS.values():
        for port in ports:
            assert f"localhost:{port}" in docs or f":{port}" in docs, f"port {port} undocumented"


def test_no_secrets_committed(raw: dict[str, Any]) -> None:
    def walk_env(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "environment" and isinstance(value, dict):
                    for name, setting in value.items():
                        if name == "<<":
                            continue
                        if SECRET_NAME.search(str(name)) and setting not in (None, ""):
                            assert "${" in str(setting), f"{where}.{name}: literal secret"
                walk_env(value, f"{where}.{key}")

    walk_env(raw, "compose")
    # Connection URLs must take their passwords from .env too.
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    for url in re.findall(r"\w+://[^\s'\"]*@[^\s'\"]+", text):
        userinfo = url.split("://", 1)[1].split("@", 1)[0]
        if ":" in userinfo:
            assert "${" in userinfo.split(":", 1)[1], f"literal password in {url}"
    for name, value in _env_example().items():
        if SECRET_NAME.search(name) and name not in ("PIP_EXTRA_INDEX_URL",):
            assert value == "" or value.startswith("change-me"), f".env.example {name}={value!r}"
    assert ".env" in (PROJECT_DIR / ".gitignore").read_text(encoding="utf-8").split()


def test_every_variable_is_documented_in_env_example() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    used = set(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)", text))
    documented = _env_example()
    assert used - set(documented) == set(), "variables missing from .env.example"
    # Each variable sits in a paragraph (lines up to the previous blank line) that has a
    # comment explaining it.
    paragraph: list[str] = []
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            paragraph = []
            continue
        if not line.startswith("#"):
            assert any(p.startswith("#") for p in paragraph), f"undocumented: {line}"
        paragraph.append(line)


def test_airflow_services_run_our_image_with_dags_and_config(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    for name in AIRFLOW_SERVICES | {"airflow-worker", "airflow-init", "stancewatch-setup"}:
        service = services[name]
        assert service["build"]["dockerfile"].endswith("docker/airflow.Dockerfile"), name
        mounts = {str(v).split(":")[1] for v in service.get("volumes") or []}
        assert {"/opt/airflow/dags", "/opt/stancewatch/config"} <= mounts, name
        env = service["environment"]
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith(
            "http://airflow-apiserver:8080/"
        )
        assert env["STANCEWATCH_CONFIG"] == "/opt/stancewatch/config"
    commands = {
        name: " ".join(services[name]["command"])
        if isinstance(services[name]["command"], list)
        else services[name]["command"]
        for name in AIRFLOW_SERVICES | {"airflow-worker"}
    }
    assert commands == {
        "airflow-apiserver": "api-server",
        "airflow-scheduler": "scheduler",
        "airflow-dag-processor": "dag-processor",
        "airflow-triggerer": "triggerer",
        "airflow-worker": "celery worker",
    }
    assert services["airflow-worker"]["environment"]["AIRFLOW__CELERY__BROKER_URL"].startswith(
        "redis://"
    )
    assert "stancewatch setup" in " ".join(services["stancewatch-setup"]["command"])
    assert "stancewatch kibana import" in " ".join(services["kibana-setup"]["command"])


def test_elastic_stack_is_9_with_security_on(resolved: dict[str, Any]) -> None:
    es = resolved["services"]["elasticsearch"]
    assert re.search(r"elasticsearch/elasticsearch:9\.\d+\.\d+$", es["image"])
    assert re.search(r"kibana/kibana:9\.\d+\.\d+$", resolved["services"]["kibana"]["image"])
    env = es["environment"]
    assert env["discovery.type"] == "single-node"
    assert env["xpack.security.enabled"] == "true"
    assert resolved["services"]["kibana"]["environment"]["ELASTICSEARCH_USERNAME"] == (
        "kibana_system"
    )


def test_dockerfile_builds_on_the_pinned_airflow_with_constraints() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    pyproject = (PROJECT_DIR / "pyproject.toml").read_text(encoding="utf-8")
    pinned = re.search(r'"apache-airflow==([\d.]+)"', pyproject)
    assert pinned, "apache-airflow is not pinned in pyproject.toml"
    assert f"FROM apache/airflow:{pinned[1]}-python3.11" in text
    assert re.search(r"pip install .*-c /opt/stancewatch/constraints\.txt", text, re.S)
    assert '-e "/opt/stancewatch[airflow]"' in text
    ignored = (PROJECT_DIR / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".git", ".venv", ".env"} <= set(ignored)
