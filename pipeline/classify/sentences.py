"""Sentence spans and word tokens for news copy, without a parser.

A regular-expression splitter is enough for wire copy and costs microseconds, where spaCy's
parser-based splitter would cost as much as the encoder. It keeps quotes with their
attribution ('"We will not cede an inch," he said.' stays one sentence) and does not split
after common abbreviations (Mr., Gen., U.S., Jan.).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import NamedTuple

_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "gen", "lt", "col", "maj", "capt", "sgt", "adm", "gov", "sen",
    "rep", "st", "jr", "sr", "prof", "rev", "jan", "feb", "mar", "apr", "aug", "sept", "sep",
    "oct", "nov", "dec", "vs", "etc", "inc", "corp", "ltd", "co", "u.s", "u.n", "u.k",
    "e.g", "i.e", "a.m", "p.m", "approx", "est", "cmdr", "pres",
}  # fmt: skip

# A candidate boundary: end punctuation, optional closing quotes/brackets, then whitespace.
_BOUNDARY = re.compile(r"[.!?]+[\"'”’)\]]*\s+|\n\s*\n|\n(?=\S)")
_WORD_BEFORE = re.compile(r"([\w.]+)[.!?]*[\"'”’)\]]*\s*$")
_TOKEN = re.compile(r"\w+(?:[-.]\w+)*|'s\b|[^\w\s]")


#: Letters that NFKD does not decompose ("Akıncı", "Wałęsa", "Støre").
_SAME_LENGTH = str.maketrans("ıŁłØøĐđ", "iLlOoDd")


@dataclass(frozen=True)
class Sentence:
    start: int
    end: int
    text: str


def split_sentences(text: str) -> list[Sentence]:
    """Sentences of ``text`` with character offsets (title lines count as sentences)."""
    out: list[Sentence] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        chunk = text[start : m.end()]
        if "\n" not in m.group(0):
            before = _WORD_BEFORE.search(text[start : m.start() + 1])
            word = before.group(1).lower().rstrip(".") if before else ""
            nxt = text[m.end() : m.end() + 1]
            # "Mr. Putin", "the U.S. envoy", initials "J. Smith": not a boundary.
            if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
                continue
            if nxt and nxt.islower():
                continue
        _append(out, text, start, start + len(chunk))
        start = m.end()
    _append(out, text, start, len(text))
    return out


def _append(out: list[Sentence], text: str, start: int, end: int) -> None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if end > start:
        out.append(Sentence(start, end, text[start:end]))


def fold(text: str) -> str:
    """Accents off and typographic apostrophes/dashes unified, for gazetteer matching."""
    # Dashes between words separate them ("talks—NATO"); hyphens join ("Ben-Gvir").
    text = text.replace("’", "'").replace("‘", "'").replace("–", " ").replace("—", " ")
    text = text.translate(_SAME_LENGTH)
    if text.isascii():  # most news copy: nothing to decompose (and no per-character loop)
        return text
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


class Token(NamedTuple):
    """A word token. A tuple, not a frozen dataclass: an article has hundreds and the
    dataclass constructor was the largest single cost of the gazetteers on off-topic news."""

    text: str  # accent-folded surface form
    start: int
    end: int


def tokenize(text: str) -> list[Token]:
    """Word tokens with offsets into ``text``; folding keeps one character per character."""
    folded = fold(text)
    if len(folded) != len(text):  # decomposed characters without a base: fall back
        folded = text
    return [Token(m.group(0), m.start(), m.end()) for m in _TOKEN.finditer(folded)]
