"""The shipped configuration files: the real default feeds and the bundled offline demo.

These tests read the files exactly as a run does (``AppConfig`` and feedparser), so an edit
that breaks a feed entry, a demo feed or the demo's story fails here first. The demo's answer
key is the YAML block at the end of ``config/demo/EXPECTED.md``; the detectors' pure functions
are run on those gold labels to prove that the demo, labelled perfectly, produces exactly the
alerts the answer key promises with the default alert settings.
"""

from __future__ import annotations

import calendar
import html
import re
from collections import Counter
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import feedparser
import pytest
import yaml

from pipeline.config import AlertSettings, AppConfig, ConfigError, FeedConfig
from pipeline.detect import (
    ArticleRecord,
    StanceRecord,
    find_coverage_spikes,
    find_stance_shifts,
)

PROJECT_DIR = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_DIR / "config"
DEMO_DIR = CONFIG_DIR / "demo"
EXPECTED_MD = DEMO_DIR / "EXPECTED.md"

DEMO_NOW = datetime(2025, 3, 15, 12, tzinfo=UTC)
DEMO_START = datetime(2025, 1, 6, tzinfo=UTC)
FUTURE_DAY = datetime(2025, 4, 30, tzinfo=UTC).date()


# ------------------------------------------------------------------------------ helpers


@cache
def real_feeds() -> tuple[FeedConfig, ...]:
    return tuple(AppConfig(CONFIG_DIR).feeds)


@cache
def demo_config() -> AppConfig:
    return AppConfig(DEMO_DIR).validate()


@cache
def parsed_demo_feed(path: Path) -> Any:
    return feedparser.parse(path.read_bytes())


def demo_feed_path(feed: FeedConfig) -> Path:
    url = demo_config().resolve_feed_url(feed)
    assert url.startswith("file://"), f"demo feed {feed.id} must be a bundled file, got {url}"
    return Path(urlsplit(url).path)


def entry_time(entry: Any) -> datetime:
    parsed = entry.get("published_parsed") or entry.get("updated_parsed")
    assert parsed is not None, f"entry {entry.get('id')} has no date"
    return datetime.fromtimestamp(calendar.timegm(parsed), UTC)


#: WordPress feeds set typographic quotes; the answer key is written with plain ones.
_PLAIN_QUOTES = {ord("\u2018"): "'", ord("\u2019"): "'", ord("\u201c"): '"', ord("\u201d"): '"'}


def entry_text(entry: Any) -> str:
    """Title and body as plain text, the way a reader sees it (HTML and entities resolved)."""
    parts = [entry.get("title", "")]
    if entry.get("content"):
        parts += [c.value for c in entry.content]
    else:
        parts.append(entry.get("summary", ""))
    text = html.unescape(re.sub(r"<[^>]+>", " ", " ".join(parts)))
    return re.sub(r"\s+", " ", text.translate(_PLAIN_QUOTES))


@cache
def demo_entries() -> dict[tuple[str, str], Any]:
    """(feed id, entry id) -> feedparser entry, for every demo item."""
    out: dict[tuple[str, str], Any] = {}
    for feed in demo_config().feeds:
        for entry in parsed_demo_feed(demo_feed_path(feed)).entries:
            out[(feed.id, entry.id)] = entry
    return out


@cache
def answer_key() -> dict[str, Any]:
    text = EXPECTED_MD.read_text(encoding="utf-8")
    match = re.search(r"^```yaml\n(.*?)^```", text, re.S | re.M)
    assert match, "EXPECTED.md must end with a ```yaml answer-key block"
    key = yaml.safe_load(match.group(1))
    assert isinstance(key, dict)
    return key


def shingles(text: str, size: int = 3) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.casefold())
    return {tuple(words[i : i + size]) for i in range(len(words) - size + 1)}


# --------------------------------------------------------------------- the real feeds


def test_real_feeds_count_and_unique_ids() -> None:
    feeds = real_feeds()
    assert 25 <= len(feeds) <= 40, len(feeds)
    ids = [f.id for f in feeds]
    assert len(ids) == len(set(ids))
    urls = [f.url for f in feeds]
    assert len(urls) == len(set(urls)), "the same feed URL is listed twice"


@pytest.mark.parametrize("feed", real_feeds(), ids=lambda f: f.id)
def test_real_feed_entry_is_complete(feed: FeedConfig) -> None:
    parts = urlsplit(feed.url)
    assert parts.scheme == "https", f"{feed.id}: use the outlet's https URL"
    assert parts.hostname and "." in parts.hostname
    assert not parts.hostname.endswith((".example", ".test", ".invalid", "localhost"))
    assert feed.name, f"{feed.id}: name is missing"
    assert feed.language, f"{feed.id}: language is missing"
    assert feed.country, f"{feed.id}: country is missing"
    assert 15 <= feed.poll_minutes <= 60
    assert feed.enabled


def test_real_feeds_cover_the_conflict_from_several_sides() -> None:
    countries = Counter(f.country for f in real_feeds())
    for country in ("UA", "RU", "US", "GB", "TR", "IL"):
        assert countries[country] >= 1, f"no outlet from {country}"
    # Full-text fetching is opt-in, for a couple of outlets whose terms allow it.
    assert 1 <= sum(f.full_text for f in real_feeds()) <= 3


# ------------------------------------------------------------------------------ the demo


def test_demo_config_loads_with_bundled_feed_files() -> None:
    feeds = demo_config().feeds
    assert 5 <= len(feeds) <= 7
    for feed in feeds:
        assert not urlsplit(feed.url).scheme, f"{feed.id}: demo feeds are relative paths"
        path = demo_feed_path(feed)
        assert path.is_file(), path
        assert path.resolve().is_relative_to(DEMO_DIR.resolve())
        assert feed.language and feed.country
        assert not feed.full_text, "the demo is offline: no article pages to fetch"


@pytest.mark.parametrize("feed_id", [f.id for f in AppConfig(DEMO_DIR).feeds])
def test_demo_feed_parses_cleanly(feed_id: str) -> None:
    feed = next(f for f in demo_config().feeds if f.id == feed_id)
    parsed = parsed_demo_feed(demo_feed_path(feed))
    assert not parsed.bozo, f"{feed_id}: {parsed.get('bozo_exception')}"
    assert parsed.version in ("rss20", "atom10")
    assert parsed.feed.get("title")
    entries = parsed.entries
    assert len(entries) >= 10
    ids = [e.id for e in entries]
    assert len(ids) == len(set(ids)), f"{feed_id}: duplicate guids"
    for entry in entries:
        assert entry.get("title") and entry.get("link")
        words = len(entry_text(entry).split()) - len(entry.title.split())
        assert 60 <= words <= 200, f"{feed_id} {entry.id}: body has {words} words"


def test_demo_dates_lie_in_the_timeline_except_one_future_item() -> None:
    entries = demo_entries()
    assert 70 <= len(entries) <= 90
    outside = {
        k: entry_time(e)
        for k, e in entries.items()
        if not (DEMO_START <= entry_time(e) <= DEMO_NOW)
    }
    assert len(outside) == 1, outside
    (when,) = outside.values()
    assert when.date() == FUTURE_DAY


def test_answer_key_covers_every_demo_item() -> None:
    key = answer_key()
    assert key["now"] == DEMO_NOW
    listed = {(item["feed"], item["guid"]): item for item in key["items"]}
    assert len(listed) == len(key["items"]), "an item is listed twice in EXPECTED.md"
    entries = demo_entries()
    assert set(listed) == set(entries)
    for ident, item in listed.items():
        assert item["published"] == entry_time(entries[ident]), ident
        relevant = item["territorial_concessions"] or item["peace_talks"]
        assert (item["label"] == "positive") == relevant, ident
    labels = Counter(item["label"] for item in key["items"])
    share = {label: n / len(key["items"]) for label, n in labels.items()}
    assert 0.40 <= share["positive"] <= 0.52
    assert 0.25 <= share["hard_negative"] <= 0.35
    assert 0.18 <= share["negative"] <= 0.30


def test_shifting_actor_evidence_is_verbatim_in_the_feeds() -> None:
    shift = answer_key()["stance_shifts"][0]
    entries = demo_entries()
    timeline: list[tuple[datetime, str]] = []
    for item in answer_key()["items"]:
        for stance in item["stances"]:
            if stance["actor"] != shift["actor"]:
                continue
            text = entry_text(entries[(item["feed"], item["guid"])])
            assert stance["evidence"] in text, (item["guid"], stance["evidence"])
            assert shift["actor"] in stance["evidence"]
            timeline.append((item["published"], stance["stance"]))
    # Every "from" mention comes before every "to" mention: one clean change, no back-and-forth.
    order = [s for _, s in sorted(timeline)]
    n_from, n_to = order.count(shift["from"]), order.count(shift["to"])
    assert order == [shift["from"]] * n_from + [shift["to"]] * n_to, order
    assert n_from >= 5 and n_to >= 4


def test_demo_duplicates_are_real_duplicates() -> None:
    entries = demo_entries()
    items = answer_key()["items"]
    by_guid = {item["guid"]: item for item in items}
    exact = [item for item in items if "duplicate_of" in item]
    assert len(exact) == 1
    copy, original = exact[0], by_guid[exact[0]["duplicate_of"]]
    assert copy["feed"] != original["feed"]
    assert (
        entries[(copy["feed"], copy["guid"])].link
        == entries[(original["feed"], original["guid"])].link
    )
    cluster = [item for item in items if "cluster" in item]
    assert len(cluster) == 2 and len({item["feed"] for item in cluster}) == 2
    first, second = (entries[(item["feed"], item["guid"])] for item in cluster)
    assert first.link != second.link
    a, b = shingles(entry_text(first)), shingles(entry_text(second))
    similarity = len(a & b) / len(a | b)
    assert 0.7 <= similarity < 1.0, similarity


def test_gold_labels_give_exactly_the_promised_alerts_with_default_settings() -> None:
    """Perfect classification of the demo must yield the one shift and the one spike."""
    key = answer_key()
    settings = AlertSettings()
    stances: list[StanceRecord] = []
    articles: list[ArticleRecord] = []
    for item in key["items"]:
        if "duplicate_of" in item:
            continue  # the same URL: one stored article
        when = min(item["published"], DEMO_NOW)  # future dates are clamped to the clock
        article_id = f"{item['feed']}/{item['guid']}"
        cluster = item.get("cluster", article_id)
        for stance in item["stances"]:
            stances.append(
                StanceRecord(
                    time=when,
                    actor=stance["actor"],
                    topic=stance["topic"],
                    stance=stance["stance"],
                    score=0.9,
                    cluster_id=cluster,
                    article_id=article_id,
                )
            )
        topics = tuple(t for t in ("territorial_concessions", "peace_talks") if item[t])
        if topics:
            articles.append(
                ArticleRecord(time=when, article_id=article_id, cluster_id=cluster, topics=topics)
            )
    articles.sort(key=lambda a: a.time)

    shifts = find_stance_shifts(stances, settings.stance_shift, now=DEMO_NOW)
    assert [(s.actor, s.topic, s.from_stance, s.to_stance, s.window_end) for s in shifts] == [
        (s["actor"], s["topic"], s["from"], s["to"], s["first_window_end"])
        for s in key["stance_shifts"]
    ]
    stable = {(s["actor"], s["topic"]) for s in key["stable"]}
    assert not stable & {(s.actor, s.topic) for s in shifts}

    spikes = find_coverage_spikes(articles, settings.coverage_spike, now=DEMO_NOW)
    assert [(s.topic, s.window_end) for s in spikes] == [
        (s["topic"], s["first_window_end"]) for s in key["coverage_spikes"]
    ]
    assert spikes[0].last_end == DEMO_NOW, "the spike should still be running at --now"


# ----------------------------------------------------------------- broken feeds.yaml


def _broken_copy(tmp_path: Path, old: str, new: str) -> Path:
    text = (CONFIG_DIR / "feeds.yaml").read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "feeds.yaml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "    url: https://www.theguardian.com/world/ukraine/rss\n",
            "",
            "feeds[2] (id 'guardian-ukraine').url: required key is missing",
        ),
        (
            "    url: https://tass.com/rss/v2.xml\n    language: en\n    country: RU\n"
            "    poll_minutes: 15\n",
            "    url: https://tass.com/rss/v2.xml\n    language: en\n    country: RU\n"
            "    poll_minutes: every quarter hour\n",
            "(id 'tass-en').poll_minutes:",
        ),
    ],
    ids=["missing-url", "poll-minutes-not-a-number"],
)
def test_broken_real_feeds_file_is_one_line_naming_file_and_key(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    path = _broken_copy(tmp_path, old, new)
    with pytest.raises(ConfigError) as info:
        AppConfig(tmp_path).validate()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: "), message
    assert expected in message, message
