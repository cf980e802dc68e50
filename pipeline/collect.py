"""Collect: the ingestion stage, feeds -> new or changed :class:`Article` records.

``fetch -> parse -> normalize -> dedup -> enrich``, for the runner (``stancewatch run``),
the Airflow shards and ``stancewatch feeds check``. Collection never touches the store
itself: it is given the feed states and an :class:`ArticleLookup`, and returns updated
states and articles for the caller to save.

Bad feeds are reported, never fatal: every feed gets a :class:`FeedReport` (status, items,
problems, error), and the good items of every other feed are returned.

Throughput: fetching is asynchronous (limits in ``settings.fetch``). Parsing and
normalising are CPU-bound (feedparser alone needs 10-20 ms for a 20-item feed), so when
many feeds are due they run in a process pool that works while the next responses arrive;
on two cores that halves the wall time of a 1,000-feed poll (see benchmarks/bench_fetch.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel, Field

from pipeline.config import AppConfig, DedupSettings, FeedConfig, Settings
from pipeline.dedup import DedupRecord, cluster_near_duplicates, text_signature, unique_by_id
from pipeline.enrich import EnrichReport
from pipeline.feed_state import is_due, update_state
from pipeline.fetch import Fetcher
from pipeline.models import Article, FeedProblem, FeedState, FetchResult
from pipeline.normalize import NormalizeError, normalize_item, normalize_record
from pipeline.parse import parse_feed

__all__ = [
    "ArticleLookup",
    "CollectResult",
    "DedupRecord",
    "FeedReport",
    "RecordsResult",
    "articles_from_records",
    "collect",
]

log = logging.getLogger(__name__)

#: With "auto" parse processes, a pool is used from this many due feeds on: below it the
#: pool's start-up (about a second to import and load the language model) costs more
#: than it saves.
POOL_MIN_FEEDS = 40
#: At most this many parse processes in auto mode.
POOL_MAX_PROCESSES = 8
#: Items of a feed whose detected language must match the declared one before the
#: declaration is trusted for the rest of the feed (see ``parse_and_normalize``).
LANGUAGE_SAMPLE = 3

T = TypeVar("T")


class ArticleLookup(Protocol):
    """What collection needs from the store (the runner passes a Store-backed one;
    tests may pass an in-memory one)."""

    def content_hashes(self, ids: list[str]) -> dict[str, str]: ...

    def recent_for_dedup(self, since: datetime) -> list[DedupRecord]: ...


class FeedReport(BaseModel):
    """One line of the run summary per polled feed."""

    feed_id: str
    name: str
    ok: bool
    status: int | None = None
    not_modified: bool = False
    items: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    problems: list[str] = Field(default_factory=list)
    error: str | None = None
    failure_kind: str | None = None
    elapsed_s: float = 0.0
    next_due: datetime | None = None


class CollectResult(BaseModel):
    articles: list[Article] = Field(description="New or changed only (unchanged are skipped)")
    unchanged: int = 0
    feed_reports: list[FeedReport] = Field(default_factory=list)
    feed_states: list[FeedState] = Field(
        default_factory=list, description="States of the polled feeds, for the runner to save"
    )
    skipped_not_due: int = 0
    duplicates_in_batch: int = Field(
        default=0, description="Items dropped because another feed of this run had the same URL"
    )
    enriched: int = 0
    warnings: list[str] = Field(default_factory=list)
    timings: dict[str, float] = Field(
        default_factory=dict, description="Seconds per phase: start, fetch_parse, dedup, ..."
    )


class RecordsResult(BaseModel):
    """``articles_from_records``: articles to classify, and what could not be used."""

    articles: list[Article]
    unchanged: int = 0
    problems: list[str] = Field(default_factory=list)


# ----------------------------------------------------------------- parse (maybe in a pool)


@dataclass
class FeedParseOutput:
    """Parse + normalize of one feed document (picklable: it crosses process borders)."""

    articles: list[Article] = field(default_factory=list)
    problems: list[FeedProblem] = field(default_factory=list)
    items: int = 0
    title: str | None = None
    signatures: dict[str, Any] = field(default_factory=dict)  # id -> MinHash values | None


def parse_and_normalize(
    feed: FeedConfig,
    content: bytes | None,
    content_type: str | None,
    http_charset: str | None,
    base_url: str | None,
    now: datetime,
    max_future_minutes: int,
    dedup: DedupSettings | None = None,
) -> FeedParseOutput:
    """One feed document -> articles and problems. Runs in a worker process when pooled.

    With ``dedup`` settings it also computes each article's MinHash signature, the costly
    half of near-duplicate clustering, so that it runs in parallel with the fetching.
    """
    parsed = parse_feed(
        feed.id,
        content,
        http_charset=http_charset,
        content_type=content_type,
        base_url=base_url,
        default_language=feed.language,
    )
    out = FeedParseOutput(
        problems=list(parsed.problems), items=len(parsed.items), title=parsed.title
    )
    bad: dict[str, int] = {}
    # Language detection is the costliest step of normalising (about a third). A feed
    # that declares its language is checked on its first few items; when they all confirm
    # it, the declaration is trusted for the rest of the document.
    trusted: str | None = None
    confirmed = 0
    distrusted = False
    for item in parsed.items:
        try:
            article = normalize_item(
                item,
                feed,
                now=now,
                max_future_minutes=max_future_minutes,
                trusted_language=trusted if item.language in (None, trusted) else None,
            )
        except NormalizeError as exc:
            reason = str(exc).split(":")[0]
            bad[reason] = bad.get(reason, 0) + 1
            continue
        out.articles.append(article)
        declared = (item.language or "").split("-")[0]
        if trusted is None and not distrusted and declared:
            if article.language != declared:
                distrusted = True  # a feed that mislabels one item is checked item by item
            else:
                confirmed += 1
                if confirmed >= LANGUAGE_SAMPLE:
                    trusted = declared
    for reason, count in bad.items():
        out.problems.append(
            FeedProblem(
                feed_id=feed.id,
                kind="bad_item",
                message=f"{count} item{'s' if count > 1 else ''} skipped: {reason}",
            )
        )
    if dedup is not None:
        out.signatures = {
            a.id: text_signature(a.title, a.summary, a.body, dedup) for a in out.articles
        }
    future = sum(1 for a in out.articles if "future_clamped" in a.date_flags)
    if future:
        out.problems.append(
            FeedProblem(
                feed_id=feed.id,
                kind="future_date",
                message=f"{future} item{'s' if future > 1 else ''} dated in the future; "
                "clamped to the fetch time",
            )
        )
    return out


def _warm_worker() -> None:
    """Load the language model once per worker instead of on its first feed."""
    from pipeline.normalize import _language_identifier

    _language_identifier()


def _make_pool(processes: int) -> Executor:
    methods = multiprocessing.get_all_start_methods()
    # Not "fork": the parent runs an event loop and resolver threads; forking those is
    # unsafe. forkserver starts workers from a clean process (and is cheap on Linux).
    method = "forkserver" if "forkserver" in methods else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        # Import the parsing stack and load the language model once in the fork server;
        # each worker then starts as a fork of it instead of importing feedparser,
        # courlan, datasketch... and loading the model again.
        context.set_forkserver_preload(["pipeline.parse_preload"])
    return ProcessPoolExecutor(max_workers=processes, mp_context=context, initializer=_warm_worker)


def _start_workers(pool: Executor, processes: int) -> None:
    """Start every worker of ``pool`` (blocks; runs in a helper thread, see ``_collect``).

    A process pool starts one worker per ``submit`` while none is idle, so after this no
    submission from the event loop's thread has to start (and wait for) one.
    """
    try:
        for _ in range(processes):
            pool.submit(int)
    except Exception as exc:  # _poll parses in this process instead
        raise BrokenProcessPool(f"parse workers did not start ({exc})") from exc


def _parse_processes(settings: Settings, due: int) -> int:
    configured = settings.fetch.parse_processes
    if configured:
        return configured
    cores = os.cpu_count() or 1
    if due < POOL_MIN_FEEDS or cores < 2:
        return 1
    return min(cores, POOL_MAX_PROCESSES)


# ----------------------------------------------------------------------------- collect


@dataclass
class _Outcome:
    feed: FeedConfig
    url: str
    result: FetchResult
    parsed: FeedParseOutput


def collect(
    config: AppConfig,
    *,
    states: Mapping[str, FeedState],
    lookup: ArticleLookup | None,
    now: datetime,
    feed_ids: list[str] | None = None,
    only_due: bool = False,
    progress: bool = False,
    enrich: bool = True,
) -> CollectResult:
    """Poll the enabled feeds (or ``feed_ids``) and return new or changed articles.

    ``states`` are the feeds' saved states (conditional GET validators, next due time);
    ``lookup`` answers which articles are known and what was published recently (None:
    treat everything as new). ``only_due`` skips feeds whose ``next_due`` is later than
    ``now``. ``enrich=False`` skips full-text fetching (``stancewatch feeds check``).
    """
    feeds = config.enabled_feeds(feed_ids)
    due = [f for f in feeds if not only_due or is_due(states.get(f.id), now)]
    coro_factory = lambda: _collect(  # noqa: E731 - a coroutine must be created in its loop
        config, due, states=states, lookup=lookup, now=now, progress=progress, enrich=enrich
    )
    with no_full_gc():
        result = _run_sync(coro_factory)
    result.skipped_not_due = len(feeds) - len(due)
    return result


class _Opaque(Generic[T]):
    """A task result with a constant repr.

    On leaving ``asyncio.run`` in the main thread, Python 3.11 restores the SIGINT handler
    and ``signal.signal`` formats the old one, a partial holding the main task, with
    ``%r``: the task's repr includes its result, and the full pydantic repr of a
    20,000-article CollectResult took seconds (twice), after collection had finished.
    """

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<result>"


async def _opaque(coro: Coroutine[Any, Any, T]) -> _Opaque[T]:
    return _Opaque(await coro)


_gc_lock = threading.Lock()
_gc_holders = 0
_gc_saved: tuple[int, int, int] = gc.get_threshold()


@contextlib.contextmanager
def no_full_gc() -> Iterator[None]:
    """No full (oldest-generation) garbage collections inside the block; young ones go on.

    A run builds a large heap of long-lived objects (20,000 articles are about a million
    tracked objects), and CPython collects the oldest generation again each time it has
    grown by a quarter: eight full scans of a growing heap took a third of this process's
    CPU in the 1,000-feed benchmark. Young collections still reclaim the short-lived
    cycles of the HTTP stack; what reaches the oldest generation waits until after the
    block, when the previous thresholds are restored.
    """
    global _gc_holders, _gc_saved
    with _gc_lock:  # overlapping blocks (threads): the first saves, the last restores
        if _gc_holders == 0:
            _gc_saved = gc.get_threshold()
            gc.set_threshold(_gc_saved[0], _gc_saved[1], 1_000_000_000)
        _gc_holders += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_holders -= 1
            if _gc_holders == 0:
                gc.set_threshold(*_gc_saved)


def _run_sync(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """asyncio.run, also from code that already runs an event loop (notebooks)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_opaque(factory())).value
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            box["value"] = asyncio.run(factory())
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=runner, name="stancewatch-collect")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


async def _collect(
    config: AppConfig,
    feeds: list[FeedConfig],
    *,
    states: Mapping[str, FeedState],
    lookup: ArticleLookup | None,
    now: datetime,
    progress: bool,
    enrich: bool,
) -> CollectResult:
    settings = config.settings
    processes = _parse_processes(settings, len(feeds))
    # Parsing never runs on the event loop's thread: a 20 ms feedparser call (or the
    # one-second language-model load) there would stall every connection in flight and
    # fire their timeouts. One thread when in-process, a process pool for big polls.
    pool: Executor = (
        _make_pool(processes)
        if processes > 1
        else ThreadPoolExecutor(max_workers=1, thread_name_prefix="stancewatch-parse")
    )
    clock = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal clock
        now_ = time.perf_counter()
        timings[name] = round(now_ - clock, 3)
        clock = now_

    pool_ready: asyncio.Future[None] | None = None
    if feeds and processes == 1:
        # Queued first, so the language model loads while the first requests are in flight.
        pool.submit(_warm_worker)
    elif feeds:
        # Starting a worker blocks the calling thread until the fork server has imported
        # the parsing stack (a second or two, once per process). A helper thread waits
        # for that while the fetching starts; feeds are handed to the pool once it is up.
        pool_ready = asyncio.ensure_future(asyncio.to_thread(_start_workers, pool, processes))
    lap("start_s")
    warnings: list[str] = []
    try:
        async with Fetcher(settings.fetch) as fetcher:
            with _progress(progress, len(feeds)) as advance:
                outcomes = await asyncio.gather(
                    *(
                        _poll(
                            fetcher,
                            pool,
                            config,
                            feed,
                            states.get(feed.id),
                            now,
                            advance,
                            pool_ready,
                        )
                        for feed in feeds
                    )
                )
            lap("fetch_parse_s")
            articles, dup_in_batch = unique_by_id(a for o in outcomes for a in o.parsed.articles)
            status = _change_status(articles, lookup, warnings)
            fresh = [a for a in articles if status[a.id] != "unchanged"]
            signatures: dict[str, Any] = {}
            for o in outcomes:
                for key, value in o.parsed.signatures.items():
                    signatures.setdefault(key, value)
            fresh = _cluster(fresh, lookup, settings, now, warnings, signatures)
            lap("dedup_s")
            enrich_report = EnrichReport()
            if enrich and settings.enrich.enabled:
                fresh, enrich_report = await _enrich(fetcher, config, feeds, fresh)
                lap("enrich_s")
    finally:
        if pool_ready is not None:
            await asyncio.gather(pool_ready, return_exceptions=True)  # never shut down mid-start
        pool.shutdown(wait=True, cancel_futures=True)
    reports, new_states = _reports_and_states(outcomes, articles, status, states, now, settings)
    lap("finish_s")
    return CollectResult(
        articles=fresh,
        unchanged=sum(1 for s in status.values() if s == "unchanged"),
        feed_reports=reports,
        feed_states=new_states,
        duplicates_in_batch=dup_in_batch,
        enriched=enrich_report.extracted,
        warnings=warnings,
        timings=timings,
    )


class _progress:
    """A rich progress bar over feeds, or nothing."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled and total > 0
        self.total = total
        self._progress: Any = None

    def __enter__(self) -> Callable[[], None]:
        if not self.enabled:
            return lambda: None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn("fetching feeds"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._progress.start()
        task = self._progress.add_task("feeds", total=self.total)
        return lambda: self._progress.advance(task)

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.stop()


async def _poll(
    fetcher: Fetcher,
    pool: Executor,
    config: AppConfig,
    feed: FeedConfig,
    state: FeedState | None,
    now: datetime,
    advance: Callable[[], None],
    pool_ready: asyncio.Future[None] | None = None,
) -> _Outcome:
    url = config.resolve_feed_url(feed)
    same_url = state is not None and state.url == url
    try:
        result = await fetcher.fetch_feed(
            feed.id,
            url,
            etag=state.etag if same_url and state else None,
            last_modified=state.last_modified if same_url and state else None,
        )
    except Exception as exc:  # the fetcher reports failures itself; this is the last net
        log.exception("fetching feed %s failed unexpectedly", feed.id)
        result = FetchResult(
            feed_id=feed.id,
            url=url,
            error=f"unexpected error ({type(exc).__name__}: {exc})",
            failure_kind="soft",
        )
    parsed = FeedParseOutput()
    if result.ok and not result.not_modified:
        args = (
            feed,
            result.content,
            result.content_type,
            result.declared_encoding,
            result.final_url or url,
            now,
            config.settings.max_future_minutes,
            config.settings.dedup,
        )
        try:
            if pool_ready is not None:
                await pool_ready
            loop = asyncio.get_running_loop()
            parsed = await loop.run_in_executor(pool, parse_and_normalize, *args)
        except BrokenProcessPool as exc:
            log.warning("parse pool failed on feed %s (%s); parsing it in a thread", feed.id, exc)
            parsed = await asyncio.to_thread(parse_and_normalize, *args)
        except Exception as exc:  # no feed may take the run down
            log.exception("parsing feed %s failed", feed.id)
            parsed = FeedParseOutput(
                problems=[
                    FeedProblem(
                        feed_id=feed.id,
                        kind="malformed_xml",
                        message=f"internal error while parsing ({type(exc).__name__}: {exc})",
                    )
                ]
            )
        # The bytes are not needed any more; 1,000 feeds' worth adds up.
        result = result.model_copy(update={"content": None})
    if result.moved_to:
        parsed.problems.append(
            FeedProblem(
                feed_id=feed.id,
                kind="moved",
                message=f"permanently redirected to {result.moved_to}; update feeds.yaml",
            )
        )
    advance()
    return _Outcome(feed=feed, url=url, result=result, parsed=parsed)


ChangeStatus = Literal["new", "changed", "unchanged"]


def _change_status(
    articles: list[Article], lookup: ArticleLookup | None, warnings: list[str]
) -> dict[str, ChangeStatus]:
    known: dict[str, str] = {}
    if lookup is not None and articles:
        try:
            known = lookup.content_hashes([a.id for a in articles])
        except Exception as exc:  # a store hiccup: classify again rather than lose articles
            log.warning("content hash lookup failed: %s", exc)
            warnings.append(f"known-article lookup failed ({exc}); all items treated as new")
    status: dict[str, ChangeStatus] = {}
    for article in articles:
        old = known.get(article.id)
        if old is None:
            status[article.id] = "new"
        elif old == article.content_hash:
            status[article.id] = "unchanged"
        else:
            status[article.id] = "changed"
    return status


def _cluster(
    articles: list[Article],
    lookup: ArticleLookup | None,
    settings: Settings,
    now: datetime,
    warnings: list[str],
    signatures: Mapping[str, Any] | None = None,
) -> list[Article]:
    if not articles:
        return articles
    recent: list[DedupRecord] = []
    if lookup is not None:
        oldest = min(a.published for a in articles)
        since = min(oldest, now) - timedelta(hours=settings.dedup.window_hours)
        try:
            recent = lookup.recent_for_dedup(since)
        except Exception as exc:
            log.warning("recent-article lookup failed: %s", exc)
            warnings.append(f"recent-article lookup failed ({exc}); clustered within this run only")
    return cluster_near_duplicates(articles, recent, settings.dedup, signatures)


async def _enrich(
    fetcher: Fetcher, config: AppConfig, feeds: list[FeedConfig], articles: list[Article]
) -> tuple[list[Article], EnrichReport]:
    from pipeline.enrich import Enricher

    full_text_feeds = {f.id for f in feeds if f.full_text}
    wanted = [i for i, a in enumerate(articles) if a.source.feed_id in full_text_feeds]
    if not wanted:
        return articles, EnrichReport()
    enricher = Enricher(fetcher, config.settings.enrich)
    enriched, report = await enricher.enrich([articles[i] for i in wanted])
    out = list(articles)
    for i, article in zip(wanted, enriched, strict=True):
        out[i] = article
    for failure in report.failures[:20]:
        log.info("full text not used: %s", failure)
    return out, report


def _reports_and_states(
    outcomes: Iterable[_Outcome],
    articles: list[Article],
    status: Mapping[str, ChangeStatus],
    states: Mapping[str, FeedState],
    now: datetime,
    settings: Settings,
) -> tuple[list[FeedReport], list[FeedState]]:
    counts: dict[str, dict[str, int]] = {}
    for article in articles:
        per_feed = counts.setdefault(article.source.feed_id or "", {})
        key = status[article.id]
        per_feed[key] = per_feed.get(key, 0) + 1
    reports: list[FeedReport] = []
    new_states: list[FeedState] = []
    for o in outcomes:
        state = update_state(
            states.get(o.feed.id),
            o.feed,
            o.url,
            o.result,
            o.parsed.problems,
            len(o.parsed.articles),
            now=now,
            settings=settings.fetch,
        )
        new_states.append(state)
        c = counts.get(o.feed.id, {})
        reports.append(
            FeedReport(
                feed_id=o.feed.id,
                name=o.feed.display_name,
                ok=state.consecutive_failures == 0,
                status=o.result.status,
                not_modified=o.result.not_modified,
                items=len(o.parsed.articles),
                new=c.get("new", 0),
                changed=c.get("changed", 0),
                unchanged=c.get("unchanged", 0),
                problems=[f"{p.kind}: {p.message}" for p in o.parsed.problems],
                error=state.last_error if state.consecutive_failures else None,
                failure_kind=state.failure_kind,
                elapsed_s=o.result.elapsed_s,
                next_due=state.next_due,
            )
        )
    return reports, new_states


# ------------------------------------------------------------------------ JSON records


def articles_from_records(
    records: Iterable[Mapping[str, Any]],
    *,
    now: datetime,
    lookup: ArticleLookup | None = None,
    config: AppConfig | None = None,
    settings: Settings | None = None,
) -> RecordsResult:
    """Articles from imported records (``stancewatch ingest``), normalised and clustered
    like fetched items. A bad record is reported by its position, never fatal.

    Record shape: ``{"url", "title", "text" | "summary", "published"[, "id", "source",
    "language"]}``; the article id comes from the canonical URL.
    """
    with no_full_gc():
        return _articles_from_records(
            records, now=now, lookup=lookup, config=config, settings=settings
        )


def _articles_from_records(
    records: Iterable[Mapping[str, Any]],
    *,
    now: datetime,
    lookup: ArticleLookup | None,
    config: AppConfig | None,
    settings: Settings | None,
) -> RecordsResult:
    chosen = settings or (config.settings if config is not None else Settings())
    problems: list[str] = []
    built: list[Article] = []
    for number, record in enumerate(records, start=1):
        try:
            built.append(
                normalize_record(record, now=now, max_future_minutes=chosen.max_future_minutes)
            )
        except NormalizeError as exc:
            problems.append(f"record {number}: {exc}")
    articles, repeats = unique_by_id(built)
    if repeats:
        problems.append(
            f"{repeats} record{'s' if repeats > 1 else ''} repeated an earlier URL; "
            "the first was kept"
        )
    warnings: list[str] = []
    status = _change_status(articles, lookup, warnings)
    fresh = [a for a in articles if status[a.id] != "unchanged"]
    fresh = _cluster(fresh, lookup, chosen, now, warnings)
    return RecordsResult(
        articles=fresh,
        unchanged=sum(1 for s in status.values() if s == "unchanged"),
        problems=problems + warnings,
    )
