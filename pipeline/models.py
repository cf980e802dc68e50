"""Typed records passed between the stages of the flow.

fetch -> :class:`FetchResult`; parse -> :class:`FeedItem` (+ :class:`FeedProblem`);
normalize/dedup/enrich -> :class:`Article`; classify -> :class:`ClassifiedText`;
store -> Elasticsearch documents (``to_document`` methods); detect -> :class:`Alert`.

Documents written to Elasticsearch are built here, in one place, so that the mappings in
``pipeline/store/mappings/`` and the code cannot drift apart unnoticed (a test compares them).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline import __version__ as PIPELINE_VERSION
from pipeline.config import STANCE_VALUES, TOPICS, Stance, Topic


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime | None) -> str | None:
    """ISO 8601 in UTC with a 'Z', as Elasticsearch and Kibana like it."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def stable_id(*parts: str) -> str:
    """Deterministic document id: re-runs update the same document instead of duplicating."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return digest[:32]


def article_id(canonical_url: str) -> str:
    return stable_id("article", canonical_url)


# ------------------------------------------------------------------------------- fetching

FailureKind = Literal["hard", "soft", "temporary"]


class FetchResult(BaseModel):
    """What one conditional GET of one feed produced."""

    feed_id: str
    url: str
    final_url: str | None = None
    status: int | None = None
    not_modified: bool = False
    content: bytes | None = Field(default=None, repr=False)
    content_type: str | None = None
    declared_encoding: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    elapsed_s: float = 0.0
    attempts: int = 1
    error: str | None = Field(default=None, description="Human-readable reason when it failed")
    failure_kind: FailureKind | None = None
    retry_after_s: float | None = None
    moved_to: str | None = Field(
        default=None, description="Target of a permanent redirect (301/308): update feeds.yaml"
    )

    @property
    def ok(self) -> bool:
        return self.error is None


class FeedState(BaseModel):
    """Per-feed polling state, kept in the feeds index (conditional GET, adaptive polling)."""

    feed_id: str
    url: str
    name: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    last_status: int | None = None
    last_error: str | None = None
    failure_kind: FailureKind | None = None
    consecutive_failures: int = 0
    last_attempt: datetime | None = None
    last_success: datetime | None = None
    next_due: datetime | None = None
    items_seen: int = 0
    items_last_run: int = 0
    problems: list[str] = Field(default_factory=list, description="Parse problems of last run")

    def to_document(self) -> dict[str, Any]:
        doc = self.model_dump(mode="json")
        for key in ("last_attempt", "last_success", "next_due"):
            doc[key] = iso(getattr(self, key))
        doc["@timestamp"] = iso(self.last_attempt)
        doc["healthy"] = self.consecutive_failures == 0 and not self.problems
        return doc


# -------------------------------------------------------------------------------- parsing


class FeedProblem(BaseModel):
    """Something wrong with a feed that did not stop us from using its good items."""

    feed_id: str
    kind: str = Field(description="e.g. 'malformed_xml', 'encoding', 'not_a_feed', 'hostile_xml'")
    message: str


class FeedItem(BaseModel):
    """One entry of a parsed feed, before normalisation."""

    feed_id: str
    guid: str | None = None
    link: str | None = None
    title: str | None = None
    summary: str | None = None
    content: str | None = None
    author: str | None = None
    published_raw: str | None = None
    published: datetime | None = None
    language: str | None = None


# ------------------------------------------------------------------------------- articles


class SourceInfo(BaseModel):
    feed_id: str | None = None
    name: str | None = None
    domain: str | None = None
    language: str | None = None
    country: str | None = None


class TopicScore(BaseModel):
    label: bool
    score: float = Field(ge=0, le=1)


class StanceMention(BaseModel):
    """One actor's stance toward one topic in one article, with the sentence that shows it.

    This is exactly the ``stances`` element of ``stancewatch classify`` output.
    """

    actor: str = Field(description="Canonical name")
    mention: str = Field(description="The actor as written in the text")
    topic: Topic
    stance: Stance
    score: float = Field(ge=0, le=1, description="Confidence in the stance")
    evidence: str
    quote: bool = False


class TerritoryMention(BaseModel):
    name: str
    lat: float
    lon: float


class ClassifiedText(BaseModel):
    """The classifier's answer for one text."""

    id: str
    topics: dict[str, TopicScore]
    stances: list[StanceMention] = Field(default_factory=list)
    actors: list[str] = Field(default_factory=list, description="Canonical names, all mentioned")
    territories: list[TerritoryMention] = Field(default_factory=list)
    embedding: list[float] | None = Field(default=None, repr=False)
    model: str = ""
    model_version: str = ""

    @property
    def relevant(self) -> bool:
        return any(score.label for score in self.topics.values())

    def to_classify_output(self) -> dict[str, Any]:
        """The stable JSON Lines shape of ``stancewatch classify`` (DESIGN.md)."""
        return {
            "id": self.id,
            "topics": {
                topic: {
                    "label": self.topics[topic].label,
                    "score": round(self.topics[topic].score, 4),
                }
                for topic in TOPICS
                if topic in self.topics
            },
            "stances": [
                {
                    "actor": s.actor,
                    "mention": s.mention,
                    "topic": s.topic,
                    "stance": s.stance,
                    "score": round(s.score, 4),
                    "evidence": s.evidence,
                }
                for s in self.stances
            ],
        }


class Article(BaseModel):
    """A normalised news article; becomes one document in the articles index."""

    model_config = ConfigDict(validate_assignment=False)

    id: str
    url: str
    canonical_url: str
    source: SourceInfo
    title: str
    summary: str = ""
    body: str = ""
    published: datetime = Field(description="Publication time (UTC); '@timestamp' in the index")
    published_raw: str | None = None
    date_flags: list[str] = Field(
        default_factory=list, description="'future_clamped', 'missing' (fetch time used)"
    )
    fetched_at: datetime
    content_hash: str
    cluster_id: str | None = Field(default=None, description="Near-duplicate cluster")
    duplicate_of: str | None = None
    language: str | None = None
    full_text: bool = False
    classification: ClassifiedText | None = None

    @property
    def text(self) -> str:
        """What the classifier reads: the body when we have it, the summary otherwise."""
        return self.body or self.summary

    def to_document(self) -> dict[str, Any]:
        c = self.classification
        doc: dict[str, Any] = {
            "url": self.url,
            "canonical_url": self.canonical_url,
            "source": self.source.model_dump(),
            "title": self.title,
            "summary": self.summary,
            "body": self.body,
            "@timestamp": iso(self.published),
            "published_raw": self.published_raw,
            "date_flags": self.date_flags,
            "fetched_at": iso(self.fetched_at),
            "content_hash": self.content_hash,
            "cluster_id": self.cluster_id or self.id,
            "duplicate_of": self.duplicate_of,
            "language": self.language,
            "full_text": self.full_text,
            "pipeline_version": PIPELINE_VERSION,
        }
        if c is not None:
            doc.update(
                {
                    "topics": {t: s.model_dump() for t, s in c.topics.items()},
                    "topic_labels": [t for t, s in c.topics.items() if s.label],
                    "relevant": c.relevant,
                    "actors": c.actors,
                    "stance_actors": sorted({s.actor for s in c.stances}),
                    "territories": [t.name for t in c.territories],
                    "territory_locations": [{"lat": t.lat, "lon": t.lon} for t in c.territories],
                    "model": {"name": c.model, "version": c.model_version},
                }
            )
            if c.embedding is not None:
                doc["embedding"] = c.embedding
        return doc

    def stance_documents(self) -> list[tuple[str, dict[str, Any]]]:
        """One flat document per stance mention, with deterministic ids."""
        if self.classification is None:
            return []
        out: list[tuple[str, dict[str, Any]]] = []
        for s in self.classification.stances:
            doc_id = stable_id("stance", self.id, s.actor, s.topic, s.evidence)
            out.append(
                (
                    doc_id,
                    {
                        "@timestamp": iso(self.published),
                        "actor": s.actor,
                        "mention": s.mention,
                        "topic": s.topic,
                        "stance": s.stance,
                        "stance_value": STANCE_VALUES[s.stance],
                        "score": s.score,
                        "evidence": s.evidence,
                        "quote": s.quote,
                        "article_id": self.id,
                        # The canonical link (tracking parameters stripped): what alert
                        # e-mails and Kibana show for the evidence.
                        "url": self.canonical_url,
                        "title": self.title,
                        "source": self.source.model_dump(),
                        "cluster_id": self.cluster_id or self.id,
                    },
                )
            )
        return out


# --------------------------------------------------------------------------------- alerts

AlertKind = Literal["stance_shift", "coverage_spike"]
DeliveryStatus = Literal["pending", "sent", "failed", "suppressed"]


class AlertEvidence(BaseModel):
    """One sentence (stance shift) or article (coverage spike) shown in an alert e-mail."""

    article_id: str
    url: str = ""
    title: str = ""
    source: str = ""
    published: datetime
    period: Literal["baseline", "recent"] = "recent"
    stance: Stance | None = None
    score: float | None = None
    sentence: str = ""


class Alert(BaseModel):
    """One detected event; its id is deterministic so it is stored and e-mailed once."""

    id: str
    kind: AlertKind
    topic: Topic
    actor: str | None = None
    from_stance: Stance | None = None
    to_stance: Stance | None = None
    window_start: datetime
    window_end: datetime
    baseline_start: datetime
    baseline_end: datetime
    stats: dict[str, Any] = Field(default_factory=dict)
    evidence_article_ids: list[str] = Field(default_factory=list)
    evidence: list[AlertEvidence] = Field(default_factory=list)
    detected_at: datetime
    status: DeliveryStatus = "pending"
    status_reason: str | None = None
    recipients: list[str] = Field(default_factory=list)
    attempts: int = 0
    sent_at: datetime | None = None
    subject: str | None = None

    def to_document(self) -> dict[str, Any]:
        doc = self.model_dump(mode="json", exclude={"id"})
        for key in (
            "window_start",
            "window_end",
            "baseline_start",
            "baseline_end",
            "detected_at",
            "sent_at",
        ):
            doc[key] = iso(getattr(self, key))
        doc["@timestamp"] = iso(self.window_end)
        return doc
