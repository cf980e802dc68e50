"""Parse: broken, mis-encoded and hostile feeds served by a real local HTTP server.

Every problem must come back as a FeedProblem with a clear reason, good items of a partly
broken feed must still be used, and hostile XML must be neither expanded nor resolved.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import feedparser
import pytest
from pytest_httpserver import HTTPServer

from pipeline.config import FetchSettings
from pipeline.fetch import Fetcher
from pipeline.models import FetchResult
from pipeline.parse import ParsedFeed, decode_feed, hostile_reason, parse_feed

FIXTURES = Path(__file__).parent / "fixtures" / "feeds"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def serve_and_parse(
    server: HTTPServer, body: bytes, content_type: str = "application/rss+xml", path: str = "/feed"
) -> tuple[FetchResult, ParsedFeed]:
    """Fetch ``body`` from the real server and parse what came back, as collect does."""
    server.expect_request(path).respond_with_data(body, content_type=content_type)

    async def go() -> FetchResult:
        settings = FetchSettings(allow_private_addresses=True, total_timeout_s=5, max_retries=0)
        async with Fetcher(settings) as fetcher:
            return await fetcher.fetch_feed("feed", server.url_for(path))

    result = asyncio.run(go())
    assert result.ok, result.error
    parsed = parse_feed(
        "feed",
        result.content,
        http_charset=result.declared_encoding,
        content_type=result.content_type,
        base_url=result.final_url,
    )
    return result, parsed


def kinds(parsed: ParsedFeed) -> list[str]:
    return [p.kind for p in parsed.problems]


def everything(parsed: ParsedFeed) -> str:
    """All text a parse produced, for "this never appears anywhere" checks."""
    return repr(parsed) + "".join(i.model_dump_json() for i in parsed.items)


# ---------------------------------------------------------------------- good feeds


def test_rss_with_cdata_entities_and_media_namespace(server: HTTPServer) -> None:
    _, parsed = serve_and_parse(server, fixture("eastern-europe-wire.rss.xml"))
    assert parsed.problems == []
    assert parsed.title == "Eastern Europe Wire — World"
    assert parsed.language == "en"
    assert len(parsed.items) == 5
    first = parsed.items[0]
    assert first.title == "Foreign ministers agree to resume prisoner-exchange talks in Istanbul"
    assert first.guid == "eew-2024-0305-0017"
    assert first.author == "Olena Marchuk"
    # Content stays HTML here (normalize turns it into text).
    assert first.content and "&#8220;Nobody should expect a breakthrough" in first.content
    assert first.published_raw == "Tue, 05 Mar 2024 08:15:00 +0200"
    assert (
        parsed.items[1].title
        == "NATO chief: allies must prepare for “long haul” as ceasefire talk grows"
    )


def test_atom_with_relative_links_and_offsets(server: HTTPServer) -> None:
    _, parsed = serve_and_parse(
        server, fixture("geneva-dispatch.atom.xml"), "application/atom+xml", path="/ps/atom.xml"
    )
    assert parsed.problems == []
    assert parsed.items[0].title == "UN envoy says Yemen truce talks <em>closer than ever</em>"
    # A relative <link href="/..."> is resolved against the URL we fetched.
    assert parsed.items[2].link == server.url_for("/peace-security/2024/03/who-pandemic-accord")
    assert parsed.items[1].content and "Tavush" in parsed.items[1].content


def test_xml_base_wins_over_the_fetch_url_and_relative_bases_join_it(server: HTTPServer) -> None:
    # feedparser gets no base URL of ours (joining it per element cost a third of its
    # time); links are joined with the fetch URL in _item, after any xml:base.
    body = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom" xml:base="https://mirror.example/news/">
<title>Mirror</title><id>urn:mirror</id><updated>2024-03-05T10:00:00Z</updated>
<entry><title>Ceasefire talks resume in Geneva</title><id>urn:m:1</id>
<updated>2024-03-05T10:00:00Z</updated><link href="2024/geneva.html"/>
<summary>Delegations met again.</summary></entry>
</feed>"""
    _, parsed = serve_and_parse(server, body, "application/atom+xml", path="/feeds/atom.xml")
    assert [i.link for i in parsed.items] == ["https://mirror.example/news/2024/geneva.html"]
    relative = body.replace(b'xml:base="https://mirror.example/news/"', b'xml:base="/world/"')
    _, parsed = serve_and_parse(server, relative, "application/atom+xml", path="/feeds/b.xml")
    assert [i.link for i in parsed.items] == [server.url_for("/world/2024/geneva.html")]


def test_harmless_doctype_is_removed_not_loaded(server: HTTPServer) -> None:
    _, parsed = serve_and_parse(server, fixture("netscape-rss091.xml"))
    assert kinds(parsed) == []
    assert [i.title for i in parsed.items] == ["City council backs twinning with Mariupol"]


def test_doctype_text_inside_cdata_is_not_mistaken_for_a_dtd(server: HTTPServer) -> None:
    body = fixture("danube-herald.rss.xml").replace(
        b"<p>The talks are expected",
        b'<pre>&lt;!DOCTYPE x [&lt;!ENTITY y "z"&gt;]&gt;</pre><p>The talks are expected',
    )
    _, parsed = serve_and_parse(server, body)
    assert "hostile_xml" not in kinds(parsed)
    assert len(parsed.items) == 2


# ------------------------------------------------------------------------- encodings


@pytest.mark.parametrize(
    ("name", "detected", "title"),
    [
        (
            "ru-windows1251-declared-utf8.rss.xml",
            "cp1251",
            "Лавров заявил о готовности к переговорам без предварительных условий",
        ),
        (
            "ru-koi8r-declared-utf8.rss.xml",
            "koi8-r",
            "Финляндия и Россия обсудили работу пограничных пунктов",
        ),
    ],
)
def test_cyrillic_declared_as_utf8_is_repaired(
    server: HTTPServer, name: str, detected: str, title: str
) -> None:
    _, parsed = serve_and_parse(server, fixture(name), "application/rss+xml; charset=utf-8")
    assert kinds(parsed) == ["encoding"]
    assert parsed.problems[0].message == (
        f"declared utf-8 but the bytes are not; detected {detected} and re-decoded"
    )
    assert parsed.items[0].title == title
    assert parsed.language == "ru"
    assert "\ufffd" not in everything(parsed)


def test_utf8_served_with_a_wrong_latin1_charset(server: HTTPServer) -> None:
    _, parsed = serve_and_parse(
        server, fixture("eastern-europe-wire.rss.xml"), "text/xml; charset=iso-8859-1"
    )
    assert parsed.problems[0].kind == "encoding"
    assert "the bytes are UTF-8" in parsed.problems[0].message
    assert parsed.items[4].title and "‘frozen conflict’" in parsed.items[4].title


def test_correctly_declared_single_byte_encoding_is_not_a_problem() -> None:
    body = fixture("ru-windows1251-declared-utf8.rss.xml").replace(
        b'encoding="UTF-8"', b'encoding="windows-1251"'
    )
    parsed = parse_feed("feed", body)
    assert kinds(parsed) == []
    assert parsed.items[0].title and parsed.items[0].title.startswith("Лавров")


def test_utf16_with_bom() -> None:
    text = (
        fixture("geneva-dispatch.atom.xml")
        .decode("utf-8")
        .replace('encoding="utf-8"', 'encoding="utf-16"')
    )
    parsed = parse_feed(
        "feed", text.encode("utf-16"), base_url="https://genevadispatch.example/ps/atom.xml"
    )
    assert kinds(parsed) == [] and len(parsed.items) == 3


def test_decode_feed_pure_ascii_is_fine_whatever_is_declared() -> None:
    data, encoding, problem = decode_feed(b'<?xml version="1.0" encoding="koi8-r"?><rss/>')
    assert problem is None and encoding == "utf-8"
    assert data.startswith(b'<?xml version="1.0" encoding="utf-8"?>')


# ------------------------------------------------------------------- broken documents


def test_truncated_feed_keeps_its_complete_items(server: HTTPServer) -> None:
    _, parsed = serve_and_parse(server, fixture("truncated.rss.xml"))
    assert [i.title for i in parsed.items] == [
        "Grain ships leave Odesa under new corridor arrangement",
        "Turkey offers to host naval de-mining talks",
        "Romanian port of Constanța posts record volumes",
    ]
    assert kinds(parsed) == ["truncated_xml", "bad_item"]
    assert parsed.problems[0].message.startswith("the document ends early (truncated at line 31")
    assert parsed.problems[1].message == "1 item skipped: no link"
    assert not parsed.fatal


def test_malformed_feed_is_recovered_and_reported(server: HTTPServer) -> None:
    _, parsed = serve_and_parse(server, fixture("malformed.rss.xml"))
    assert kinds(parsed) == ["malformed_xml_recovered"]
    assert parsed.problems[0].message == (
        "not well-formed XML at line 4, column 18: not well-formed (invalid token); "
        "recovered 3 items with the lenient parser"
    )
    assert len(parsed.items) == 3
    assert parsed.items[2].title == "Niger junta sets timetable for national dialogue"


def test_html_page_instead_of_a_feed_names_the_real_feeds(server: HTTPServer) -> None:
    _, parsed = serve_and_parse(
        server, fixture("outlet-homepage.html"), "text/html; charset=utf-8", path="/news/"
    )
    assert parsed.fatal and parsed.items == []
    assert kinds(parsed) == ["not_a_feed"]
    assert parsed.problems[0].message == (
        "the URL returned an HTML page, not a feed; the page links to feed(s): "
        f"{server.url_for('/international/rss.xml')}, "
        "https://www.danubeherald.example/business/rss.xml"
    )


def test_json_error_body_is_not_a_feed(server: HTTPServer) -> None:
    _, parsed = serve_and_parse(server, b'{"error": "rate limited"}', "application/json")
    assert parsed.fatal and kinds(parsed) == ["not_a_feed"]
    assert parsed.problems[0].message == "the response is JSON, not an RSS or Atom feed"


def test_plain_text_is_not_a_feed_with_the_xml_error() -> None:
    parsed = parse_feed("feed", b"Service temporarily unavailable")
    assert kinds(parsed) == ["not_a_feed"]
    assert parsed.problems[0].message == (
        "no RSS, Atom or RDF feed found in the document "
        "(not well-formed XML at line 1, column 0: syntax error)"
    )


def test_empty_body() -> None:
    parsed = parse_feed("feed", b"  \n")
    assert parsed.fatal and kinds(parsed) == ["empty"]


def test_items_without_web_links_are_skipped_with_a_reason() -> None:
    body = (
        fixture("future-dated.rss.xml")
        .replace(
            b"<link>https://caucasusmonitor.example/2024/03/almaty-ministers-meeting</link>",
            b"<link>javascript:alert(1)</link>",
        )
        .replace(
            b"<guid>https://caucasusmonitor.example/2024/03/almaty-ministers-meeting</guid>", b""
        )
    )
    parsed = parse_feed("feed", body)
    assert len(parsed.items) == 2
    assert (
        parsed.problems[-1].message == "1 item skipped: link with a non-web scheme ('javascript')"
    )


# ----------------------------------------------------------------------- hostile XML


def test_billion_laughs_is_refused_quickly_without_expansion(server: HTTPServer) -> None:
    started = time.monotonic()
    _, parsed = serve_and_parse(server, fixture("billion-laughs.xml"))
    assert time.monotonic() - started < 3
    assert parsed.fatal and parsed.items == []
    assert kinds(parsed) == ["hostile_xml"]
    assert parsed.problems[0].message == (
        "DOCTYPE declares 10 entity declarations (entity expansion); refused without expanding them"
    )
    assert "lollol" not in everything(parsed)


@pytest.fixture
def secret_file(tmp_path: Path) -> tuple[Path, str]:
    """A local file whose content must never leave the disk."""
    token = f"SECRET-{uuid.uuid4().hex}"
    path = tmp_path / "credentials.txt"
    path.write_text(f"aws_secret_access_key = {token}\n", encoding="utf-8")
    return path, token


def test_xxe_local_file_is_never_read(server: HTTPServer, secret_file: tuple[Path, str]) -> None:
    path, token = secret_file
    body = fixture("xxe-local-file.xml").replace(b"__SECRET_PATH__", str(path).encode())
    _, parsed = serve_and_parse(server, body)
    assert kinds(parsed) == ["hostile_xml"]
    assert parsed.problems[0].message == (
        "DOCTYPE declares external entities (XXE); refused without expanding them"
    )
    assert parsed.items == []
    assert token not in everything(parsed)


def test_xxe_parameter_entity_never_fetches_the_remote_dtd(server: HTTPServer) -> None:
    server.expect_request("/evil.dtd").respond_with_data(
        '<!ENTITY % payload "stolen">', content_type="application/xml-dtd"
    )
    body = fixture("xxe-parameter-entity.xml").replace(
        b"__REMOTE_DTD_URL__", server.url_for("/evil.dtd").encode()
    )
    _, parsed = serve_and_parse(server, body, path="/mirror.xml")
    assert kinds(parsed) == ["hostile_xml"]
    assert "parameter entities" in parsed.problems[0].message
    assert [req.path for req, _ in server.log] == ["/mirror.xml"]  # the DTD was never asked for


def test_hostile_doctype_found_even_when_the_rest_is_broken() -> None:
    body = (
        b'<?xml version="1.0"?>\n<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/shadow">]>\n<rss><oops'
    )
    assert hostile_reason(body) == (
        "DOCTYPE declares external entities (XXE); refused without expanding them"
    )
    utf16 = body.decode().encode("utf-16-le")
    assert hostile_reason(utf16) is not None


def test_a_body_that_is_a_file_path_is_not_opened(
    server: HTTPServer, secret_file: tuple[Path, str]
) -> None:
    """feedparser.parse(bytes) would open() a body that names a local file; we never let it."""
    path, token = secret_file
    feed_file = path.with_name("local-feed.xml")
    feed_file.write_text(
        f'<rss version="2.0"><channel><title>{token}</title><item><title>{token}</title>'
        "<link>https://x.example/a</link></item></channel></rss>",
        encoding="utf-8",
    )
    # The pitfall is real: handed bytes, feedparser reads the file they name.
    naive: Any = feedparser.parse(str(feed_file).encode())
    assert naive["feed"].get("title") == token
    _, parsed = serve_and_parse(server, str(feed_file).encode(), "text/plain")
    assert token not in everything(parsed)
    assert parsed.items == [] and parsed.fatal
