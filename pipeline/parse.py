"""Parse: feed bytes -> :class:`FeedItem` records plus :class:`FeedProblem` reports.

feedparser does the parsing, but only ever sees bytes we fetched and checked:

- It is given a file-like object, never a string or bytes. Given ``bytes`` it first tries
  ``open(data)`` as a *file name* (and given a ``str`` that looks like a URL it fetches it):
  a feed whose whole body is ``/etc/passwd`` would otherwise be read from our disk.
- **Hostile XML** is refused before any parser expands anything: a DOCTYPE that declares
  entities (billion laughs, external entities / XXE, parameter entities) makes the feed a
  ``hostile_xml`` problem with no items. Two independent checks look for them: defusedxml's
  expat parser (forbid_entities, forbid_external) and a scan of the DOCTYPE's internal
  subset, which still works when the XML is too broken for expat to reach the DOCTYPE.
  A harmless DOCTYPE (the old Netscape RSS 0.91 one) is removed before feedparser runs,
  so no DTD is ever loaded.
- **Encodings** are repaired first: bytes that are not the declared encoding (Cyrillic in
  windows-1251 or KOI8-R declared as UTF-8 is common) are detected with charset-normalizer
  and re-decoded; the feed is handed on as UTF-8 and the repair is reported.
- **Not a feed** (an HTML page, an error page) is reported with what the page offers
  instead (``<link rel="alternate" type="application/rss+xml">``), so users can fix
  ``feeds.yaml`` in one step.
- **Malformed or truncated XML**: feedparser's lenient parser recovers the items it can;
  they are used, and the problem is reported with the line and column.

Nothing here raises for bad input; a feed that yields nothing has a problem that says why.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import logging
import re
import time
import xml.sax
from calendar import timegm
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import feedparser
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

from pipeline.models import FeedItem, FeedProblem

log = logging.getLogger(__name__)

#: Problem kinds that leave nothing usable; the feed counts as failed (see feed_state).
FATAL_KINDS = frozenset({"empty", "hostile_xml", "not_a_feed", "malformed_xml"})

_XML_DECL = re.compile(rb"^(\s*<\?xml\b[^>]*?\bencoding\s*=\s*)([\"'])([A-Za-z0-9._:-]+)\2")
_UTF8 = "utf-8"
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),  # before UTF-16 LE: it starts with the same bytes
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# Single-byte encodings that news feeds actually use, for charset-normalizer to choose from.
# Limiting the candidates makes detection faster and far less likely to pick an exotic one.
_DETECT_CANDIDATES = [
    "cp1251",
    "koi8_r",
    "koi8_u",
    "iso8859_5",
    "cp866",
    "mac_cyrillic",
    "cp1252",
    "iso8859_1",
    "iso8859_15",
    "cp1250",
    "iso8859_2",
    "cp1253",
    "cp1254",
    "cp1255",
    "cp1256",
    "cp1257",
    "iso8859_9",
    "gb18030",
    "big5",
    "shift_jis",
    "euc_kr",
]


@dataclass
class ParsedFeed:
    """Items and problems of one feed document."""

    feed_id: str
    items: list[FeedItem] = field(default_factory=list)
    problems: list[FeedProblem] = field(default_factory=list)
    title: str | None = None
    language: str | None = None
    version: str | None = None
    encoding: str | None = None

    @property
    def fatal(self) -> bool:
        """Nothing usable came out of it (the feed state counts a failure)."""
        return not self.items and any(p.kind in FATAL_KINDS for p in self.problems)

    def problem(self, kind: str, message: str) -> None:
        self.problems.append(FeedProblem(feed_id=self.feed_id, kind=kind, message=message))


# ------------------------------------------------------------------------ hostile XML


def _text_for_scan(data: bytes) -> str:
    """The document as text, well enough to find markup (any ASCII-compatible encoding,
    UTF-16/32 with or without a BOM)."""
    head = data[:4]
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return data[len(bom) :].decode(codec, errors="replace")
    if head in (b"\x00\x00\x00<", b"<\x00\x00\x00"):
        return data.decode("utf-32-be" if head[0] == 0 else "utf-32-le", errors="replace")
    if head[:2] in (b"\x00<", b"<\x00"):
        return data.decode("utf-16-be" if head[0] == 0 else "utf-16-le", errors="replace")
    return data.decode("latin-1")


_ROOT_START = re.compile(r"<[A-Za-z_]")


def _doctype_span(text: str) -> tuple[int, int] | None:
    """Start and end of the DOCTYPE declaration (with its internal subset), if any.

    Only the prolog (before the root element) is searched: "<!DOCTYPE" inside an item's
    CDATA is text, not a declaration.
    """
    root = _ROOT_START.search(text)
    prolog_end = root.start() if root else len(text)
    start = text[:prolog_end].upper().find("<!DOCTYPE")
    if start < 0:
        return None
    i = start + len("<!DOCTYPE")
    depth = 0
    quote: str | None = None
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth = max(0, depth - 1)
        elif ch == ">" and depth == 0:
            return start, i + 1
        i += 1
    return start, len(text)  # unterminated: everything after it is part of it


def hostile_reason(data: bytes) -> str | None:
    """Why this document must not be parsed at all, or None.

    Any entity declaration is refused. Real feeds do not declare entities; documents that
    do are either attacks (expansion bombs, XXE reading local files or internal URLs) or
    so unusual that refusing them, with a clear reason, is the better trade.
    """
    text = _text_for_scan(data)
    span = _doctype_span(text)
    if span is None:
        return None
    doctype = text[span[0] : span[1]]
    upper = doctype.upper()
    reasons: list[str] = []
    if "<!ENTITY" in upper:
        n = upper.count("<!ENTITY")
        if re.search(r"<!ENTITY\s+%", doctype, re.IGNORECASE):
            reasons.append("parameter entities")
        if re.search(r"<!ENTITY\s+%?\s*[\w.:-]+\s+(SYSTEM|PUBLIC)\b", doctype, re.IGNORECASE):
            reasons.append("external entities (XXE)")
        if not reasons:
            reasons.append(f"{n} entity declaration{'s' if n > 1 else ''} (entity expansion)")
    # Second, independent opinion: defusedxml's expat parser stops at the first entity
    # declaration (forbid_entities) or external reference (forbid_external).
    try:
        parser = DefusedXMLParser(forbid_dtd=False, forbid_entities=True, forbid_external=True)
        parser.feed(data)
    except DefusedXmlException as exc:
        if not reasons:
            reasons.append(f"forbidden DTD content ({type(exc).__name__})")
    except Exception:  # malformed XML is reported by the real parse, not here
        pass
    if not reasons:
        return None
    return "DOCTYPE declares " + " and ".join(reasons) + "; refused without expanding them"


def strip_doctype(data: bytes) -> bytes:
    """Remove a (harmless) DOCTYPE from UTF-8 bytes so no parser ever looks for its DTD."""
    text = data.decode("latin-1")
    span = _doctype_span(text)
    if span is None:
        return data
    return (text[: span[0]] + text[span[1] :]).encode("latin-1")


# -------------------------------------------------------------------------- encodings


def _codec(name: str | None) -> str | None:
    """Python's name for an encoding label, or None when unknown."""
    if not name:
        return None
    try:
        return codecs.lookup(name.strip().strip("\"'")).name
    except LookupError:
        return None


def decode_feed(data: bytes, http_charset: str | None = None) -> tuple[bytes, str, str | None]:
    """Return the document as UTF-8 bytes, the encoding used, and a problem message or None.

    Order of evidence: a byte-order mark; then whether the bytes are valid UTF-8 (valid
    multi-byte UTF-8 by accident is vanishingly rare, so it beats a declared single-byte
    charset, which is often a server default); then the declared charsets; then detection.
    """
    for bom, codec in _BOMS:
        if data.startswith(bom):
            text = data[len(bom) :].decode(codec, errors="replace")
            return _as_utf8(text), codec, None
    head = data[:4]
    if head[:2] in (b"\x00<", b"<\x00") or head in (b"\x00\x00\x00<", b"<\x00\x00\x00"):
        # UTF-16/32 without a byte-order mark; NUL-padded ASCII would pass as "valid UTF-8".
        return _as_utf8(_text_for_scan(data)), "utf-16/32 (no BOM)", None
    xml_decl = _XML_DECL.match(data)
    declared_xml = _codec(xml_decl.group(3).decode("ascii")) if xml_decl else None
    declared_http = _codec(http_charset)
    declared = [d for d in (declared_xml, declared_http) if d]
    shown = "/".join(dict.fromkeys(d for d in declared)) or "nothing (UTF-8 by default)"
    try:
        text = data.decode(_UTF8)
    except UnicodeDecodeError:
        pass
    else:
        ascii_only = data.isascii()
        claims_other = [d for d in declared if d not in ("utf-8", "ascii")]
        if (
            claims_other
            and not ascii_only
            and not all(d.startswith("utf-16") for d in claims_other)
        ):
            return _as_utf8(text), _UTF8, f"declared {shown} but the bytes are UTF-8; read as UTF-8"
        return _as_utf8(text), _UTF8, None
    for candidate in declared:
        if candidate in ("utf-8", "ascii") or candidate.startswith("utf-"):
            continue
        try:
            text = data.decode(candidate)
        except UnicodeDecodeError:
            continue
        return _as_utf8(text), candidate, None
    detected = _detect(data)
    if detected is not None:
        text = data.decode(detected, errors="replace")
        return (
            _as_utf8(text),
            detected,
            f"declared {shown} but the bytes are not; detected {detected} and re-decoded",
        )
    text = data.decode(_UTF8, errors="replace")
    return (
        _as_utf8(text),
        _UTF8,
        f"declared {shown} but the bytes are not, and no encoding could be detected; "
        "undecodable bytes were replaced",
    )


def _detect(data: bytes) -> str | None:
    from charset_normalizer import from_bytes

    try:
        best = from_bytes(data, cp_isolation=_DETECT_CANDIDATES).best()
    except Exception:  # detection is best effort; a crash here must not lose the feed
        log.debug("charset detection failed", exc_info=True)
        return None
    return _codec(best.encoding) if best is not None else None


def _as_utf8(text: str) -> bytes:
    """UTF-8 bytes whose XML declaration (if any) says so."""
    data = text.encode(_UTF8)
    return _XML_DECL.sub(lambda m: m.group(1) + m.group(2) + b"utf-8" + m.group(2), data, count=1)


# ------------------------------------------------------------------------ not a feed


class _FeedLinkFinder(HTMLParser):
    """Collects ``<link rel="alternate" type="application/rss+xml" href=...>`` of a page."""

    FEED_TYPES = ("application/rss+xml", "application/atom+xml", "application/feed+json")

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "link":
            return
        values = {k.lower(): (v or "") for k, v in attrs}
        if (
            "alternate" in values.get("rel", "").lower().split()
            and (values.get("type", "").lower() in self.FEED_TYPES)
            and values.get("href")
        ):
            self.links.append(values["href"])


def _looks_like_html(text_head: str) -> bool:
    head = text_head.lstrip().lower()
    return head.startswith(("<!doctype html", "<html")) or (
        "<html" in head[:2048] and "<rss" not in head[:2048] and "<feed" not in head[:2048]
    )


def _html_problem(text: str, base_url: str | None) -> str:
    finder = _FeedLinkFinder()
    # The hint is optional; a weird page must not hide the real problem.
    with contextlib.suppress(Exception):
        finder.feed(text[:200_000])
    hint = ""
    if finder.links:
        links = [urljoin(base_url or "", link) for link in finder.links[:3]]
        hint = "; the page links to feed(s): " + ", ".join(links)
    return "the URL returned an HTML page, not a feed" + hint


# ---------------------------------------------------------------------------- parsing


def parse_feed(
    feed_id: str,
    content: bytes | None,
    *,
    http_charset: str | None = None,
    content_type: str | None = None,
    base_url: str | None = None,
    default_language: str | None = None,
) -> ParsedFeed:
    """Parse one fetched feed document. Never raises for bad input."""
    out = ParsedFeed(feed_id=feed_id)
    if not content or not content.strip():
        out.problem("empty", "the response was empty")
        return out
    reason = hostile_reason(content)
    if reason is not None:
        out.problem("hostile_xml", reason)
        return out
    data, encoding, encoding_problem = decode_feed(content, http_charset)
    out.encoding = encoding
    if encoding_problem:
        out.problem("encoding", encoding_problem)
    data = strip_doctype(data)
    head = data[:4096].decode(_UTF8, errors="replace")
    if _looks_like_html(head) or (
        content_type
        and "html" in content_type.lower()
        and "<rss" not in head
        and "<feed" not in head
        and "<rdf" not in head.lower()
    ):
        out.problem("not_a_feed", _html_problem(data.decode(_UTF8, errors="replace"), base_url))
        return out
    try:
        parsed = feedparser.parse(
            io.BytesIO(data),  # a stream: feedparser never opens files or URLs for us
            # No Content-Location: given a base URL, feedparser joins it with every
            # element's xml:base and every link (urljoin per element, a third of its
            # time). Relative links are joined with ``base_url`` in ``_item`` instead;
            # an absolute xml:base in the document is still applied by feedparser.
            response_headers={"content-type": "application/xml; charset=utf-8"},
            sanitize_html=False,  # we reduce everything to text in normalize
            resolve_relative_uris=False,
        )
    except Exception as exc:  # feedparser is old code; no feed may crash a run
        log.warning("feedparser crashed on feed %s", feed_id, exc_info=True)
        out.problem("malformed_xml", f"the parser failed ({type(exc).__name__}: {exc})")
        return out
    feed = parsed.get("feed", {})
    out.title = feed.get("title")
    out.version = parsed.get("version") or None
    out.language = _language_code(feed.get("language")) or default_language
    entries = parsed.get("entries", [])
    xml_problem: tuple[str | None, str] = (None, "")
    if parsed.get("bozo"):
        xml_problem = _describe_bozo(parsed.get("bozo_exception"), data, len(entries))
    if not entries and not out.version:
        # Not even the root element of a feed: saying "malformed XML" would send the user
        # looking for a typo in what is really the wrong URL.
        if data.lstrip()[:1] in (b"{", b"["):
            message = "the response is JSON, not an RSS or Atom feed"
        else:
            message = "no RSS, Atom or RDF feed found in the document"
            if xml_problem[0]:
                message += f" ({xml_problem[1].split(';')[0]})"
        out.problem("not_a_feed", message)
        return out
    if xml_problem[0]:
        out.problem(xml_problem[0], xml_problem[1])
    skipped: dict[str, int] = {}
    for entry in entries:
        item, why = _item(feed_id, entry, base_url=base_url, feed_language=out.language)
        if item is None:
            skipped[why] = skipped.get(why, 0) + 1
        else:
            out.items.append(item)
    for why, count in skipped.items():
        out.problem("bad_item", f"{count} item{'s' if count > 1 else ''} skipped: {why}")
    if entries and not out.items and not any(p.kind in FATAL_KINDS for p in out.problems):
        out.problem("malformed_xml", "the feed has entries but none of them is usable")
    return out


_ROOT_CLOSE = (b"</rss>", b"</feed>", b"</rdf:rdf>")


def _describe_bozo(error: Any, data: bytes, n_entries: int) -> tuple[str | None, str]:
    """A problem kind and a sentence for feedparser's 'bozo' exception."""
    if error is None:
        return None, ""
    name = type(error).__name__
    if name in ("CharacterEncodingOverride", "CharacterEncodingUnknown", "NonXMLContentType"):
        return None, ""  # we hand it UTF-8 with an XML content type; its own guess is noise
    recovered = (
        f"; recovered {n_entries} item{'s' if n_entries != 1 else ''} with the lenient parser"
        if n_entries
        else "; no items could be recovered"
    )
    kind = "malformed_xml_recovered" if n_entries else "malformed_xml"
    if isinstance(error, xml.sax.SAXParseException):
        line = error.getLineNumber() or 0
        if not data.startswith(b"<?xml"):
            line -= 1  # feedparser put an XML declaration line in front of the document
        where = f"line {line}, column {error.getColumnNumber()}"
        last_line = data.rstrip().count(b"\n") + 1
        tail = data.rstrip()[-200:].lower()
        opened = any(tag in data[:4096].lower() for tag in (b"<rss", b"<feed", b"<rdf:rdf"))
        if opened and line >= last_line and not any(tag in tail for tag in _ROOT_CLOSE):
            return (
                "truncated_xml" if n_entries else "malformed_xml",
                f"the document ends early (truncated at {where}){recovered}",
            )
        return kind, f"not well-formed XML at {where}: {error.getMessage()}{recovered}"
    return kind, f"{name}: {error}{recovered}"


def _language_code(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    code = value.strip().replace("_", "-").split("-")[0].lower()
    return code if re.fullmatch(r"[a-z]{2,3}", code) else None


def _struct_to_datetime(value: Any) -> datetime | None:
    if not isinstance(value, time.struct_time):
        return None
    try:
        return datetime.fromtimestamp(timegm(value), tz=UTC)
    except (OverflowError, ValueError, OSError):
        return None


def _http_link(value: Any, base_url: str | None) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    link = urljoin(base_url or "", value.strip())
    if urlsplit(link).scheme.lower() in ("http", "https") and urlsplit(link).hostname:
        return link
    return None


def _item(
    feed_id: str, entry: Any, *, base_url: str | None, feed_language: str | None
) -> tuple[FeedItem | None, str]:
    guid = entry.get("id") or None
    link = _http_link(entry.get("link"), base_url)
    if link is None:
        for alt in entry.get("links", []) or []:
            if alt.get("rel", "alternate") == "alternate":
                link = _http_link(alt.get("href"), base_url)
                if link:
                    break
    if link is None and guid and entry.get("guidislink", True):
        link = _http_link(guid, base_url)
    if link is None:
        raw = entry.get("link") or guid
        if raw and urlsplit(str(raw)).scheme.lower() not in ("", "http", "https"):
            return None, f"link with a non-web scheme ('{urlsplit(str(raw)).scheme}')"
        return None, "no link"
    content = None
    for part in entry.get("content", []) or []:
        if part.get("value"):
            content = part["value"]
            break
    summary = entry.get("summary") or None
    if summary and content and summary == content:
        summary = None  # feedparser copies content into summary when there is no description
    title = entry.get("title") or None
    language = None
    for detail in ("title_detail", "summary_detail"):
        language = language or _language_code((entry.get(detail) or {}).get("language"))
    published_raw = entry.get("published") or entry.get("updated") or entry.get("created")
    published = _struct_to_datetime(
        entry.get("published_parsed") or entry.get("updated_parsed") or entry.get("created_parsed")
    )
    if not title and not summary and not content:
        return None, "no title and no text"
    return (
        FeedItem(
            feed_id=feed_id,
            guid=str(guid) if guid else None,
            link=link,
            title=title,
            summary=summary,
            content=content,
            author=entry.get("author") or None,
            published_raw=str(published_raw) if published_raw else None,
            published=published,
            language=language or feed_language,
        ),
        "",
    )
