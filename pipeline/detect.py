"""Detect stance shifts per (actor, topic) and coverage spikes per topic.

Pure functions first (they take records and settings, return candidates), then
:func:`detect`, which loads records from the store, runs them and stores new alerts.

How a stance shift is decided (settings in ``config/alerts.yaml``, reasons in
docs/decisions.md, "Alerts"):

- Time is publication time (``@timestamp``), never fetch time, so a backfill of old articles
  finds the shifts where they happened.
- Syndicated copies (same near-duplicate ``cluster_id``) are one *unit*: a wire story
  reprinted by twenty outlets is one piece of evidence, not twenty.
- At every evaluation point E (windows ending every ``step_days`` on a fixed UTC grid from
  the first data to ``now``, plus ``now`` itself) the recent window ``[E - recent_days, E)``
  is compared with the baseline ``[E - recent_days - baseline_days, E - recent_days)``.
  Each window's dominant stance is the one with the largest confidence-weighted share,
  if that share reaches ``min_share``. A shift needs: enough units in both windows,
  different dominant stances, the new stance's share up by ``min_share_change``, and a
  one-sided Fisher exact test (new stance vs the rest, baseline vs recent) at or below
  ``max_p_value``.
- One real change = one alert. A shift stays visible for many consecutive evaluation points
  (the recent window keeps showing the new stance for a week); the replay walks the points
  in order and remembers the stance last alerted or last seen stable, so a persisting shift
  is suppressed, while a later move back (or a new move after a stable period) is a new
  alert. The alert id is built from (kind, actor, topic, from, to, first grid point at
  which it was detected), so the next run, the next day or a replay of the same data
  yields the same id; :func:`same_event` also matches stored alerts whose first detection
  moved slightly (late-arriving articles), so those do not produce a second alert either.

Coverage spikes: relevant articles (one per cluster) per topic in the last
``window_hours`` against the mean per window over the ``baseline_days`` before it: the
ratio and a Poisson z-score must both pass, and the window must hold ``min_articles``.
Consecutive spiking windows are one spike.
"""

from __future__ import annotations

import bisect
import logging
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, Field

from pipeline.config import (
    TOPICS,
    AlertSettings,
    AppConfig,
    CoverageSpikeSettings,
    StanceShiftSettings,
)
from pipeline.models import Alert, AlertEvidence, iso, stable_id

if TYPE_CHECKING:
    from pipeline.store import IndexKind

log = logging.getLogger(__name__)

#: Evaluation points lie on a grid anchored here, so that the same data gives the same
#: window ends (and alert ids) whatever ``now`` a run uses.
GRID_ANCHOR = datetime(1970, 1, 1, tzinfo=UTC)

POLAR_STANCES: tuple[str, ...] = ("support", "oppose")
ALL_STANCES: tuple[str, ...] = ("support", "oppose", "neutral")

STANCE_FIELDS = [
    "@timestamp",
    "actor",
    "mention",
    "topic",
    "stance",
    "score",
    "evidence",
    "quote",
    "article_id",
    "url",
    "title",
    "source",
    "cluster_id",
]
ARTICLE_FIELDS = [
    "@timestamp",
    "topic_labels",
    "relevant",
    "cluster_id",
    "title",
    "url",
    "canonical_url",
    "source",
]
ALERT_MATCH_FIELDS = ["kind", "actor", "topic", "from_stance", "to_stance", "window_end"]


class AlertStore(Protocol):
    """The part of :class:`pipeline.store.Store` that detection and delivery use."""

    def write(self, kind: IndexKind, docs: Iterable[tuple[str, dict[str, Any]]]) -> Any: ...

    def get_many(
        self, kind: IndexKind, ids: list[str], fields: list[str] | None = None
    ) -> dict[str, dict[str, Any]]: ...

    def search(self, kind: IndexKind, body: dict[str, Any]) -> dict[str, Any]: ...

    def scan(
        self, kind: IndexKind, query: dict[str, Any], fields: list[str] | None = None
    ) -> Iterator[tuple[str, dict[str, Any]]]: ...

    def refresh(self, kind: IndexKind | None = None) -> None: ...


# ----------------------------------------------------------------------------- time helpers


def parse_time(value: Any) -> datetime | None:
    """An ``@timestamp`` from a document (ISO string, possibly with 'Z') as aware UTC."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str) and value:
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def grid_floor(when: datetime, step: timedelta) -> datetime:
    """The last grid point at or before ``when``."""
    steps = (when - GRID_ANCHOR) // step
    return GRID_ANCHOR + steps * step


def grid_ceil(when: datetime, step: timedelta) -> datetime:
    """The first grid point at or after ``when`` (the key of a partial window)."""
    floor = grid_floor(when, step)
    return floor if floor == when else floor + step


def evaluation_ends(
    first: datetime, last: datetime, now: datetime, step: timedelta
) -> list[datetime]:
    """Window ends to evaluate: grid points after ``first`` up to ``min(last, now)``, plus
    ``now`` itself when it is not on the grid and no later than ``last``.

    ``last`` bounds the walk where the windows can no longer hold new data.
    """
    end = min(last, now)
    points: list[datetime] = []
    point = grid_floor(first, step) + step
    while point <= end:
        points.append(point)
        point += step
    if now <= last and (not points or points[-1] < now):
        points.append(now)
    return points


# ------------------------------------------------------------------------------ statistics


def fisher_one_sided(a: int, b: int, c: int, d: int) -> float:
    """One-sided Fisher exact test on the 2×2 table [[a, b], [c, d]].

    Rows: baseline, recent. Columns: the new stance, every other stance. Returns
    P(recent holds at least ``c`` of the new stance | margins), the chance of a shift at
    least this strong if both windows came from the same stance mix. Exact, from binomial
    coefficients (small counts are the normal case here, where chi-square is wrong).
    """
    row1, row2, col1 = a + b, c + d, a + c
    total = row1 + row2
    if total == 0 or col1 == 0:
        return 1.0
    denominator = math.comb(total, col1)
    p = 0.0
    for x in range(c, min(row2, col1) + 1):
        p += math.comb(row2, x) * math.comb(row1, col1 - x) / denominator
    return min(1.0, p)


def poisson_z(observed: float, expected: float) -> float:
    """(observed − expected) / √expected; ``expected`` must be > 0 (the caller floors it)."""
    return (observed - expected) / math.sqrt(expected)


# ----------------------------------------------------------------------------- records


def _source_name(source: Any) -> str:
    if isinstance(source, dict):
        return str(source.get("name") or source.get("domain") or source.get("feed_id") or "")
    return str(source or "")


@dataclass(frozen=True)
class StanceRecord:
    """One stance mention as stored in the stances index (only what detection needs)."""

    time: datetime
    actor: str
    topic: str
    stance: str
    score: float
    cluster_id: str
    article_id: str
    url: str = ""
    title: str = ""
    evidence: str = ""
    source: str = ""

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> StanceRecord | None:
        """None for documents that lack what detection needs (logged, never fatal)."""
        time = parse_time(doc.get("@timestamp"))
        actor, topic, stance = doc.get("actor"), doc.get("topic"), doc.get("stance")
        if time is None or not actor or topic not in TOPICS or stance not in ALL_STANCES:
            return None
        try:
            score = float(doc.get("score", 1.0))
        except (TypeError, ValueError):
            return None
        article = str(doc.get("article_id") or "")
        return cls(
            time=time,
            actor=str(actor),
            topic=str(topic),
            stance=str(stance),
            score=score,
            cluster_id=str(doc.get("cluster_id") or article or doc.get("url") or ""),
            article_id=article,
            url=str(doc.get("url") or ""),
            title=str(doc.get("title") or ""),
            evidence=str(doc.get("evidence") or ""),
            source=_source_name(doc.get("source")),
        )


@dataclass(frozen=True)
class StanceUnit:
    """One cluster's vote on one (actor, topic): syndicated copies count once."""

    time: datetime
    stance: str
    weight: float
    record: StanceRecord


def _sentence_key(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def collapse_syndicated(
    records: Iterable[StanceRecord], *, min_confidence: float, stances: Sequence[str]
) -> list[StanceUnit]:
    """One unit per cluster, sorted by time.

    A cluster's stance is the one with the largest total confidence over its distinct
    evidence sentences (the same sentence in twenty copies counts once); its weight is the
    best confidence for that stance, its time the cluster's first appearance, and its
    evidence the best-scored mention. Mentions below ``min_confidence`` or with a stance not
    taking part are ignored.
    """
    by_cluster: dict[str, list[StanceRecord]] = defaultdict(list)
    for rec in records:
        if rec.score >= min_confidence and rec.stance in stances:
            by_cluster[rec.cluster_id].append(rec)
    units: list[StanceUnit] = []
    for members in by_cluster.values():
        best_per_sentence: dict[tuple[str, str], float] = {}
        for rec in members:
            key = (rec.stance, _sentence_key(rec.evidence) or rec.article_id)
            best_per_sentence[key] = max(best_per_sentence.get(key, 0.0), rec.score)
        totals: dict[str, float] = defaultdict(float)
        for (stance, _), score in best_per_sentence.items():
            totals[stance] += score
        # Ties resolve in a fixed order so that the result never depends on scan order.
        stance = max(totals, key=lambda s: (totals[s], -ALL_STANCES.index(s)))
        chosen = [r for r in members if r.stance == stance]
        best = min(chosen, key=lambda r: (-r.score, r.time, r.article_id, r.evidence))
        units.append(
            StanceUnit(
                time=min(r.time for r in members),
                stance=stance,
                weight=best.score,
                record=best,
            )
        )
    units.sort(key=lambda u: (u.time, u.record.cluster_id))
    return units


# ----------------------------------------------------------------------------- stance shift


@dataclass(frozen=True)
class WindowStats:
    """Units, counts and confidence-weighted shares of one window."""

    units: int
    counts: dict[str, int]
    weights: dict[str, float]
    shares: dict[str, float]
    dominant: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "mentions": self.units,
            "counts": dict(self.counts),
            "weights": {k: round(v, 4) for k, v in self.weights.items()},
            "shares": {k: round(v, 4) for k, v in self.shares.items()},
            "dominant": self.dominant,
        }


def window_stats(
    units: Sequence[StanceUnit], stances: Sequence[str], min_share: float
) -> WindowStats:
    counts = dict.fromkeys(stances, 0)
    weights = dict.fromkeys(stances, 0.0)
    for unit in units:
        counts[unit.stance] += 1
        weights[unit.stance] += unit.weight
    total = sum(weights.values())
    shares = {s: (weights[s] / total if total > 0 else 0.0) for s in stances}
    dominant: str | None = None
    if total > 0:
        top = max(stances, key=lambda s: (shares[s], -ALL_STANCES.index(s)))
        # A tie at the top is no dominance, whatever min_share says.
        tied = sum(1 for s in stances if math.isclose(shares[s], shares[top]))
        if shares[top] >= min_share - 1e-9 and tied == 1:
            dominant = top
    return WindowStats(len(units), counts, weights, shares, dominant)


@dataclass
class StanceShift:
    """A detected change of one actor's dominant stance on one topic."""

    actor: str
    topic: str
    from_stance: str
    to_stance: str
    baseline_start: datetime
    window_start: datetime
    window_end: datetime
    key_end: datetime
    baseline: WindowStats
    recent: WindowStats
    p_value: float
    share_change: float
    last_end: datetime
    evidence: list[StanceUnit] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)

    @property
    def alert_id(self) -> str:
        return stable_id(
            "stance_shift",
            self.actor,
            self.topic,
            self.from_stance,
            self.to_stance,
            iso(self.key_end) or "",
        )


def _evaluate_shift(
    baseline: WindowStats, recent: WindowStats, settings: StanceShiftSettings
) -> tuple[bool, float, float]:
    """(is a shift, p-value, share change) for one pair of windows."""
    if (
        baseline.units < settings.min_mentions_baseline
        or recent.units < settings.min_mentions_recent
        or baseline.dominant is None
        or recent.dominant is None
        or baseline.dominant == recent.dominant
    ):
        return False, 1.0, 0.0
    new = recent.dominant
    change = recent.shares[new] - baseline.shares[new]
    a = baseline.counts[new]
    b = baseline.units - a
    c = recent.counts[new]
    d = recent.units - c
    p = fisher_one_sided(a, b, c, d)
    ok = change >= settings.min_share_change - 1e-9 and p <= settings.max_p_value + 1e-9
    return ok, p, change


def daily_timeline(
    units: Sequence[StanceUnit], start: datetime, end: datetime, stances: Sequence[str]
) -> list[dict[str, Any]]:
    """Per UTC day from ``start`` to ``end``: confidence-weighted sums per stance (chart)."""
    day = timedelta(days=1)
    first = grid_floor(start, day)
    days: dict[datetime, dict[str, float]] = {}
    point = first
    while point < end:
        days[point] = dict.fromkeys(stances, 0.0)
        point += day
    for unit in units:
        if start <= unit.time < end:
            bucket = days.get(grid_floor(unit.time, day))
            if bucket is not None:
                bucket[unit.stance] += unit.weight
    return [
        {"date": d.date().isoformat(), **{s: round(v, 3) for s, v in values.items()}}
        for d, values in days.items()
    ]


def _pick_evidence(
    units: Sequence[StanceUnit], stance: str, limit: int, *, newest: bool = False
) -> list[StanceUnit]:
    """The most confident units of ``stance`` (or the newest), shown newest first."""
    chosen = [u for u in units if u.stance == stance]
    if newest:
        chosen.sort(key=lambda u: (-u.time.timestamp(), -u.weight, u.record.cluster_id))
    else:
        chosen.sort(key=lambda u: (-u.weight, -u.time.timestamp(), u.record.cluster_id))
    picked = chosen[:limit]
    picked.sort(key=lambda u: (-u.time.timestamp(), u.record.cluster_id))
    return picked


def find_stance_shifts_for(
    units: Sequence[StanceUnit],
    *,
    actor: str,
    topic: str,
    settings: StanceShiftSettings,
    now: datetime,
    max_evidence: int = 5,
) -> list[StanceShift]:
    """Replay one (actor, topic) timeline; one :class:`StanceShift` per real change."""
    if not units:
        return []
    stances = ALL_STANCES if settings.count_neutral else POLAR_STANCES
    recent_len = timedelta(days=settings.recent_days)
    baseline_len = timedelta(days=settings.baseline_days)
    step = timedelta(days=settings.step_days)
    times = [u.time for u in units]
    # Nothing can change once the last unit has left the recent window.
    last = grid_ceil(times[-1] + recent_len, step)
    shifts: list[StanceShift] = []
    established: str | None = None
    current: StanceShift | None = None
    for end in evaluation_ends(times[0], last, now, step):
        start = end - recent_len
        base_start = start - baseline_len
        i0 = bisect.bisect_left(times, base_start)
        i1 = bisect.bisect_left(times, start)
        i2 = bisect.bisect_left(times, end)
        if i2 - i1 < settings.min_mentions_recent or i1 - i0 < settings.min_mentions_baseline:
            current = None
            continue
        base = window_stats(units[i0:i1], stances, settings.min_share)
        recent = window_stats(units[i1:i2], stances, settings.min_share)
        ok, p, change = _evaluate_shift(base, recent, settings)
        if ok and recent.dominant is not None and base.dominant is not None:
            if recent.dominant == established:
                # The same change, still visible: extend the episode, no new alert.
                if current is not None and current.to_stance == recent.dominant:
                    current.last_end = end
                continue
            window_units = units[i1:i2]
            evidence = _pick_evidence(window_units, recent.dominant, max_evidence)
            # What the actor said just before the change, for contrast.
            evidence += _pick_evidence(
                units[i0:i1], base.dominant, min(2, max_evidence), newest=True
            )
            current = StanceShift(
                actor=actor,
                topic=topic,
                from_stance=base.dominant,
                to_stance=recent.dominant,
                baseline_start=base_start,
                window_start=start,
                window_end=end,
                key_end=grid_ceil(end, step),
                baseline=base,
                recent=recent,
                p_value=p,
                share_change=change,
                last_end=end,
                evidence=evidence,
                timeline=daily_timeline(units, base_start, end, stances),
            )
            shifts.append(current)
            established = recent.dominant
        else:
            if current is not None and recent.dominant != current.to_stance:
                current = None
            if base.dominant is not None and base.dominant == recent.dominant:
                # A stable period: this is the actor's position now, whatever was alerted.
                established = base.dominant
    return shifts


def find_stance_shifts(
    records: Iterable[StanceRecord],
    settings: StanceShiftSettings,
    *,
    now: datetime,
    max_evidence: int = 5,
) -> list[StanceShift]:
    """All stance shifts in the history of every (actor, topic), oldest first."""
    stances = ALL_STANCES if settings.count_neutral else POLAR_STANCES
    groups: dict[tuple[str, str], list[StanceRecord]] = defaultdict(list)
    for rec in records:
        if rec.time < now:
            groups[(rec.actor, rec.topic)].append(rec)
    shifts: list[StanceShift] = []
    for (actor, topic), recs in sorted(groups.items()):
        units = collapse_syndicated(recs, min_confidence=settings.min_confidence, stances=stances)
        shifts.extend(
            find_stance_shifts_for(
                units,
                actor=actor,
                topic=topic,
                settings=settings,
                now=now,
                max_evidence=max_evidence,
            )
        )
    shifts.sort(key=lambda s: (s.window_end, s.actor, s.topic))
    return shifts


# --------------------------------------------------------------------------- coverage spike


@dataclass(frozen=True)
class ArticleRecord:
    """One relevant article as stored in the articles index (what spike detection needs)."""

    time: datetime
    article_id: str
    cluster_id: str
    topics: tuple[str, ...]
    title: str = ""
    url: str = ""
    source: str = ""

    @classmethod
    def from_document(cls, doc_id: str, doc: dict[str, Any]) -> ArticleRecord | None:
        time = parse_time(doc.get("@timestamp"))
        labels = doc.get("topic_labels") or []
        if isinstance(labels, str):
            labels = [labels]
        topics = tuple(t for t in labels if t in TOPICS)
        if time is None or not topics:
            return None
        return cls(
            time=time,
            article_id=doc_id,
            cluster_id=str(doc.get("cluster_id") or doc_id),
            topics=topics,
            title=str(doc.get("title") or ""),
            url=str(doc.get("canonical_url") or doc.get("url") or ""),
            source=_source_name(doc.get("source")),
        )


@dataclass
class CoverageSpike:
    topic: str
    window_start: datetime
    window_end: datetime
    key_end: datetime
    baseline_start: datetime
    count: int
    baseline_count: int
    baseline_mean: float
    ratio: float
    z: float
    last_end: datetime
    window_hours: int
    articles: list[ArticleRecord] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)

    @property
    def alert_id(self) -> str:
        return stable_id("coverage_spike", self.topic, iso(self.key_end) or "")


def collapse_articles(articles: Iterable[ArticleRecord], topic: str) -> list[ArticleRecord]:
    """One article per cluster (its first appearance) for ``topic``, sorted by time."""
    first: dict[str, ArticleRecord] = {}
    for art in articles:
        if topic not in art.topics:
            continue
        seen = first.get(art.cluster_id)
        if seen is None or (art.time, art.article_id) < (seen.time, seen.article_id):
            first[art.cluster_id] = art
    return sorted(first.values(), key=lambda a: (a.time, a.article_id))


def find_coverage_spikes(
    articles: Iterable[ArticleRecord],
    settings: CoverageSpikeSettings,
    *,
    now: datetime,
    data_since: datetime | None = None,
    max_evidence: int = 5,
) -> list[CoverageSpike]:
    """Replay every topic's volume; one :class:`CoverageSpike` per run of spiking windows.

    ``data_since`` is when the store's data begins (any article): a window is judged only
    once its whole baseline lies after it, otherwise the first day of a new installation
    would look like a spike against an empty past.
    """
    records = [a for a in articles if a.time < now]
    window = timedelta(hours=settings.window_hours)
    baseline_len = timedelta(days=settings.baseline_days)
    periods = baseline_len / window
    spikes: list[CoverageSpike] = []
    for topic in TOPICS:
        units = collapse_articles(records, topic)
        if not units:
            continue
        times = [u.time for u in units]
        earliest = data_since or times[0]
        last = grid_ceil(times[-1] + window, window)
        current: CoverageSpike | None = None
        for end in evaluation_ends(times[0], last, now, window):
            start = end - window
            base_start = start - baseline_len
            if base_start < earliest:
                continue
            i0 = bisect.bisect_left(times, base_start)
            i1 = bisect.bisect_left(times, start)
            i2 = bisect.bisect_left(times, end)
            count, base_count = i2 - i1, i1 - i0
            mean = max(base_count / periods, settings.min_baseline_mean)
            ratio = count / mean
            z = poisson_z(count, mean)
            spiking = (
                count >= settings.min_articles
                and ratio >= settings.min_ratio - 1e-9
                and z >= settings.min_z - 1e-9
            )
            if not spiking:
                current = None
                continue
            if current is not None:
                current.last_end = end
                continue
            window_units = sorted(units[i1:i2], key=lambda a: (a.time, a.article_id), reverse=True)
            current = CoverageSpike(
                topic=topic,
                window_start=start,
                window_end=end,
                key_end=grid_ceil(end, window),
                baseline_start=base_start,
                count=count,
                baseline_count=base_count,
                baseline_mean=base_count / periods,
                ratio=ratio,
                z=z,
                last_end=end,
                window_hours=settings.window_hours,
                articles=window_units[:max_evidence],
                timeline=_daily_counts(units, base_start, end),
            )
            spikes.append(current)
    spikes.sort(key=lambda s: (s.window_end, s.topic))
    return spikes


def _daily_counts(
    units: Sequence[ArticleRecord], start: datetime, end: datetime
) -> list[dict[str, Any]]:
    day = timedelta(days=1)
    days: dict[datetime, int] = {}
    point = grid_floor(start, day)
    while point < end:
        days[point] = 0
        point += day
    for unit in units:
        if start <= unit.time < end:
            key = grid_floor(unit.time, day)
            if key in days:
                days[key] += 1
    return [{"date": d.date().isoformat(), "articles": n} for d, n in days.items()]


# ------------------------------------------------------------------------------- alerts


def _status(window_end: datetime, now: datetime, horizon_days: int) -> tuple[str, str | None]:
    if window_end < now - timedelta(days=horizon_days):
        return "suppressed", "outside horizon"
    return "pending", None


def shift_to_alert(shift: StanceShift, *, now: datetime, horizon_days: int) -> Alert:
    """The stored form of a stance shift; status by the horizon."""
    status, reason = _status(shift.window_end, now, horizon_days)
    evidence = [
        AlertEvidence(
            article_id=u.record.article_id,
            url=u.record.url,
            title=u.record.title,
            source=u.record.source,
            published=u.time,
            period="recent" if u.time >= shift.window_start else "baseline",
            stance=u.stance,
            score=round(u.weight, 4),
            sentence=u.record.evidence,
        )
        for u in shift.evidence
    ]
    return Alert(
        id=shift.alert_id,
        kind="stance_shift",
        topic=shift.topic,
        actor=shift.actor,
        from_stance=shift.from_stance,
        to_stance=shift.to_stance,
        window_start=shift.window_start,
        window_end=shift.window_end,
        baseline_start=shift.baseline_start,
        baseline_end=shift.window_start,
        stats={
            "baseline": shift.baseline.as_dict(),
            "recent": shift.recent.as_dict(),
            "p_value": round(shift.p_value, 6),
            "share_change": round(shift.share_change, 4),
            "from_share_before": round(shift.baseline.shares[shift.from_stance], 4),
            "from_share_after": round(shift.recent.shares[shift.from_stance], 4),
            "to_share_before": round(shift.baseline.shares[shift.to_stance], 4),
            "to_share_after": round(shift.recent.shares[shift.to_stance], 4),
            "key_end": iso(shift.key_end),
            "timeline": shift.timeline,
        },
        evidence_article_ids=list(dict.fromkeys(e.article_id for e in evidence if e.article_id)),
        evidence=evidence,
        detected_at=now,
        status=status,
        status_reason=reason,
    )


def spike_to_alert(spike: CoverageSpike, *, now: datetime, horizon_days: int) -> Alert:
    status, reason = _status(spike.window_end, now, horizon_days)
    evidence = [
        AlertEvidence(
            article_id=a.article_id,
            url=a.url,
            title=a.title,
            source=a.source,
            published=a.time,
            period="recent",
        )
        for a in spike.articles
    ]
    return Alert(
        id=spike.alert_id,
        kind="coverage_spike",
        topic=spike.topic,
        window_start=spike.window_start,
        window_end=spike.window_end,
        baseline_start=spike.baseline_start,
        baseline_end=spike.window_start,
        stats={
            "articles": spike.count,
            "window_hours": spike.window_hours,
            "baseline_articles": spike.baseline_count,
            "baseline_mean": round(spike.baseline_mean, 4),
            "ratio": round(spike.ratio, 3),
            "z": round(spike.z, 3),
            "key_end": iso(spike.key_end),
            "timeline": spike.timeline,
        },
        evidence_article_ids=[e.article_id for e in evidence],
        evidence=evidence,
        detected_at=now,
        status=status,
        status_reason=reason,
    )


def same_event(
    candidate: Alert, last_end: datetime, existing: dict[str, Any], settings: AlertSettings
) -> bool:
    """Is a stored alert (``existing``, its document) the same real event as ``candidate``?

    Same kind, actor, topic and direction, and the stored alert's window end lies within
    the candidate's episode (from one recent window before its first detection to the last
    evaluation at which it still held). This catches a first detection that moved because
    late articles arrived, or a shift first seen at a partial window (``now``) and then at
    the grid point after it.
    """
    if existing.get("kind") != candidate.kind or existing.get("topic") != candidate.topic:
        return False
    end = parse_time(existing.get("window_end"))
    if end is None:
        return False
    if candidate.kind == "stance_shift":
        if (
            existing.get("actor") != candidate.actor
            or existing.get("from_stance") != candidate.from_stance
            or existing.get("to_stance") != candidate.to_stance
        ):
            return False
        slack = timedelta(days=settings.stance_shift.recent_days)
    else:
        slack = timedelta(hours=settings.coverage_spike.window_hours)
    return candidate.window_end - slack <= end <= last_end


class DetectResult(BaseModel):
    """What one detection run found and stored."""

    now: datetime
    stance_mentions: int = 0
    articles: int = 0
    found: int = Field(default=0, description="Events in the replayed history")
    new: list[Alert] = Field(default_factory=list, description="Stored by this run")
    existing: int = Field(default=0, description="Already stored: delivery state kept")


def candidate_alerts(
    stance_records: Iterable[StanceRecord],
    article_records: Iterable[ArticleRecord],
    settings: AlertSettings,
    *,
    now: datetime,
    data_since: datetime | None = None,
) -> list[tuple[Alert, datetime]]:
    """Every event in the history as (alert, last evaluation at which it held); pure."""
    out: list[tuple[Alert, datetime]] = []
    for shift in find_stance_shifts(
        stance_records, settings.stance_shift, now=now, max_evidence=settings.max_evidence
    ):
        out.append(
            (shift_to_alert(shift, now=now, horizon_days=settings.horizon_days), shift.last_end)
        )
    for spike in find_coverage_spikes(
        article_records,
        settings.coverage_spike,
        now=now,
        data_since=data_since,
        max_evidence=settings.max_evidence,
    ):
        out.append(
            (spike_to_alert(spike, now=now, horizon_days=settings.horizon_days), spike.last_end)
        )
    return out


def new_alerts(
    candidates: Sequence[tuple[Alert, datetime]],
    existing: dict[str, dict[str, Any]],
    settings: AlertSettings,
) -> tuple[list[Alert], int]:
    """Candidates not stored yet (by id or as the same event); and how many were."""
    fresh: list[Alert] = []
    known = 0
    stored = dict(existing)
    for alert, last_end in candidates:
        if alert.id in stored or any(
            same_event(alert, last_end, doc, settings) for doc in stored.values()
        ):
            known += 1
            continue
        fresh.append(alert)
        stored[alert.id] = alert.to_document()
    return fresh, known


def _time_range(now: datetime, replay_days: int) -> dict[str, Any]:
    bounds: dict[str, str] = {"lt": iso(now) or ""}
    if replay_days:
        bounds["gte"] = iso(now - timedelta(days=replay_days)) or ""
    return {"range": {"@timestamp": bounds}}


def load_stance_records(
    store: AlertStore, *, now: datetime, replay_days: int = 0
) -> list[StanceRecord]:
    records: list[StanceRecord] = []
    skipped = 0
    query = {"bool": {"filter": [_time_range(now, replay_days)]}}
    for _, doc in store.scan("stances", query, fields=STANCE_FIELDS):
        rec = StanceRecord.from_document(doc)
        if rec is None:
            skipped += 1
        else:
            records.append(rec)
    if skipped:
        log.warning("detect: skipped %d stance documents without actor/topic/stance/time", skipped)
    return records


def load_article_records(
    store: AlertStore, *, now: datetime, replay_days: int = 0
) -> tuple[list[ArticleRecord], datetime | None]:
    """Relevant articles, and when the store's articles begin (for the spike baseline)."""
    time_range = _time_range(now, replay_days)
    query = {"bool": {"filter": [time_range, {"term": {"relevant": True}}]}}
    records = [
        rec
        for doc_id, doc in store.scan("articles", query, fields=ARTICLE_FIELDS)
        if (rec := ArticleRecord.from_document(doc_id, doc)) is not None
    ]
    body = {
        "size": 0,
        "query": {"bool": {"filter": [time_range]}},
        "aggs": {"first": {"min": {"field": "@timestamp"}}},
    }
    response = store.search("articles", body)
    agg = (response.get("aggregations") or {}).get("first") or {}
    first_value = agg.get("value_as_string") or agg.get("value")
    first: datetime | None = None
    if isinstance(first_value, (int, float)):
        first = datetime.fromtimestamp(first_value / 1000, tz=UTC)
    elif isinstance(first_value, str):
        first = parse_time(first_value)
    return records, first


def load_alert_documents(store: AlertStore) -> dict[str, dict[str, Any]]:
    return dict(store.scan("alerts", {"match_all": {}}, fields=None))


def detect(store: AlertStore, config: AppConfig, *, now: datetime) -> DetectResult:
    """Replay the stored history, store alerts for events not stored before.

    Existing alerts are never rewritten, so their delivery state (sent, failed, attempts)
    survives any number of runs and replays. New alerts whose recent window ended before
    ``now - horizon_days`` are stored as ``suppressed`` ("outside horizon"): visible in
    Kibana and ``stancewatch alerts list``, never e-mailed.
    """
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    now = now.astimezone(UTC)
    settings = config.alerts
    stance_records = load_stance_records(store, now=now, replay_days=settings.replay_days)
    article_records, data_since = load_article_records(
        store, now=now, replay_days=settings.replay_days
    )
    candidates = candidate_alerts(
        stance_records, article_records, settings, now=now, data_since=data_since
    )
    existing = load_alert_documents(store)
    fresh, known = new_alerts(candidates, existing, settings)
    if fresh:
        report = store.write("alerts", [(a.id, a.to_document()) for a in fresh])
        failed = getattr(report, "failed", None)
        if failed:
            log.warning("detect: %d alerts could not be written: %s", len(failed), failed[:3])
        store.refresh("alerts")
    return DetectResult(
        now=now,
        stance_mentions=len(stance_records),
        articles=len(article_records),
        found=len(candidates),
        new=fresh,
        existing=known,
    )
