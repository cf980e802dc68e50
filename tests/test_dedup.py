"""Dedup: ids within a batch, syndicated near-duplicates across sources and time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.collect import parse_and_normalize
from pipeline.config import DedupSettings, FeedConfig
from pipeline.dedup import (
    DedupRecord,
    cluster_near_duplicates,
    shingles,
    unique_by_id,
)
from pipeline.models import Article, SourceInfo, article_id
from pipeline.normalize import content_hash

FIXTURES = Path(__file__).parent / "fixtures" / "feeds"
NOW = datetime(2024, 3, 5, 18, 0, tzinfo=UTC)
SETTINGS = DedupSettings()

WIRE = (
    "GENEVA (CP) — Russian and Ukrainian negotiators will meet in Geneva next week for the "
    "first face-to-face talks in more than a year, Swiss officials said on Tuesday, in a move "
    "diplomats described as a cautious step toward a possible ceasefire. The talks are "
    "expected to focus on the safety of nuclear plants, the return of deported children and "
    "the exchange of prisoners of war."
)


def feed_articles(name: str, feed_id: str) -> list[Article]:
    feed = FeedConfig(id=feed_id, url=f"https://{feed_id}.example/rss")
    out = parse_and_normalize(feed, (FIXTURES / name).read_bytes(), None, None, feed.url, NOW, 10)
    return out.articles


def article(url: str, title: str, summary: str, published: datetime, feed_id: str = "f") -> Article:
    return Article(
        id=article_id(url),
        url=url,
        canonical_url=url,
        source=SourceInfo(feed_id=feed_id),
        title=title,
        summary=summary,
        published=published,
        fetched_at=NOW,
        content_hash=content_hash(title, summary),
    )


def test_shingles_are_case_and_script_aware() -> None:
    assert shingles("Peace talks IN Geneva", 2) == {"peace talks", "talks in", "in geneva"}
    assert shingles("Переговоры в Женеве", 3) == {"переговоры в женеве"}


def test_syndicated_wire_copies_across_outlets_share_a_cluster() -> None:
    baltic = feed_articles("baltic-times-review.rss.xml", "baltic")
    danube = feed_articles("danube-herald.rss.xml", "danube")
    batch = baltic + danube
    clustered = {a.url: a for a in cluster_near_duplicates(batch, [], SETTINGS)}
    first = clustered[baltic[0].url]  # published 10:04 UTC
    copy = clustered[danube[0].url]  # published 10:37 UTC, headline and wording changed
    assert first.canonical_url != copy.canonical_url
    assert first.cluster_id == first.id and first.duplicate_of is None
    assert copy.cluster_id == first.id and copy.duplicate_of == first.id
    # Same topic, different story: not a copy.
    explainer = clustered[danube[1].url]
    assert explainer.duplicate_of is None and explainer.cluster_id == explainer.id
    others = [a for a in clustered.values() if a.url not in (first.url, copy.url)]
    assert all(a.duplicate_of is None for a in others)


def test_order_of_the_batch_does_not_change_who_is_first() -> None:
    a = article("https://a.example/1", "Talks in Geneva next week", WIRE, NOW - timedelta(hours=3))
    b = article(
        "https://b.example/2",
        "Negotiators to meet in Geneva",
        WIRE.replace("said on Tuesday", "announced on Tuesday"),
        NOW - timedelta(hours=1),
    )
    for batch in ([a, b], [b, a]):
        out = {x.id: x for x in cluster_near_duplicates(batch, [], SETTINGS)}
        assert out[b.id].duplicate_of == a.id and out[b.id].cluster_id == a.id
        assert out[a.id].duplicate_of is None


def test_copies_outside_the_window_are_not_clustered() -> None:
    a = article("https://a.example/1", "Talks in Geneva next week", WIRE, NOW - timedelta(days=10))
    b = article("https://b.example/2", "Talks in Geneva next week", WIRE, NOW)
    out = {x.id: x for x in cluster_near_duplicates([a, b], [], SETTINGS)}
    assert out[b.id].duplicate_of is None


def test_recent_stored_articles_found_through_the_lookup() -> None:
    stored = DedupRecord(
        id="stored-1",
        published=NOW - timedelta(hours=20),
        title="Talks in Geneva next week",
        summary=WIRE,
        cluster_id="cluster-from-last-week-run",
        feed_id="older-feed",
    )
    fresh = article(
        "https://c.example/3",
        "Geneva talks set for next week",
        WIRE.replace(" toward ", " towards "),
        NOW,
    )
    (out,) = cluster_near_duplicates([fresh], [stored], SETTINGS)
    assert out.duplicate_of == "stored-1"
    assert out.cluster_id == "cluster-from-last-week-run"


def test_a_changed_article_is_not_its_own_duplicate() -> None:
    fresh = article("https://c.example/3", "Geneva talks set for next week", WIRE, NOW)
    stored = DedupRecord(id=fresh.id, published=NOW, title=fresh.title, summary=WIRE)
    (out,) = cluster_near_duplicates([fresh], [stored], SETTINGS)
    assert out.duplicate_of is None and out.cluster_id == fresh.id


def test_short_texts_are_not_clustered() -> None:
    a = article("https://a.example/1", "Ceasefire", "", NOW)
    b = article("https://b.example/2", "Ceasefire", "", NOW)
    out = cluster_near_duplicates([a, b], [], SETTINGS)
    assert [x.duplicate_of for x in out] == [None, None]


def test_unique_by_id_keeps_the_first() -> None:
    a = article("https://a.example/1", "One", "x", NOW, feed_id="first")
    b = article("https://a.example/1", "One", "x", NOW, feed_id="second")
    c = article("https://a.example/2", "Two", "y", NOW)
    kept, dropped = unique_by_id([a, b, c])
    assert [x.source.feed_id for x in kept] == ["first", "f"] and dropped == 1


def test_dedup_record_from_an_index_document() -> None:
    record = DedupRecord.from_document(
        "abc",
        {
            "title": "T",
            "summary": "S",
            "@timestamp": "2024-03-05T10:04:00Z",
            "cluster_id": "k",
            "source": {"feed_id": "baltic"},
        },
    )
    assert record.published == datetime(2024, 3, 5, 10, 4, tzinfo=UTC)
    assert (record.id, record.cluster_id, record.feed_id, record.body) == ("abc", "k", "baltic", "")


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.9])
def test_identical_copies_cluster_at_any_threshold(threshold: float) -> None:
    settings = DedupSettings(near_duplicate_threshold=threshold)
    a = article("https://a.example/1", "Talks in Geneva next week", WIRE, NOW - timedelta(hours=1))
    b = article("https://b.example/1", "Talks in Geneva next week", WIRE, NOW)
    out = {x.id: x for x in cluster_near_duplicates([a, b], [], settings)}
    assert out[b.id].duplicate_of == a.id


def test_excerpt_and_full_text_copies_compare_by_their_lede() -> None:
    full = (
        WIRE
        + " "
        + " ".join(
            f"Further paragraph {i} adds detail about the delegations and their demands."
            for i in range(8)
        )
    )
    excerpt = " ".join(WIRE.split()[:55]) + " […]"
    wire = article(
        "https://wire.example/1", "Talks in Geneva next week", full, NOW - timedelta(hours=6)
    )
    copy = article("https://outlet.example/2", "Geneva talks set", excerpt, NOW).model_copy(
        update={"body": full.replace("Swiss officials", "officials in Bern")}
    )
    out = {x.id: x for x in cluster_near_duplicates([wire, copy], [], SETTINGS)}
    assert out[copy.id].duplicate_of == wire.id


def test_index_scores_like_datasketch_and_replaces_a_re_added_article() -> None:
    from datasketch import LeanMinHash

    from pipeline.dedup import NearDuplicateIndex, text_signature

    index = NearDuplicateIndex(SETTINGS)
    wire = text_signature("", WIRE, "", SETTINGS)
    edited = text_signature("", WIRE.replace("cautious step", "careful step"), "", SETTINGS)
    assert wire is not None and edited is not None
    index.add("a", NOW - timedelta(hours=2), None, wire)
    index.add("b", NOW - timedelta(hours=1), "a", wire)  # same band keys: shared buckets
    match = index.best_match(edited, NOW, exclude="x")
    assert match is not None and match[0].id == "a"  # equal scores: the older one
    lean = [LeanMinHash(seed=1, hashvalues=v, scheme="affine32") for v in (wire, edited)]
    assert match[1] == lean[0].jaccard(lean[1]) and 0.7 <= match[1] < 1.0
    index.add("a", NOW - timedelta(hours=2), None, edited)  # re-indexed with a new text
    assert list(index.candidates(index.bands(wire))) == ["b", "a"]
    index.remove("b")
    index.remove("a")
    assert list(index.candidates(index.bands(wire))) == []
    assert all(not table for table in index._tables)
