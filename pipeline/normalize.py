"""Normalize: a parsed :class:`FeedItem` (or an imported record) -> an :class:`Article`.

- **Canonical URL** with courlan (scrubbing, lower-case host, default ports, tracking
  parameters such as ``utm_*``/``fbclid``/``gclid`` removed, parameters sorted), then the
  fragment dropped. The article id is ``article_id(canonical_url)``, so the same story
  reached through ``?utm_source=rss`` and ``?utm_source=twitter`` is one document.
- **Text**: HTML reduced to text with the standard library's HTML parser (entities decoded,
  scripts and styles dropped, block elements become line breaks in the body).
- **Dates** are parsed with their time zone (RFC 822 and ISO 8601 first, feedparser's
  broader parser as the fallback) and stored in UTC. Dates later than now + a few minutes
  are clamped to now and flagged ``future_clamped`` (time-zone bugs in CMSs, embargo
  dates); a missing date becomes the fetch time, flagged ``missing``.
- **Language**: py3langid on title + summary; the feed's or item's declared language wins
  for texts too short to judge and when the detector is unsure.
- **content_hash** covers what the feed says about the story (title, summary, feed body),
  so a re-polled item whose text did not change is recognised and not reclassified.
"""

from __future__ import annotations

import email.utils
import hashlib
import html
import re
import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import courlan

from pipeline.config import FeedConfig
from pipeline.models import Article, FeedItem, SourceInfo, article_id

#: Longest summary kept; feeds that stuff the whole article into <description> still get a
#: readable summary (the full text goes to ``body``).
MAX_SUMMARY_CHARS = 4000
MAX_TITLE_CHARS = 500
#: Texts shorter than this are too short for the language detector to be trusted.
MIN_DETECT_CHARS = 40
#: Characters of title + summary the detector reads (cost grows with length, accuracy
#: stops improving long before).
DETECT_CHARS = 300

# ------------------------------------------------------------------------------- URLs


def canonical_url(url: str) -> str | None:
    """The URL that identifies a story: tracking parameters and the fragment removed.

    Returns None for anything that is not an http(s) URL with a host.
    """
    if not url or not url.strip():
        return None
    cleaned = courlan.clean_url(url.strip())
    if not cleaned:
        return None
    parts = urlsplit(cleaned)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", parts.query, ""))


def url_domain(url: str) -> str | None:
    """Host of a URL without a leading ``www.`` (what users call the outlet's domain)."""
    host = urlsplit(url).hostname
    if not host:
        return None
    return host[4:] if host.startswith("www.") else host


# ------------------------------------------------------------------------------- text

_BLOCK_TAGS = frozenset(
    [
        "p",
        "div",
        "br",
        "li",
        "ul",
        "ol",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "blockquote",
        "section",
        "article",
        "header",
        "footer",
        "tr",
        "table",
        "figure",
        "figcaption",
        "pre",
        "hr",
        "dd",
        "dt",
    ]
)
_SKIP_TAGS = frozenset({"script", "style", "noscript", "template", "iframe", "svg", "head"})


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skip += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


_SPACES = re.compile(r"[ \t\r\f\v\u00a0\u200b]+")
_NEWLINES = re.compile(r"\s*\n\s*")


def html_to_text(value: str | None, *, keep_paragraphs: bool = False) -> str:
    """Plain text of an HTML fragment (or of plain text with entities)."""
    if not value:
        return ""
    if "<" not in value:
        # No markup (most titles): what the parser would return, entities decoded, at a
        # fraction of its cost.
        text = html.unescape(value) if "&" in value else value
    else:
        parser = _TextExtractor()
        try:
            parser.feed(value)
            parser.close()
            text = "".join(parser.parts)
        except Exception:  # HTMLParser is lenient; this is for the truly pathological
            text = value
    text = _SPACES.sub(" ", text)
    if keep_paragraphs:
        return _NEWLINES.sub("\n\n", text).strip()
    return " ".join(text.split())


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:") + "…"


def content_hash(title: str, summary: str, body: str = "") -> str:
    """Fingerprint of what the source says about a story (whitespace-insensitive)."""
    joined = "\x1f".join(" ".join(part.split()) for part in (title, summary, body))
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()[:32]


# ------------------------------------------------------------------------------ dates


def parse_date(raw: str | None, fallback: datetime | None = None) -> datetime | None:
    """A time-zone-aware UTC datetime from a feed's date string.

    RFC 822 (RSS) and ISO 8601 (Atom) are parsed here so that the offset is applied
    exactly; ``fallback`` (feedparser's own parse, already UTC) covers the odd formats.
    A date without any zone is taken as UTC, as feedparser does.
    """
    naive: datetime | None = None
    if raw and raw.strip():
        text = raw.strip()
        try:
            parsed = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            parsed = None
        if parsed is None:
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError:
                parsed = None
        if parsed is not None:
            if parsed.tzinfo is not None:
                return parsed.astimezone(UTC)
            naive = parsed
    if fallback is not None:
        return fallback.astimezone(UTC) if fallback.tzinfo else fallback.replace(tzinfo=UTC)
    if naive is not None:
        return naive.replace(tzinfo=UTC)
    return None


def resolve_published(
    raw: str | None,
    parsed: datetime | None,
    *,
    now: datetime,
    max_future_minutes: int,
) -> tuple[datetime, list[str]]:
    """Publication time and its flags: clamp the future, fill in the missing."""
    published = parse_date(raw, parsed)
    if published is None:
        return now, ["missing"]
    if published > now + timedelta(minutes=max_future_minutes):
        return now, ["future_clamped"]
    return published, []


# --------------------------------------------------------------------------- language

_identifier: Any = None
_identifier_lock = threading.Lock()


def _language_identifier() -> Any:
    """py3langid's model with normalised probabilities, loaded once (about 1 s)."""
    global _identifier
    if _identifier is None:
        with _identifier_lock:
            if _identifier is None:
                from py3langid.langid import MODEL_FILE, LanguageIdentifier

                _identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _identifier


def detect_language(text: str, declared: str | None = None) -> str | None:
    """ISO 639-1 code of ``text``; ``declared`` for short texts or an unsure detector."""
    declared = declared.split("-")[0].lower() if declared else None
    sample = text[:DETECT_CHARS].strip()
    if len(sample) < MIN_DETECT_CHARS:
        if declared:
            return declared
        if len(sample) < 12:
            return None
    language, probability = _language_identifier().classify(sample)
    if declared and probability < 0.6:
        return declared
    if not declared and probability < (0.9 if len(sample) < MIN_DETECT_CHARS else 0.5):
        return None
    return str(language)


# --------------------------------------------------------------------------- articles


class NormalizeError(ValueError):
    """An item or record that cannot become an article (no usable URL, no text)."""


def make_article(
    *,
    url: str,
    title: str | None,
    summary: str | None,
    body: str | None,
    published_raw: str | None,
    published: datetime | None,
    source: SourceInfo,
    declared_language: str | None,
    now: datetime,
    max_future_minutes: int,
    trusted_language: str | None = None,
) -> Article:
    """The one place an Article is built, for fetched items and imported records alike.

    ``trusted_language`` skips detection (the feed's declaration was verified already).
    """
    canonical = canonical_url(url)
    if canonical is None:
        raise NormalizeError(f"not an http(s) URL: {url!r}")
    title_text = _truncate(html_to_text(title), MAX_TITLE_CHARS)
    summary_text = html_to_text(summary)
    body_text = html_to_text(body, keep_paragraphs=True)
    if body_text and " ".join(body_text.split()) == summary_text:
        body_text = ""
    if not summary_text and body_text:
        summary_text = " ".join(body_text.split())
    summary_text = _truncate(summary_text, MAX_SUMMARY_CHARS)
    if not title_text:
        if not summary_text:
            raise NormalizeError(f"no title and no text: {url!r}")
        title_text = _truncate(summary_text, 120)
    when, flags = resolve_published(
        published_raw, published, now=now, max_future_minutes=max_future_minutes
    )
    language = trusted_language or detect_language(
        f"{title_text}. {summary_text}", declared_language
    )
    if source.domain is None:
        source = source.model_copy(update={"domain": url_domain(canonical)})
    return Article(
        id=article_id(canonical),
        url=url.strip(),
        canonical_url=canonical,
        source=source,
        title=title_text,
        summary=summary_text,
        body=body_text,
        published=when,
        published_raw=published_raw,
        date_flags=flags,
        fetched_at=now,
        content_hash=content_hash(title_text, summary_text, body_text),
        language=language,
        full_text=False,
    )


def normalize_item(
    item: FeedItem,
    feed: FeedConfig,
    *,
    now: datetime,
    max_future_minutes: int,
    trusted_language: str | None = None,
) -> Article:
    """A parsed feed item as an article; raises :class:`NormalizeError` when unusable."""
    if not item.link:
        raise NormalizeError("item without a link")
    source = SourceInfo(
        feed_id=feed.id,
        name=feed.display_name,
        domain=url_domain(item.link),
        language=feed.language,
        country=feed.country,
    )
    return make_article(
        url=item.link,
        title=item.title,
        summary=item.summary,
        body=item.content,
        published_raw=item.published_raw,
        published=item.published,
        source=source,
        declared_language=item.language or feed.language,
        now=now,
        max_future_minutes=max_future_minutes,
        trusted_language=trusted_language,
    )


def normalize_record(
    record: Mapping[str, Any], *, now: datetime, max_future_minutes: int
) -> Article:
    """An imported JSON record (``stancewatch ingest``) as an article.

    ``{"url", "title", "text" | "summary", "published"[, "id", "source", "language"]}``.
    The article id always comes from the canonical URL (as for fetched items), so an
    import and a later fetch of the same story meet in one document.
    """
    if not isinstance(record, Mapping):
        raise NormalizeError("not a JSON object")
    url = record.get("url")
    if not isinstance(url, str) or not url.strip():
        raise NormalizeError("missing 'url'")
    text = record.get("text")
    summary = record.get("summary")
    for key, value in (("title", record.get("title")), ("text", text), ("summary", summary)):
        if value is not None and not isinstance(value, str):
            raise NormalizeError(f"'{key}' must be a string")
    published_raw = record.get("published")
    if published_raw is not None and not isinstance(published_raw, str):
        raise NormalizeError("'published' must be an ISO 8601 string")
    if published_raw and parse_date(str(published_raw)) is None:
        raise NormalizeError(f"'published' is not a date: {published_raw!r}")
    raw_source = record.get("source")
    if isinstance(raw_source, Mapping):
        source = SourceInfo.model_validate(dict(raw_source))
    elif isinstance(raw_source, str) and raw_source.strip():
        source = SourceInfo(name=raw_source.strip())
    else:
        source = SourceInfo()
    language = record.get("language") if isinstance(record.get("language"), str) else None
    return make_article(
        url=url,
        title=record.get("title"),
        summary=summary,
        body=text,
        published_raw=published_raw,
        published=None,
        source=source,
        declared_language=language or source.language,
        now=now,
        max_future_minutes=max_future_minutes,
    )
