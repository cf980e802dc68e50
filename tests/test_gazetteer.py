"""The phrase matcher under both gazetteers: longest match, case rules, fuller later names."""

from __future__ import annotations

from pipeline.classify.gazetteer import PhraseMatcher


def _matcher() -> PhraseMatcher[str]:
    m: PhraseMatcher[str] = PhraseMatcher()
    for phrase, value in [
        ("Gaza", "gaza"),
        ("Gaza City", "gaza-city"),
        ("the Gaza Strip", "gaza"),
        ("Kyiv", "kyiv"),
        ("the Polisario", "polisario"),
        ("Polisario Front", "polisario"),
        ("Xi", "xi"),
        ("UN Security Council", "unsc"),
        ("UN Security Council Resolution 2254", "res-2254"),
    ]:
        m.add(phrase, value)
    return m


def _found(text: str) -> list[tuple[str, str]]:
    return [(text[h.start : h.end], h.values[0]) for h in _matcher().find(text)]


def test_longest_phrase_wins_and_a_started_phrase_falls_back() -> None:
    assert _found("Strikes hit Gaza City and the Gaza Strip overnight.") == [
        ("Gaza City", "gaza-city"),
        ("the Gaza Strip", "gaza"),
    ]
    # "the Gaza" begins a phrase but does not finish one: the shorter name still matches.
    assert _found("He toured the Gaza crossings.") == [("Gaza", "gaza")]
    # "UN Security Council Resolution" is a beginning only; the council itself is the match.
    assert _found("The UN Security Council Resolution vote slipped.") == [
        ("UN Security Council", "unsc")
    ]
    assert _found("under UN Security Council Resolution 2254") == [
        ("UN Security Council Resolution 2254", "res-2254")
    ]


def test_case_rules_and_the_fuller_name_that_ends_later() -> None:
    # One-word phrases keep their case ("xi" is not Xi); multi-word ones do not; capitals in
    # datelines match their title case.
    assert _found("xi and XI, then Xi in KYIV and gaza city") == [
        ("Xi", "xi"),
        ("KYIV", "kyiv"),
        ("gaza city", "gaza-city"),
    ]
    assert _found("talks with the Polisario Front resumed") == [("Polisario Front", "polisario")]
