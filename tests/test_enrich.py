"""Enrich: full text from a real local server, with robots.txt, rate limits, caps, SSRF."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from pipeline.config import EnrichSettings, FetchSettings
from pipeline.enrich import Enricher, EnrichReport
from pipeline.fetch import Fetcher
from pipeline.models import Article, SourceInfo, article_id
from pipeline.normalize import content_hash

PAGES = Path(__file__).parent / "fixtures" / "pages"
ARTICLE_PAGE = (PAGES / "article-istanbul-talks.html").read_bytes()
NOW = datetime(2024, 3, 5, 18, 0, tzinfo=UTC)
SUMMARY = "The two foreign ministers agreed on Monday to resume talks on a new prisoner exchange."


def article(url: str) -> Article:
    return Article(
        id=article_id(url),
        url=url,
        canonical_url=url,
        source=SourceInfo(feed_id="eew"),
        title="Foreign ministers agree to resume prisoner-exchange talks in Istanbul",
        summary=SUMMARY,
        published=NOW,
        fetched_at=NOW,
        content_hash=content_hash("t", SUMMARY),
    )


def enrich(
    articles: Sequence[Article], *, allow_private: bool = True, **overrides: Any
) -> tuple[list[Article], EnrichReport]:
    settings = {"per_domain_interval_s": 0.0, "timeout_s": 2.0, **overrides}

    async def go() -> tuple[list[Article], EnrichReport]:
        fetch = FetchSettings(allow_private_addresses=allow_private, max_retries=0)
        async with Fetcher(fetch) as fetcher:
            return await Enricher(fetcher, EnrichSettings(**settings)).enrich(articles)

    return asyncio.run(go())


def paths(server: HTTPServer) -> list[str]:
    return [request.path for request, _ in server.log]


def test_full_text_is_extracted(server: HTTPServer) -> None:
    server.expect_request("/robots.txt").respond_with_data("User-agent: *\nAllow: /\n")
    server.expect_request("/world/istanbul").respond_with_data(
        ARTICLE_PAGE, content_type="text/html; charset=utf-8"
    )
    (out,), report = enrich([article(server.url_for("/world/istanbul"))])
    assert out.full_text is True
    assert "Nobody should expect a breakthrough on the wider conflict" in out.body
    assert "cookies" not in out.body and "All rights reserved" not in out.body
    assert out.summary == SUMMARY  # kept; the content hash of the feed item is unchanged
    assert report.extracted == 1 and report.failures == []
    page_request = server.log[1][0]
    assert page_request.headers["User-Agent"].startswith("Stancewatch/")


def test_robots_txt_disallow_is_respected(server: HTTPServer) -> None:
    server.expect_request("/robots.txt").respond_with_data(
        "User-agent: *\nDisallow: /private/\n\nUser-agent: Stancewatch\nDisallow: /no-bots/\n"
    )
    server.expect_request("/private/story").respond_with_data(
        ARTICLE_PAGE, content_type="text/html"
    )
    server.expect_request("/no-bots/story").respond_with_data(
        ARTICLE_PAGE, content_type="text/html"
    )
    server.expect_request("/world/story").respond_with_data(ARTICLE_PAGE, content_type="text/html")
    out, report = enrich(
        [
            article(server.url_for("/private/story")),
            article(server.url_for("/no-bots/story")),
            article(server.url_for("/world/story")),
        ]
    )
    # Our own User-agent group applies (it replaces '*'), so /private/ is allowed for us.
    assert [a.full_text for a in out] == [True, False, True]
    assert report.robots_denied == 1
    assert "/no-bots/story" not in paths(server)
    assert paths(server).count("/robots.txt") == 1  # cached per site


def test_missing_robots_txt_allows_and_broken_robots_txt_denies(server: HTTPServer) -> None:
    server.expect_request("/robots.txt").respond_with_data("", status=404)
    server.expect_request("/a").respond_with_data(ARTICLE_PAGE, content_type="text/html")
    (out,), _ = enrich([article(server.url_for("/a"))])
    assert out.full_text

    server.clear()
    server.expect_request("/robots.txt").respond_with_data("", status=503)
    server.expect_request("/a").respond_with_data(ARTICLE_PAGE, content_type="text/html")
    (out,), report = enrich([article(server.url_for("/a"))])
    assert not out.full_text and report.robots_denied == 1
    assert paths(server) == ["/robots.txt"]


def test_robots_can_be_switched_off(server: HTTPServer) -> None:
    server.expect_request("/a").respond_with_data(ARTICLE_PAGE, content_type="text/html")
    (out,), _ = enrich([article(server.url_for("/a"))], respect_robots_txt=False)
    assert out.full_text and paths(server) == ["/a"]


def test_per_domain_rate_limit(server: HTTPServer) -> None:
    stamps: list[float] = []

    def page(request: Request) -> Response:
        stamps.append(time.monotonic())
        return Response(ARTICLE_PAGE, content_type="text/html")

    server.expect_request("/robots.txt").respond_with_data("", status=404)
    for i in range(3):
        server.expect_request(f"/s{i}").respond_with_handler(page)
    out, _ = enrich(
        [article(server.url_for(f"/s{i}")) for i in range(3)], per_domain_interval_s=0.3
    )
    assert all(a.full_text for a in out)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert len(gaps) == 2 and min(gaps) >= 0.25


def test_crawl_delay_longer_than_ours_is_honoured(server: HTTPServer) -> None:
    stamps: list[float] = []

    def page(request: Request) -> Response:
        stamps.append(time.monotonic())
        return Response(ARTICLE_PAGE, content_type="text/html")

    server.expect_request("/robots.txt").respond_with_data("User-agent: *\nCrawl-delay: 1\n")
    for i in range(2):
        server.expect_request(f"/c{i}").respond_with_handler(page)
    enrich([article(server.url_for(f"/c{i}")) for i in range(2)], per_domain_interval_s=0.0)
    assert stamps[1] - stamps[0] >= 0.9


def test_caps_and_failures_fall_back_to_the_summary(server: HTTPServer) -> None:
    def slow(request: Request) -> Response:
        time.sleep(1.0)
        return Response(ARTICLE_PAGE, content_type="text/html")

    server.expect_request("/robots.txt").respond_with_data("", status=404)
    server.expect_request("/huge").respond_with_data(ARTICLE_PAGE * 200, content_type="text/html")
    server.expect_request("/slow").respond_with_handler(slow)
    server.expect_request("/gone").respond_with_data("", status=404)
    server.expect_request("/pdf").respond_with_data(b"%PDF-1.7", content_type="application/pdf")
    server.expect_request("/wall").respond_with_data(
        (PAGES / "cookie-wall.html").read_bytes(), content_type="text/html"
    )
    urls = [server.url_for(p) for p in ("/huge", "/slow", "/gone", "/pdf", "/wall")]
    out, report = enrich([article(u) for u in urls], max_bytes=100_000, timeout_s=0.3)
    time.sleep(0.8)  # let the slow handler finish before the next test clears the log
    assert [a.full_text for a in out] == [False] * 5
    assert all(a.body == "" and a.summary == SUMMARY for a in out)
    reasons = sorted(f.split(": ", 1)[1] for f in report.failures)
    assert reasons == sorted(
        [
            "response larger than the 100,000-byte cap",
            "timed out after 0.3 s",
            "HTTP 404 not found",
            "not an HTML page (application/pdf)",
            "no article text found on the page",
        ]
    )


def test_pages_are_ssrf_guarded(server: HTTPServer) -> None:
    server.expect_request("/robots.txt").respond_with_data("", status=404)
    server.expect_request("/a").respond_with_data(ARTICLE_PAGE, content_type="text/html")
    links = [
        server.url_for("/a"),
        "http://169.254.169.254/latest/meta-data/",
        "file:///etc/passwd",
    ]
    out, report = enrich([article(u) for u in links], allow_private=False)
    assert [a.full_text for a in out] == [False, False, False]
    assert server.log == []  # nothing reached the loopback server
    assert any("not an http(s) URL" in f for f in report.failures)
