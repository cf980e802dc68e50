"""Enrich: the full text of an article's page, for feeds marked ``full_text: true``.

Feeds often carry one sentence; the stance of an actor is usually further down. For feeds
that allow it we fetch the linked page and extract the article body with trafilatura.

Rules, each for a reason:

- **SSRF-guarded**: page URLs come from the feed, i.e. from strangers. They go through
  the same :class:`~pipeline.fetch.Fetcher` (address checks per hop and at connect time);
  only http(s) links are followed.
- **robots.txt respected** (RFC 9309), fetched once per site through the same guarded
  client: 2xx is parsed with :mod:`urllib.robotparser`; a 4xx means "no rules" (allow);
  a 5xx or network failure means "unreachable" (disallow, as the RFC says). A
  ``Crawl-delay`` longer than our own per-domain interval is honoured.
- **Per-domain rate limit** (``per_domain_interval_s``) on top of the fetcher's per-host
  concurrency limit: twenty items of one outlet are fetched one after the other, politely.
- **Size and time caps** per page (``max_bytes``, ``timeout_s``); no retries (a page is
  optional, the summary is still there).
- **Fallback**: when anything fails, or the extraction is too short to be the article
  (cookie walls, paywalls), the article keeps its summary and ``full_text`` stays false.
"""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit
from urllib.robotparser import RobotFileParser

from pipeline.config import EnrichSettings
from pipeline.fetch import PAGE_ACCEPT, Fetcher
from pipeline.models import Article

log = logging.getLogger(__name__)

#: RFC 9309: crawlers must parse at least 500 KiB of a robots.txt; we read no more.
ROBOTS_MAX_BYTES = 512 * 1024
#: The product token matched against ``User-agent:`` lines.
ROBOTS_AGENT = "Stancewatch"
_OK_OR_CLIENT_ERROR = tuple(range(200, 300)) + tuple(range(400, 500))


@dataclass
class EnrichReport:
    """What enrichment did, for the run summary."""

    attempted: int = 0
    extracted: int = 0
    robots_denied: int = 0
    failures: list[str] = field(default_factory=list)


@dataclass
class _Robots:
    parser: RobotFileParser | None  # None: no rules, everything allowed
    allow_all: bool = False
    deny_all: bool = False
    reason: str = ""

    def allows(self, url: str) -> bool:
        if self.deny_all:
            return False
        if self.allow_all or self.parser is None:
            return True
        return self.parser.can_fetch(ROBOTS_AGENT, url)

    def crawl_delay(self) -> float | None:
        if self.parser is None:
            return None
        delay = self.parser.crawl_delay(ROBOTS_AGENT)
        return float(delay) if delay is not None else None


def extract_text(html: bytes, url: str) -> str | None:
    """The main text of an article page (trafilatura), or None.

    trafilatura only extracts here: pages are always fetched by our guarded client.
    """
    with warnings.catch_warnings():
        # Its (unused) downloader imports urllib3's SOCKS support, which warns without PySocks.
        warnings.simplefilter("ignore")
        import trafilatura

    try:
        text = trafilatura.extract(
            html,
            url=url,
            include_comments=False,
            include_tables=False,
            favor_precision=True,
            # trafilatura's deduplication remembers text across calls in this process:
            # the second outlet carrying the same wire story would come back empty.
            deduplicate=False,
        )
    except Exception:  # a broken page must not stop the run
        log.debug("trafilatura failed on %s", url, exc_info=True)
        return None
    return text.strip() if text else None


class Enricher:
    """Fetches and extracts article pages through a shared, guarded :class:`Fetcher`."""

    def __init__(self, fetcher: Fetcher, settings: EnrichSettings) -> None:
        self.fetcher = fetcher
        self.settings = settings
        self._robots: dict[str, _Robots] = {}
        self._robots_locks: dict[str, asyncio.Lock] = {}
        self._domain_locks: dict[str, asyncio.Lock] = {}
        self._next_allowed: dict[str, float] = {}
        self._slots = asyncio.Semaphore(settings.concurrency)

    async def enrich(self, articles: Sequence[Article]) -> tuple[list[Article], EnrichReport]:
        """Return the articles (same order), with ``body``/``full_text`` where extracted."""
        report = EnrichReport()
        results = await asyncio.gather(*(self._one(a, report) for a in articles))
        return list(results), report

    async def _one(self, article: Article, report: EnrichReport) -> Article:
        url = article.url
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            report.failures.append(f"{url}: not an http(s) URL")
            return article
        site = f"{parts.scheme.lower()}://{parts.netloc.lower()}"
        delay: float | None = None
        if self.settings.respect_robots_txt:
            robots = await self._robots_for(site)
            if not robots.allows(url):
                report.robots_denied += 1
                log.debug("robots.txt disallows %s (%s)", url, robots.reason)
                return article
            delay = robots.crawl_delay()
        report.attempted += 1
        # Wait for the domain's turn *before* taking a slot, so a queue of pages from one
        # outlet does not hold slots that pages of other outlets could use.
        await self._wait_turn(parts.netloc.lower(), delay)
        async with self._slots:
            res = await self.fetcher.get(
                url,
                headers={"Accept": PAGE_ACCEPT},
                max_bytes=self.settings.max_bytes,
                total_timeout_s=self.settings.timeout_s,
                max_retries=0,
                accept_statuses=(200,),
            )
        if not res.ok or not res.content:
            report.failures.append(f"{url}: {res.error or 'empty page'}")
            return article
        content_type = res.headers.get("content-type", "").lower()
        if content_type and "html" not in content_type and "xml" not in content_type:
            report.failures.append(f"{url}: not an HTML page ({content_type})")
            return article
        text = await asyncio.to_thread(extract_text, res.content, res.final_url or url)
        if not text or len(text) < self.settings.min_text_chars:
            report.failures.append(f"{url}: no article text found on the page")
            return article
        report.extracted += 1
        return article.model_copy(update={"body": text, "full_text": True})

    async def _wait_turn(self, domain: str, crawl_delay: float | None) -> None:
        """At most one page per ``per_domain_interval_s`` (or Crawl-delay) per domain."""
        interval = max(self.settings.per_domain_interval_s, crawl_delay or 0.0)
        lock = self._domain_locks.setdefault(domain, asyncio.Lock())
        async with lock:
            now = time.monotonic()
            wait = self._next_allowed.get(domain, 0.0) - now
            if wait > 0:
                await asyncio.sleep(wait)
            self._next_allowed[domain] = max(now, self._next_allowed.get(domain, 0.0)) + interval

    async def _robots_for(self, site: str) -> _Robots:
        lock = self._robots_locks.setdefault(site, asyncio.Lock())
        async with lock:
            cached = self._robots.get(site)
            if cached is None:
                cached = self._robots[site] = await self._fetch_robots(site)
            return cached

    async def _fetch_robots(self, site: str) -> _Robots:
        res = await self.fetcher.get(
            f"{site}/robots.txt",
            headers={"Accept": "text/plain, */*;q=0.5"},
            max_bytes=ROBOTS_MAX_BYTES,
            total_timeout_s=self.settings.timeout_s,
            max_retries=0,
            accept_statuses=_OK_OR_CLIENT_ERROR,
        )
        if res.ok and res.status is not None and 400 <= res.status < 500:
            return _Robots(parser=None, allow_all=True, reason=f"robots.txt: HTTP {res.status}")
        if not res.ok:
            return _Robots(
                parser=None, deny_all=True, reason=f"robots.txt unreachable: {res.error}"
            )
        parser = RobotFileParser()
        text = (res.content or b"").decode("utf-8", errors="replace")
        parser.parse(text.splitlines())
        return _Robots(parser=parser, reason="robots.txt")
