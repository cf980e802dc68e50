"""``dag.test()`` of the real DAGs against real parts: feeds over local HTTP, the local
Elasticsearch node, and an SMTP server (aiosmtpd) in this process.

- ``stancewatch_ingest`` polls the bundled demo feeds (``config/demo/``, served over HTTP
  from two loopback addresses, so the feeds fall into two shards and ``collect`` is mapped
  twice), classifies and indexes them;
- ``stancewatch_alerts`` then finds the demo's one stance shift (Karin Adlersten,
  territorial concessions, oppose -> support; ``config/demo/EXPECTED.md``) and e-mails it
  to the SMTP server, once: a second run sends nothing;
- a task that fails after its retries e-mails the failure through Airflow's SMTP provider.

Elasticsearch and SMTP settings reach the tasks as Airflow Connections (``stancewatch_es``,
``smtp_default``, in their environment form) while ``STANCEWATCH_ES_URL`` points at a closed
port: the run only works if the connection wins, as documented.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest_airflow import DAGS_DIR, PROJECT_DIR, airflow_db, show  # noqa: F401  (fixture)
from pytest_httpserver import HTTPServer
from smtp_sink import Sink, running_smtp

DEMO_DIR = PROJECT_DIR / "config" / "demo"
DEMO_NOW = "2025-03-15T12:00:00Z"
DEMO_ARTICLES = 89  # 90 entries, one exact duplicate (config/demo/EXPECTED.md)
ALERT_TO = "analysts@example.org"
ALERT_FROM = "Stancewatch <alerts@stancewatch.example.org>"

pytestmark = [pytest.mark.slow, pytest.mark.es, pytest.mark.usefixtures("airflow_db")]


@pytest.fixture
def smtp_sink(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sink]:
    """A real SMTP server, reachable only through the Airflow connection ``smtp_default``."""
    with running_smtp() as server:
        monkeypatch.delenv("STANCEWATCH_SMTP_URL", raising=False)
        monkeypatch.setenv(
            "AIRFLOW_CONN_SMTP_DEFAULT",
            json.dumps(
                {
                    "conn_type": "smtp",
                    "host": "127.0.0.1",
                    "port": server.port,
                    "extra": {
                        "disable_ssl": True,
                        "disable_tls": True,
                        "from_email": ALERT_FROM,
                        "timeout": 10,
                        "retry_limit": 0,
                    },
                }
            ),
        )
        yield server.sink


@pytest.fixture
def demo_feeds_over_http() -> Iterator[dict[str, str]]:
    """The demo's feed files served over HTTP from 127.0.0.1 and 127.0.0.2 (two hosts, so
    two shards); returns feed id -> URL."""
    demo = yaml.safe_load((DEMO_DIR / "feeds.yaml").read_text(encoding="utf-8"))
    servers = [HTTPServer(host="127.0.0.1", port=0), HTTPServer(host="127.0.0.2", port=0)]
    urls: dict[str, str] = {}
    for index, feed in enumerate(demo["feeds"]):
        server = servers[index % 2]
        path = f"/feeds/{feed['id']}.xml"
        server.expect_request(path).respond_with_data(
            (DEMO_DIR / feed["url"]).read_bytes(), content_type="application/xml"
        )
        urls[feed["id"]] = path
    for server in servers:
        server.start()
    try:
        for index, feed_id in enumerate(list(urls)):
            urls[feed_id] = servers[index % 2].url_for(urls[feed_id])
        yield urls
    finally:
        for server in servers:
            server.clear()
            if server.is_running():
                server.stop()


@pytest.fixture
def pipeline_env(
    tmp_path: Path,
    sw_env: dict[str, str],
    es_url: str,
    index_prefix: str,
    demo_feeds_over_http: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """A config dir with the demo feeds as HTTP URLs; ES through the Airflow connection."""
    demo = yaml.safe_load((DEMO_DIR / "feeds.yaml").read_text(encoding="utf-8"))
    for feed in demo["feeds"]:
        feed["url"] = demo_feeds_over_http[feed["id"]]
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "feeds.yaml").write_text(yaml.safe_dump(demo), encoding="utf-8")
    # Loopback feeds must pass the SSRF guard; a dead cluster must fail fast.
    (config_dir / "settings.yaml").write_text(
        "fetch:\n  allow_private_addresses: true\n  max_retries: 0\n"
        "store:\n  max_retries: 0\n  request_timeout_s: 10\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("STANCEWATCH_CONFIG", str(config_dir))
    monkeypatch.setenv("STANCEWATCH_ALERT_TO", ALERT_TO)
    # The environment points at nothing; the connection carries the real node and prefix.
    monkeypatch.setenv("STANCEWATCH_ES_URL", "http://127.0.0.1:9")
    monkeypatch.setenv(
        "AIRFLOW_CONN_STANCEWATCH_ES",
        json.dumps(
            {"conn_type": "generic", "host": es_url, "extra": {"index_prefix": index_prefix}}
        ),
    )
    monkeypatch.setenv("STANCEWATCH_INDEX_PREFIX", "wrong-prefix")
    return config_dir


@pytest.fixture(scope="module")
def dags() -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_DIR))
    assert bag.import_errors == {}
    return dict(bag.dags)


def _run(dag: Any, config: pytest.Config, **kwargs: Any) -> Any:
    started = time.perf_counter()
    run = dag.test(**kwargs)
    show(config, f"\ndag.test({dag.dag_id}): {run.state} in {time.perf_counter() - started:.1f} s")
    return run


def _states(run: Any) -> dict[tuple[str, int], str]:
    return {(ti.task_id, ti.map_index): ti.state for ti in run.get_task_instances()}


def _count(es_url: str, alias: str) -> int:
    httpx.post(f"{es_url}/{alias}/_refresh", timeout=30)
    return int(httpx.get(f"{es_url}/{alias}/_count", timeout=30).json()["count"])


def test_ingest_then_alerts_index_the_demo_and_email_the_stance_shift(
    dags: dict[str, Any],
    pipeline_env: Path,
    smtp_sink: Sink,
    es_url: str,
    index_prefix: str,
    pytestconfig: pytest.Config,
) -> None:
    ingest = _run(
        dags["stancewatch_ingest"],
        pytestconfig,
        logical_date=datetime(2025, 3, 15, 12, 0, tzinfo=UTC),
        run_conf={"now": DEMO_NOW, "only_due": False, "shards": 2},
    )
    states = _states(ingest)
    assert ingest.state == "success", states
    assert states[("collect", 0)] == states[("collect", 1)] == "success", states
    assert ("collect", 2) not in states
    assert states[("classify_and_index", -1)] == "success", states
    assert states[("report", -1)] == "success", states
    assert _count(es_url, f"{index_prefix}-articles") == DEMO_ARTICLES
    assert _count(es_url, f"{index_prefix}-stances") > 0
    assert not httpx.get(f"{es_url}/_cat/indices/wrong-prefix-*?format=json", timeout=30).json()

    alerts = _run(
        dags["stancewatch_alerts"],
        pytestconfig,
        logical_date=datetime(2025, 3, 15, 12, 5, tzinfo=UTC),
        run_conf={"now": DEMO_NOW},
    )
    assert alerts.state == "success", _states(alerts)
    messages = smtp_sink.messages()
    subjects = [str(m["Subject"]) for m in messages]
    shift = [m for m in messages if "Stance shift" in str(m["Subject"])]
    assert len(shift) == 1, subjects
    message = shift[0]
    assert "Karin Adlersten" in str(message["Subject"])
    assert "territorial concessions" in str(message["Subject"]).lower()
    assert message["To"] and ALERT_TO in str(message["To"])
    assert "alerts@stancewatch.example.org" in str(message["From"])
    assert all(rcpts == [ALERT_TO] for _, rcpts, _ in smtp_sink.received)
    body = message.get_body(preferencelist=("plain",))
    assert body is not None and "Adlersten" in body.get_content()
    show(pytestconfig, f"alert e-mails received: {subjects}")

    # Alerts are stored with deterministic ids and sent once: a second run sends nothing.
    sent_before = len(smtp_sink.received)
    again = _run(
        dags["stancewatch_alerts"],
        pytestconfig,
        logical_date=datetime(2025, 3, 15, 12, 10, tzinfo=UTC),
        run_conf={"now": DEMO_NOW},
    )
    assert again.state == "success"
    assert len(smtp_sink.received) == sent_before


def test_task_failure_sends_an_email_through_the_smtp_provider(
    dags: dict[str, Any],
    pipeline_env: Path,
    smtp_sink: Sink,
    monkeypatch: pytest.MonkeyPatch,
    pytestconfig: pytest.Config,
) -> None:
    """Maintenance needs the cluster; with none reachable it fails, and once its retries
    are used up the failure is e-mailed (SmtpNotifier over the ``smtp_default`` connection)."""
    monkeypatch.delenv("AIRFLOW_CONN_STANCEWATCH_ES")  # only the dead env URL is left
    monkeypatch.setenv("STANCEWATCH_FAILURE_EMAIL", "ops@example.org")
    dag = dags["stancewatch_maintenance"]
    for task in dag.tasks:  # the real policy retries 3 times over minutes; not here
        task.retries = 0
    run = _run(dag, pytestconfig, logical_date=datetime(2025, 3, 16, tzinfo=UTC))
    assert run.state == "failed"
    failures = [m for m in smtp_sink.messages() if "task failed" in str(m["Subject"])]
    assert len(failures) == 1, [str(m["Subject"]) for m in smtp_sink.messages()]
    message = failures[0]
    assert "stancewatch_maintenance.housekeeping" in str(message["Subject"])
    assert "ops@example.org" in str(message["To"])
    html = message.get_body(preferencelist=("html",))
    assert html is not None and "Elasticsearch" in html.get_content()
