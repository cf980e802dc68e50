"""Airflow Connections / Variables -> Stancewatch settings (pipeline/airflow_settings.py).

Connections and Variables come from Airflow's real secrets chain in its environment form
(``AIRFLOW_CONN_*`` JSON, ``AIRFLOW_VAR_*``), which is what a plain process (no task
supervisor) consults; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest_airflow import PROJECT_DIR, subprocess_env

from pipeline import airflow_settings
from pipeline.config import SmtpTarget


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A minimal config directory (gazetteers fall back to the project's config/)."""
    directory = tmp_path / "config"
    directory.mkdir()
    (directory / "feeds.yaml").write_text(
        "feeds:\n  - id: example\n    url: https://news.example.org/rss.xml\n", encoding="utf-8"
    )
    monkeypatch.setenv("STANCEWATCH_CONFIG", str(directory))
    monkeypatch.setenv("STANCEWATCH_DATA_DIR", str(tmp_path / "data"))
    return directory


def _conn(**fields: object) -> object:
    from airflow.sdk import Connection

    extra = fields.pop("extra", None)
    return Connection(
        conn_id="x",
        conn_type=str(fields.pop("conn_type", "generic")),
        extra=json.dumps(extra) if extra is not None else None,
        **fields,  # type: ignore[arg-type]
    )


def test_es_connection_with_host_and_port_and_basic_auth() -> None:
    conn = _conn(host="es.internal", port=9243, schema="https", login="sw", password="s3cr3t")
    assert airflow_settings.es_settings_from_connection(conn) == {
        "STANCEWATCH_ES_URL": "https://es.internal:9243",
        "STANCEWATCH_ES_USER": "sw",
        "STANCEWATCH_ES_PASSWORD": "s3cr3t",
    }


def test_es_connection_with_full_url_api_key_and_prefix() -> None:
    conn = _conn(
        host="http://elasticsearch:9200/",
        login="ignored-when-api-key",
        extra={"api_key": "abc==", "index_prefix": "prod"},
    )
    assert airflow_settings.es_settings_from_connection(conn) == {
        "STANCEWATCH_ES_URL": "http://elasticsearch:9200",
        "STANCEWATCH_ES_API_KEY": "abc==",
        "STANCEWATCH_INDEX_PREFIX": "prod",
    }


def test_es_connection_defaults_to_http_and_9200() -> None:
    assert airflow_settings.es_settings_from_connection(_conn(host="es"))["STANCEWATCH_ES_URL"] == (
        "http://es:9200"
    )


@pytest.mark.parametrize(
    ("extra", "scheme", "security", "port"),
    [
        ({"disable_ssl": True, "disable_tls": True}, "smtp", "plain", 1025),
        ({"disable_ssl": True}, "smtp", "starttls", 1025),
        ({}, "smtps", "ssl", 1025),
        # URI-form connections carry extras as strings: "false" must stay false.
        ({"disable_ssl": "true", "disable_tls": "false"}, "smtp", "starttls", 1025),
    ],
)
def test_smtp_connection_security_follows_the_smtp_provider(
    extra: dict[str, object], scheme: str, security: str, port: int
) -> None:
    conn = _conn(conn_type="smtp", host="mail", port=port, extra=extra)
    url = airflow_settings.smtp_settings_from_connection(conn)["STANCEWATCH_SMTP_URL"]
    assert url.startswith(f"{scheme}://mail:{port}")
    target = SmtpTarget.from_url(url)
    assert (target.host, target.port, target.security) == ("mail", port, security)


def test_smtp_connection_credentials_are_url_quoted_and_from_email_kept() -> None:
    conn = _conn(
        conn_type="smtp",
        host="smtp.example.org",
        port=587,
        login="alerts@example.org",
        password="p@ss:w/rd",
        extra={"disable_ssl": True, "from_email": "Stancewatch <alerts@example.org>"},
    )
    out = airflow_settings.smtp_settings_from_connection(conn)
    target = SmtpTarget.from_url(out["STANCEWATCH_SMTP_URL"])
    assert (target.username, target.password) == ("alerts@example.org", "p@ss:w/rd")
    assert target.security == "starttls"
    assert out["STANCEWATCH_ALERT_FROM"] == "Stancewatch <alerts@example.org>"


def test_overrides_from_env_form_connections_and_variables_win_over_environment(
    monkeypatch: pytest.MonkeyPatch, config_dir: Path
) -> None:
    monkeypatch.setenv("STANCEWATCH_ES_URL", "http://from-env:9200")
    monkeypatch.setenv(
        "AIRFLOW_CONN_STANCEWATCH_ES",
        json.dumps({"conn_type": "generic", "host": "from-conn", "port": 9201}),
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_SMTP_DEFAULT",
        json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": 8025,
                "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "a@b.c"},
            }
        ),
    )
    monkeypatch.setenv("AIRFLOW_VAR_STANCEWATCH_ALERT_TO", "x@example.org, y@example.org")
    overrides = airflow_settings.settings_overrides()
    assert overrides["STANCEWATCH_ES_URL"] == "http://from-conn:9201"
    assert overrides["STANCEWATCH_SMTP_URL"] == "smtp://127.0.0.1:8025"
    assert overrides["STANCEWATCH_ALERT_TO"] == "x@example.org, y@example.org"

    config = airflow_settings.load_config()
    assert config.env.es_url == "http://from-conn:9201"
    assert config.env.smtp is not None and config.env.smtp.port == 8025
    assert config.env.alert_from == "a@b.c"
    assert config.env.alert_to == ["x@example.org", "y@example.org"]
    # The overrides were applied for building the config only.
    assert os.environ["STANCEWATCH_ES_URL"] == "http://from-env:9200"
    assert "STANCEWATCH_SMTP_URL" not in os.environ


def test_environment_is_used_when_airflow_defines_nothing(
    monkeypatch: pytest.MonkeyPatch, config_dir: Path
) -> None:
    for name in ("AIRFLOW_CONN_STANCEWATCH_ES", "AIRFLOW_CONN_SMTP_DEFAULT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STANCEWATCH_ES_URL", "http://only-env:9200")
    assert "STANCEWATCH_ES_URL" not in airflow_settings.settings_overrides()
    assert airflow_settings.load_config().env.es_url == "http://only-env:9200"


def test_failure_recipients_variable_then_env_then_alert_recipients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("AIRFLOW_VAR_STANCEWATCH_FAILURE_EMAIL", "AIRFLOW_VAR_STANCEWATCH_ALERT_TO"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("STANCEWATCH_FAILURE_EMAIL", raising=False)
    monkeypatch.setenv("STANCEWATCH_ALERT_TO", "desk@example.org")
    assert airflow_settings.failure_recipients() == ["desk@example.org"]
    monkeypatch.setenv("STANCEWATCH_FAILURE_EMAIL", "ops@example.org;oncall@example.org")
    assert airflow_settings.failure_recipients() == ["ops@example.org", "oncall@example.org"]
    monkeypatch.setenv("AIRFLOW_VAR_STANCEWATCH_FAILURE_EMAIL", "var@example.org")
    assert airflow_settings.failure_recipients() == ["var@example.org"]


def test_failure_mail_body_escapes_html_and_jinja() -> None:
    class TI:
        dag_id, task_id, map_index, try_number, log_url = "d", "t", -1, 4, "http://ui/log"

    body = airflow_settings.failure_html(
        {"ti": TI(), "run_id": "manual__x", "exception": ValueError("<b>{{ 7*7 }}</b>")}
    )
    assert "<b>" not in body.split("Error")[1]
    assert "&lt;b&gt;" in body
    assert "{{" not in body


def test_parse_now() -> None:
    assert airflow_settings.parse_now(None) is None
    assert airflow_settings.parse_now("") is None
    parsed = airflow_settings.parse_now("2024-03-01T12:00:00")
    assert parsed is not None and parsed.utcoffset() is not None
    assert airflow_settings.parse_now("2024-03-01T12:00:00Z") == parsed
    with pytest.raises(ValueError, match="ISO 8601"):
        airflow_settings.parse_now("yesterday")


def test_package_works_without_airflow(config_dir: Path, tmp_path: Path) -> None:
    """The CLI must run on machines without Airflow: airflow_settings imports it lazily."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["airflow"] = None  # any 'import airflow...' now raises ImportError
        from pipeline import airflow_settings
        config = airflow_settings.load_config()
        assert airflow_settings.settings_overrides() == {}
        assert airflow_settings.ingest_schedule() == "*/15 * * * *"
        print(config.env.es_url)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROJECT_DIR,
        env=subprocess_env(
            {
                "STANCEWATCH_ES_URL": "http://no-airflow:9200",
                "STANCEWATCH_DATA_DIR": str(tmp_path),
                "STANCEWATCH_CONFIG": str(config_dir),
            }
        ),
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "http://no-airflow:9200"
