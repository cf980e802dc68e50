"""Territories named in an article, from ``config/territories.yaml``, with coordinates.

Gazetteer matching only: the list is short, curated and disputed places are spelled many
ways, so aliases carry the knowledge and a match is exact (no fuzzy matching: "Kherson" and
"Kharkiv" are too close to risk a wrong pin on a map).
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.classify.gazetteer import PhraseMatcher
from pipeline.classify.sentences import Token
from pipeline.config import TerritoryConfig
from pipeline.models import TerritoryMention


class TerritoryGazetteer:
    """Finds configured territories in text; each territory is reported once per text."""

    def __init__(self, territories: Sequence[TerritoryConfig]) -> None:
        self._by_name = {t.name: t for t in territories}
        self._matcher: PhraseMatcher[str] = PhraseMatcher()
        for t in territories:
            self._matcher.add_many([t.name, *t.aliases], t.name)

    def find(self, text: str, tokens: Sequence[Token] | None = None) -> list[TerritoryMention]:
        """Territories in order of first mention (``tokens``: ``tokenize(text)``, if made)."""
        seen: dict[str, TerritoryMention] = {}
        for match in self._matcher.find(text, tokens):
            for name in match.values:
                if name not in seen:
                    t = self._by_name[name]
                    seen[name] = TerritoryMention(name=t.name, lat=t.lat, lon=t.lon)
        return list(seen.values())
