"""Territory gazetteer: aliases, spellings, coordinates and no near-miss pins."""

from __future__ import annotations

import pytest

from pipeline.classify.territories import TerritoryGazetteer
from pipeline.config import AppConfig


@pytest.fixture(scope="module")
def gazetteer() -> TerritoryGazetteer:
    return TerritoryGazetteer(AppConfig().territories)


def names(g: TerritoryGazetteer, text: str) -> list[str]:
    return [t.name for t in g.find(text)]


def test_required_territories_are_configured() -> None:
    configured = {t.name for t in AppConfig().territories}
    for name in [
        "Crimea", "Donetsk", "Luhansk", "Zaporizhzhia", "Kherson", "Kursk", "Donbas",
        "Nagorno-Karabakh", "Tavush", "Gaza Strip", "West Bank", "Golan Heights", "Kosovo",
        "Essequibo", "Western Sahara", "Abkhazia", "South Ossetia", "Transnistria",
        "Northern Cyprus", "Shebaa Farms", "Kashmir", "Tigray", "Western Tigray", "North Kivu",
        "Abyei", "Kharkiv",
    ]:  # fmt: skip
        assert name in configured


def test_aliases_and_spellings_map_to_one_territory(gazetteer: TerritoryGazetteer) -> None:
    text = (
        "Moscow wants the Donbass and Zaporozhye; Yerevan spoke of Artsakh, while Caracas "
        "renamed Guayana Esequiba and Tiraspol runs Transdniestria."
    )
    assert names(gazetteer, text) == [
        "Donbas", "Zaporizhzhia", "Nagorno-Karabakh", "Essequibo", "Transnistria",
    ]  # fmt: skip


def test_coordinates_come_with_each_mention(gazetteer: TerritoryGazetteer) -> None:
    [crimea] = gazetteer.find("Kyiv will never recognise the annexation of Crimea.")
    assert crimea.name == "Crimea"
    assert 44 < crimea.lat < 46.5 and 32 < crimea.lon < 37


def test_longest_name_wins_and_each_territory_once(gazetteer: TerritoryGazetteer) -> None:
    text = "Western Tigray is claimed by Amhara forces; Tigray leaders want it back. Tigray again."
    assert names(gazetteer, text) == ["Western Tigray", "Tigray"]


def test_no_near_miss_matches(gazetteer: TerritoryGazetteer) -> None:
    # Exact gazetteer only: a misspelt city must not be pinned to another one.
    assert names(gazetteer, "Talks were held in Khersonsky district and at Kharkova.") == []
    assert names(gazetteer, "The golan heights; GAZA CITY") == ["Golan Heights", "Gaza Strip"]


def test_tokens_made_by_the_caller_give_the_same_territories(gazetteer: TerritoryGazetteer) -> None:
    # classify tokenises each article once and hands the tokens to both gazetteers
    from pipeline.classify.sentences import tokenize

    text = (
        "KYIV — Russia wants the rest of Donetsk and a freeze in Zaporizhzhia and Kherson; "
        "Kyiv says Crimea’s status is not on the table, nor is Nagorno-Karabakh's precedent."
    )
    found = gazetteer.find(text)
    assert [t.name for t in found] == [
        "Donetsk", "Zaporizhzhia", "Kherson", "Crimea", "Nagorno-Karabakh",
    ]  # fmt: skip
    assert gazetteer.find(text, tokenize(text)) == found
