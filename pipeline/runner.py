"""The runner wires the stages of the flow together.

    collect (fetch, parse, normalize, dedup, enrich) -> classify -> store -> detect -> notify

The CLI (``stancewatch run``, ``stancewatch ingest``) and the Airflow DAGs call these
functions; nothing here knows about either. Every function returns a pydantic summary that
the CLI prints and Airflow keeps in XCom.

Failure policy (see docs/decisions.md, "Runner"): a bad feed is reported and the run goes on;
an unreachable Elasticsearch makes the store spool what it could not write (replayed first
on the next run) and the run still exits 0 because nothing was lost; only a bad
configuration or nowhere to write at all (no cluster *and* no writable spool) fails a run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from pipeline.config import AppConfig
from pipeline.models import Article, FeedState, stable_id, utcnow

if TYPE_CHECKING:
    from pipeline.classify import Classifier
    from pipeline.collect import CollectResult, DedupRecord, FeedReport
    from pipeline.store import Store, WriteReport

log = logging.getLogger(__name__)


class RunFailed(Exception):
    """The run could not do its job (e.g. nowhere to write); the message says why."""


# ------------------------------------------------------------------------------ summaries


class ProcessSummary(BaseModel):
    """Classify + index of a batch of articles."""

    articles_new: int = 0
    articles_updated: int = 0
    relevant: int = 0
    stance_mentions: int = 0
    documents_written: int = 0
    documents_failed: int = 0
    documents_spooled: int = 0
    failures: list[str] = Field(default_factory=list, description="'id: reason', first few")
    classify_seconds: float = 0.0
    model: str = ""


class AlertSummary(BaseModel):
    ran: bool = True
    skipped_reason: str | None = None
    detected_new: int = 0
    stance_shifts: int = 0
    coverage_spikes: int = 0
    sent: int = 0
    failed: int = 0
    pending: int = 0
    suppressed: int = 0
    delivery: str = ""
    subjects: list[str] = Field(default_factory=list)


class RunSummary(BaseModel):
    """What one cycle did; printed by ``stancewatch run --once``."""

    started_at: datetime
    finished_at: datetime | None = None
    now: datetime
    feeds_total: int = 0
    feeds_ok: int = 0
    feeds_failed: int = 0
    feeds_not_modified: int = 0
    feeds_skipped_not_due: int = 0
    feed_reports: list[dict[str, Any]] = Field(default_factory=list)
    articles_unchanged: int = 0
    spool_replayed: int = 0
    process: ProcessSummary = Field(default_factory=ProcessSummary)
    alerts: AlertSummary = Field(default_factory=AlertSummary)
    store_available: bool = True
    store_message: str | None = None
    indices: dict[str, str] = Field(default_factory=dict)
    outbox: str | None = None
    warnings: list[str] = Field(default_factory=list)


class ShardSummary(BaseModel):
    """One Airflow shard: collected articles staged on disk for the classify task."""

    staged_path: str | None
    feeds: int
    feeds_ok: int
    feeds_failed: int
    articles: int
    unchanged: int
    feed_reports: list[dict[str, Any]] = Field(default_factory=list)


class MaintenanceSummary(BaseModel):
    spool_replayed: int = 0
    spool_failed: int = 0
    rolled_over: dict[str, bool] = Field(default_factory=dict)
    feeds_total: int = 0
    feeds_failing: list[dict[str, Any]] = Field(default_factory=list)


# ------------------------------------------------------------------------------- plumbing


def open_store(config: AppConfig) -> tuple[Store, str | None]:
    """The store, set up; plus a message when the cluster is unreachable (spool mode)."""
    from pipeline.store import Store, StoreUnavailable

    store = Store.from_config(config)
    try:
        store.check()
        store.setup()
    except StoreUnavailable as exc:
        return store, str(exc)
    return store, None


class StoreLookup:
    """The store as seen by collection: content hashes and recent texts for dedup."""

    def __init__(self, store: Store, available: bool):
        self.store = store
        self.available = available

    def content_hashes(self, ids: list[str]) -> dict[str, str]:
        if not self.available or not ids:
            return {}
        found = self.store.get_many("articles", ids, fields=["content_hash"])
        return {i: doc["content_hash"] for i, doc in found.items() if doc.get("content_hash")}

    def recent_for_dedup(self, since: datetime) -> list[DedupRecord]:
        from pipeline.collect import DedupRecord

        if not self.available:
            return []
        query = {"range": {"@timestamp": {"gte": since.isoformat()}}}
        fields = ["title", "summary", "body", "cluster_id", "@timestamp", "source.feed_id"]
        return [
            DedupRecord.from_document(doc_id, doc)
            for doc_id, doc in self.store.scan("articles", query, fields=fields)
        ]


def load_feed_states(store: Store, available: bool, config: AppConfig) -> dict[str, FeedState]:
    if not available:
        return {}
    ids = [f.id for f in config.feeds]
    docs = store.get_many("feeds", ids)
    states: dict[str, FeedState] = {}
    for feed_id, doc in docs.items():
        try:
            states[feed_id] = FeedState.model_validate(doc)
        except ValueError as exc:  # an old or hand-edited document must not stop polling
            log.warning("ignoring unreadable state of feed %s: %s", feed_id, exc)
    return states


def save_feed_states(store: Store, states: Iterable[FeedState]) -> None:
    # Losing feed state costs one unconditional GET next time, not data: warn, don't fail.
    try:
        report = store.write("feeds", ((s.feed_id, s.to_document()) for s in states))
    except OSError as exc:
        log.warning("feed states neither written nor spooled: %s", exc)
        return
    for doc_id, reason in report.failed:
        log.warning("feed state %s not written: %s", doc_id, reason)


def _stale_stance_ids(store: Store, article_ids: list[str], keep: set[str]) -> list[str]:
    """Stance documents of re-classified articles that the new classification no longer has."""
    if not article_ids:
        return []
    stale: list[str] = []
    for start in range(0, len(article_ids), 500):
        chunk = article_ids[start : start + 500]
        for doc_id, _ in store.scan("stances", {"terms": {"article_id": chunk}}, fields=[]):
            if doc_id not in keep:
                stale.append(doc_id)
    return stale


def _nowhere_to_write(
    store: Store, spool_dir: Path, write: Callable[[], WriteReport]
) -> WriteReport:
    """Run a store write; "nowhere to write" (cluster down, spool not writable) is fatal."""
    try:
        return write()
    except OSError as exc:
        raise RunFailed(
            f"nowhere to write: Elasticsearch at {store.url} is unavailable "
            f"({store.down or 'write failed'}) and the spool at {spool_dir} is not writable ({exc})"
        ) from None


def process_articles(
    config: AppConfig,
    store: Store,
    articles: Sequence[Article],
    *,
    store_available: bool,
    classifier: Classifier | None = None,
    progress: bool = False,
) -> ProcessSummary:
    """Classify articles and write them and their stance mentions (idempotent ids)."""
    import time

    summary = ProcessSummary()
    if not articles:
        return summary
    from pipeline.classify import ClassifyInput, load_classifier

    classifier = classifier or load_classifier(config)
    summary.model = f"{classifier.name} {classifier.version}"
    started = time.perf_counter()
    results = classifier.classify(
        [
            ClassifyInput(id=a.id, title=a.title, text=a.text, published=a.published)
            for a in articles
        ],
        progress=progress,
    )
    summary.classify_seconds = round(time.perf_counter() - started, 2)

    known = (
        set(store.get_many("articles", [a.id for a in articles], fields=["content_hash"]))
        if store_available
        else set()
    )
    article_docs: list[tuple[str, dict[str, Any]]] = []
    stance_docs: list[tuple[str, dict[str, Any]]] = []
    for article, result in zip(articles, results, strict=True):
        article.classification = result
        article_docs.append((article.id, article.to_document()))
        stance_docs.extend(article.stance_documents())
        summary.relevant += int(result.relevant)
        summary.stance_mentions += len(result.stances)
        if article.id in known:
            summary.articles_updated += 1
        else:
            summary.articles_new += 1

    spool_dir = config.env.spool_dir
    reports = [
        _nowhere_to_write(store, spool_dir, lambda: store.write("articles", article_docs)),
        _nowhere_to_write(store, spool_dir, lambda: store.write("stances", stance_docs)),
    ]
    if store_available and known:
        keep = {doc_id for doc_id, _ in stance_docs}
        stale = _stale_stance_ids(store, sorted(known), keep)
        if stale:
            reports.append(
                _nowhere_to_write(store, spool_dir, lambda: store.delete("stances", stale))
            )
    for report in reports:
        summary.documents_written += report.ok
        summary.documents_spooled += report.spooled
        summary.documents_failed += len(report.failed)
        summary.failures.extend(f"{i}: {r}" for i, r in report.failed[:10])
    return summary


def _feed_report_dicts(reports: Sequence[FeedReport]) -> list[dict[str, Any]]:
    return [r.model_dump(mode="json") for r in reports]


# ------------------------------------------------------------------------------ the cycle


def _collect(
    config: AppConfig,
    store: Store,
    available: bool,
    now: datetime,
    feed_ids: list[str] | None,
    only_due: bool,
    progress: bool,
) -> CollectResult:
    """Collect with the stored feed states. The caller saves the updated states only once
    the articles are safe (written, spooled or staged): saving an ETag first would make the
    next poll answer 304 for articles a crash had lost."""
    from pipeline.collect import collect

    collected = collect(
        config,
        states=load_feed_states(store, available, config),
        lookup=StoreLookup(store, available),
        now=now,
        feed_ids=feed_ids,
        only_due=only_due,
        progress=progress,
    )
    return collected


def run_once(
    config: AppConfig,
    *,
    now: datetime | None = None,
    feed_ids: list[str] | None = None,
    only_due: bool = True,
    deliver: bool = True,
    progress: bool = False,
) -> RunSummary:
    """One full monitoring cycle over the configured feeds."""

    now = now or utcnow()
    summary = RunSummary(started_at=utcnow(), now=now)
    store, down = open_store(config)
    try:
        _note_store(summary, store, down, config)
        available = down is None
        if available:
            summary.spool_replayed = store.replay_spool().ok
        collected = _collect(config, store, available, now, feed_ids, only_due, progress)
        _add_feed_reports(summary, collected.feed_reports, len(config.enabled_feeds(feed_ids)))
        summary.articles_unchanged = collected.unchanged
        summary.process = process_articles(
            config, store, collected.articles, store_available=available, progress=progress
        )
        save_feed_states(store, collected.feed_states)
        summary.alerts = _alerts(config, store, available, now=now, deliver=deliver)
    finally:
        store.close()
    summary.finished_at = utcnow()
    _check_nothing_lost(summary)
    return summary


def ingest_file(
    config: AppConfig,
    path: Path | str,
    *,
    now: datetime | None = None,
    deliver: bool = True,
    progress: bool = False,
) -> RunSummary:
    """``stancewatch ingest``: articles from JSON Lines, from classify onwards."""
    from pipeline.collect import articles_from_records

    now = now or utcnow()
    summary = RunSummary(started_at=utcnow(), now=now)
    records = list(_read_jsonl(path, summary.warnings))
    store, down = open_store(config)
    try:
        _note_store(summary, store, down, config)
        available = down is None
        if available:
            summary.spool_replayed = store.replay_spool().ok
        built = articles_from_records(
            records, config=config, now=now, lookup=StoreLookup(store, available)
        )
        summary.warnings.extend(built.problems)
        summary.articles_unchanged = built.unchanged
        summary.process = process_articles(
            config, store, built.articles, store_available=available, progress=progress
        )
        summary.alerts = _alerts(config, store, available, now=now, deliver=deliver)
    finally:
        store.close()
    summary.finished_at = utcnow()
    _check_nothing_lost(summary)
    return summary


def _read_jsonl(path: Path | str, warnings: list[str]) -> Iterator[dict[str, Any]]:
    """Records of a JSON Lines file ('-' = stdin); a bad line is reported, not fatal."""
    import sys

    stream = sys.stdin if str(path) == "-" else open(path, encoding="utf-8-sig")  # noqa: SIM115
    try:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                warnings.append(f"{path}:{number}: not JSON ({exc.msg})")
                continue
            if not isinstance(record, dict):
                warnings.append(f"{path}:{number}: expected a JSON object")
                continue
            record.setdefault("_line", number)
            yield record
    finally:
        if stream is not sys.stdin:
            stream.close()


def _note_store(summary: RunSummary, store: Store, down: str | None, config: AppConfig) -> None:
    summary.store_available = down is None
    summary.store_message = down
    summary.indices = {
        kind: store.alias(kind) for kind in ("articles", "stances", "alerts", "feeds")
    }
    summary.outbox = str(config.env.outbox) if config.env.smtp is None else None
    if down:
        summary.warnings.append(
            f"Elasticsearch unavailable ({down}); documents go to the spool at "
            f"{config.env.spool_dir} and are written on the next run"
        )


def _add_feed_reports(summary: RunSummary, reports: Sequence[FeedReport], total: int) -> None:
    summary.feed_reports = _feed_report_dicts(reports)
    summary.feeds_total = total
    summary.feeds_ok = sum(1 for r in reports if r.ok)
    summary.feeds_failed = sum(1 for r in reports if not r.ok)
    summary.feeds_not_modified = sum(1 for r in reports if r.not_modified)
    summary.feeds_skipped_not_due = total - len(reports)


def _check_nothing_lost(summary: RunSummary) -> None:
    if summary.process.documents_failed and not summary.store_available:
        raise RunFailed(
            f"{summary.process.documents_failed} documents could be neither written nor "
            f"spooled: {summary.store_message}"
        )


def _alerts(
    config: AppConfig, store: Store, available: bool, *, now: datetime, deliver: bool
) -> AlertSummary:
    if not available:
        return AlertSummary(ran=False, skipped_reason="Elasticsearch unavailable")
    return detect_and_notify(config, now=now, deliver=deliver, store=store)


def detect_and_notify(
    config: AppConfig,
    *,
    now: datetime | None = None,
    deliver: bool = True,
    store: Store | None = None,
) -> AlertSummary:
    """Detect stance shifts and coverage spikes, then deliver pending alerts once."""
    from pipeline.detect import detect
    from pipeline.notify import deliver as deliver_alerts

    now = now or utcnow()
    own_store = store is None
    if store is None:
        store, down = open_store(config)
        if down:
            store.close()
            return AlertSummary(ran=False, skipped_reason=f"Elasticsearch unavailable: {down}")
    try:
        store.refresh()
        found = detect(store, config, now=now)
        summary = AlertSummary(
            detected_new=len(found.new),
            stance_shifts=sum(1 for a in found.new if a.kind == "stance_shift"),
            coverage_spikes=sum(1 for a in found.new if a.kind == "coverage_spike"),
            suppressed=sum(1 for a in found.new if a.status == "suppressed"),
        )
        if deliver:
            delivered = deliver_alerts(store, config, now=now)
            summary.sent = delivered.sent
            summary.failed = delivered.failed
            summary.pending = delivered.pending
            summary.delivery = delivered.channel
            summary.subjects = delivered.subjects
        return summary
    finally:
        if own_store:
            store.close()


# --------------------------------------------------------------------- Airflow-sized steps


def shard_feeds(
    config: AppConfig,
    shards: int,
    feed_ids: list[str] | None = None,
    *,
    now: datetime | None = None,
    only_due: bool = False,
) -> list[list[str]]:
    """Split the enabled feeds into at most ``shards`` lists, spreading hosts across shards.

    Feeds of one host stay in one shard so that per-host politeness limits hold across
    parallel Airflow tasks.
    """
    from urllib.parse import urlsplit

    feeds = config.enabled_feeds(feed_ids)
    if only_due and now is not None:
        store, down = open_store(config)
        try:
            states = load_feed_states(store, down is None, config)
        finally:
            store.close()
        feeds = [
            f for f in feeds if not (s := states.get(f.id)) or not s.next_due or s.next_due <= now
        ]
    by_host: dict[str, list[str]] = {}
    for feed in feeds:
        host = urlsplit(config.resolve_feed_url(feed)).hostname or "local"
        by_host.setdefault(host, []).append(feed.id)
    shards = max(1, min(shards, len(by_host) or 1))
    buckets: list[list[str]] = [[] for _ in range(shards)]
    for ids in sorted(by_host.values(), key=len, reverse=True):
        min(buckets, key=len).extend(ids)
    return [b for b in buckets if b]


def collect_shard(
    config: AppConfig,
    feed_ids: list[str],
    *,
    now: datetime | None = None,
    staging_dir: Path | str,
    only_due: bool = False,
) -> ShardSummary:
    """Fetch one shard of feeds; stage new/changed articles as JSON Lines for classification.

    The staged file is named after the shard's feeds, so a retried task overwrites its own
    earlier attempt; feed states are saved only once the file is on disk.
    """
    now = now or utcnow()
    store, down = open_store(config)
    try:
        collected = _collect(config, store, down is None, now, feed_ids, only_due, False)
        staged: str | None = None
        if collected.articles:
            directory = Path(staging_dir)
            directory.mkdir(parents=True, exist_ok=True)
            target = directory / f"shard-{stable_id('shard', *sorted(feed_ids))[:12]}.jsonl"
            tmp = target.with_suffix(".tmp")
            with tmp.open("w", encoding="utf-8") as out:
                for article in collected.articles:
                    out.write(article.model_dump_json() + "\n")
            tmp.replace(target)
            staged = str(target)
        save_feed_states(store, collected.feed_states)
    finally:
        store.close()
    reports = collected.feed_reports
    return ShardSummary(
        staged_path=staged,
        feeds=len(reports),
        feeds_ok=sum(1 for r in reports if r.ok),
        feeds_failed=sum(1 for r in reports if not r.ok),
        articles=len(collected.articles),
        unchanged=collected.unchanged,
        feed_reports=_feed_report_dicts(reports),
    )


def process_staged(
    config: AppConfig, paths: Sequence[Path | str | None], *, now: datetime | None = None
) -> ProcessSummary:
    """Classify and index the articles staged by :func:`collect_shard`; removes the files."""
    articles: list[Article] = []
    files = [Path(p) for p in paths if p]
    for path in files:
        with path.open(encoding="utf-8") as stream:
            articles.extend(Article.model_validate_json(line) for line in stream if line.strip())
    store, down = open_store(config)
    try:
        if down is None:
            store.replay_spool()
        summary = process_articles(config, store, articles, store_available=down is None)
    finally:
        store.close()
    if summary.documents_failed and down is not None:
        raise RunFailed(f"documents could be neither written nor spooled: {down}")
    for path in files:  # only once everything is written or spooled
        path.unlink(missing_ok=True)
    return summary


def maintenance(config: AppConfig, *, now: datetime | None = None) -> MaintenanceSummary:
    """Daily housekeeping: replay the spool, roll indices over when due, feed health."""
    now = now or utcnow()
    store, down = open_store(config)
    try:
        if down:
            raise RunFailed(f"Elasticsearch unavailable: {down}")
        replayed = store.replay_spool()
        summary = MaintenanceSummary(
            spool_replayed=replayed.ok,
            spool_failed=len(replayed.failed),
            rolled_over=store.rollover_if_due(),
        )
        states = load_feed_states(store, True, config)
        summary.feeds_total = len(config.feeds)
        for feed in config.feeds:
            state = states.get(feed.id)
            if state and state.consecutive_failures:
                summary.feeds_failing.append(
                    {
                        "feed_id": feed.id,
                        "failures": state.consecutive_failures,
                        "kind": state.failure_kind,
                        "last_error": state.last_error,
                        "last_success": state.last_success.isoformat()
                        if state.last_success
                        else None,
                        "next_due": state.next_due.isoformat() if state.next_due else None,
                    }
                )
            elif state is None or (
                state.last_success and now - state.last_success > timedelta(days=2)
            ):
                summary.feeds_failing.append(
                    {
                        "feed_id": feed.id,
                        "failures": 0,
                        "kind": None,
                        "last_error": "no success in 2 days",
                    }
                )
        return summary
    finally:
        store.close()
