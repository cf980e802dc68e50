"""Airflow DAG ``stancewatch_alerts``: stance shifts and coverage spikes -> e-mail.

Scheduled on the article-index Asset that ``stancewatch_ingest`` updates, so alerts run
right after new articles are indexed and never while nothing changed. One task, one call
into ``pipeline.runner.detect_and_notify``; alert ids are deterministic, so a re-run never
sends the same alert twice.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Asset, Param, dag, get_current_context, task

from pipeline.airflow_settings import ARTICLE_ASSET_NAME, ARTICLE_ASSET_URI, default_task_args

ARTICLES = Asset(name=ARTICLE_ASSET_NAME, uri=ARTICLE_ASSET_URI, group="stancewatch")

DOC = """
### Stancewatch alerts

Runs whenever `stancewatch_ingest` updates the **`stancewatch_articles`** asset: detects
stance shifts per (actor, topic) and coverage spikes per topic, stores new alerts, and
e-mails the pending ones that fall inside the alert horizon (SMTP from Connection
`smtp_default` or `STANCEWATCH_SMTP_URL`; without SMTP, `.eml` files in the outbox).

The run's clock is, in order: the `now` param (replays, tests), the `now` of the ingest
run that triggered it (from the asset event), the current time.

**Manual runs**: `now` (ISO 8601), `deliver` (false = detect and store only).
"""


@task(execution_timeout=timedelta(minutes=10))
def detect_and_deliver() -> dict[str, Any]:
    """Detect shifts and spikes, then deliver pending alerts once (idempotent ids)."""
    from pipeline.airflow_settings import load_config, parse_now
    from pipeline.runner import detect_and_notify

    context = get_current_context()
    params = context["params"]
    moment = parse_now(params.get("now"))
    if moment is None:
        # Several ingest runs may have queued events; the latest clock wins.
        stamps = [
            parse_now((event.extra or {}).get("now"))
            for events in (context.get("triggering_asset_events") or {}).values()
            for event in events
        ]
        moment = max((s for s in stamps if s is not None), default=None)
    summary = detect_and_notify(
        load_config(), now=moment or datetime.now(UTC), deliver=bool(params.get("deliver", True))
    )
    return summary.model_dump(mode="json")


@dag(
    dag_id="stancewatch_alerts",
    description="Stance-shift and coverage-spike alerts after each ingest",
    doc_md=DOC,
    schedule=[ARTICLES],
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=30),
    default_args=default_task_args(),
    tags=["stancewatch", "alerts"],
    params={
        "now": Param(
            None,
            type=["null", "string"],
            description="Override the run's clock (ISO 8601), for replays and tests",
        ),
        "deliver": Param(True, type="boolean", description="Send pending alerts"),
    },
)
def stancewatch_alerts() -> None:
    detect_and_deliver()


stancewatch_alerts()
