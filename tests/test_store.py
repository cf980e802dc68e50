"""The store against the real local Elasticsearch node: templates, aliases, rollover, upserts.

Every test gets its own index prefix (``index_prefix`` fixture), so tests never see each
other's documents and their indices and templates are deleted afterwards.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import Elasticsearch

from pipeline.config import Environment, StoreSettings
from pipeline.models import (
    Alert,
    AlertEvidence,
    Article,
    ClassifiedText,
    FeedState,
    SourceInfo,
    StanceMention,
    TerritoryMention,
    TopicScore,
)
from pipeline.store import KINDS, Store, StoreUnavailable
from pipeline.store import indices as indices_module
from pipeline.store.indices import (
    ClusterFeatures,
    build_policy,
    build_template,
    mapping_for,
)

PROJECT_DIR = Path(__file__).resolve().parent.parent
BASE_TIME = datetime(2023, 8, 15, 9, 30, tzinfo=UTC)

TITLES = [
    "NATO chief says Ukraine may have to cede territory to end the war",
    "Zelensky: Ukraine is not ready to give up any of its land",
    "Envoys meet in Istanbul as ceasefire talks resume",
    "Kremlin rejects proposal for a Black Sea truce",
    "Armenia and Azerbaijan agree on border commission",
    "Local football club wins territory dispute over training ground",
]


def vector(seed: int, dims: int = 384) -> list[float]:
    rng = random.Random(seed)
    values = [rng.gauss(0, 1) for _ in range(dims)]
    norm = math.sqrt(sum(v * v for v in values))
    return [round(v / norm, 6) for v in values]


def make_article(n: int, *, title: str | None = None, embedding: bool = True) -> Article:
    """A classified article that looks like what the pipeline produces."""
    title = title or TITLES[n % len(TITLES)]
    url = f"https://news.example.org/world/2023/08/{n:05d}-{title.lower().replace(' ', '-')[:40]}"
    published = BASE_TIME + timedelta(hours=n)
    stances = [
        StanceMention(
            actor="Jens Stoltenberg",
            mention="NATO chief",
            topic="territorial_concessions",
            stance="support",
            score=0.83,
            evidence="The NATO chief said Ukraine may have to cede some territory to end the war.",
            quote=False,
        ),
        StanceMention(
            actor="Volodymyr Zelenskyy",
            mention="Zelinsky",
            topic="territorial_concessions",
            stance="oppose",
            score=0.91,
            evidence="“We are not ready to concede any of our territories,” Zelinsky said.",
            quote=True,
        ),
    ]
    classification = ClassifiedText(
        id=f"a{n:05d}",
        topics={
            "territorial_concessions": TopicScore(
                label=n % 3 != 2, score=0.91 if n % 3 != 2 else 0.12
            ),
            "peace_talks": TopicScore(label=n % 2 == 0, score=0.77 if n % 2 == 0 else 0.2),
        },
        stances=stances if n % 3 != 2 else [],
        actors=["Jens Stoltenberg", "Volodymyr Zelenskyy"],
        territories=[
            TerritoryMention(name="Crimea", lat=45.3, lon=34.4),
            TerritoryMention(name="Donetsk Oblast", lat=48.0, lon=37.8),
        ],
        embedding=vector(n) if embedding else None,
        model="stancewatch-minilm",
        model_version="2025.1",
    )
    return Article(
        id=f"a{n:05d}",
        url=url,
        canonical_url=url,
        source=SourceInfo(
            feed_id="ledger-world",
            name="The Daily Ledger",
            domain="news.example.org",
            language="en",
            country="GB",
        ),
        title=title,
        summary=(
            "Officials in Brussels and Kyiv gave conflicting signals on Tuesday about whether "
            "a settlement could involve giving up land, as diplomats prepared for new talks."
        ),
        body=" ".join(
            [
                "The NATO chief said Ukraine may have to cede some territory to end the war.",
                "“We are not ready to concede any of our territories,” Zelinsky said in Kyiv.",
                "Diplomats from several countries are expected to meet later this month.",
            ]
            * 4
        ),
        published=published,
        published_raw=published.strftime("%a, %d %b %Y %H:%M:%S +0000"),
        fetched_at=published + timedelta(minutes=7),
        content_hash=f"sha256:{n:064x}",
        language="en",
        classification=classification,
    )


def make_env(es_url: str, prefix: str, tmp_path: Path) -> Environment:
    return Environment(
        es_url=es_url, index_prefix=prefix, outbox=tmp_path / "outbox", data_dir=tmp_path / "data"
    )


TEST_SETTINGS = StoreSettings(
    bulk_size=100, max_retries=1, initial_backoff_s=0.05, request_timeout_s=20
)


@pytest.fixture
def store(es_url: str, index_prefix: str, tmp_path: Path) -> Any:
    s = Store(make_env(es_url, index_prefix, tmp_path), TEST_SETTINGS)
    yield s
    s.close()


# ------------------------------------------------------------------ mappings (no cluster)


def _unmapped(doc: dict[str, Any], properties: dict[str, Any], path: str = "") -> list[str]:
    """Paths of ``doc`` that the mapping does not cover (leaf types stop the walk)."""
    missing = []
    for key, value in doc.items():
        spec = properties.get(key)
        if spec is None:
            missing.append(f"{path}{key}")
            continue
        if "properties" in spec:
            items = value if isinstance(value, list) else [value]
            for item in items:
                if isinstance(item, dict):
                    missing.extend(_unmapped(item, spec["properties"], f"{path}{key}."))
    return missing


def test_mappings_cover_every_field_the_models_produce() -> None:
    article = make_article(0)
    alert = Alert(
        id="x",
        kind="stance_shift",
        topic="territorial_concessions",
        actor="Jens Stoltenberg",
        from_stance="oppose",
        to_stance="support",
        window_start=BASE_TIME,
        window_end=BASE_TIME + timedelta(days=7),
        baseline_start=BASE_TIME - timedelta(days=30),
        baseline_end=BASE_TIME,
        stats={"recent": {"support": 4, "oppose": 0}, "p_value": 0.01},
        evidence_article_ids=["a00001"],
        evidence=[
            AlertEvidence(
                article_id="a00001",
                url="https://news.example.org/world/a00001",
                title=TITLES[0],
                source="The Daily Ledger",
                published=BASE_TIME,
                stance="support",
                score=0.83,
                sentence="The NATO chief said Ukraine may have to cede some territory.",
            )
        ],
        detected_at=BASE_TIME,
        recipients=["desk@example.org"],
        sent_at=BASE_TIME,
        subject="Stoltenberg now supports concessions",
    )
    feed = FeedState(
        feed_id="ledger-world",
        url="https://news.example.org/rss",
        etag='"abc"',
        last_attempt=BASE_TIME,
        last_success=BASE_TIME,
        next_due=BASE_TIME,
        problems=["malformed_xml: mismatched tag"],
    )
    docs: dict[str, list[dict[str, Any]]] = {
        "articles": [article.to_document()],
        "stances": [d for _, d in article.stance_documents()],
        "alerts": [alert.to_document()],
        "feeds": [feed.to_document()],
    }
    for kind, kind_docs in docs.items():
        assert kind_docs, kind
        properties = mapping_for(kind)["properties"]
        for doc in kind_docs:
            assert _unmapped(doc, properties) == [], kind


def test_template_files_have_explicit_mappings_and_standard_analyzer() -> None:
    for kind in KINDS:
        source = json.loads((indices_module.MAPPINGS_DIR / f"{kind}.json").read_text())
        mappings = source["template"]["mappings"]
        assert mappings["dynamic"] is False
        assert isinstance(source["version"], int)
        text = json.dumps(mappings)
        assert '"analyzer": "english"' not in text  # only added when the cluster has it
        assert "@timestamp" in mappings["properties"]
    articles = mapping_for("articles")["properties"]
    assert articles["embedding"]["dims"] == 384
    assert articles["embedding"]["similarity"] == "cosine"
    assert articles["territory_locations"]["type"] == "geo_point"
    assert articles["title"]["fields"]["keyword"]["type"] == "keyword"
    with_english = mapping_for("articles", english=True)["properties"]
    assert with_english["body"]["fields"]["english"]["analyzer"] == "english"


def test_full_distribution_templates_name_the_lifecycle_policy() -> None:
    settings = StoreSettings(rollover_max_docs=1000, rollover_max_age="30d")
    template = build_template("articles", "stancewatch", settings, ClusterFeatures(True, True))
    index = template["template"]["settings"]["index"]
    assert template["index_patterns"] == ["stancewatch-articles-*"]
    assert index["lifecycle"] == {
        "name": "stancewatch-rollover",
        "rollover_alias": "stancewatch-articles",
    }
    assert index["auto_expand_replicas"] == "0-1"
    policy = build_policy(settings)
    assert policy["phases"]["hot"]["actions"]["rollover"]["max_docs"] == 1000
    assert policy["phases"]["hot"]["actions"]["rollover"]["max_age"] == "30d"
    assert "delete" not in policy["phases"]
    bare = build_template("articles", "stancewatch", settings, ClusterFeatures(False, False))
    assert "lifecycle" not in bare["template"]["settings"]["index"]


# ------------------------------------------------------------------- against the node


@pytest.mark.es
def test_setup_creates_templates_aliases_and_is_idempotent(
    store: Store, es_url: str, index_prefix: str
) -> None:
    first = store.setup()
    assert any("lifecycle policy: skipped" in line for line in first)  # no ILM on this node
    assert sum("created (v" in line for line in first) == len(KINDS)
    client = Elasticsearch(es_url)
    for kind in KINDS:
        alias = f"{index_prefix}-{kind}"
        found = client.indices.get_alias(name=alias)
        assert list(found) == [f"{alias}-000001"]
        assert found[f"{alias}-000001"]["aliases"][alias]["is_write_index"] is True
        settings = client.indices.get_settings(index=f"{alias}-000001")
        index_settings = settings[f"{alias}-000001"]["settings"]["index"]
        assert index_settings["auto_expand_replicas"] == "0-1"
        assert "lifecycle" not in index_settings
    health = client.cluster.health(index=f"{index_prefix}-*")
    assert health["status"] == "green"  # replicas auto-expand to 0 on one node
    second = store.setup()
    assert sum("up to date" in line for line in second) == len(KINDS)
    assert not any("created" in line for line in second)
    client.close()


@pytest.mark.es
def test_setup_upgrades_templates_and_existing_indices_in_place(
    store: Store, es_url: str, index_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = indices_module._template_file("feeds")
    older = json.loads(json.dumps(original))
    older["version"] = 0
    del older["template"]["mappings"]["properties"]["healthy"]
    monkeypatch.setattr(
        indices_module,
        "_template_file",
        lambda kind: older if kind == "feeds" else _real(kind),
    )
    store.setup()
    client = Elasticsearch(es_url)
    index = f"{index_prefix}-feeds-000001"
    assert "healthy" not in client.indices.get_mapping(index=index)[index]["mappings"]["properties"]
    template = client.indices.get_index_template(name=f"{index_prefix}-feeds")
    assert template["index_templates"][0]["index_template"]["version"] == 0

    monkeypatch.undo()
    lines = store.setup()
    assert f"index template {index_prefix}-feeds: upgraded in place (v0 -> v1)" in lines
    assert any("mappings updated in place" in line for line in lines)
    mapping = client.indices.get_mapping(index=index)[index]["mappings"]
    assert mapping["properties"]["healthy"]["type"] == "boolean"
    assert mapping["_meta"]["template_version"] == 1
    template = client.indices.get_index_template(name=f"{index_prefix}-feeds")
    assert template["index_templates"][0]["index_template"]["version"] == 1
    client.close()


_real = indices_module._template_file.__wrapped__  # the uncached loader


@pytest.mark.es
def test_first_write_sets_up_instead_of_auto_creating_an_index(
    store: Store, es_url: str, index_prefix: str
) -> None:
    report = store.write("articles", [(make_article(1).id, make_article(1).to_document())])
    assert report.ok == 1 and not report.failed
    client = Elasticsearch(es_url)
    assert list(client.indices.get_alias(name=f"{index_prefix}-articles")) == [
        f"{index_prefix}-articles-000001"
    ]
    mapping = client.indices.get_mapping(index=f"{index_prefix}-articles-000001")
    props = mapping[f"{index_prefix}-articles-000001"]["mappings"]["properties"]
    assert props["embedding"]["type"] == "dense_vector"
    client.close()


def _counts(store: Store) -> dict[str, int]:
    store.refresh()
    return {kind: store.count(kind) for kind in KINDS}


@pytest.mark.es
def test_writing_the_same_articles_twice_leaves_every_count_unchanged(store: Store) -> None:
    articles = [make_article(n) for n in range(30)]
    for _ in range(2):
        report = store.write("articles", [(a.id, a.to_document()) for a in articles])
        assert report.ok == 30 and not report.failed and report.spooled == 0
        stances = [d for a in articles for d in a.stance_documents()]
        assert store.write("stances", stances).ok == len(stances)
    counts = _counts(store)
    assert counts["articles"] == 30
    assert counts["stances"] == sum(len(a.stance_documents()) for a in articles) == 40


@pytest.mark.es
def test_update_after_rollover_lands_on_the_pre_rollover_document(
    store: Store, es_url: str, index_prefix: str
) -> None:
    articles = [make_article(n) for n in range(10)]
    store.write("articles", [(a.id, a.to_document()) for a in articles])
    assert store.rollover("articles") is True
    backing = [b.name for b in store.indices.backing_indices("articles")]
    assert backing == [f"{index_prefix}-articles-000001", f"{index_prefix}-articles-000002"]

    updated = make_article(3, title="NATO chief clarifies remarks on territorial concessions")
    newcomer = make_article(10)
    report = store.write(
        "articles", [(updated.id, updated.to_document()), (newcomer.id, newcomer.to_document())]
    )
    assert report.ok == 2 and not report.failed
    assert _counts(store)["articles"] == 11  # not 12: the update did not duplicate a00003

    client = Elasticsearch(es_url)
    old = client.get(index=f"{index_prefix}-articles-000001", id=updated.id)
    assert old["_source"]["title"] == updated.title
    assert old["_version"] == 2
    assert not client.exists(index=f"{index_prefix}-articles-000002", id=updated.id)
    assert client.exists(index=f"{index_prefix}-articles-000002", id=newcomer.id)

    # deletes find the old index too; reads by id span all backing indices
    assert store.get_many("articles", [updated.id, newcomer.id], fields=["title"]) == {
        updated.id: {"title": updated.title},
        newcomer.id: {"title": newcomer.title},
    }
    assert store.delete("articles", [updated.id, "never-written"]).ok == 2
    assert _counts(store)["articles"] == 10
    client.close()


@pytest.mark.es
def test_a_mapping_conflict_gives_a_clear_per_document_error(store: Store) -> None:
    good = make_article(1)
    bad_date = make_article(2).to_document() | {"@timestamp": "last Tuesday"}
    bad_geo = make_article(3).to_document() | {"territory_locations": [{"lat": 123, "lon": 0}]}
    bad_vector = make_article(4).to_document() | {"embedding": [0.1, 0.2, 0.3]}
    report = store.write(
        "articles",
        [
            (good.id, good.to_document()),
            ("a00002", bad_date),
            ("a00003", bad_geo),
            ("a00004", bad_vector),
        ],
    )
    assert report.ok == 1 and report.spooled == 0
    reasons = dict(report.failed)
    assert set(reasons) == {"a00002", "a00003", "a00004"}
    assert "HTTP 400" in reasons["a00002"]
    assert "failed to parse field [@timestamp] of type [date]" in reasons["a00002"]
    assert "last Tuesday" in reasons["a00002"]
    assert "territory_locations" in reasons["a00003"]
    assert "embedding" in reasons["a00004"] and "384" in reasons["a00004"]
    assert _counts(store)["articles"] == 1
    assert not store.spool.has_pending()  # refused documents are reported, not spooled


@pytest.mark.es
def test_rollover_if_due_uses_the_thresholds(
    es_url: str, index_prefix: str, tmp_path: Path
) -> None:
    settings = TEST_SETTINGS.model_copy(update={"rollover_max_docs": 3})
    with Store(make_env(es_url, index_prefix, tmp_path), settings) as store:
        store.setup()
        store.write("articles", [(f"a{n}", make_article(n).to_document()) for n in range(4)])
        store.write(
            "feeds", [("f1", FeedState(feed_id="f1", url="https://x.example/rss").to_document())]
        )
        store.refresh()
        assert store.rollover_if_due() == {
            "articles": True,
            "stances": False,
            "alerts": False,
            "feeds": False,
        }
        assert store.rollover_if_due()["articles"] is False  # the new index is empty


@pytest.mark.es
def test_reads_scan_and_search(store: Store) -> None:
    articles = [make_article(n) for n in range(12)]
    store.write("articles", [(a.id, a.to_document()) for a in articles])
    store.rollover("articles")
    store.write("articles", [(a.id, a.to_document()) for a in [make_article(12)]])
    store.refresh()
    ids = {doc_id for doc_id, doc in store.scan("articles", {"match_all": {}}, fields=[])}
    assert ids == {a.id for a in articles} | {"a00012"}
    since = (BASE_TIME + timedelta(hours=10)).isoformat()
    recent = dict(
        store.scan("articles", {"range": {"@timestamp": {"gte": since}}}, fields=["title"])
    )
    assert set(recent) == {"a00010", "a00011", "a00012"}
    assert all(set(doc) == {"title"} for doc in recent.values())
    body = {"size": 0, "aggs": {"actors": {"terms": {"field": "stance_actors"}}}}
    buckets = store.search("articles", body)["aggregations"]["actors"]["buckets"]
    assert {b["key"] for b in buckets} == {"Jens Stoltenberg", "Volodymyr Zelenskyy"}
    assert store.get_many("articles", []) == {}
    assert store.get_many("alerts", ["nothing"]) == {}


def test_check_names_the_url_when_the_cluster_is_down(tmp_path: Path) -> None:
    env = make_env("http://127.0.0.1:9", "swdown", tmp_path)
    with Store(env, TEST_SETTINGS) as store, pytest.raises(StoreUnavailable) as caught:
        store.check()
    assert "http://127.0.0.1:9" in str(caught.value)
    assert "cannot connect" in str(caught.value)


# ----------------------------------------------------------------------------- the CLI


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_DIR,
        env={**os.environ, "COLUMNS": "200", **env},
        check=False,
    )


@pytest.mark.es
def test_cli_setup_indices_and_a_clear_error_when_down(sw_env: dict[str, str]) -> None:
    first = _cli("setup", env=sw_env)
    assert first.returncode == 0, first.stderr
    assert "created" in first.stdout
    again = _cli("setup", env=sw_env)
    assert again.returncode == 0 and "up to date" in again.stdout
    listing = _cli("indices", env=sw_env)
    assert listing.returncode == 0
    assert f"{sw_env['STANCEWATCH_INDEX_PREFIX']}-articles-000001" in listing.stdout

    down = {**sw_env, "STANCEWATCH_ES_URL": "http://127.0.0.1:9"}
    for args in (["setup"], ["indices"], ["search", "talks"], ["spool", "replay"]):
        result = _cli(*args, env=down)
        assert result.returncode == 1, args
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, (args, result.stderr)
        assert "http://127.0.0.1:9" in lines[0]


def test_stance_documents_link_to_the_canonical_url() -> None:
    # Alert e-mails and Kibana show the stance's link: no tracking parameters in it.
    article = make_article(1).model_copy(
        update={
            "url": "https://news.example.org/world/a1?utm_source=rss&utm_medium=rss#top",
            "canonical_url": "https://news.example.org/world/a1",
        }
    )
    docs = [d for _, d in article.stance_documents()]
    assert docs and {d["url"] for d in docs} == {"https://news.example.org/world/a1"}
    assert article.to_document()["url"].endswith("utm_medium=rss#top")  # the original is kept
