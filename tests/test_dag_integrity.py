"""DAG integrity: every DAG file parses with no services and no secrets, fast and thin.

Parse times are measured and printed (``pytest -s`` or the ``-ra`` summary's captured
output), never asserted: timing on a shared 2-core machine is noise.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest_airflow import DAG_FILES, DAGS_DIR, PROJECT_DIR, show, subprocess_env

from pipeline.airflow_settings import ARTICLE_ASSET_NAME, ARTICLE_ASSET_URI

HEAVY_MODULES = ("torch", "transformers", "spacy", "elasticsearch", "sklearn", "pipeline.runner")
EXPECTED_DAGS = {"stancewatch_ingest", "stancewatch_alerts", "stancewatch_maintenance"}

# Parse each file in a fresh interpreter: which modules did the DAG file itself pull in
# (beyond what importing Airflow costs anyway), and how long did the file take?
_PROBE = textwrap.dedent(
    """
    import importlib.util, json, sys, time
    import airflow.sdk  # Airflow's own import cost is not the DAG file's
    before = set(sys.modules)
    path = sys.argv[1]
    spec = importlib.util.spec_from_file_location("dag_under_test", path)
    module = importlib.util.module_from_spec(spec)
    started = time.perf_counter()
    spec.loader.exec_module(module)
    elapsed = time.perf_counter() - started
    print(json.dumps({"seconds": elapsed, "new_modules": sorted(set(sys.modules) - before)}))
    """
)


def _probe(path: Path, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_DIR,
        env=subprocess_env(extra_env),
        check=False,
    )
    assert result.returncode == 0, f"{path.name} failed to import:\n{result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def dagbag(pytestconfig: pytest.Config) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_DIR))
    show(pytestconfig, "")
    for stat in sorted(bag.dagbag_stats, key=lambda s: s.file):
        show(
            pytestconfig,
            f"DAG parse (DagBag, in-process): {stat.file:28s} "
            f"{stat.duration.total_seconds() * 1000:7.1f} ms  dags={stat.dags}",
        )
    return bag


def test_every_dag_file_parses_without_errors(dagbag: Any) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dags) == EXPECTED_DAGS
    assert len(DAG_FILES) == len(EXPECTED_DAGS)


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_imports_no_heavy_modules(path: Path, pytestconfig: pytest.Config) -> None:
    """Heavy libraries must be imported inside tasks: at top level they would cost
    seconds on every parse by the DAG processor (every 30 s, every file)."""
    probe = _probe(path)
    show(
        pytestconfig,
        f"\nDAG parse (fresh interpreter, no services): {path.name:28s} "
        f"{probe['seconds'] * 1000:7.1f} ms",
    )
    heavy = [
        m for m in probe["new_modules"] if m.split(".")[0] in HEAVY_MODULES or m in HEAVY_MODULES
    ]
    assert heavy == [], f"{path.name} imports heavy modules at top level: {heavy}"


def test_ingest_schedule_comes_from_environment_or_variable() -> None:
    """Default every 15 minutes; an Airflow Variable (here in its environment form)
    changes it; STANCEWATCH_INGEST_SCHEDULE wins over both; "none" = manual runs only."""
    ingest = DAGS_DIR / "stancewatch_ingest.py"

    def schedule_with(extra: dict[str, str]) -> str:
        code = (
            "from airflow.dag_processing.dagbag import DagBag; import sys;"
            "b = DagBag(dag_folder=sys.argv[1]);"
            "t = b.dags['stancewatch_ingest'].timetable;"
            "print(getattr(t, 'expression', type(t).__name__))"
        )
        result = subprocess.run(
            [sys.executable, "-c", code, str(ingest)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=PROJECT_DIR,
            env=subprocess_env(extra),
            check=False,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout.strip().splitlines()[-1]

    assert schedule_with({}) == "*/15 * * * *"
    assert schedule_with({"AIRFLOW_VAR_STANCEWATCH_INGEST_SCHEDULE": "*/5 * * * *"}) == (
        "*/5 * * * *"
    )
    assert (
        schedule_with(
            {
                "AIRFLOW_VAR_STANCEWATCH_INGEST_SCHEDULE": "*/5 * * * *",
                "STANCEWATCH_INGEST_SCHEDULE": "0 * * * *",
            }
        )
        == "0 * * * *"
    )
    assert schedule_with({"STANCEWATCH_INGEST_SCHEDULE": "none"}) == "NullTimetable"


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_DAGS))
def test_dag_policy(dagbag: Any, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    assert "stancewatch" in dag.tags and len(dag.tags) >= 2
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.doc_md and len(dag.doc_md) > 200
    assert dag.dagrun_timeout is not None
    for task in dag.tasks:
        where = f"{dag_id}.{task.task_id}"
        assert task.retries >= 1, where
        assert task.retry_exponential_backoff and task.retry_exponential_backoff > 1, where
        assert task.max_retry_delay is not None, where
        assert task.execution_timeout is not None, where
        assert task.execution_timeout <= timedelta(hours=1), where
        assert task.on_failure_callback, where
        # TaskFlow turns the docstring into doc_md; a mapped task keeps it on the callable.
        doc = task.doc_md or inspect.getdoc(getattr(task, "python_callable", None)) or ""
        assert len(doc) > 40, f"{where}: docstring missing"


def test_ingest_maps_over_shards_and_updates_the_article_asset(dagbag: Any) -> None:
    dag = dagbag.dags["stancewatch_ingest"]
    assert {t.task_id for t in dag.tasks} == {"plan", "collect", "classify_and_index", "report"}
    collect = dag.get_task("collect")
    assert collect.is_mapped, "feeds must be fetched by one mapped task over shards"
    assert dag.get_task("plan").downstream_task_ids == {"collect", "classify_and_index"}
    classify = dag.get_task("classify_and_index")
    assert [(o.name, o.uri) for o in classify.outlets] == [(ARTICLE_ASSET_NAME, ARTICLE_ASSET_URI)]
    assert classify.trigger_rule == "all_done"
    assert dag.get_task("report").trigger_rule == "none_failed"
    assert set(dag.params.keys()) == {"feed_ids", "shards", "only_due", "now"}
    assert dag.params["shards"] >= 1


def test_alerts_are_scheduled_on_the_article_asset(dagbag: Any) -> None:
    dag = dagbag.dags["stancewatch_alerts"]
    assets = list(dag.timetable.asset_condition.objects)
    assert [(a.name, a.uri) for a in assets] == [(ARTICLE_ASSET_NAME, ARTICLE_ASSET_URI)]
    assert "now" in dag.params


def test_maintenance_runs_daily(dagbag: Any) -> None:
    dag = dagbag.dags["stancewatch_maintenance"]
    assert dag.timetable.expression == "0 0 * * *"
    assert [t.task_id for t in dag.tasks] == ["housekeeping"]
