"""Airflow DAG ``stancewatch_ingest``: feeds -> shards -> classify and index -> Asset.

Thin by design: every task is one call into ``pipeline.runner``; the pipeline's heavy
imports (torch, transformers, spaCy, the Elasticsearch client) happen inside tasks, so
parsing this file costs milliseconds.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Asset, Param, dag, get_current_context, task

from pipeline.airflow_settings import (
    ARTICLE_ASSET_NAME,
    ARTICLE_ASSET_URI,
    default_task_args,
    ingest_schedule,
    ingest_shards,
)

ARTICLES = Asset(name=ARTICLE_ASSET_NAME, uri=ARTICLE_ASSET_URI, group="stancewatch")

DOC = """
### Stancewatch ingest

Polls the configured news feeds, classifies new and changed articles (topics, actors,
stances) and indexes them in Elasticsearch. Every successful run that indexed something
updates the **`stancewatch_articles`** asset, which schedules `stancewatch_alerts`.

| task | what it does |
| --- | --- |
| `plan` | loads the config, splits the due feeds into shards (feeds of one host stay together) |
| `collect` | one mapped task per shard: conditional GET, parse, normalise, dedup, enrich; stages articles on disk |
| `classify_and_index` | classifies everything staged and writes articles + stance mentions (idempotent ids) |
| `report` | the run's totals; fails the run when a shard failed (its feeds are fetched again next run) |

**Schedule**: `STANCEWATCH_INGEST_SCHEDULE` or Variable `stancewatch_ingest_schedule`
(default every 15 minutes; `none` = only when triggered), no catch-up, one run at a time.
Unpaused, Airflow runs the latest past tick at once, then every tick.

**Manual runs** (Trigger DAG with config): `feed_ids` (a subset of feed ids, empty = all),
`shards`, `only_due` (false = fetch every feed now), `now` (ISO 8601, for replays and tests).

**Settings**: Connections `stancewatch_es` and `smtp_default`, Variables `stancewatch_*`,
else the `STANCEWATCH_*` environment (see docs/airflow.md).
"""


@task(execution_timeout=timedelta(minutes=5))
def plan() -> list[dict[str, Any]]:
    """Split the due feeds into shards: one ``collect`` task's input per shard.

    The run's ``now`` (the ``now`` param, else the current time) and staging folder are
    fixed here, once, so every shard and the classifier agree on them. Feeds of one host
    stay in one shard so per-host politeness holds across parallel tasks.
    """
    from pipeline.airflow_settings import load_config, parse_now
    from pipeline.models import iso
    from pipeline.runner import shard_feeds

    context = get_current_context()
    params = context["params"]
    config = load_config()
    moment = parse_now(params.get("now")) or datetime.now(UTC)
    safe_run = "".join(c if c.isalnum() or c in "-_." else "_" for c in context["run_id"])
    staging_dir = config.env.data_dir / "staging" / "stancewatch_ingest" / safe_run
    shards = shard_feeds(
        config,
        int(params.get("shards") or 1),
        list(params.get("feed_ids") or []) or None,
        now=moment,
        only_due=bool(params.get("only_due", True)),
    )
    return [
        {"feed_ids": ids, "now": iso(moment), "staging_dir": str(staging_dir)} for ids in shards
    ]


@task(execution_timeout=timedelta(minutes=10))
def collect(shard: dict[str, Any]) -> dict[str, Any]:
    """Fetch one shard of feeds and stage its new/changed articles as JSON Lines.

    Feed state (ETag, Last-Modified, failures) is saved here, so a retry is cheap and a
    bad feed is reported in the summary instead of failing the task.
    """
    from pathlib import Path

    from pipeline.airflow_settings import load_config, parse_now
    from pipeline.runner import collect_shard

    summary = collect_shard(
        load_config(),
        shard["feed_ids"],
        now=parse_now(shard["now"]),
        staging_dir=Path(shard["staging_dir"]),
    )
    return summary.model_dump(mode="json")


@task(
    outlets=[ARTICLES],
    # A failed shard must not hold back the shards that did stage articles: their feed
    # state (ETag) is already saved, so the next run would not see those items again.
    trigger_rule="all_done",
    execution_timeout=timedelta(minutes=30),
)
def classify_and_index(
    planned: list[dict[str, Any]], shards: list[dict[str, Any]]
) -> dict[str, Any]:
    """Classify everything the shards staged and index articles and stance mentions.

    Skipped when nothing new was staged: no index change, so no asset event and no
    alert run. Staged files are removed only after they were written or spooled.
    """
    from contextlib import suppress
    from pathlib import Path

    from airflow.sdk.exceptions import AirflowSkipException

    from pipeline.airflow_settings import load_config, parse_now
    from pipeline.runner import process_staged

    paths = [s["staged_path"] for s in shards or [] if s and s.get("staged_path")]
    if not paths:
        raise AirflowSkipException("no new or changed articles in this run")
    now, staging_dir = planned[0]["now"], planned[0]["staging_dir"]
    summary = process_staged(load_config(), paths, now=parse_now(now))
    with suppress(OSError):  # the run's folder, once empty
        Path(staging_dir).rmdir()
    result = summary.model_dump(mode="json")
    get_current_context()["outlet_events"][ARTICLES].extra = {
        "now": now,
        "articles_new": summary.articles_new,
        "articles_updated": summary.articles_updated,
        "relevant": summary.relevant,
    }
    return result


@task(trigger_rule="none_failed", execution_timeout=timedelta(minutes=2))
def report(shards: list[dict[str, Any]], processed: dict[str, Any] | None) -> dict[str, Any]:
    """The run's totals in one place (the task log and XCom show them).

    It runs only when no shard failed (a skipped classify is fine: nothing new), so a
    failed shard marks the whole run failed although the other shards' articles were
    indexed; the failed shard's feeds are fetched again next run.
    """
    from pipeline.runner import ProcessSummary

    shards = [s for s in shards or [] if s]
    feeds = [r for s in shards for r in s.get("feed_reports", [])]
    totals = {
        "feeds": len(feeds),
        "feeds_ok": sum(1 for r in feeds if r.get("ok")),
        "feeds_failed": [r.get("feed_id") for r in feeds if not r.get("ok")],
        "articles_staged": sum(s.get("articles", 0) for s in shards),
        "articles_unchanged": sum(s.get("unchanged", 0) for s in shards),
        "process": ProcessSummary.model_validate(processed or {}).model_dump(mode="json"),
    }
    print(f"stancewatch_ingest totals: {totals}")
    return totals


@dag(
    dag_id="stancewatch_ingest",
    description="Feeds -> classify -> Elasticsearch, every 15 minutes",
    doc_md=DOC,
    schedule=ingest_schedule(),
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=1),
    default_args=default_task_args(),
    tags=["stancewatch", "ingest"],
    params={
        "feed_ids": Param(
            [],
            type="array",
            items={"type": "string"},
            description="Only these feed ids (empty: every enabled feed)",
        ),
        "shards": Param(
            ingest_shards(),
            type="integer",
            minimum=1,
            maximum=64,
            description="Parallel fetch tasks (feeds of one host stay in one shard)",
        ),
        "only_due": Param(
            True,
            type="boolean",
            description="Skip feeds whose adaptive poll interval has not passed",
        ),
        "now": Param(
            None,
            type=["null", "string"],
            description="Override the run's clock (ISO 8601), for replays and tests",
        ),
    },
)
def stancewatch_ingest() -> None:
    planned = plan()
    # Dynamic task mapping: one `collect` task instance per shard, however many there are.
    shard_summaries = collect.expand(shard=planned)
    processed = classify_and_index(planned, shard_summaries)
    report(shard_summaries, processed)


stancewatch_ingest()
