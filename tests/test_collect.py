"""collect(): a whole ingestion run over good and hostile feeds served by a real server.

Also the feed-state rules (graded failures, back-off, never disabled) and
``articles_from_records`` for ``stancewatch ingest``.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from pipeline.collect import (
    CollectResult,
    DedupRecord,
    FeedReport,
    articles_from_records,
    collect,
)
from pipeline.config import AppConfig, FeedConfig, FetchSettings
from pipeline.feed_state import backoff_delay, is_due, update_state
from pipeline.models import Article, FeedProblem, FeedState, FetchResult

FIXTURES = Path(__file__).parent / "fixtures" / "feeds"
NOW = datetime(2024, 3, 5, 18, 0, tzinfo=UTC)


class MemoryLookup:
    """The store as collection sees it, kept in memory (the real one is Elasticsearch)."""

    def __init__(self, articles: list[Article] | None = None) -> None:
        self.docs = {a.id: a for a in articles or []}

    def content_hashes(self, ids: list[str]) -> dict[str, str]:
        return {i: self.docs[i].content_hash for i in ids if i in self.docs}

    def recent_for_dedup(self, since: datetime) -> list[DedupRecord]:
        return [DedupRecord.from_article(a) for a in self.docs.values() if a.published >= since]


def write_config(tmp_path: Path, feeds: list[dict[str, Any]], **fetch: Any) -> AppConfig:
    config_dir = tmp_path / "config"
    config_dir.mkdir(exist_ok=True)
    (config_dir / "feeds.yaml").write_text(yaml.safe_dump({"feeds": feeds}), encoding="utf-8")
    settings = {
        "fetch": {
            "allow_private_addresses": True,  # the test server is on loopback
            "connect_timeout_s": 1.0,
            "read_timeout_s": 0.5,
            "total_timeout_s": 3.0,
            "max_retries": 0,
            "max_bytes": 200_000,
            **fetch,
        },
        "enrich": {"enabled": False},
    }
    (config_dir / "settings.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")
    return AppConfig(config_dir)


def serve(
    server: HTTPServer, path: str, name: str, content_type: str = "application/rss+xml"
) -> str:
    server.expect_request(path).respond_with_data(
        (FIXTURES / name).read_bytes(), content_type=content_type
    )
    return server.url_for(path)


def by_id(result: CollectResult) -> dict[str, FeedReport]:
    return {r.feed_id: r for r in result.feed_reports}


@pytest.fixture
def secret(tmp_path: Path) -> tuple[Path, str]:
    token = f"SECRET-{uuid.uuid4().hex}"
    path = tmp_path / "id_rsa"
    path.write_text(f"-----BEGIN KEY-----\n{token}\n-----END KEY-----\n", encoding="utf-8")
    return path, token


def mixed_feeds(server: HTTPServer, secret_path: Path, tmp_path: Path) -> list[dict[str, Any]]:
    """Six good feeds (one bundled on disk) and eleven broken or hostile ones."""

    def slow(request: Request) -> Response:
        time.sleep(1.5)
        return Response((FIXTURES / "danube-herald.rss.xml").read_bytes())

    server.expect_request("/slow.xml").respond_with_handler(slow)
    server.expect_request("/error.xml").respond_with_data("boom", status=500)
    server.expect_request("/missing.xml").respond_with_data("", status=404)
    server.expect_request("/huge.xml").respond_with_data(b"<rss>" + b" " * 500_000 + b"</rss>")
    xxe = (
        (FIXTURES / "xxe-local-file.xml")
        .read_bytes()
        .replace(b"__SECRET_PATH__", str(secret_path).encode())
    )
    server.expect_request("/xxe.xml").respond_with_data(xxe, content_type="application/rss+xml")
    bundled = tmp_path / "bundled" / "future-dated.rss.xml"
    bundled.parent.mkdir()
    bundled.write_bytes((FIXTURES / "future-dated.rss.xml").read_bytes())
    return [
        {
            "id": "eew",
            "url": serve(server, "/eew.xml", "eastern-europe-wire.rss.xml"),
            "language": "en",
        },
        {
            "id": "geneva",
            "url": serve(
                server, "/ps/atom.xml", "geneva-dispatch.atom.xml", "application/atom+xml"
            ),
        },
        {"id": "baltic", "url": serve(server, "/baltic.xml", "baltic-times-review.rss.xml")},
        {"id": "danube", "url": serve(server, "/danube.xml", "danube-herald.rss.xml")},
        {
            "id": "vestnik",
            "url": serve(
                server,
                "/vestnik.xml",
                "ru-windows1251-declared-utf8.rss.xml",
                "application/rss+xml; charset=utf-8",
            ),
            "language": "ru",
        },
        {"id": "caucasus", "url": str(bundled)},  # a bundled feed: a path next to feeds.yaml
        {"id": "blacksea", "url": serve(server, "/truncated.xml", "truncated.rss.xml")},
        {"id": "sahel", "url": serve(server, "/malformed.xml", "malformed.rss.xml")},
        {"id": "homepage", "url": serve(server, "/news/", "outlet-homepage.html", "text/html")},
        {"id": "laughs", "url": serve(server, "/lol.xml", "billion-laughs.xml")},
        {"id": "xxe", "url": server.url_for("/xxe.xml")},
        {"id": "slow", "url": server.url_for("/slow.xml")},
        {"id": "error", "url": server.url_for("/error.xml")},
        {"id": "missing", "url": server.url_for("/missing.xml")},
        {"id": "huge", "url": server.url_for("/huge.xml")},
        {"id": "loop", "url": server.url_for("/loop-a")},
        {"id": "nohost", "url": "http://no-such-outlet.invalid/rss"},
    ]


def test_collect_over_good_and_hostile_feeds(
    server: HTTPServer, tmp_path: Path, secret: tuple[Path, str]
) -> None:
    secret_path, token = secret
    server.expect_request("/loop-a").respond_with_data(
        "", status=302, headers={"Location": "/loop-b"}
    )
    server.expect_request("/loop-b").respond_with_data(
        "", status=302, headers={"Location": "/loop-a"}
    )
    config = write_config(tmp_path, mixed_feeds(server, secret_path, tmp_path))
    started = time.monotonic()
    result = collect(config, states={}, lookup=MemoryLookup(), now=NOW, progress=True)
    assert time.monotonic() - started < 15
    reports = by_id(result)
    assert len(reports) == 17 and len(result.feed_states) == 17

    good = {"eew": 5, "geneva": 3, "baltic": 3, "danube": 2, "vestnik": 3, "caucasus": 3}
    partly_broken = {"blacksea": 3, "sahel": 3}
    for feed_id, items in {**good, **partly_broken}.items():
        assert reports[feed_id].ok, (feed_id, reports[feed_id])
        assert reports[feed_id].items == items, feed_id
    # Every good item is returned, once (the Moldova story is in two feeds).
    assert len(result.articles) == sum(good.values()) + sum(partly_broken.values()) - 1
    assert result.duplicates_in_batch == 1
    assert reports["baltic"].new == 2 and reports["eew"].new == 5

    expected_errors = {
        "homepage": ("hard", "not_a_feed: the URL returned an HTML page, not a feed"),
        "laughs": ("hard", "hostile_xml: DOCTYPE declares 10 entity declarations"),
        "xxe": ("hard", "hostile_xml: DOCTYPE declares external entities (XXE)"),
        "slow": ("temporary", "read timed out"),
        "error": ("soft", "HTTP 500 server error"),
        "missing": ("hard", "HTTP 404 not found"),
        "huge": ("soft", "response larger than the 200,000-byte cap"),
        "loop": ("hard", f"redirect loop at {server.url_for('/loop-a')}"),
        "nohost": ("hard", "cannot resolve host 'no-such-outlet.invalid'"),
    }
    for feed_id, (kind, message) in expected_errors.items():
        report = reports[feed_id]
        assert not report.ok and report.items == 0, feed_id
        assert report.failure_kind == kind, feed_id
        assert report.error is not None and report.error.startswith(message), (
            feed_id,
            report.error,
        )

    # Problems of partly broken feeds are reported while their items are used.
    assert reports["blacksea"].problems[0].startswith("truncated_xml: the document ends early")
    assert reports["sahel"].problems[0].startswith("malformed_xml_recovered: not well-formed XML")
    assert reports["vestnik"].problems == [
        "encoding: declared utf-8 but the bytes are not; detected cp1251 and re-decoded"
    ]
    articles = {a.canonical_url: a for a in result.articles}
    lavrov = next(a for a in result.articles if a.source.feed_id == "vestnik")
    assert lavrov.title.startswith("Лавров") and lavrov.language == "ru"

    # Future dates are clamped and flagged; missing dates use the fetch time.
    abkhazia = articles["https://caucasusmonitor.example/2024/03/abkhazia-talks-proposal"]
    assert abkhazia.published == NOW and abkhazia.date_flags == ["future_clamped"]
    assert (
        "future_date: 1 item dated in the future; clamped to the fetch time"
        in reports["caucasus"].problems
    )
    almaty = articles["https://caucasusmonitor.example/2024/03/almaty-ministers-meeting"]
    assert almaty.date_flags == ["missing"]

    # Syndicated wire copy: one cluster across two outlets.
    wire = articles["https://balticreview.example/world/russia-ukraine-geneva-talks-2024-03-05/"]
    copy = articles["https://www.danubeherald.example/international/2024/03/05/geneva-talks-wire/"]
    assert copy.duplicate_of == wire.id and copy.cluster_id == wire.id

    # Nothing of the local file leaks anywhere, and nothing was expanded.
    dumped = result.model_dump_json()
    assert token not in dumped
    assert "lollollol" not in dumped
    states = {s.feed_id: s for s in result.feed_states}
    assert states["xxe"].consecutive_failures == 1 and states["xxe"].failure_kind == "hard"
    assert states["eew"].consecutive_failures == 0 and states["eew"].last_success == NOW


def test_second_run_uses_conditional_get_and_skips_unchanged(
    server: HTTPServer, tmp_path: Path
) -> None:
    body = (FIXTURES / "eastern-europe-wire.rss.xml").read_bytes()

    def etagged(request: Request) -> Response:
        if request.headers.get("If-None-Match") == '"eew-1"':
            return Response(status=304)
        return Response(body, headers={"ETag": '"eew-1"'}, content_type="application/rss+xml")

    server.expect_request("/eew.xml").respond_with_handler(etagged)
    geneva = serve(server, "/ps/atom.xml", "geneva-dispatch.atom.xml", "application/atom+xml")
    config = write_config(
        tmp_path,
        [{"id": "eew", "url": server.url_for("/eew.xml")}, {"id": "geneva", "url": geneva}],
    )
    first = collect(config, states={}, lookup=MemoryLookup(), now=NOW)
    assert len(first.articles) == 8 and first.unchanged == 0
    states = {s.feed_id: s for s in first.feed_states}
    assert states["eew"].etag == '"eew-1"'

    later = NOW + timedelta(minutes=20)
    second = collect(config, states=states, lookup=MemoryLookup(first.articles), now=later)
    reports = by_id(second)
    assert reports["eew"].not_modified and reports["eew"].ok and reports["eew"].status == 304
    assert reports["geneva"].unchanged == 3 and reports["geneva"].new == 0
    assert second.articles == [] and second.unchanged == 3
    assert any(r.headers.get("If-None-Match") == '"eew-1"' for r, _ in server.log)
    eew_state = next(s for s in second.feed_states if s.feed_id == "eew")
    assert eew_state.etag == '"eew-1"' and eew_state.last_success == later


def test_changed_item_is_returned_again(server: HTTPServer, tmp_path: Path) -> None:
    url = serve(server, "/geneva.xml", "geneva-dispatch.atom.xml", "application/atom+xml")
    config = write_config(tmp_path, [{"id": "geneva", "url": url}])
    first = collect(config, states={}, lookup=None, now=NOW)
    stored = [
        a.model_copy(update={"content_hash": "old"}) if i == 0 else a
        for i, a in enumerate(first.articles)
    ]
    second = collect(config, states={}, lookup=MemoryLookup(stored), now=NOW)
    report = by_id(second)["geneva"]
    assert (report.new, report.changed, report.unchanged) == (0, 1, 2)
    assert [a.id for a in second.articles] == [first.articles[0].id]


def test_only_due_skips_feeds_polled_recently(server: HTTPServer, tmp_path: Path) -> None:
    url = serve(server, "/eew.xml", "eastern-europe-wire.rss.xml")
    config = write_config(tmp_path, [{"id": "eew", "url": url}, {"id": "other", "url": url}])
    states = {
        "eew": FeedState(feed_id="eew", url=url, next_due=NOW + timedelta(minutes=5)),
        "other": FeedState(feed_id="other", url=url, next_due=NOW - timedelta(minutes=5)),
    }
    result = collect(config, states=states, lookup=None, now=NOW, only_due=True)
    assert [r.feed_id for r in result.feed_reports] == ["other"]
    assert result.skipped_not_due == 1
    result = collect(config, states=states, lookup=None, now=NOW, only_due=False)
    assert len(result.feed_reports) == 2


def test_parse_pool_gives_the_same_result(server: HTTPServer, tmp_path: Path) -> None:
    feeds = [
        {"id": "eew", "url": serve(server, "/eew.xml", "eastern-europe-wire.rss.xml")},
        {"id": "baltic", "url": serve(server, "/baltic.xml", "baltic-times-review.rss.xml")},
        {"id": "danube", "url": serve(server, "/danube.xml", "danube-herald.rss.xml")},
        {"id": "laughs", "url": serve(server, "/lol.xml", "billion-laughs.xml")},
    ]
    in_process = collect(
        write_config(tmp_path, feeds, parse_processes=1), states={}, lookup=None, now=NOW
    )
    pooled = collect(
        write_config(tmp_path, feeds, parse_processes=2), states={}, lookup=None, now=NOW
    )
    assert [(r.feed_id, r.error) for r in pooled.feed_reports] == [
        (r.feed_id, r.error) for r in in_process.feed_reports
    ]
    assert [a.model_dump() for a in pooled.articles] == [
        a.model_dump() for a in in_process.articles
    ]
    assert [r.problems for r in pooled.feed_reports] == [
        r.problems for r in in_process.feed_reports
    ]


def test_a_parse_pool_that_cannot_start_falls_back_to_threads(
    server: HTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from concurrent.futures import ProcessPoolExecutor

    import pipeline.collect

    def dead_pool(processes: int) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(max_workers=processes)
        pool.shutdown()  # every submit now raises, as when workers cannot be started
        return pool

    feeds = [
        {"id": "eew", "url": serve(server, "/eew.xml", "eastern-europe-wire.rss.xml")},
        {"id": "danube", "url": serve(server, "/danube.xml", "danube-herald.rss.xml")},
    ]
    expected = collect(
        write_config(tmp_path, feeds, parse_processes=1), states={}, lookup=None, now=NOW
    )
    monkeypatch.setattr(pipeline.collect, "_make_pool", dead_pool)
    result = collect(
        write_config(tmp_path, feeds, parse_processes=2), states={}, lookup=None, now=NOW
    )
    assert all(r.ok for r in result.feed_reports)
    assert [a.model_dump() for a in result.articles] == [a.model_dump() for a in expected.articles]


def test_the_result_is_never_formatted_on_the_way_out(
    server: HTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Leaving asyncio.run in the main thread (Python 3.11) formats the main task, result
    # included; for 20,000 articles that full repr cost seconds after the work was done.
    import threading

    assert threading.current_thread() is threading.main_thread()

    formatted: list[str] = []

    def counting_repr(self: CollectResult) -> str:
        formatted.append("repr")  # reprlib swallows exceptions: count instead of raising
        return "CollectResult(...)"

    monkeypatch.setattr(CollectResult, "__repr__", counting_repr)
    url = serve(server, "/eew.xml", "eastern-europe-wire.rss.xml")
    result = collect(
        write_config(tmp_path, [{"id": "eew", "url": url}]), states={}, lookup=None, now=NOW
    )
    assert len(result.articles) == 5
    assert formatted == []


def test_permanent_redirect_is_reported(server: HTTPServer, tmp_path: Path) -> None:
    server.expect_request("/old.xml").respond_with_data(
        "", status=301, headers={"Location": "/new.xml"}
    )
    serve(server, "/new.xml", "geneva-dispatch.atom.xml", "application/atom+xml")
    config = write_config(tmp_path, [{"id": "moved", "url": server.url_for("/old.xml")}])
    report = collect(config, states={}, lookup=None, now=NOW).feed_reports[0]
    assert report.ok and report.items == 3
    assert report.problems == [
        f"moved: permanently redirected to {server.url_for('/new.xml')}; update feeds.yaml"
    ]


# ------------------------------------------------------------------------- feed state

FEED = FeedConfig(id="f", url="https://x.example/rss", poll_minutes=15)
SETTINGS = FetchSettings()


def failed(kind: str, error: str = "boom", **extra: Any) -> FetchResult:
    return FetchResult(feed_id="f", url=FEED.url, error=error, failure_kind=kind, **extra)  # type: ignore[arg-type]


def test_failures_back_off_exponentially_by_grade_up_to_a_day_and_never_disable() -> None:
    state: FeedState | None = None
    waits = []
    for _ in range(12):
        state = update_state(
            state, FEED, FEED.url, failed("temporary"), [], 0, now=NOW, settings=SETTINGS
        )
        assert state.next_due is not None
        waits.append((state.next_due - NOW).total_seconds() / 60)
    assert state is not None and state.consecutive_failures == 12
    assert 15 <= waits[0] <= 16.5  # first temporary failure: normal pace
    assert all(b >= a for a, b in itertools.pairwise(waits))
    assert waits[-1] == 24 * 60  # capped, and still scheduled: never disabled
    hard = backoff_delay(15, 1, "hard", max_backoff_hours=24)
    soft = backoff_delay(15, 1, "soft", max_backoff_hours=24)
    temporary = backoff_delay(15, 1, "temporary", max_backoff_hours=24)
    assert hard > soft > temporary
    # 15 min x 4 (hard) and x 2 (soft), plus up to 10 % of fixed per-feed jitter.
    assert timedelta(minutes=60) <= hard <= timedelta(minutes=66)
    assert timedelta(minutes=30) <= soft <= timedelta(minutes=33)


def test_success_resets_failures_and_keeps_validators() -> None:
    state = update_state(None, FEED, FEED.url, failed("soft"), [], 0, now=NOW, settings=SETTINGS)
    ok = FetchResult(feed_id="f", url=FEED.url, status=200, etag='"a"', last_modified="Tue")
    state = update_state(state, FEED, FEED.url, ok, [], 7, now=NOW, settings=SETTINGS)
    assert state.consecutive_failures == 0 and state.last_error is None
    assert (state.etag, state.last_modified, state.items_seen) == ('"a"', "Tue", 7)
    assert state.next_due == NOW + timedelta(minutes=15)
    not_modified = FetchResult(feed_id="f", url=FEED.url, status=304, not_modified=True)
    state = update_state(state, FEED, FEED.url, not_modified, [], 0, now=NOW, settings=SETTINGS)
    assert state.etag == '"a"' and state.consecutive_failures == 0
    moved = update_state(
        state, FEED, "https://x.example/new-rss", failed("soft"), [], 0, now=NOW, settings=SETTINGS
    )
    assert moved.etag is None and moved.last_modified is None  # validators of the old URL


def test_retry_after_sets_the_next_poll_within_the_cap() -> None:
    state = update_state(
        None,
        FEED,
        FEED.url,
        failed("temporary", retry_after_s=7200),
        [],
        0,
        now=NOW,
        settings=SETTINGS,
    )
    assert state.next_due == NOW + timedelta(hours=2)
    state = update_state(
        None,
        FEED,
        FEED.url,
        failed("temporary", retry_after_s=7 * 86400),
        [],
        0,
        now=NOW,
        settings=SETTINGS,
    )
    assert state.next_due == NOW + timedelta(hours=24)


def test_a_feed_that_is_not_a_feed_is_a_hard_failure_and_parse_problems_with_items_are_not() -> (
    None
):
    ok = FetchResult(feed_id="f", url=FEED.url, status=200)
    html = [FeedProblem(feed_id="f", kind="not_a_feed", message="an HTML page")]
    state = update_state(None, FEED, FEED.url, ok, html, 0, now=NOW, settings=SETTINGS)
    assert state.failure_kind == "hard" and state.last_error == "not_a_feed: an HTML page"
    broken = [FeedProblem(feed_id="f", kind="malformed_xml", message="bad")]
    assert (
        update_state(None, FEED, FEED.url, ok, broken, 0, now=NOW, settings=SETTINGS).failure_kind
        == "soft"
    )
    recovered = [FeedProblem(feed_id="f", kind="truncated_xml", message="cut")]
    state = update_state(None, FEED, FEED.url, ok, recovered, 3, now=NOW, settings=SETTINGS)
    assert state.consecutive_failures == 0 and state.problems == ["truncated_xml: cut"]
    assert state.to_document()["healthy"] is False


def test_is_due() -> None:
    assert is_due(None, NOW)
    assert is_due(FeedState(feed_id="f", url="u", next_due=NOW), NOW)
    assert not is_due(FeedState(feed_id="f", url="u", next_due=NOW + timedelta(seconds=1)), NOW)


# ----------------------------------------------------------------------- ingest records


def test_articles_from_records() -> None:
    records = [
        {
            "url": "https://example.com/nato-cede?utm_source=x",
            "title": "NATO chief says Ukraine may have to cede territory",
            "text": "The alliance's secretary general said Ukraine may have to cede territory to end the war.",
            "published": "2023-08-15T10:00:00+02:00",
        },
        {"url": "https://example.com/nato-cede", "title": "Same URL again", "text": "x"},
        {"title": "no url"},
        {
            "url": "https://example.com/known",
            "title": "Zelenskyy says Ukraine is not ready to concede any territory",
            "summary": "President Zelenskyy said Ukraine is not ready to concede any of its territories.",
            "published": "2023-08-16T09:00:00Z",
        },
    ]
    first = articles_from_records(records, now=NOW)
    assert [a.canonical_url for a in first.articles] == [
        "https://example.com/nato-cede",
        "https://example.com/known",
    ]
    assert first.problems == [
        "record 3: missing 'url'",
        "1 record repeated an earlier URL; the first was kept",
    ]
    again = articles_from_records(records, now=NOW, lookup=MemoryLookup(first.articles))
    assert again.articles == [] and again.unchanged == 2
    json.dumps(first.model_dump(mode="json"))  # JSON-safe for the runner's summary


# --------------------------------------------------------------------------------- CLI


def test_feeds_check_and_list_commands(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    config_dir = tmp_path / "cfg"
    config_dir.mkdir()
    for name in ("eastern-europe-wire.rss.xml", "billion-laughs.xml"):
        (config_dir / name).write_bytes((FIXTURES / name).read_bytes())
    (config_dir / "feeds.yaml").write_text(
        "feeds:\n"
        "  - {id: eew, url: eastern-europe-wire.rss.xml, name: Eastern Europe Wire}\n"
        "  - {id: laughs, url: billion-laughs.xml}\n",
        encoding="utf-8",
    )
    runner = CliRunner()
    listed = runner.invoke(app, ["feeds", "list", "--config", str(config_dir)])
    assert listed.exit_code == 0 and "eastern-" in listed.output and "laughs" in listed.output
    checked = runner.invoke(app, ["feeds", "check", "--config", str(config_dir), "--json"])
    assert checked.exit_code == 1  # one feed failed
    reports = {r["feed_id"]: r for r in map(json.loads, checked.output.splitlines())}
    assert reports["eew"]["ok"] and reports["eew"]["items"] == 5
    assert not reports["laughs"]["ok"]
    assert reports["laughs"]["error"].startswith("hostile_xml: DOCTYPE declares 10 entity")
    only_good = runner.invoke(
        app, ["feeds", "check", "-c", str(config_dir), "-f", "eew", "-n", "1"]
    )
    assert only_good.exit_code == 0, only_good.output
    assert "Foreign ministers agree to resume prisoner-exchange talks" in only_good.output


def test_bundled_demo_matches_its_answer_key() -> None:
    """config/demo/EXPECTED.md: 89 articles (one exact duplicate), one syndicated pair
    (an excerpt + content:encoded copy of a wire story), one future date, no tracking
    parameters in canonical URLs."""
    demo = Path(__file__).resolve().parent.parent / "config" / "demo"
    now = datetime(2025, 3, 15, 12, 0, tzinfo=UTC)
    result = collect(AppConfig(demo), states={}, lookup=None, now=now)
    assert len(result.articles) == 89 and result.duplicates_in_batch == 1
    assert all(r.ok for r in result.feed_reports)
    copies = [a for a in result.articles if a.duplicate_of]
    assert len(copies) == 1
    original = next(a for a in result.articles if a.id == copies[0].duplicate_of)
    assert original.source.feed_id == "meridian-wire"
    assert copies[0].source.feed_id == "dnipro-courier"
    assert copies[0].cluster_id == original.cluster_id == original.id
    clamped = [a for a in result.articles if a.date_flags == ["future_clamped"]]
    assert [a.published for a in clamped] == [now]
    assert not any("utm_" in a.canonical_url for a in result.articles)


def test_no_full_gc_restores_the_thresholds_after_overlapping_blocks() -> None:
    import gc
    import threading

    from pipeline.collect import no_full_gc

    before = gc.get_threshold()
    inside = threading.Event()
    release = threading.Event()

    def other_run() -> None:
        with no_full_gc():
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=other_run)
    with no_full_gc():
        assert gc.get_threshold()[2] > 1_000_000
        thread.start()
        assert inside.wait(5)
    assert gc.get_threshold()[2] > 1_000_000  # the other run still holds it
    release.set()
    thread.join(5)
    assert gc.get_threshold() == before
