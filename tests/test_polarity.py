"""Polarity cues from the dependency parse: whose clause, which verb, negations, hedges."""

from __future__ import annotations

import pytest

from pipeline.classify.polarity import Parse, Parser, actor_cues, lemma

TC, PT = 0, 1


@pytest.fixture(scope="module")
def parser() -> Parser:
    return Parser()


def cues_of(parser: Parser, sentence: str, mention: str):  # type: ignore[no-untyped-def]
    [parsed] = parser.parse([sentence])
    start = sentence.index(mention)
    return actor_cues(parsed, [(start, start + len(mention))])


def test_lemma_of_cue_words() -> None:
    assert lemma("rejected") == "reject"
    assert lemma("ceded") == "cede"
    assert lemma("gave") == "give"
    assert lemma("recognised") == "recognise"
    assert lemma("Talks") == "talk"
    assert lemma("Donbas") == "donbas"  # outside the lexicon: just lower-cased


@pytest.mark.parametrize(
    ("sentence", "mention", "topic", "polarity"),
    [
        # a rejecting verb flips the concession below it
        (
            "The NATO chief on Tuesday rejected suggestions that Ukraine should trade "
            "territory for a ceasefire.",
            "The NATO chief",
            TC,
            -1,
        ),
        # negation on the complement verb
        (
            "Zelensky said Ukraine would never agree to give up occupied land.",
            "Zelensky",
            TC,
            -1,
        ),
        # rejecting a freeze of the front line
        (
            "President Zelensky said Ukraine rejects any proposal to freeze the war along "
            "the current front line.",
            "President Zelensky",
            TC,
            -1,
        ),
        # predicting with approval
        (
            "Stoltenberg said that Ukraine may have to cede some territory to end the war.",
            "Stoltenberg",
            TC,
            1,
        ),
        # demanding that the other side withdraw is support for that land changing hands
        ("Lavrov demanded that Kyiv withdraw its troops from Donetsk.", "Lavrov", TC, 1),
        ("Erdogan said he was ready to host new peace talks in Istanbul.", "Erdogan", PT, 1),
        ("The army said it would not attend the talks in Jeddah.", "The army", PT, -1),
    ],
)
def test_chain_polarity(
    parser: Parser, sentence: str, mention: str, topic: int, polarity: int
) -> None:
    cues = cues_of(parser, sentence, mention)
    assert cues.holder
    assert cues.polarity[topic] == polarity, cues


def test_each_actor_reads_its_own_clause(parser: Parser) -> None:
    text = (
        "Putin demanded that Ukraine give up the four regions, while Zelensky replied that "
        "Ukraine would not surrender an inch."
    )
    assert cues_of(parser, text, "Putin").polarity[TC] == 1
    assert cues_of(parser, text, "Zelensky").polarity[TC] == -1


def test_hedge_and_mentioned_actors(parser: Parser) -> None:
    text = "The Kremlin did not rule out talks with Kyiv."
    kremlin = cues_of(parser, text, "The Kremlin")
    assert kremlin.hedge and kremlin.polarity == [0, 0]
    assert "hedge" in kremlin.text(PT)
    kyiv = cues_of(parser, text, "Kyiv")
    assert kyiv.role == "object" and not kyiv.holder


def test_owner_of_a_demand_holds_the_position(parser: Parser) -> None:
    # "Putin's demand that ...": Putin holds a position (the guide: a demand is support), so
    # his sentence weighs as a holder's; Zelensky, the subject, holds his own.
    text = "Zelensky rejected Putin's demand that Ukraine withdraw from Donetsk."
    putin = cues_of(parser, text, "Putin")
    assert putin.role == "poss" and putin.holder
    assert cues_of(parser, text, "Zelensky").holder
    # "a visit to Putin" names him without giving him a position
    visit = cues_of(parser, "Orban's visit to Putin angered Kyiv.", "Putin")
    assert not visit.holder


def test_talks_statement_has_no_land_in_scope(parser: Parser) -> None:
    # The pair head uses this to keep a talks-only statement out of territorial concessions.
    cues = cues_of(
        parser,
        "Turkish President Recep Tayyip Erdogan said on Thursday he would keep pressing "
        "Moscow and Kyiv to resume peace talks.",
        "Recep Tayyip Erdogan",
    )
    assert cues.in_scope == [False, True]
    assert cues.polarity[PT] == 1


def test_cues_without_spacy_on_a_hand_built_parse() -> None:
    # "Baku rejected the plan": the whole sentence as plain lists.
    parse = Parse(
        ("Baku", "rejected", "the", "plan", "."),
        (0, 5, 14, 18, 22),
        ("nsubj", "ROOT", "det", "dobj", "punct"),
        (1, 1, 3, 1, 1),
    )
    cues = actor_cues(parse, [(0, 4)])
    assert cues.role == "subj" and cues.verb == "reject"
    assert cues.polarity[PT] == -1
    # no span: a quote carried from the previous sentence, read from the root verb
    assert actor_cues(parse, []).role == "quote"
