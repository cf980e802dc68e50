"""Stance: actor marking, aggregation, and the trained heads on clear sentences."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.classify.actors import ActorMention
from pipeline.classify.classifier import ClassifyInput, LocalClassifier, load_local
from pipeline.classify.polarity import Cues
from pipeline.classify.sentences import Sentence
from pipeline.classify.stance import (
    MARKER,
    STANCES,
    Candidate,
    aggregate,
    mark_actor,
    mark_text,
    tag_words,
)
from pipeline.config import AppConfig


def mention(text: str, start: int, end: int, source: str = "alias") -> ActorMention:
    return ActorMention("X", text[start:end], start, end, 0, "person", source, True, True)


def test_mark_actor_replaces_every_mention_of_the_actor() -> None:
    text = "Erdogan said Erdogan's offer stands."
    s = Sentence(0, len(text), text)
    assert mark_actor(s, [mention(text, 0, 7), mention(text, 13, 20)]) == (
        f"{MARKER} said {MARKER}'s offer stands."
    )
    # a quote carried from another sentence has no span: the marker becomes the speaker
    quoted = Sentence(10, 30, '"Never," it went on.')
    carried = ActorMention("X", "", 10, 10, 0, "person", "quote", True, True)
    assert mark_actor(quoted, [carried]) == f'{MARKER} said: "Never," it went on.'


def test_mark_actor_merges_a_title_and_a_name_side_by_side() -> None:
    # "Kosovo's Prime Minister" (role title) + "Albin Kurti" (name): one marker, as in the
    # labelled sentences the stance head learnt from.
    text = "Kosovo's Prime Minister Albin Kurti said no."
    s = Sentence(0, len(text), text)
    assert mark_actor(s, [mention(text, 0, 23, "role"), mention(text, 24, 35)]) == (
        f"{MARKER} said no."
    )


def test_mark_text_for_labelled_sentences() -> None:
    assert mark_text("Kuleba said no.", "Kuleba") == f"{MARKER} said no."
    assert mark_text("The minister said no.", "THE MINISTER") == f"{MARKER} said no."
    assert mark_text("He said no.", "Dmytro Kuleba") == f"{MARKER} said: He said no."
    # whole words only: "he" is not the "he" in "the"
    assert mark_text("At the talks he said no.", "he") == f"At the talks {MARKER} said no."


def test_tag_words() -> None:
    assert tag_words("Cede the land", 0) == "tc_cede tc_the tc_land"
    assert tag_words("Talks", 1) == "pt_talks"


def test_aggregate_weights_sentences_by_topic_score() -> None:
    def cand(score: float, speaker: bool = True) -> Candidate:
        return Candidate("X", 0, 0, [], "m", score, speaker)

    group = [cand(0.9), cand(0.2)]
    probs = np.array([[0.1, 0.8, 0.1], [0.9, 0.05, 0.05]])
    stance, score, evidence = aggregate(group, probs)
    assert STANCES[stance] == "oppose" and evidence == 0
    assert 0.5 < score <= 1.0

    # Where the parse says the actor holds the position, that sentence weighs more than one
    # that only names it: "X rejected the plan" over "the plan was sent to X, who ...".
    holder, named = cand(0.6), cand(0.6)
    holder.cues, named.cues = Cues(role="subj"), Cues(role="object")
    probs = np.array([[0.2, 0.7, 0.1], [0.8, 0.1, 0.1]])
    assert STANCES[aggregate([holder, named], probs)[0]] == "oppose"
    assert STANCES[aggregate([named, holder], probs)[0]] == "support"


@pytest.fixture(scope="module")
def classifier() -> LocalClassifier:
    return load_local(AppConfig())


@pytest.mark.parametrize(
    ("sentence", "topic", "expected"),
    [
        (f"{MARKER} said Ukraine would never give up an inch of its land.", 0, "oppose"),
        (f"{MARKER} said Kyiv should accept the loss of Crimea to end the war.", 0, "support"),
        (f"{MARKER} said he was ready to sit down for peace talks with Moscow.", 1, "support"),
        (f"{MARKER} ruled out any negotiations with the rebels.", 1, "oppose"),
        (f"{MARKER} declined to comment on the talks.", 1, "neutral"),
    ],
)
def test_sentence_stance_head(
    classifier: LocalClassifier, sentence: str, topic: int, expected: str
) -> None:
    vec = classifier.encoder.encode([sentence])
    probs = classifier.stance_model.sentence_probs(vec, [topic], [sentence])[0]
    assert probs.sum() == pytest.approx(1.0, abs=1e-4)
    assert STANCES[int(probs.argmax())] == expected


def test_stance_depends_on_whose_position(classifier: LocalClassifier) -> None:
    # One sentence, two actors: the one who rejects and the one who demands the land. The
    # sentence head alone does not tell them apart (on "Zelensky rejected Putin's demand that
    # Ukraine withdraw from Donetsk." it gives both marked versions oppose, support 0.24 vs
    # 0.22, with model 03a259975527); the parse cues that classify adds do (subject of
    # "rejected" vs owner of "demand"), so the pair is checked end to end.
    text = (
        "KYIV, March 3 — President Volodymyr Zelensky on Monday rejected Vladimir Putin's "
        "demand that Ukraine withdraw its troops from the rest of the Donetsk region as the "
        "price of a ceasefire."
    )
    out = classifier.classify([ClassifyInput(id="whose", title="", text=text)])[0]
    land = {s.actor: s.stance for s in out.stances if s.topic == "territorial_concessions"}
    assert land == {"Volodymyr Zelenskyy": "oppose", "Vladimir Putin": "support"}
