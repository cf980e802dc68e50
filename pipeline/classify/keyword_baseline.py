"""A Google-Alerts-style boolean query: the baseline the classifier has to beat.

What a user without Stancewatch would set up: one alert per topic, an OR of phrases
(quoted phrases, ``*`` for any word ending), no notion of context. ``stancewatch
evaluate`` scores it on the same data as the classifier.
"""

from __future__ import annotations

import re

from pipeline.config import TOPICS

QUERIES: dict[str, str] = {
    "territorial_concessions": (
        '"territorial concession*" OR "cede*" OR "ceding" OR "give up territory" OR '
        '"give up land" OR "land for peace" OR "land swap*" OR "swap territory" OR '
        '"line of contact" OR "annexed territor*" OR "recognise annexation" OR '
        '"recognize annexation" OR "not one inch" OR "territorial integrity" OR '
        '"withdraw from" OR "buffer zone" OR "demilitarised zone" OR "demilitarized zone"'
    ),
    "peace_talks": (
        '"peace talks" OR "peace negotiation*" OR "ceasefire talks" OR "ceasefire deal" OR '
        '"truce" OR "peace plan" OR "peace deal" OR "peace summit" OR "peace process" OR '
        '"negotiating table" OR "mediat*" OR "ceasefire proposal" OR "peace agreement" OR '
        '"negotiations" OR "ceasefire"'
    ),
}


def _compile(query: str) -> re.Pattern[str]:
    terms = re.findall(r'"([^"]+)"', query)
    parts = []
    for term in terms:
        words = [re.escape(w).replace(r"\*", r"\w*") for w in term.split()]
        parts.append(r"\b" + r"\s+".join(words) + (r"\b" if not term.endswith("*") else ""))
    return re.compile("|".join(parts), re.IGNORECASE)


_PATTERNS = {topic: _compile(q) for topic, q in QUERIES.items()}


def keyword_topics(title: str, text: str) -> dict[str, bool]:
    """Topic labels of the boolean queries for one item."""
    content = f"{title}\n{text}"
    return {t: bool(_PATTERNS[t].search(content)) for t in TOPICS}
