"""Longest-match phrase lookup over word tokens, shared by the actor and territory gazetteers.

Phrases are matched on token n-grams through a dict (a few hundred lookups per article),
which stays fast with thousands of aliases where one big regular expression would not.
Multi-word phrases match case-insensitively; a one-word phrase must match its case as
written ("Xi", "EU", "Lula"), so ordinary words that happen to be names are not taken.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from pipeline.classify.sentences import Token, tokenize

V = TypeVar("V")


@dataclass(frozen=True)
class Match(Generic[V]):
    start: int  # character offsets into the text
    end: int
    first_token: int
    last_token: int  # exclusive
    values: tuple[V, ...]


def _key(tokens: Sequence[str], *, exact_case: bool) -> tuple[str, ...]:
    return tuple(tokens) if exact_case else tuple(t.casefold() for t in tokens)


class PhraseMatcher(Generic[V]):
    """Maps phrases to values; finds non-overlapping longest matches in a text."""

    def __init__(self) -> None:
        self._phrases: dict[tuple[str, ...], list[V]] = {}
        #: Case-folded beginnings of the multi-word phrases ("nagorno",): a match is only
        #: tried as long as the words so far begin some phrase. The old way, every n-gram
        #: up to the longest alias at every word, was a fifth of `classify` time on
        #: off-topic news under bf16 (where the encoder is fast).
        self._prefixes: set[tuple[str, ...]] = set()
        self.max_len = 1

    def add(self, phrase: str, value: V) -> None:
        tokens = [t.text for t in tokenize(phrase)]
        if not tokens:
            return
        key = _key(tokens, exact_case=len(tokens) == 1)
        bucket = self._phrases.setdefault(key, [])
        if value not in bucket:
            bucket.append(value)
        for n in range(1, len(tokens)):
            self._prefixes.add(key[:n])
        self.max_len = max(self.max_len, len(tokens))

    def add_many(self, phrases: Iterable[str], value: V) -> None:
        for phrase in phrases:
            self.add(phrase, value)

    def _longest(self, toks: Sequence[Token], lowered: Sequence[str], i: int) -> Match[V] | None:
        """The longest multi-word phrase starting at token i."""
        best: Match[V] | None = None
        end = min(len(toks), i + self.max_len)
        n = 1
        while i + n < end and tuple(lowered[i : i + n]) in self._prefixes:
            n += 1
            values = self._phrases.get(tuple(lowered[i : i + n]))
            if values:
                best = Match(toks[i].start, toks[i + n - 1].end, i, i + n, tuple(values))
        return best

    def find(self, text: str, tokens: Sequence[Token] | None = None) -> list[Match[V]]:
        toks = list(tokens) if tokens is not None else tokenize(text)
        words = [t.text for t in toks]
        lowered = [w.casefold() for w in words]
        out: list[Match[V]] = []
        i = 0
        while i < len(toks):
            # Most words begin no multi-word phrase: skip the call (half the matcher's time).
            hit = self._longest(toks, lowered, i) if (lowered[i],) in self._prefixes else None
            if hit is None:
                values = self._phrases.get((words[i],))
                if not values and len(words[i]) >= 4 and words[i].isupper():
                    # Datelines and headlines in capitals: "KYIV", "GAZA CITY".
                    values = self._phrases.get((words[i].title(),))
                if values:
                    hit = Match(toks[i].start, toks[i].end, i, i + 1, tuple(values))
            if hit is not None:
                # "The Polisario Front": "the Polisario" starts first but "Polisario Front"
                # reaches further; the phrase that ends later is the fuller name.
                for j in range(i + 1, hit.last_token):
                    later = self._longest(toks, lowered, j)
                    if later is not None and later.last_token > hit.last_token:
                        hit = later
                        break
                out.append(hit)
                i = hit.last_token
            else:
                i += 1
        return out
