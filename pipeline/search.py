"""Search for ``stancewatch search``: full text, filters, stance and similar articles.

The query is built by pure functions (testable without a cluster) and run through the
Store. Results are typed (:class:`SearchResults`) so that the table, ``--json`` and any
other caller see the same thing.

- Text goes through ``simple_query_string`` (quotes for phrases, ``-word`` to exclude,
  ``|`` for OR; it never fails on a stray character) over title, summary and body, with the
  ``.english`` sub-fields too (present only on clusters with the english analyzer; a
  missing field is ignored).
- ``--actor`` matches canonical names case-insensitively; ``--stance`` (with or without
  ``--actor``/``--topic``) first finds the matching stance mentions, then their articles.
- ``--similar-to ID`` runs a kNN search on the article's embedding (cosine), excluding the
  article itself; filters apply inside the kNN search so that ``k`` results survive them.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from pipeline.config import Stance, Topic

if TYPE_CHECKING:
    from pipeline.store import Store

TEXT_FIELDS = [
    "title^3",
    "title.english^3",
    "summary^2",
    "summary.english^2",
    "body",
    "body.english",
]
#: Stance mentions looked at when --stance narrows the articles (newest first).
MAX_STANCE_ARTICLES = 10_000
EVIDENCE_PER_ARTICLE = 3


class SearchError(Exception):
    """The search cannot run as asked (unknown article for --similar-to, bad --since)."""


class SearchQuery(BaseModel):
    text: str = ""
    topic: Topic | None = None
    actor: str | None = None
    stance: Stance | None = None
    since: datetime | None = None
    source: str | None = Field(default=None, description="Feed id, domain or source name")
    similar_to: str | None = Field(default=None, description="Article id for kNN search")
    limit: int = Field(default=20, ge=1, le=1000)


class StanceEvidence(BaseModel):
    actor: str
    topic: str
    stance: str
    score: float | None = None
    evidence: str = ""
    quote: bool = False


class ArticleHit(BaseModel):
    id: str
    score: float | None = None
    published: datetime | None = None
    title: str = ""
    url: str = ""
    source: str | None = None
    topics: list[str] = Field(default_factory=list)
    actors: list[str] = Field(default_factory=list)
    relevant: bool | None = None
    snippet: str | None = None
    evidence: list[StanceEvidence] = Field(default_factory=list)


class SearchResults(BaseModel):
    query: SearchQuery
    total: int
    hits: list[ArticleHit]


_RELATIVE = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$", re.IGNORECASE)
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str, *, now: datetime | None = None) -> datetime:
    """``7d``, ``24h``, ``30m``, ``2w``, a date (``2024-05-01``) or an ISO 8601 time, in UTC."""
    now = now or datetime.now(UTC)
    match = _RELATIVE.match(value)
    if match:
        amount, unit = int(match.group(1)), match.group(2).lower()
        return now - timedelta(**{_UNITS[unit]: amount})
    text = value.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SearchError(
            f"--since {value!r}: use 7d, 24h, 30m, 2w, a date (2024-05-01) or an ISO time"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _keyword(field: str, value: str) -> dict[str, Any]:
    return {"term": {field: {"value": value, "case_insensitive": True}}}


def _source_filter(source: str, prefix: str = "source") -> dict[str, Any]:
    return {
        "bool": {
            "should": [
                _keyword(f"{prefix}.feed_id", source),
                _keyword(f"{prefix}.domain", source),
                _keyword(f"{prefix}.name", source),
                {"match": {f"{prefix}.name.text": {"query": source, "operator": "and"}}},
            ],
            "minimum_should_match": 1,
        }
    }


def article_filters(q: SearchQuery, article_ids: list[str] | None = None) -> list[dict[str, Any]]:
    """Filters on the articles index (no scoring)."""
    filters: list[dict[str, Any]] = []
    if q.topic:
        filters.append({"term": {"topic_labels": q.topic}})
    if q.actor and not q.stance:
        filters.append(
            {
                "bool": {
                    "should": [_keyword("actors", q.actor), _keyword("stance_actors", q.actor)],
                    "minimum_should_match": 1,
                }
            }
        )
    if q.since:
        filters.append({"range": {"@timestamp": {"gte": _iso(q.since)}}})
    if q.source:
        filters.append(_source_filter(q.source))
    if article_ids is not None:
        filters.append({"ids": {"values": article_ids}})
    return filters


def stance_filters(q: SearchQuery) -> list[dict[str, Any]]:
    """Filters on the stances index for --stance / --actor / --topic."""
    filters: list[dict[str, Any]] = []
    if q.actor:
        filters.append(_keyword("actor", q.actor))
    if q.topic:
        filters.append({"term": {"topic": q.topic}})
    if q.stance:
        filters.append({"term": {"stance": q.stance}})
    if q.since:
        filters.append({"range": {"@timestamp": {"gte": _iso(q.since)}}})
    if q.source:
        filters.append(_source_filter(q.source))
    return filters


def build_stance_article_query(q: SearchQuery) -> dict[str, Any]:
    """Article ids having a stance mention that matches (aggregated, newest mentions)."""
    return {
        "size": 0,
        "query": {"bool": {"filter": stance_filters(q)}},
        "aggs": {
            "articles": {
                "terms": {
                    "field": "article_id",
                    "size": MAX_STANCE_ARTICLES,
                    "order": {"latest": "desc"},
                },
                "aggs": {"latest": {"max": {"field": "@timestamp"}}},
            }
        },
    }


def build_article_query(
    q: SearchQuery,
    *,
    article_ids: list[str] | None = None,
    vector: list[float] | None = None,
) -> dict[str, Any]:
    """The search body for the articles alias."""
    filters = article_filters(q, article_ids)
    body: dict[str, Any] = {
        "size": q.limit,
        "track_total_hits": True,
        "_source": {"excludes": ["body", "embedding"]},
        "highlight": {
            "fields": {"summary": {}, "body": {}, "title": {}},
            "fragment_size": 160,
            "number_of_fragments": 1,
            "pre_tags": [""],
            "post_tags": [""],
        },
    }
    text = q.text.strip()
    if text:
        body["query"] = {
            "bool": {
                "must": [
                    {
                        "simple_query_string": {
                            "query": text,
                            "fields": TEXT_FIELDS,
                            "default_operator": "and",
                            "lenient": True,
                        }
                    }
                ],
                "filter": filters,
            }
        }
    elif vector is None:
        body["query"] = {"bool": {"filter": filters}}
    if vector is not None:
        knn_filter: dict[str, Any] = {"bool": {"filter": filters}}
        if q.similar_to:
            knn_filter["bool"]["must_not"] = [{"ids": {"values": [q.similar_to]}}]
        body["knn"] = {
            "field": "embedding",
            "query_vector": vector,
            "k": q.limit,
            "num_candidates": max(100, 10 * q.limit),
            "filter": knn_filter,
        }
    if not text and vector is None:
        body["sort"] = [{"@timestamp": {"order": "desc"}}]
    return body


def build_evidence_query(q: SearchQuery, article_ids: list[str]) -> dict[str, Any]:
    filters: list[dict[str, Any]] = [{"terms": {"article_id": article_ids}}]
    if q.actor:
        filters.append(_keyword("actor", q.actor))
    if q.topic:
        filters.append({"term": {"topic": q.topic}})
    if q.stance:
        filters.append({"term": {"stance": q.stance}})
    return {
        "size": min(10_000, EVIDENCE_PER_ARTICLE * 4 * len(article_ids)),
        "query": {"bool": {"filter": filters}},
        "sort": [{"score": {"order": "desc"}}],
        "_source": ["article_id", "actor", "topic", "stance", "score", "evidence", "quote"],
    }


def search_articles(store: Store, q: SearchQuery) -> SearchResults:
    """Run the search; typed results with the stance evidence of each hit."""
    article_ids: list[str] | None = None
    if q.stance:
        response = store.search("stances", build_stance_article_query(q))
        buckets = response.get("aggregations", {}).get("articles", {}).get("buckets", [])
        article_ids = [b["key"] for b in buckets]
        if not article_ids:
            return SearchResults(query=q, total=0, hits=[])
    vector: list[float] | None = None
    if q.similar_to:
        found = store.get_many("articles", [q.similar_to], fields=["embedding"])
        if q.similar_to not in found:
            raise SearchError(f"--similar-to: no article with id {q.similar_to}")
        vector = found[q.similar_to].get("embedding")
        if not vector:
            raise SearchError(f"--similar-to: article {q.similar_to} has no embedding stored")
    response = store.search(
        "articles", build_article_query(q, article_ids=article_ids, vector=vector)
    )
    hits = [_article_hit(h) for h in response.get("hits", {}).get("hits", [])]
    total = response.get("hits", {}).get("total", {})
    total_count = int(total.get("value", len(hits)) if isinstance(total, dict) else total)
    if hits:
        _attach_evidence(store, q, hits)
    return SearchResults(query=q, total=total_count, hits=hits)


def _article_hit(hit: dict[str, Any]) -> ArticleHit:
    src = hit.get("_source", {})
    source = src.get("source") or {}
    highlight = hit.get("highlight", {})
    snippet = next(
        (highlight[f][0] for f in ("summary", "body", "title") if highlight.get(f)), None
    )
    published = src.get("@timestamp")
    return ArticleHit(
        id=hit["_id"],
        score=hit.get("_score"),
        published=datetime.fromisoformat(published.replace("Z", "+00:00")) if published else None,
        title=src.get("title", ""),
        url=src.get("url", ""),
        source=source.get("name") or source.get("domain") or source.get("feed_id"),
        topics=list(src.get("topic_labels") or []),
        actors=list(src.get("actors") or []),
        relevant=src.get("relevant"),
        snippet=snippet or (src.get("summary") or "")[:160] or None,
    )


def _attach_evidence(store: Store, q: SearchQuery, hits: list[ArticleHit]) -> None:
    by_id = {h.id: h for h in hits}
    response = store.search("stances", build_evidence_query(q, list(by_id)))
    for hit in response.get("hits", {}).get("hits", []):
        src = hit.get("_source", {})
        article = by_id.get(src.get("article_id", ""))
        if article is None or len(article.evidence) >= EVIDENCE_PER_ARTICLE:
            continue
        article.evidence.append(
            StanceEvidence(
                actor=src.get("actor", ""),
                topic=src.get("topic", ""),
                stance=src.get("stance", ""),
                score=src.get("score"),
                evidence=src.get("evidence", ""),
                quote=bool(src.get("quote")),
            )
        )
