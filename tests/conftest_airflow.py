"""Airflow test environment: a private AIRFLOW_HOME, our dags/ folder, no examples.

Import this module at the top of a test file, before anything imports ``airflow``:
Airflow reads ``AIRFLOW_HOME`` and its ``AIRFLOW__*`` settings once, when it is first
imported. The values are forced (not ``setdefault``) so that a developer's own
``AIRFLOW_HOME`` and its metadata database are never touched, let alone reset.

The fixture :func:`airflow_db` resets the SQLite metadata database once per session.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent
DAGS_DIR = PROJECT_DIR / "dags"
DAG_FILES = sorted(p for p in DAGS_DIR.glob("*.py") if not p.name.startswith("_"))

_HOME_MARKER = "STANCEWATCH_TEST_AIRFLOW_HOME"


def _airflow_settings(home: Path) -> dict[str, str]:
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
    }


def _prepare() -> Path:
    existing = os.environ.get(_HOME_MARKER)
    if existing:  # already prepared in this process
        return Path(existing)
    if "airflow" in sys.modules:
        raise RuntimeError(
            "airflow was imported before tests/conftest_airflow.py set AIRFLOW_HOME; "
            "import conftest_airflow first in the test module"
        )
    home = Path(tempfile.mkdtemp(prefix="sw-airflow-home-"))
    os.environ.update(_airflow_settings(home))
    os.environ[_HOME_MARKER] = str(home)
    return home


AIRFLOW_HOME = _prepare()


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child process that must see no services and no secrets: no
    Airflow connections/variables, no STANCEWATCH_* endpoints, Elasticsearch pointing at
    a closed port."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_", "STANCEWATCH_", "AIRFLOW__"))
    }
    env.update(_airflow_settings(AIRFLOW_HOME))
    env["STANCEWATCH_ES_URL"] = "http://127.0.0.1:9"  # discard port: nothing listens
    env.update(extra or {})
    return env


@pytest.fixture(scope="session")
def airflow_db() -> Iterator[Path]:
    """A fresh Airflow metadata DB (SQLite) in the private AIRFLOW_HOME, once per session."""
    from airflow.utils import db

    db.resetdb()
    yield AIRFLOW_HOME


def show(config: pytest.Config, line: str) -> None:
    """Print past pytest's output capture, so the measurements are in every run's output."""
    capture = config.pluginmanager.get_plugin("capturemanager")
    if capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        print(line, flush=True)
