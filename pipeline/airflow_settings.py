"""Airflow glue: Connections / Variables -> Stancewatch settings, and task failure e-mail.

The pipeline reads endpoints and secrets from ``STANCEWATCH_*`` environment variables
(:class:`pipeline.config.Environment`). Under Airflow the same settings may live in
Connections and Variables, which operators manage in the UI or a secrets backend. This
module translates them, so that a DAG task is one line: ``config = load_config()``.

Precedence: an Airflow Connection or Variable, when present, wins over the environment;
with none defined (a laptop, the CLI, tests) the environment is used unchanged.

- Connection ``stancewatch_es``  -> ``STANCEWATCH_ES_URL``, ``..._ES_USER``/``..._ES_PASSWORD``
  (login/password) or ``..._ES_API_KEY`` (extra ``api_key``); extra ``index_prefix``.
- Connection ``smtp_default``     -> ``STANCEWATCH_SMTP_URL`` (extra ``disable_ssl`` /
  ``disable_tls`` as in Airflow's SMTP provider) and ``STANCEWATCH_ALERT_FROM``
  (extra ``from_email``).
- Variables ``stancewatch_*``    -> see :data:`VARIABLE_TO_ENV`.

Airflow is imported lazily inside functions: the package must import, and the CLI must
run, on machines without Airflow.
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from pipeline.config import AppConfig

log = logging.getLogger(__name__)

ES_CONN_ID = "stancewatch_es"
SMTP_CONN_ID = "smtp_default"

#: Airflow Variable -> environment variable it overrides.
VARIABLE_TO_ENV: dict[str, str] = {
    "stancewatch_config_dir": "STANCEWATCH_CONFIG",
    "stancewatch_index_prefix": "STANCEWATCH_INDEX_PREFIX",
    "stancewatch_alert_to": "STANCEWATCH_ALERT_TO",
    "stancewatch_alert_from": "STANCEWATCH_ALERT_FROM",
    "stancewatch_kibana_url": "STANCEWATCH_KIBANA_URL",
    "stancewatch_data_dir": "STANCEWATCH_DATA_DIR",
    "stancewatch_outbox": "STANCEWATCH_OUTBOX",
}

#: The article index as an Airflow Asset: ``stancewatch_ingest`` produces it,
#: ``stancewatch_alerts`` is scheduled on it. ``x-`` marks a scheme of our own, which
#: Airflow leaves as written; the URI is a logical name, the real index name depends on
#: the runtime prefix.
ARTICLE_ASSET_NAME = "stancewatch_articles"
ARTICLE_ASSET_URI = "x-stancewatch://index/articles"

DEFAULT_INGEST_SCHEDULE = "*/15 * * * *"
DEFAULT_INGEST_SHARDS = 4

_FALSE = {"", "0", "false", "no", "off", "none"}


def _truthy(value: Any) -> bool:
    """Booleans from connection extras. Unlike a bare ``bool()``, the string "false" is
    false: URI-form connections carry extras as strings."""
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE
    return bool(value)


# ------------------------------------------------------------------- Airflow look-ups


def _get_connection(conn_id: str) -> Any | None:
    """The Airflow Connection, or None when it is not defined or Airflow is not here."""
    try:
        from airflow.sdk import Connection
    except ImportError:
        return None
    try:
        return Connection.get(conn_id)
    except Exception as exc:  # not found, or no way to ask (plain process, no API)
        log.debug("connection %s not available: %s", conn_id, exc)
        return None


def _get_variable(key: str) -> str | None:
    """The Airflow Variable's value, or None when it is not defined or Airflow is not here."""
    try:
        from airflow.sdk import Variable
    except ImportError:
        return None
    try:
        value = Variable.get(key, default=None)
    except Exception as exc:
        log.debug("variable %s not available: %s", key, exc)
        return None
    if value is None or str(value).strip() == "":
        return None
    return str(value).strip()


# ------------------------------------------------------------- connection translation


def es_settings_from_connection(conn: Any) -> dict[str, str]:
    """``stancewatch_es`` -> STANCEWATCH_ES_* variables.

    ``host`` may be a bare host name or a full URL (``https://es.example.org:9243``). The
    scheme is ``https`` when the connection's schema is ``https`` or extra ``use_ssl`` is
    true, else ``http``; the port defaults to 9200.
    """
    out: dict[str, str] = {}
    extra: dict[str, Any] = dict(getattr(conn, "extra_dejson", None) or {})
    host = (getattr(conn, "host", None) or "").strip()
    if host:
        if "://" in host:
            url = host.rstrip("/")
        else:
            schema = (getattr(conn, "schema", None) or "").lower()
            scheme = (
                "https" if schema == "https" or _truthy(extra.get("use_ssl", False)) else "http"
            )
            port = getattr(conn, "port", None) or 9200
            url = f"{scheme}://{host}:{port}"
        out["STANCEWATCH_ES_URL"] = url
    if extra.get("api_key"):
        out["STANCEWATCH_ES_API_KEY"] = str(extra["api_key"])
    elif getattr(conn, "login", None):
        out["STANCEWATCH_ES_USER"] = str(conn.login)
        out["STANCEWATCH_ES_PASSWORD"] = str(getattr(conn, "password", None) or "")
    if extra.get("index_prefix"):
        out["STANCEWATCH_INDEX_PREFIX"] = str(extra["index_prefix"])
    return out


def smtp_settings_from_connection(conn: Any) -> dict[str, str]:
    """``smtp_default`` -> STANCEWATCH_SMTP_URL (+ STANCEWATCH_ALERT_FROM).

    Security follows Airflow's SMTP provider: SSL unless extra ``disable_ssl``; otherwise
    STARTTLS unless extra ``disable_tls``; otherwise plain (Mailpit, aiosmtpd).
    """
    host = (getattr(conn, "host", None) or "").strip()
    if not host:
        return {}
    extra: dict[str, Any] = dict(getattr(conn, "extra_dejson", None) or {})
    use_ssl = not _truthy(extra.get("disable_ssl", False))
    use_starttls = not use_ssl and not _truthy(extra.get("disable_tls", False))
    scheme = "smtps" if use_ssl else "smtp"
    default_port = 465 if use_ssl else (587 if use_starttls else 25)
    port = getattr(conn, "port", None) or default_port
    userinfo = ""
    if getattr(conn, "login", None):
        userinfo = quote(str(conn.login), safe="")
        if getattr(conn, "password", None):
            userinfo += ":" + quote(str(conn.password), safe="")
        userinfo += "@"
    query = []
    if use_starttls:
        query.append("starttls=true")
    if extra.get("timeout"):
        query.append(f"timeout={int(extra['timeout'])}")
    url = f"{scheme}://{userinfo}{host}:{port}" + ("?" + "&".join(query) if query else "")
    out = {"STANCEWATCH_SMTP_URL": url}
    if extra.get("from_email"):
        out["STANCEWATCH_ALERT_FROM"] = str(extra["from_email"])
    return out


def settings_overrides() -> dict[str, str]:
    """STANCEWATCH_* values taken from Airflow Connections and Variables that exist."""
    out: dict[str, str] = {}
    es_conn = _get_connection(ES_CONN_ID)
    if es_conn is not None:
        out.update(es_settings_from_connection(es_conn))
    smtp_conn = _get_connection(SMTP_CONN_ID)
    if smtp_conn is not None:
        out.update(smtp_settings_from_connection(smtp_conn))
    for key, env_name in VARIABLE_TO_ENV.items():
        value = _get_variable(key)
        if value is not None:
            out[env_name] = value
    return out


@contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set variables for the duration of the block only. ``dag.test()`` runs tasks in the
    calling process, so leaking them would change the caller's environment."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def load_config() -> AppConfig:
    """The pipeline's configuration as seen from an Airflow task (or any other process).

    The environment is read once, inside :class:`AppConfig`, while the Airflow overrides
    are in place; the returned config does not depend on the environment afterwards.
    """
    overrides = settings_overrides()
    if overrides:
        shown = sorted(k for k in overrides if "PASSWORD" not in k and "API_KEY" not in k)
        log.info("settings from Airflow connections/variables: %s", ", ".join(shown))
    with _environ(overrides):
        return AppConfig().validate()


# ------------------------------------------------------------------ schedule and shards


#: Values of the schedule setting that mean "only when triggered" (an external scheduler,
#: a test that must not race a scheduled run).
MANUAL_ONLY = {"none", "never", "manual"}


def ingest_schedule() -> str | None:
    """Cron (or preset) for ``stancewatch_ingest``; read while the DAG file is parsed.

    ``STANCEWATCH_INGEST_SCHEDULE`` wins, then the Airflow Variable
    ``stancewatch_ingest_schedule`` (through Airflow's secrets chain: environment
    ``AIRFLOW_VAR_*``, then the metadata DB when the DAG processor asks), then every 15
    minutes. ``none`` / ``never`` / ``manual`` mean no schedule: runs only when triggered.
    Parsing never fails because of this look-up.
    """
    value = (
        (os.environ.get("STANCEWATCH_INGEST_SCHEDULE") or "").strip()
        or _get_variable("stancewatch_ingest_schedule")
        or DEFAULT_INGEST_SCHEDULE
    )
    return None if value.lower() in MANUAL_ONLY else value


def ingest_shards() -> int:
    """Default number of feed shards (mapped fetch tasks) per ingest run."""
    raw = (os.environ.get("STANCEWATCH_INGEST_SHARDS") or "").strip()
    try:
        value = int(raw) if raw else DEFAULT_INGEST_SHARDS
    except ValueError:
        log.warning(
            "STANCEWATCH_INGEST_SHARDS=%r is not a number; using %d", raw, DEFAULT_INGEST_SHARDS
        )
        value = DEFAULT_INGEST_SHARDS
    return max(1, value)


# ----------------------------------------------------------------- failure e-mail


def failure_recipients() -> list[str]:
    """Who hears about failed tasks: Variable ``stancewatch_failure_email``, else
    ``STANCEWATCH_FAILURE_EMAIL``, else the alert recipients (``STANCEWATCH_ALERT_TO``)."""
    raw = (
        _get_variable("stancewatch_failure_email")
        or os.environ.get("STANCEWATCH_FAILURE_EMAIL")
        or _get_variable("stancewatch_alert_to")
        or os.environ.get("STANCEWATCH_ALERT_TO")
        or ""
    )
    return [addr.strip() for addr in raw.replace(";", ",").split(",") if addr.strip()]


def _no_jinja(text: str) -> str:
    """SmtpNotifier renders its fields as Jinja templates; an error message containing
    ``{{`` must not be evaluated. ``&#123;`` shows as ``{`` in any mail client."""
    return text.replace("{", "&#123;")


def failure_subject(context: Mapping[str, Any]) -> str:
    ti = context.get("ti") or context.get("task_instance")
    subject = (
        f"[stancewatch] task failed: {getattr(ti, 'dag_id', '?')}.{getattr(ti, 'task_id', '?')}"
        f" ({context.get('run_id', '')})"
    )
    return subject.replace("{", "(").replace("}", ")")


def failure_html(context: Mapping[str, Any]) -> str:
    """Body of the failure e-mail: what failed, the error, where to read the log."""
    ti = context.get("ti") or context.get("task_instance")
    exception = context.get("exception")
    rows = {
        "DAG": getattr(ti, "dag_id", ""),
        "Task": getattr(ti, "task_id", ""),
        "Map index": getattr(ti, "map_index", -1),
        "Run": context.get("run_id", ""),
        "Try": getattr(ti, "try_number", ""),
        "Error": f"{type(exception).__name__}: {exception}" if exception else "(not given)",
        "Log": getattr(ti, "log_url", "") or "",
    }
    cells = "".join(
        f"<tr><th align='left'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in rows.items()
    )
    return _no_jinja(f"<p>A Stancewatch task failed after its retries.</p><table>{cells}</table>")


def notify_task_failure(context: Mapping[str, Any]) -> None:
    """``on_failure_callback``: e-mail through Airflow's SMTP provider (``SmtpNotifier``,
    connection ``smtp_default``).

    Fires once a task has used up its retries. Without recipients, connection or
    provider it logs why and returns: a missing mail set-up must never hide the task's
    own error behind a second one.
    """
    recipients = failure_recipients()
    if not recipients:
        log.warning(
            "task failed; no failure e-mail: set Variable stancewatch_failure_email "
            "or STANCEWATCH_FAILURE_EMAIL"
        )
        return
    if _get_connection(SMTP_CONN_ID) is None:
        log.warning(
            "task failed; no failure e-mail: Airflow connection %s is not defined", SMTP_CONN_ID
        )
        return
    try:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier
    except ImportError:
        log.warning("task failed; no failure e-mail: apache-airflow-providers-smtp missing")
        return
    sender = (
        _get_variable("stancewatch_alert_from")
        or os.environ.get("STANCEWATCH_ALERT_FROM")
        or None  # SmtpNotifier then takes from_email from the connection's extra
    )
    notifier = SmtpNotifier(
        to=recipients,
        from_email=sender,
        subject=failure_subject(context),
        html_content=failure_html(context),
        smtp_conn_id=SMTP_CONN_ID,
    )
    try:
        notifier(context)
    except Exception:
        log.exception("failure e-mail could not be sent")


# ------------------------------------------------------------------ task defaults


def default_task_args() -> dict[str, Any]:
    """Retries with exponential back-off, a timeout and the failure e-mail, for every task.

    One minute, then two, four (capped at 15): long enough for a feed host's or the
    cluster's hiccup to pass, short enough to finish inside the 15-minute schedule most of
    the time. A task that hangs is killed by ``execution_timeout`` (tasks may shorten it).
    """
    return {
        "owner": "stancewatch",
        "retries": 3,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=15),
        "execution_timeout": timedelta(minutes=15),
        "on_failure_callback": notify_task_failure,
    }


def parse_now(value: Any) -> datetime | None:
    """A ``now`` override from a Param or an asset event: ISO 8601, naive means UTC."""
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value).strip())
        except ValueError:
            raise ValueError(f"'now' must be an ISO 8601 date-time, got {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
