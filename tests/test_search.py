"""``stancewatch search``: query building (pure) and results from the real node."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import Environment, StoreSettings
from pipeline.models import (
    Article,
    ClassifiedText,
    SourceInfo,
    StanceMention,
    TerritoryMention,
    TopicScore,
)
from pipeline.search import (
    SearchError,
    SearchQuery,
    build_article_query,
    build_stance_article_query,
    parse_since,
    search_articles,
)
from pipeline.store import Store

PROJECT_DIR = Path(__file__).resolve().parent.parent
NOW = datetime(2023, 8, 20, 12, 0, tzinfo=UTC)


# ----------------------------------------------------------------------- query building


def test_parse_since_accepts_relative_dates_and_iso() -> None:
    assert parse_since("7d", now=NOW) == NOW - timedelta(days=7)
    assert parse_since("24h", now=NOW) == NOW - timedelta(hours=24)
    assert parse_since("2w", now=NOW) == NOW - timedelta(weeks=2)
    assert parse_since("2023-08-01") == datetime(2023, 8, 1, tzinfo=UTC)
    assert parse_since("2023-08-01T10:00:00Z") == datetime(2023, 8, 1, 10, tzinfo=UTC)
    with pytest.raises(SearchError, match="--since"):
        parse_since("last summer")


def test_text_and_filters_end_up_in_one_bool_query() -> None:
    q = SearchQuery(
        text='"cede territory" -football',
        topic="territorial_concessions",
        actor="Jens Stoltenberg",
        since=datetime(2023, 8, 1, tzinfo=UTC),
        source="ledger",
        limit=5,
    )
    body = build_article_query(q)
    must = body["query"]["bool"]["must"][0]["simple_query_string"]
    assert must["query"] == '"cede territory" -football'
    assert "title.english^3" in must["fields"] and must["default_operator"] == "and"
    filters = json.dumps(body["query"]["bool"]["filter"])
    assert '"topic_labels": "territorial_concessions"' in filters
    assert '"case_insensitive": true' in filters
    assert '"gte": "2023-08-01T00:00:00Z"' in filters
    assert '"source.feed_id"' in filters
    assert body["size"] == 5 and "sort" not in body  # relevance order when there is text
    assert body["_source"] == {"excludes": ["body", "embedding"]}


def test_similar_to_is_a_filtered_knn_search_without_the_article_itself() -> None:
    q = SearchQuery(similar_to="a1", topic="peace_talks", limit=3)
    body = build_article_query(q, vector=[0.1] * 384)
    knn = body["knn"]
    assert knn["field"] == "embedding" and knn["k"] == 3 and knn["num_candidates"] >= 100
    assert knn["filter"]["bool"]["must_not"] == [{"ids": {"values": ["a1"]}}]
    assert {"term": {"topic_labels": "peace_talks"}} in knn["filter"]["bool"]["filter"]
    assert "query" not in body


def test_stance_narrows_through_the_stances_index() -> None:
    q = SearchQuery(actor="Volodymyr Zelenskyy", stance="oppose")
    body = build_stance_article_query(q)
    filters = body["query"]["bool"]["filter"]
    assert {"term": {"stance": "oppose"}} in filters
    assert body["aggs"]["articles"]["terms"]["field"] == "article_id"
    # the actor filter moves to the stance query, not the article query
    article_filters = build_article_query(q, article_ids=["x"])["query"]["bool"]["filter"]
    assert article_filters == [{"ids": {"values": ["x"]}}]


# ------------------------------------------------------------------- against the node


def _unit(values: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def _near(base: list[float], seed: int, noise: float) -> list[float]:
    rng = random.Random(seed)
    return _unit([b + rng.gauss(0, noise) for b in base])


def _random_unit(seed: int) -> list[float]:
    rng = random.Random(seed)
    return _unit([rng.gauss(0, 1) for _ in range(384)])


CLUSTER_A = _random_unit(1)  # the Ukraine land debate
CLUSTER_B = _random_unit(2)  # the Caucasus talks


def _article(
    n: int,
    title: str,
    summary: str,
    *,
    days_ago: int,
    topics: dict[str, bool],
    stances: list[tuple[str, str, str, str]],
    vector: list[float],
    feed: tuple[str, str, str] = ("ledger-world", "The Daily Ledger", "news.example.org"),
) -> Article:
    article_id = f"s{n}"
    published = NOW - timedelta(days=days_ago)
    url = f"https://{feed[2]}/{article_id}"
    return Article(
        id=article_id,
        url=url,
        canonical_url=url,
        source=SourceInfo(feed_id=feed[0], name=feed[1], domain=feed[2], language="en"),
        title=title,
        summary=summary,
        body=summary + " " + summary,
        published=published,
        fetched_at=published,
        content_hash=f"h{n}",
        language="en",
        classification=ClassifiedText(
            id=article_id,
            topics={t: TopicScore(label=v, score=0.9 if v else 0.1) for t, v in topics.items()},
            stances=[
                StanceMention.model_validate(
                    {
                        "actor": actor,
                        "mention": actor.split()[-1],
                        "topic": topic,
                        "stance": stance,
                        "score": 0.8,
                        "evidence": evidence,
                    }
                )
                for actor, topic, stance, evidence in stances
            ],
            actors=sorted({a for a, _, _, _ in stances}),
            territories=[TerritoryMention(name="Crimea", lat=45.3, lon=34.4)],
            embedding=vector,
            model="test",
            model_version="1",
        ),
    )


CORPUS = [
    _article(
        1,
        "NATO chief says Ukraine may have to cede territory to end the war",
        "Stoltenberg told a conference that giving up land could be part of a settlement.",
        days_ago=1,
        topics={"territorial_concessions": True, "peace_talks": True},
        stances=[
            (
                "Jens Stoltenberg",
                "territorial_concessions",
                "support",
                "Ukraine may have to cede territory to end the war, the NATO chief said.",
            )
        ],
        vector=_near(CLUSTER_A, 11, 0.02),
    ),
    _article(
        2,
        "Zelensky: Ukraine will not give up any of its territory",
        "The president rejected any deal that would cede land, speaking in Kyiv.",
        days_ago=2,
        topics={"territorial_concessions": True, "peace_talks": False},
        stances=[
            (
                "Volodymyr Zelenskyy",
                "territorial_concessions",
                "oppose",
                "We are not ready to concede any of our territories, Zelensky said.",
            )
        ],
        vector=_near(CLUSTER_A, 12, 0.02),
        feed=("kyiv-wire", "Kyiv Wire", "kyivwire.example.com"),
    ),
    _article(
        3,
        "Debate in Kyiv over land-for-peace proposals deepens",
        "Lawmakers argued about whether territory could ever be traded for a ceasefire.",
        days_ago=3,
        topics={"territorial_concessions": True, "peace_talks": True},
        stances=[],
        vector=_near(CLUSTER_A, 13, 0.03),
    ),
    _article(
        4,
        "Armenia and Azerbaijan agree to resume border talks",
        "Foreign ministers will meet next month to continue negotiations on a peace treaty.",
        days_ago=4,
        topics={"territorial_concessions": False, "peace_talks": True},
        stances=[
            ("Nikol Pashinyan", "peace_talks", "support", "Pashinyan welcomed the resumption.")
        ],
        vector=_near(CLUSTER_B, 14, 0.02),
    ),
    _article(
        5,
        "Local football club wins territory dispute over training ground",
        "The council ceded a strip of land to the club after a long planning row.",
        days_ago=30,
        topics={"territorial_concessions": False, "peace_talks": False},
        stances=[],
        vector=_near(CLUSTER_B, 15, 0.04),
    ),
]


@pytest.fixture
def loaded(es_url: str, index_prefix: str, tmp_path: Path) -> Any:
    env = Environment(
        es_url=es_url, index_prefix=index_prefix, outbox=tmp_path / "o", data_dir=tmp_path / "d"
    )
    store = Store(env, StoreSettings())
    store.write("articles", [(a.id, a.to_document()) for a in CORPUS])
    store.write("stances", [d for a in CORPUS for d in a.stance_documents()])
    store.refresh()
    yield store
    store.close()


def ids(store: Store, **kwargs: Any) -> list[str]:
    return [h.id for h in search_articles(store, SearchQuery(**kwargs)).hits]


@pytest.mark.es
def test_full_text_ranks_and_excludes(loaded: Store) -> None:
    hits = search_articles(loaded, SearchQuery(text="cede territory")).hits
    assert hits[0].id in {"s1", "s2"}
    assert {h.id for h in hits} >= {"s1", "s2"}
    assert "s5" in ids(loaded, text="territory")
    assert "s5" not in ids(loaded, text="territory -football")
    first = hits[0]
    assert first.title and first.url.startswith("https://") and first.published
    assert first.snippet


@pytest.mark.es
def test_filters_topic_actor_source_since(loaded: Store) -> None:
    assert ids(loaded, topic="peace_talks") == ["s1", "s3", "s4"]  # newest first without text
    assert ids(loaded, actor="volodymyr zelenskyy") == ["s2"]  # case-insensitive
    assert ids(loaded, source="kyivwire.example.com") == ["s2"]
    assert ids(loaded, source="Daily Ledger", topic="territorial_concessions") == ["s1", "s3"]
    assert ids(loaded, since=NOW - timedelta(days=7)) == ["s1", "s2", "s3", "s4"]
    assert ids(loaded, text="football", since=NOW - timedelta(days=7)) == []


@pytest.mark.es
def test_stance_of_an_actor_with_evidence(loaded: Store) -> None:
    results = search_articles(
        loaded,
        SearchQuery(actor="Volodymyr Zelenskyy", stance="oppose", topic="territorial_concessions"),
    )
    assert [h.id for h in results.hits] == ["s2"]
    (evidence,) = results.hits[0].evidence
    assert evidence.actor == "Volodymyr Zelenskyy" and evidence.stance == "oppose"
    assert "not ready to concede" in evidence.evidence
    assert ids(loaded, stance="support") == ["s1", "s4"]
    assert ids(loaded, actor="Volodymyr Zelenskyy", stance="support") == []


@pytest.mark.es
def test_similar_to_finds_neighbours_but_not_itself(loaded: Store) -> None:
    nearest = ids(loaded, similar_to="s1", limit=2)
    assert set(nearest) == {"s2", "s3"}  # the same story cluster
    assert "s1" not in ids(loaded, similar_to="s1", limit=4)
    assert ids(loaded, similar_to="s1", limit=4, topic="peace_talks") == ["s3", "s4"]
    with pytest.raises(SearchError, match="no article with id"):
        search_articles(loaded, SearchQuery(similar_to="missing"))


@pytest.mark.es
def test_cli_table_and_json(loaded: Store, sw_env: dict[str, str]) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pipeline", "search", *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=PROJECT_DIR,
            env={**os.environ, **sw_env, "COLUMNS": "220"},
            check=False,
        )

    table = run("cede", "--topic", "territorial_concessions")
    assert table.returncode == 0, table.stderr
    assert "NATO chief says Ukraine may have to cede territory" in table.stdout
    assert "matching article(s)" in table.stdout
    as_json = run("--actor", "Jens Stoltenberg", "--stance", "support", "--json")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert [h["id"] for h in data["hits"]] == ["s1"]
    assert data["hits"][0]["evidence"][0]["stance"] == "support"
    similar = run("--similar-to", "s4", "--limit", "1", "--json")
    assert json.loads(similar.stdout)["hits"][0]["id"] == "s5"
    bad = run("--similar-to", "nope")
    assert bad.returncode == 1 and "no article with id nope" in bad.stderr
    bad_stance = run("--stance", "maybe")
    assert bad_stance.returncode == 1 and "--stance" in bad_stance.stderr
