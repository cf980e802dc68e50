"""Airflow DAG ``stancewatch_maintenance``: daily spool replay, rollover, feed health.

One task, one call into ``pipeline.runner.maintenance``. It fails (and e-mails) when
Elasticsearch is unreachable, because a spool that cannot be replayed for a day is
something an operator must hear about.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from pipeline.airflow_settings import default_task_args

DOC = """
### Stancewatch maintenance

Daily housekeeping:

1. **replay the spool**: documents that could not be written while Elasticsearch was
   unavailable are written now;
2. **roll indices over** when due (max docs / age / primary shard size from
   `settings.yaml`), through the write aliases, so queries keep working;
3. **feed health**: feeds failing repeatedly or without success for two days are listed in
   the task's return value (XCom) and log; the same state is in the `feeds` index for
   Kibana.

**Manual runs**: `now` (ISO 8601) to judge feed health at another time.
"""


@task(execution_timeout=timedelta(minutes=30))
def housekeeping() -> dict[str, Any]:
    """Replay the spool, roll over indices when due, and summarise feed health."""
    from pipeline.airflow_settings import load_config, parse_now
    from pipeline.runner import maintenance

    params = get_current_context()["params"]
    summary = maintenance(load_config(), now=parse_now(params.get("now")) or datetime.now(UTC))
    for feed in summary.feeds_failing:
        print(f"feed needs attention: {feed}")
    return summary.model_dump(mode="json")


@dag(
    dag_id="stancewatch_maintenance",
    description="Daily: replay spool, roll over indices, feed-health summary",
    doc_md=DOC,
    schedule="@daily",
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=2),
    default_args=default_task_args(),
    tags=["stancewatch", "maintenance"],
    params={
        "now": Param(
            None,
            type=["null", "string"],
            description="Override the clock (ISO 8601) for the feed-health judgement",
        ),
    },
)
def stancewatch_maintenance() -> None:
    housekeeping()


stancewatch_maintenance()
