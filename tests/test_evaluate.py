"""Evaluation metrics: definitions on hand-made predictions, gold parsing, keyword baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.classify.dataset import DataError, LabelledArticle, article_from_record
from pipeline.classify.evaluate import canonical_names, load_gold, score
from pipeline.classify.keyword_baseline import keyword_topics
from pipeline.config import ActorConfig, AppConfig
from pipeline.models import ClassifiedText, StanceMention, TopicScore


def gold(item_id: str, tc: bool, pt: bool, stances=(), actors=()) -> LabelledArticle:
    return article_from_record(
        {
            "id": item_id,
            "title": "t",
            "text": "x",
            "topics": {"territorial_concessions": tc, "peace_talks": {"label": pt}},
            "actors": list(actors),
            "stances": [
                {"actor": a, "topic": t, "stance": s, "mention": a, "evidence": "e"}
                for a, t, s in stances
            ],
        }
    )


def pred(item_id: str, tc: bool, pt: bool, stances=(), actors=()) -> ClassifiedText:
    return ClassifiedText(
        id=item_id,
        topics={
            "territorial_concessions": TopicScore(label=tc, score=0.9 if tc else 0.1),
            "peace_talks": TopicScore(label=pt, score=0.9 if pt else 0.1),
        },
        stances=[
            StanceMention(actor=a, mention=a, topic=t, stance=s, score=0.8, evidence="e")
            for a, t, s in stances
        ],
        actors=list(actors),
    )


def test_topic_scores_per_topic_and_macro() -> None:
    items = [gold("1", True, True), gold("2", False, True), gold("3", False, False)]
    preds = [pred("1", True, True), pred("2", True, True), pred("3", False, True)]
    report = score(items, preds, baseline=False)
    tc = report.topics.per_topic["territorial_concessions"]
    pt = report.topics.per_topic["peace_talks"]
    assert (tc["tp"], tc["fp"], tc["fn"]) == (1, 1, 0)
    assert tc["f1"] == pytest.approx(2 / 3)
    assert (pt["tp"], pt["fp"], pt["fn"]) == (2, 1, 0)
    assert report.topics.macro_f1 == pytest.approx((2 / 3 + 0.8) / 2)


def test_stance_pairs_missing_and_extra_count() -> None:
    items = [
        gold(
            "1",
            True,
            True,
            stances=[
                ("Jens Stoltenberg", "territorial_concessions", "support"),
                ("Volodymyr Zelenskyy", "territorial_concessions", "oppose"),
                ("Kremlin", "peace_talks", "neutral"),
            ],
            actors=["Jens Stoltenberg", "Volodymyr Zelenskyy", "Kremlin"],
        )
    ]
    preds = [
        pred(
            "1",
            True,
            True,
            stances=[
                ("jens stoltenberg", "territorial_concessions", "support"),  # case-folded match
                ("Volodymyr Zelenskyy", "territorial_concessions", "support"),  # wrong stance
                ("Volodymyr Zelenskyy", "peace_talks", "oppose"),  # extra pair
            ],  # Kremlin pair missed
            actors=["Jens Stoltenberg", "Volodymyr Zelenskyy"],
        )
    ]
    report = score(items, preds, baseline=False)
    c = report.stance.confusion
    assert c[("support", "support")] == 1
    assert c[("oppose", "support")] == 1
    assert c[("none", "oppose")] == 1
    assert c[("neutral", "none")] == 1
    per = report.stance.per_class()
    assert per["support"]["precision"] == pytest.approx(0.5)
    assert per["support"]["recall"] == pytest.approx(1.0)
    assert per["oppose"]["f1"] == 0.0 and per["neutral"]["f1"] == 0.0
    assert report.stance.macro_f1 == pytest.approx((2 / 3) / 3)
    assert report.stance.counts() == {
        "gold_pairs": 3, "predicted_pairs": 3, "matched": 2, "missed": 1, "extra": 1,
    }  # fmt: skip
    assert report.actor_recall == pytest.approx(2 / 3)
    text = report.format()
    assert "stance macro-F1" in text and "confusion" in text


def test_perfect_prediction_scores_one() -> None:
    st = [("Ilham Aliyev", "peace_talks", "support")]
    report = score(
        [gold("1", False, True, st, ["Ilham Aliyev"])],
        [pred("1", False, True, st, ["Ilham Aliyev"])],
    )
    assert report.stance.macro_f1 == pytest.approx(1 / 3)  # only one class present
    assert report.stance.matched_macro_f1 == pytest.approx(1 / 3)
    assert report.actor_recall == 1.0
    assert report.baseline is not None


def test_keyword_baseline_is_a_plain_boolean_query() -> None:
    assert keyword_topics("Kyiv refuses to cede Donbas", "") == {
        "territorial_concessions": True,
        "peace_talks": False,
    }
    assert keyword_topics("Ceasefire talks resume", "")["peace_talks"]
    # A keyword query cannot tell a concession stand from a territorial concession:
    assert keyword_topics("Stadium operator cedes control of concession stands", "")[
        "territorial_concessions"
    ]


def test_load_gold_reports_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "gold.jsonl"
    good = {"id": "a", "title": "t", "text": "x", "topics": {"peace_talks": True}}
    path.write_text(json.dumps(good) + "\n\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"gold.jsonl:3: invalid JSON"):
        load_gold(path)
    path.write_text(json.dumps({**good, "topics": {"peace_talks": "yes"}}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"gold.jsonl:1: topic value must be a bool"):
        load_gold(path)
    # Case and stray spaces in labels are forgiven; an unknown label is not.
    stance = {"actor": "Qatar", "topic": " Peace_Talks", "stance": "Support "}
    path.write_text(json.dumps({**good, "stances": [stance]}) + "\n", encoding="utf-8")
    [item] = load_gold(path)
    assert (item.stances[0].topic, item.stances[0].stance) == ("peace_talks", "support")
    stance["stance"] = "maybe"
    path.write_text(json.dumps({**good, "stances": [stance]}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"gold.jsonl:1: bad stance peace_talks/maybe"):
        load_gold(path)
    path.write_text(json.dumps({"title": "t", "text": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"gold.jsonl:1: missing field 'id'"):
        load_gold(path)


def test_gold_from_other_tools_reads_the_same() -> None:
    # A labelling tool may write the relevant topics as a list (like the index's
    # topic_labels), topic names with spaces, SemEval's FAVOR / AGAINST, actors as objects,
    # and nest the labels under "gold". All of it means the same item as our own schema.
    ours = gold(
        "x1",
        True,
        True,
        stances=[
            ("Qatar", "peace_talks", "support"),
            ("Hamas", "territorial_concessions", "oppose"),
        ],
        actors=["Qatar", "Hamas"],
    )
    other = article_from_record(
        {
            "id": "x1",
            "title": "t",
            "text": "x",
            "gold": {
                "topics": ["Territorial concessions", "peace-talks"],
                "actors": [{"name": "Qatar", "kind": "government"}, "Hamas"],
                "stances": [
                    {"actor": "Qatar", "topic": "Peace Talks", "stance": "FAVOR"},
                    {"actor": "Hamas", "topic": "territorial_concessions", "stance": "AGAINST"},
                ],
            },
        }
    )
    assert (other.topics, other.actors) == (ours.topics, ours.actors)
    assert [(s.actor, s.topic, s.stance) for s in other.stances] == [
        (s.actor, s.topic, s.stance) for s in ours.stances
    ]
    listed = article_from_record({"id": "x2", "topic_labels": ["peace_talks"]})
    assert listed.topics == {"territorial_concessions": False, "peace_talks": True}
    assert article_from_record({"id": "x3", "topics": []}).topics == {
        "territorial_concessions": False, "peace_talks": False,
    }  # fmt: skip
    # A label we do not know is an error, never a silent "not relevant".
    with pytest.raises(DataError, match=r"here: unknown topic 'ceasefire'"):
        article_from_record({"id": "x4", "topics": ["peace_talks", "ceasefire"]}, "here")
    with pytest.raises(DataError, match=r"unknown topic 'peace_talk'"):
        article_from_record({"id": "x5", "topics": {"peace talk": True}})
    assert article_from_record({"id": "x6", "topics": {"sports": False}}).topics == {
        "territorial_concessions": False, "peace_talks": False,
    }  # fmt: skip
    with pytest.raises(DataError, match=r"topics must be a mapping or a list"):
        article_from_record({"id": "x7", "topics": "peace_talks"})


def test_gold_written_with_aliases_is_read_as_the_configured_actor() -> None:
    # Another labeller writes "Zelensky", "Sergei Lavrov", "the Kremlin" and "Kyiv"; classify
    # reports canonical names. Without the gazetteer every pair would count twice: once
    # missed, once invented.
    items = [
        gold(
            "1",
            True,
            True,
            stances=[
                ("Zelensky", "territorial_concessions", "oppose"),
                ("Sergei Lavrov", "peace_talks", "oppose"),
                ("the Kremlin", "territorial_concessions", "support"),
                ("Kyiv", "peace_talks", "support"),
                ("Jane Doe", "peace_talks", "neutral"),  # unconfigured: compared as written
            ],
        )
    ]
    preds = [
        pred(
            "1",
            True,
            True,
            stances=[
                ("Volodymyr Zelenskyy", "territorial_concessions", "oppose"),
                ("Sergey Lavrov", "peace_talks", "oppose"),
                ("Kremlin", "territorial_concessions", "support"),
                ("Government of Ukraine", "peace_talks", "support"),
                ("Jane Doe", "peace_talks", "neutral"),
            ],
        )
    ]
    plain = score(items, preds, baseline=False)
    assert plain.stance.counts()["matched"] == 1  # only Jane Doe
    names = canonical_names(AppConfig().actors)
    report = score(items, preds, baseline=False, names=names)
    assert report.stance.counts() == {
        "gold_pairs": 5, "predicted_pairs": 5, "matched": 5, "missed": 0, "extra": 0,
    }  # fmt: skip
    assert report.stance.macro_f1 == pytest.approx(1.0)
    assert report.actor_recall == pytest.approx(1.0)
    assert report.summary()["gold_names_read_as_configured"] == 4
    assert "'Zelensky' -> Volodymyr Zelenskyy (1)" in report.format()
    assert names["kremlin"] == "Kremlin" and names["moscow"] == "Kremlin"
    # an alias two actors share maps to neither; a canonical name wins over an alias
    shared = canonical_names(
        [
            ActorConfig(name="Anna Example", aliases=["the envoy", "Ben Sample"]),
            ActorConfig(name="Ben Sample", aliases=["the envoy"]),
        ]
    )
    assert "the envoy" not in shared
    assert shared["ben sample"] == "Ben Sample"


def test_gold_names_with_titles_typos_and_roles_are_read_by_the_gazetteer() -> None:
    from datetime import UTC, datetime

    from pipeline.classify.evaluate import gold_name_resolver

    actors = AppConfig().actors
    resolve = gold_name_resolver(actors)
    assert resolve("Ukrainian President Volodymyr Zelenskyy", None) == "Volodymyr Zelenskyy"
    assert resolve("Zelinsky", None) == "Volodymyr Zelenskyy"
    assert resolve("Russian Foreign Minister Sergei Lavrov", None) == "Sergey Lavrov"
    # a lone surname is a name in a gold file, even where running text would not take it
    assert resolve("Tatar", None) == "Ersin Tatar"
    # role titles are read on the item's date
    assert resolve("NATO Secretary General", datetime(2023, 5, 1, tzinfo=UTC)) == (
        "Jens Stoltenberg"
    )
    assert resolve("NATO Secretary General", datetime(2025, 5, 1, tzinfo=UTC)) == "Mark Rutte"
    # two actors, nobody we know, or somebody's someone: left as written
    assert resolve("Putin and Xi", None) is None
    assert resolve("Jane Doe", None) is None
    assert resolve("Netanyahu's son", None) is None
    assert resolve("Putin's spokesman", None) == "Dmitry Peskov"  # a configured role title

    item = gold(
        "1",
        False,
        True,
        stances=[
            ("President Putin", "peace_talks", "oppose"),
            ("Ukrainian President Volodymyr Zelensky", "peace_talks", "support"),
        ],
    )
    predicted = pred(
        "1",
        False,
        True,
        stances=[
            ("Vladimir Putin", "peace_talks", "oppose"),
            ("Volodymyr Zelenskyy", "peace_talks", "support"),
        ],
    )
    report = score([item], [predicted], baseline=False, names=canonical_names(actors))
    assert report.stance.counts()["matched"] == 0  # the alias table alone does not know them
    report = score(
        [item], [predicted], baseline=False, names=canonical_names(actors), resolve=resolve
    )
    assert report.stance.counts()["matched"] == 2
    assert report.summary()["gold_names_read_as_configured"] == 2
