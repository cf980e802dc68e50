"""Stance-shift and coverage-spike detection: pure functions on hand-made timelines.

Stance records are built with ``Article(...).stance_documents()`` so that detection reads
the exact document shape the store holds.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from pipeline.config import (
    DEFAULT_CONFIG_DIR,
    AlertSettings,
    CoverageSpikeSettings,
    load_yaml_model,
)
from pipeline.detect import (
    ArticleRecord,
    StanceRecord,
    candidate_alerts,
    collapse_syndicated,
    evaluation_ends,
    find_coverage_spikes,
    find_stance_shifts,
    fisher_one_sided,
    new_alerts,
    same_event,
)
from pipeline.models import Article, ClassifiedText, SourceInfo, StanceMention, TopicScore

T0 = datetime(2023, 3, 1, tzinfo=UTC)
#: The shipped defaults (config/alerts.yaml), which is what users run with.
SHIPPED = load_yaml_model(DEFAULT_CONFIG_DIR / "alerts.yaml", AlertSettings)
SHIFT = SHIPPED.stance_shift
TC = "territorial_concessions"
PT = "peace_talks"


def _article(
    n: int,
    when: datetime,
    stances: list[tuple[str, str, float]],
    *,
    topic: str = TC,
    cluster: str | None = None,
    source: str = "Kyiv Wire",
    title: str | None = None,
) -> Article:
    url = f"https://news.example.org/{when:%Y/%m/%d}/story-{n}"
    return Article(
        id=f"art-{n}",
        url=url,
        canonical_url=url,
        source=SourceInfo(feed_id="kw", name=source, domain="news.example.org", language="en"),
        title=title or f"Story {n} on the war and the negotiations",
        summary="",
        published=when,
        fetched_at=when + timedelta(minutes=5),
        content_hash=f"h{n}",
        cluster_id=cluster,
        classification=ClassifiedText(
            id=f"art-{n}",
            topics={topic: TopicScore(label=True, score=0.9)},
            stances=[
                StanceMention(
                    actor=actor,
                    mention=actor.split()[-1],
                    topic=topic,  # type: ignore[arg-type]
                    stance=stance,  # type: ignore[arg-type]
                    score=score,
                    evidence=f"{actor} said something {stance} in story {n}.",
                )
                for actor, stance, score in stances
            ],
        ),
    )


def _actors(article: Article) -> str:
    assert article.classification is not None
    return " ".join(s.actor for s in article.classification.stances)


def _records(articles: list[Article]) -> list[StanceRecord]:
    out = []
    for art in articles:
        for _, doc in art.stance_documents():
            rec = StanceRecord.from_document(doc)
            assert rec is not None
            out.append(rec)
    return out


def scenario(seed: int = 7) -> list[Article]:
    """60 days of coverage: Stoltenberg opposes concessions, then (day 45) supports them;
    Zelenskyy opposes throughout; a noisy actor is mostly supportive with label noise;
    low-confidence mentions sprinkled in."""
    rng = random.Random(seed)
    arts: list[Article] = []
    n = 0
    for day in range(60):
        when = T0 + timedelta(days=day, hours=rng.randint(6, 20))
        if day % 2 == 0:
            stance = "oppose" if day < 45 else "support"
            n += 1
            arts.append(_article(n, when, [("Jens Stoltenberg", stance, rng.uniform(0.7, 0.95))]))
        if day % 3 == 0:
            n += 1
            arts.append(
                _article(n, when, [("Volodymyr Zelenskyy", "oppose", rng.uniform(0.7, 0.99))])
            )
        if day % 2 == 1:
            # A supportive actor seen through a noisy classifier: isolated wrong labels
            # (about one in six), neutral reports, and unsure labels below min_confidence.
            roll = rng.random()
            if roll < 0.15 and not any(
                "Erdogan" in a.title and a.published > when - timedelta(days=7) for a in arts
            ):
                noisy, conf = "oppose", rng.uniform(0.5, 0.9)
            elif roll < 0.3:
                noisy, conf = "neutral", rng.uniform(0.5, 0.9)
            elif roll < 0.4:
                noisy, conf = "oppose", rng.uniform(0.2, 0.45)
            else:
                noisy, conf = "support", rng.uniform(0.55, 0.95)
            n += 1
            arts.append(
                _article(n, when, [("Recep Tayyip Erdogan", noisy, conf)], title=f"Erdogan {noisy}")
            )
        if day % 5 == 0:
            n += 1
            arts.append(_article(n, when, [("Viktor Orban", "support", 0.3)]))  # below confidence
    return arts


NOW = T0 + timedelta(days=52)


def test_one_actor_moving_gives_exactly_one_shift() -> None:
    shifts = find_stance_shifts(_records(scenario()), SHIFT, now=NOW)
    assert [(s.actor, s.from_stance, s.to_stance) for s in shifts] == [
        ("Jens Stoltenberg", "oppose", "support")
    ]
    shift = shifts[0]
    assert shift.topic == TC
    # The move is on day 45 (supportive reports on days 46, 48, 50): first detected once
    # three of them outweigh the last opposing report in the recent window.
    assert shift.window_end == T0 + timedelta(days=51)
    assert shift.recent.dominant == "support" and shift.baseline.dominant == "oppose"
    assert shift.recent.units >= 3 and shift.baseline.units >= 3
    assert shift.p_value <= 0.05
    assert all(u.record.actor == "Jens Stoltenberg" for u in shift.evidence)
    recent_ev = [u for u in shift.evidence if u.time >= shift.window_start]
    assert recent_ev and all(u.stance == "support" for u in recent_ev)


def test_stable_and_noisy_actors_give_none_over_many_seeds() -> None:
    for seed in range(20):
        arts = [a for a in scenario(seed) if "Stoltenberg" not in a.title + _actors(a)]
        shifts = find_stance_shifts(_records(arts), SHIFT, now=T0 + timedelta(days=70))
        assert shifts == [], f"seed {seed}: {[(s.actor, s.to_stance) for s in shifts]}"


def test_later_runs_find_the_same_single_shift_with_the_same_id() -> None:
    records = _records(scenario())
    ids = []
    for days in (51, 51.5, 52, 55.25, 60, 90):
        now = T0 + timedelta(days=days)
        shifts = find_stance_shifts(records, SHIFT, now=now)
        assert len(shifts) == 1, days
        ids.append(shifts[0].alert_id)
    assert len(set(ids)) == 1
    shuffled = list(records)
    random.Random(1).shuffle(shuffled)
    assert find_stance_shifts(shuffled, SHIFT, now=NOW)[0].alert_id == ids[0]


def test_a_move_back_is_a_second_alert_but_persistence_is_not() -> None:
    arts: list[Article] = []
    for day in range(0, 120, 2):
        stance = "oppose" if day < 40 or day >= 80 else "support"
        arts.append(
            _article(day, T0 + timedelta(days=day, hours=9), [("Sauli Niinisto", stance, 0.9)])
        )
    shifts = find_stance_shifts(_records(arts), SHIFT, now=T0 + timedelta(days=130))
    assert [(s.from_stance, s.to_stance) for s in shifts] == [
        ("oppose", "support"),
        ("support", "oppose"),
    ]
    assert shifts[0].alert_id != shifts[1].alert_id
    # The first shift held for several days before the windows filled with support.
    assert shifts[0].last_end > shifts[0].window_end


def test_syndicated_copies_count_once() -> None:
    arts = [
        _article(i, T0 + timedelta(days=i * 3), [("Jens Stoltenberg", "oppose", 0.9)])
        for i in range(8)
    ]
    # One wire story reprinted by ten outlets within a day: one piece of evidence.
    when = T0 + timedelta(days=30)
    for copy in range(10):
        arts.append(
            _article(
                100 + copy,
                when + timedelta(hours=copy),
                [("Jens Stoltenberg", "support", 0.95)],
                cluster="wire-1",
                source=f"Outlet {copy}",
            )
        )
    records = _records(arts)
    units = collapse_syndicated(
        [r for r in records if r.time >= when], min_confidence=0.5, stances=("support", "oppose")
    )
    assert len(units) == 1 and units[0].time == when
    assert find_stance_shifts(records, SHIFT, now=T0 + timedelta(days=34)) == []
    # Two more independent stories make three units: now it is a shift, counted as 3.
    for k in range(2):
        arts.append(
            _article(200 + k, when + timedelta(days=1 + k), [("Jens Stoltenberg", "support", 0.9)])
        )
    shifts = find_stance_shifts(_records(arts), SHIFT, now=T0 + timedelta(days=34))
    assert len(shifts) == 1 and shifts[0].recent.units == 3


def test_neutral_reporting_does_not_dilute_or_decide() -> None:
    arts = []
    for day in range(0, 40, 2):
        arts.append(_article(day, T0 + timedelta(days=day), [("Jens Stoltenberg", "neutral", 0.9)]))
    arts += [
        _article(500 + d, T0 + timedelta(days=d), [("Jens Stoltenberg", "oppose", 0.8)])
        for d in (3, 9, 15)
    ]
    arts += [
        _article(600 + d, T0 + timedelta(days=d), [("Jens Stoltenberg", "support", 0.8)])
        for d in (34, 35, 37)
    ]
    records = _records(arts)
    now = T0 + timedelta(days=38)
    assert len(find_stance_shifts(records, SHIFT, now=now)) == 1
    with_neutral = SHIFT.model_copy(update={"count_neutral": True})
    assert find_stance_shifts(records, with_neutral, now=now) == []


def test_thresholds_come_from_settings() -> None:
    records = _records(scenario())
    # On day 51 the recent window holds 3 supportive and 1 opposing report (share 0.75).
    strict = SHIFT.model_copy(update={"min_share": 0.8})
    assert find_stance_shifts(records, strict, now=T0 + timedelta(days=51)) == []
    (shift,) = find_stance_shifts(records, strict, now=T0 + timedelta(days=52))
    assert shift.window_end == T0 + timedelta(days=52)
    fewer = SHIFT.model_copy(update={"min_mentions_recent": 5})
    assert find_stance_shifts(records, fewer, now=T0 + timedelta(days=70)) == []
    assert (
        find_stance_shifts(records, SHIFT.model_copy(update={"max_p_value": 0.001}), now=NOW) == []
    )


def test_horizon_suppresses_old_shifts_and_keeps_them() -> None:
    records = _records(scenario())
    settings = SHIPPED
    fresh = candidate_alerts(records, [], settings, now=NOW)
    assert [a.status for a, _ in fresh] == ["pending"]
    late = candidate_alerts(records, [], settings, now=T0 + timedelta(days=90))
    assert [(a.status, a.status_reason) for a, _ in late] == [("suppressed", "outside horizon")]
    assert late[0][0].id == fresh[0][0].id
    alert = fresh[0][0]
    assert alert.stats["recent"]["dominant"] == "support"
    assert alert.stats["to_share_after"] >= 0.6
    assert alert.evidence and alert.evidence[0].url.startswith("https://news.example.org/")
    assert alert.evidence_article_ids


def test_stored_alerts_keep_their_state_and_moved_detections_match() -> None:
    records = _records(scenario())
    settings = SHIPPED
    ((alert, last_end),) = candidate_alerts(records, [], settings, now=NOW)
    stored = alert.model_copy(update={"status": "sent"})
    existing = {stored.id: stored.to_document()}
    fresh, known = new_alerts([(alert, last_end)], existing, settings)
    assert fresh == [] and known == 1
    # Late articles move the first detection two days earlier: a different id, same event.
    moved = alert.model_copy(
        update={"id": "other", "window_end": alert.window_end - timedelta(days=2)}
    )
    assert same_event(moved, last_end, existing[stored.id], settings)
    fresh, known = new_alerts([(moved, last_end)], existing, settings)
    assert fresh == [] and known == 1
    opposite = moved.model_copy(update={"to_stance": "oppose", "from_stance": "support"})
    assert not same_event(opposite, last_end, existing[stored.id], settings)


def test_fisher_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for table in [(0, 3, 3, 0), (1, 9, 4, 1), (5, 5, 5, 5), (0, 12, 2, 1), (3, 0, 0, 3)]:
        a, b, c, d = table
        expected = stats.fisher_exact([[c, d], [a, b]], alternative="greater").pvalue
        assert fisher_one_sided(a, b, c, d) == pytest.approx(expected, rel=1e-9)


def test_evaluation_grid_is_independent_of_now() -> None:
    step = timedelta(days=1)
    first = T0 + timedelta(hours=5)
    a = evaluation_ends(first, T0 + timedelta(days=30), T0 + timedelta(days=10, hours=3), step)
    b = evaluation_ends(first, T0 + timedelta(days=30), T0 + timedelta(days=12), step)
    assert a[:-1] == b[: len(a) - 1]
    assert a[-1] == T0 + timedelta(days=10, hours=3)
    assert b[-1] == T0 + timedelta(days=12) and b[-2] == T0 + timedelta(days=11)


# --------------------------------------------------------------------------- coverage


def _arts(
    topic: str, times: list[datetime], *, cluster: str | None = None, start: int = 0
) -> list[ArticleRecord]:
    return [
        ArticleRecord(
            time=t,
            article_id=f"{topic}-{start + i}",
            cluster_id=cluster or f"{topic}-{start + i}",
            topics=(topic,),
            title=f"Talks article {start + i}",
            url=f"https://news.example.org/a/{start + i}",
            source="Kyiv Wire",
        )
        for i, t in enumerate(times)
    ]


def _steady(days: int, per_day: int, topic: str = PT) -> list[ArticleRecord]:
    times = [
        T0 + timedelta(days=d, hours=3 + 20 * k / per_day)
        for d in range(days)
        for k in range(per_day)
    ]
    return _arts(topic, times)


def test_coverage_spike_once_with_numbers() -> None:
    base = _steady(20, 3)
    burst_day = T0 + timedelta(days=20)
    burst = _arts(PT, [burst_day + timedelta(hours=1 + h) for h in range(14)], start=1000)
    now = burst_day + timedelta(hours=20)
    spikes = find_coverage_spikes(base + burst, CoverageSpikeSettings(), now=now, data_since=T0)
    assert len(spikes) == 1
    spike = spikes[0]
    assert spike.topic == PT and spike.count == 14
    assert spike.baseline_mean == pytest.approx(3.0)
    assert spike.ratio == pytest.approx(14 / 3)
    assert spike.z > 3
    # Next day, and a replay later: the same single spike, same id.
    later = find_coverage_spikes(
        base + burst, CoverageSpikeSettings(), now=now + timedelta(days=3), data_since=T0
    )
    assert [s.alert_id for s in later] == [spike.alert_id]


def test_steady_volume_new_installations_and_syndication_give_no_spike() -> None:
    base = _steady(20, 3)
    assert (
        find_coverage_spikes(
            base, CoverageSpikeSettings(), now=T0 + timedelta(days=21), data_since=T0
        )
        == []
    )
    burst_day = T0 + timedelta(days=20)
    copies = _arts(
        PT, [burst_day + timedelta(hours=h) for h in range(14)], cluster="wire-7", start=2000
    )
    assert (
        find_coverage_spikes(
            base + copies,
            CoverageSpikeSettings(),
            now=burst_day + timedelta(hours=20),
            data_since=T0,
        )
        == []
    )
    # A store that began yesterday has no baseline yet: its first busy day is not a spike.
    fresh = _arts(PT, [burst_day + timedelta(hours=h) for h in range(14)], start=3000)
    assert (
        find_coverage_spikes(
            fresh,
            CoverageSpikeSettings(),
            now=burst_day + timedelta(hours=20),
            data_since=burst_day - timedelta(days=1),
        )
        == []
    )
