"""Normalize: canonical URLs, text, dates with time zones, language, content hashes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pipeline.config import FeedConfig
from pipeline.models import FeedItem, article_id
from pipeline.normalize import (
    NormalizeError,
    canonical_url,
    content_hash,
    detect_language,
    html_to_text,
    normalize_item,
    normalize_record,
    parse_date,
    resolve_published,
)

NOW = datetime(2024, 3, 5, 18, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://www.Example.com/world/2024/03/talks?utm_source=rss&utm_medium=feed#comments",
            "https://www.example.com/world/2024/03/talks",
        ),
        (
            "HTTPS://news.example.com:443/a?fbclid=IwAR2&gclid=x&id=42&page=2",
            "https://news.example.com/a?id=42&page=2",
        ),
        ("http://news.example.com:80/story/?ref=homepage", "http://news.example.com/story/"),
        (
            "https://example.com/article?b=2&a=1&mc_cid=abc&mc_eid=def",
            "https://example.com/article?a=1&b=2",
        ),
        ("https://example.com", "https://example.com/"),
        (
            "https://example.com/путь?q=тест",
            "https://example.com/%D0%BF%D1%83%D1%82%D1%8C?q=%D1%82%D0%B5%D1%81%D1%82",
        ),
    ],
)
def test_canonical_url(url: str, expected: str) -> None:
    assert canonical_url(url) == expected


@pytest.mark.parametrize("url", ["", "javascript:alert(1)", "file:///etc/passwd", "/relative/path"])
def test_canonical_url_refuses_non_web(url: str) -> None:
    assert canonical_url(url) is None


def test_same_story_through_different_tracking_links_has_one_id() -> None:
    a = canonical_url("https://www.example.com/x/story-1?utm_source=rss&utm_medium=feed")
    b = canonical_url("https://www.example.com/x/story-1?utm_source=twitter#top")
    assert a == b and a is not None
    assert article_id(a) == article_id(b or "")


def test_html_to_text() -> None:
    assert html_to_text("<p>Talks in <b>Geneva</b> &amp; Vienna</p><script>var x=1</script>") == (
        "Talks in Geneva & Vienna"
    )
    assert html_to_text("Inflation < 2% &mdash; officials") == "Inflation < 2% — officials"
    assert html_to_text(None) == ""
    body = html_to_text("<p>One.</p><p>Two &ldquo;quoted&rdquo;.</p>", keep_paragraphs=True)
    assert body == "One.\n\nTwo “quoted”."


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Tue, 05 Mar 2024 08:15:00 +0200", datetime(2024, 3, 5, 6, 15, tzinfo=UTC)),
        ("Tue, 05 Mar 2024 10:37:00 GMT", datetime(2024, 3, 5, 10, 37, tzinfo=UTC)),
        ("Mon, 04 Mar 2024 16:10:00 EST", datetime(2024, 3, 4, 21, 10, tzinfo=UTC)),
        ("2024-03-04T16:10:00-05:00", datetime(2024, 3, 4, 21, 10, tzinfo=UTC)),
        ("2024-03-04T08:00:00Z", datetime(2024, 3, 4, 8, 0, tzinfo=UTC)),
        ("2024-03-04 08:00:00", datetime(2024, 3, 4, 8, 0, tzinfo=UTC)),  # no zone: UTC
    ],
)
def test_parse_date_with_time_zones(raw: str, expected: datetime) -> None:
    assert parse_date(raw) == expected


def test_parse_date_falls_back_to_feedparsers_value() -> None:
    fallback = datetime(2024, 3, 4, 12, 0, tzinfo=UTC)
    assert parse_date("4 марта 2024", fallback) == fallback
    assert parse_date("not a date") is None


def test_future_dates_are_clamped_and_missing_dates_flagged() -> None:
    future = "Sat, 05 Mar 2033 09:00:00 +0000"
    assert resolve_published(future, None, now=NOW, max_future_minutes=10) == (
        NOW,
        ["future_clamped"],
    )
    soon = (NOW + timedelta(minutes=5)).isoformat()
    assert resolve_published(soon, None, now=NOW, max_future_minutes=10) == (
        NOW + timedelta(minutes=5),
        [],
    )
    assert resolve_published(None, None, now=NOW, max_future_minutes=10) == (NOW, ["missing"])


@pytest.mark.parametrize(
    ("text", "declared", "expected"),
    [
        (
            "Ukraine may have to cede territory to end the war, NATO's secretary general said.",
            None,
            "en",
        ),
        ("Переговоры о прекращении огня начнутся в Женеве на следующей неделе.", None, "ru"),
        ("Переговори про припинення вогню розпочнуться в Женеві наступного тижня.", None, "uk"),
        ("Les négociations de paix reprendront à Genève la semaine prochaine.", "en", "fr"),
        ("Ceasefire talks", "de", "de"),  # too short to judge: the feed's word counts
        ("Ceasefire", None, None),
    ],
)
def test_detect_language(text: str, declared: str | None, expected: str | None) -> None:
    assert detect_language(text, declared) == expected


def test_content_hash_ignores_whitespace_only() -> None:
    assert content_hash("Title", "Some  summary\n") == content_hash("Title ", "Some summary")
    assert content_hash("Title", "Some summary") != content_hash("Title", "Some summary!")


def test_normalize_item_builds_an_article() -> None:
    feed = FeedConfig(
        id="eew", url="https://x.example/rss", name="EEW", language="en", country="UA"
    )
    item = FeedItem(
        feed_id="eew",
        link="https://www.easterneuropewire.example/world/talks?utm_source=rss",
        title="Talks &amp; <em>truce</em>",
        summary="<p>Delegations met in <b>Istanbul</b>.</p>",
        content="<p>Delegations met in <b>Istanbul</b>.</p><p>More detail.</p>",
        published_raw="Tue, 05 Mar 2024 08:15:00 +0200",
    )
    article = normalize_item(item, feed, now=NOW, max_future_minutes=10)
    assert article.canonical_url == "https://www.easterneuropewire.example/world/talks"
    assert article.id == article_id(article.canonical_url)
    assert article.url == "https://www.easterneuropewire.example/world/talks?utm_source=rss"
    assert article.title == "Talks & truce"
    assert article.summary == "Delegations met in Istanbul."
    assert article.body == "Delegations met in Istanbul.\n\nMore detail."
    assert article.published == datetime(2024, 3, 5, 6, 15, tzinfo=UTC)
    assert article.source.domain == "easterneuropewire.example"
    assert article.source.country == "UA" and article.source.name == "EEW"
    assert article.language == "en" and article.fetched_at == NOW
    assert article.content_hash == content_hash(article.title, article.summary, article.body)


def test_normalize_record_for_ingest() -> None:
    article = normalize_record(
        {
            "url": "https://example.com/a?utm_campaign=x",
            "title": "NATO chief says Ukraine may have to cede territory",
            "text": "The alliance's secretary general said Ukraine may have to cede territory "
            "to end the war.",
            "published": "2023-08-15T10:00:00+02:00",
            "id": "ignored-external-id",
            "source": "Example Times",
        },
        now=NOW,
        max_future_minutes=10,
    )
    assert article.id == article_id("https://example.com/a")
    assert article.published == datetime(2023, 8, 15, 8, 0, tzinfo=UTC)
    assert article.body.startswith("The alliance's secretary general")
    assert article.summary == article.body
    assert article.source.name == "Example Times" and article.source.domain == "example.com"
    assert article.language == "en"


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"title": "x"}, "missing 'url'"),
        ({"url": "ftp://x.example/a", "title": "x"}, "not an http(s) URL: 'ftp://x.example/a'"),
        ({"url": "https://x.example/a"}, "no title and no text: 'https://x.example/a'"),
        (
            {"url": "https://x.example/a", "title": "x", "published": "soon"},
            "'published' is not a date: 'soon'",
        ),
        ({"url": "https://x.example/a", "title": 5}, "'title' must be a string"),
    ],
)
def test_normalize_record_errors(record: dict[str, object], message: str) -> None:
    with pytest.raises(NormalizeError) as info:
        normalize_record(record, now=NOW, max_future_minutes=10)
    assert str(info.value) == message


def test_declared_language_is_trusted_only_after_it_is_confirmed() -> None:
    from pathlib import Path

    from pipeline.collect import parse_and_normalize

    fixtures = Path(__file__).parent / "fixtures" / "feeds"
    feed = FeedConfig(id="eew", url="https://x.example/rss", language="en")
    english = parse_and_normalize(
        feed, (fixtures / "eastern-europe-wire.rss.xml").read_bytes(), None, None, None, NOW, 10
    )
    assert [a.language for a in english.articles] == ["en"] * 5
    # A Russian feed that claims to be English: detection is never switched off.
    mislabelled = (fixtures / "ru-windows1251-declared-utf8.rss.xml").read_bytes()
    mislabelled = mislabelled.replace(b"<language>ru</language>", b"<language>en</language>")
    russian = parse_and_normalize(feed, mislabelled, None, None, None, NOW, 10)
    assert [a.language for a in russian.articles] == ["ru"] * 3
