"""Stance per (actor, topic): support / oppose / neutral, a calibrated score and evidence.

Three steps, all on the frozen encoder:

1. **Candidates**: every (actor, sentence, topic) where the actor is named, pronoun-linked or
   quoted in a sentence that the topic sentence head scores above a floor.
2. **Sentence stance**: a softmax head over [sentence vector, sentence vector x topic] and
   the words of the sentence with the actor's mention replaced by ``[ACTOR]`` (plain and
   tagged with the topic: "actor rejected", "tc_cede"), so the model reads *whose* position
   it is and how a word counts for each topic. The sentence vector is the in-context one from
   the article's single encoder pass (a separate pass over marked sentences cost 3x the
   article pass for +0.01 macro-F1). Its temperature is fit on the validation split, so the
   score is a calibrated probability.
3. **Pairs**: a small logistic model decides which (actor, topic) pairs are real positions
   (speakers of topic sentences) rather than names that merely appear, from features such
   as speaker position, the best topic score of the actor's sentences and the actor kind.
   The pair's stance is the topic-weighted mean of its sentences' stance probabilities;
   its evidence is the sentence that shows the chosen stance best.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.classify.actors import ActorAnalysis, ActorMention
from pipeline.classify.heads import HybridHead
from pipeline.classify.polarity import Cues, Parse, actor_cues
from pipeline.classify.sentences import Sentence
from pipeline.config import TOPICS

STANCES: tuple[str, ...] = ("support", "oppose", "neutral")
MARKER = "[ACTOR]"
#: Sentences scored below this for a topic are not read for that topic's stance.
CANDIDATE_FLOOR = 0.25
_KINDS = ("person", "organisation", "government", "group")
_SOURCES = ("alias", "role", "speaker_alias", "fuzzy", "ner", "pronoun", "nominal", "quote")


def mark_actor(sentence: Sentence, mentions: Sequence[ActorMention]) -> str:
    """The sentence with the actor's mentions replaced by the marker."""
    spans: list[tuple[int, int]] = []
    for start, end in sorted({(m.start, m.end) for m in mentions if m.end > m.start}):
        # "Kosovo's Prime Minister" + "Albin Kurti" side by side: one marker, as in the
        # labelled sentences the head learnt from.
        if (
            spans
            and not sentence.text[spans[-1][1] - sentence.start : start - sentence.start].strip()
        ):
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        else:
            spans.append((start, end))
    if not spans:
        return f"{MARKER} said: {sentence.text}"
    out: list[str] = []
    pos = sentence.start
    for start, end in spans:
        if start < pos:
            continue
        out.append(sentence.text[pos - sentence.start : start - sentence.start])
        out.append(MARKER)
        pos = end
    out.append(sentence.text[pos - sentence.start :])
    return "".join(out)


def mention_span(sentence: str, mention: str) -> tuple[int, int] | None:
    """Character span of a labelled mention in its sentence (whole words), if found."""
    if not mention:
        return None
    # Whole words only: the mention "he" must not match inside "the".
    pattern = r"(?<!\w)" + re.escape(mention) + r"(?!\w)"
    found = re.search(pattern, sentence) or re.search(pattern, sentence, re.IGNORECASE)
    return (found.start(), found.end()) if found else None


def mark_text(sentence: str, mention: str) -> str:
    """Marker for labelled sentences: replace the mention as written, else prefix it."""
    span = mention_span(sentence, mention)
    if span:
        return sentence[: span[0]] + MARKER + sentence[span[1] :]
    return f"{MARKER} said: {sentence}"


def candidate_cues(parse: Parse, sentence: Sentence, mentions: Sequence[ActorMention]) -> Cues:
    """Polarity cues of one actor in one sentence (mention offsets made sentence-relative)."""
    spans = [
        (m.start - sentence.start, m.end - sentence.start) for m in mentions if m.end > m.start
    ]
    return actor_cues(parse, spans)


_TAGS = ("tc", "pt")
_WORD = re.compile(r"\w\w+")


def tag_words(text: str, topic: int) -> str:
    """Words prefixed with the topic ("tc_cede", "pt_talks") so that one linear model can
    weigh a word differently for each topic."""
    return " ".join(f"{_TAGS[topic]}_{w}" for w in _WORD.findall(text.lower()))


def stance_text(marked: str, topic: int, cues: Cues | None = None) -> str:
    """Text features of the sentence stance head: plain and topic-tagged words, plus the
    parse's polarity cues for this actor and topic (pipeline/classify/polarity.py)."""
    text = f"{marked} {cues.text(topic)}" if cues is not None else marked
    return f"{text} {tag_words(text, topic)}"


def pair_text(group: Sequence[Candidate]) -> str:
    """Text features of the pair head: the actor's two most topic-like sentences, tagged."""
    best = sorted(group, key=lambda c: -c.topic_score)[:2]
    return " ".join(tag_words(c.marked, c.topic) for c in best)


def stance_features(embeddings: np.ndarray, topic_indices: Sequence[int]) -> np.ndarray:
    """[e, e * is_territorial, is_territorial]: one head, topic-specific adjustments."""
    emb = np.atleast_2d(embeddings).astype(np.float32)
    is_tc = np.array([1.0 if t == 0 else 0.0 for t in topic_indices], np.float32)[:, None]
    return np.hstack([emb, emb * is_tc, is_tc])


@dataclass
class Candidate:
    """One actor in one sentence, read for one topic."""

    actor: str
    topic: int
    sentence: int
    mentions: list[ActorMention]
    marked: str
    topic_score: float
    speaker: bool
    cues: Cues | None = None


def candidates(
    sentences: Sequence[Sentence],
    analysis: ActorAnalysis,
    sentence_scores: np.ndarray,
    topics: Sequence[int],
    floor: float = CANDIDATE_FLOOR,
) -> list[Candidate]:
    """Candidates for the given topic indices (usually the article's relevant topics)."""
    by_sentence: dict[int, dict[str, list[ActorMention]]] = {}
    for m in analysis.mentions:
        by_sentence.setdefault(m.sentence, {}).setdefault(m.actor, []).append(m)
    out: list[Candidate] = []
    for sidx, actors in sorted(by_sentence.items()):
        if sidx >= len(sentences) or sidx >= len(sentence_scores):
            continue
        for actor, mentions in actors.items():
            marked = mark_actor(sentences[sidx], mentions)
            speaker = any(m.speaker for m in mentions)
            for t in topics:
                score = float(sentence_scores[sidx, t])
                if score >= floor:
                    out.append(Candidate(actor, t, sidx, mentions, marked, score, speaker))
    return out


@dataclass(frozen=True)
class PairContext:
    """What the other pairs of the same article and topic look like (relative features)."""

    best_score: float
    best_speaker_score: float
    n_actors: int


def pair_contexts(cands: Sequence[Candidate]) -> dict[int, PairContext]:
    out: dict[int, PairContext] = {}
    for t in {c.topic for c in cands}:
        mine = [c for c in cands if c.topic == t]
        speakers = [c.topic_score for c in mine if c.speaker]
        out[t] = PairContext(
            max(c.topic_score for c in mine),
            max(speakers) if speakers else 0.0,
            len({c.actor for c in mine}),
        )
    return out


N_PAIR_FEATURES = 26 + len(_KINDS) + len(_SOURCES)


def pair_features(
    group: Sequence[Candidate],
    stance_probs: np.ndarray,
    article_prob: float,
    n_sentences: int,
    sentence_scores: np.ndarray,
    topic: int,
    context: PairContext,
) -> np.ndarray:
    """Features of one (actor, topic) pair from its candidates and their stance probs.

    The margin over the other topic's sentence score tells "Zelensky rejected giving up
    land" (territory) from "Zelensky said he was ready to meet Putin" (talks) when both
    topics are relevant to the article.
    """
    rows = [c.sentence for c in group]
    own = sentence_scores[rows, topic]
    other = sentence_scores[rows, 1 - topic] if sentence_scores.shape[1] > 1 else own * 0
    scores = np.array([c.topic_score for c in group], np.float32)
    speaker = np.array([c.speaker for c in group], bool)
    mentions = [m for c in group for m in c.mentions]
    first = min(c.sentence for c in group)
    kind = mentions[0].kind if mentions else "person"
    configured = any(m.configured for m in mentions)
    probs = np.asarray(stance_probs, np.float32)
    spk_scores = scores[speaker] if speaker.any() else np.zeros(1, np.float32)
    polar = 1.0 - probs[:, 2]
    feats = [
        float(scores.max()),
        float(spk_scores.max()),
        math.log1p(len(group)),
        math.log1p(int(speaker.sum())),
        float(speaker.any()),
        float(configured),
        first / max(n_sentences, 1),
        float(first == 0),
        article_prob,
        float(polar.max()),
        float((polar * scores).sum() / max(scores.sum(), 1e-6)),
        float(probs[:, 0].max()),
        float(probs[:, 1].max()),
        float(probs[:, 2].min()),
        float((own - other).max()),
        float((own - other).mean()),
        float(other.max()),
        float(scores.max() / max(context.best_score, 1e-6)),
        math.log1p(context.n_actors),
        float(speaker.any() and scores[speaker].max() >= context.best_speaker_score - 1e-6),
    ]
    # What the parse says: does the actor hold a position in any of its sentences (subject
    # of a verb, not "a visit to Putin"), and does its own clause speak of land / of talks?
    holder = [c for c in group if c.cues is not None and c.cues.holder]
    holder_scores = [c.topic_score for c in holder]
    feats += [
        float(bool(holder)),
        float(max(holder_scores) / max(context.best_score, 1e-6)) if holder else 0.0,
        float(any(c.cues.in_scope[topic] for c in holder if c.cues is not None)),
        float(any(c.cues.polarity[topic] != 0 for c in holder if c.cues is not None)),
        float(any(c.cues.in_scope[1 - topic] for c in holder if c.cues is not None)),
        float(all(c.cues is not None and c.cues.role == "object" for c in group)),
    ]
    feats += [float(kind == k) for k in _KINDS]
    sources = {m.source for m in mentions}
    feats += [float(s in sources) for s in _SOURCES]
    return np.array(feats, np.float32)


#: Weight of a sentence in which the parse says the actor holds the position (subject,
#: "according to", quote source, owner of a demand: ``Cues.holder``) over one that merely
#: names it ("a visit to Putin"):
#: validation strict stance 0.723 -> 0.732 at 2 (1.5 / 3 and down-weighting objects: less).
HOLDER_WEIGHT = 2.0


def aggregate(group: Sequence[Candidate], stance_probs: np.ndarray) -> tuple[int, float, int]:
    """(stance index, score, index into group of the evidence) for one pair."""
    probs = np.asarray(stance_probs, np.float64)
    weights = np.array(
        [
            c.topic_score**2
            * (1.5 if c.speaker else 1.0)
            * (HOLDER_WEIGHT if c.cues is not None and c.cues.holder else 1.0)
            for c in group
        ],
        np.float64,
    )
    mean = (probs * weights[:, None]).sum(0) / max(weights.sum(), 1e-9)
    chosen = int(mean.argmax())
    evidence = int(np.argmax(weights * probs[:, chosen]))
    return chosen, float(mean[chosen]), evidence


@dataclass
class StanceModel:
    sentence_head: HybridHead  # softmax over STANCES: stance_features + stance_text
    pair_head: HybridHead  # sigmoid: pair_features + pair_text
    pair_threshold: float
    floor: float = CANDIDATE_FLOOR

    def sentence_probs(
        self,
        embeddings: np.ndarray,
        topic_indices: Sequence[int],
        marked: Sequence[str],
        cues: Sequence[Cues | None] | None = None,
    ) -> np.ndarray:
        if len(topic_indices) == 0:
            return np.zeros((0, len(STANCES)), np.float32)
        cue_list = list(cues) if cues is not None else [None] * len(marked)
        texts = [
            stance_text(m, t, c) for m, t, c in zip(marked, topic_indices, cue_list, strict=True)
        ]
        return self.sentence_head.predict_proba(stance_features(embeddings, topic_indices), texts)

    def pair_prob(self, features: np.ndarray, group: Sequence[Candidate]) -> float:
        return float(self.pair_head.predict_proba(features, [pair_text(group)])[0, 0])

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            **self.sentence_head.to_arrays("stance.sentence"),
            **self.pair_head.to_arrays("stance.pair"),
            "stance.params": np.array([self.pair_threshold, self.floor], np.float32),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> StanceModel:
        params = arrays["stance.params"]
        return cls(
            HybridHead.from_arrays(arrays, "stance.sentence"),
            HybridHead.from_arrays(arrays, "stance.pair"),
            float(params[0]),
            float(params[1]),
        )


def group_pairs(cands: Sequence[Candidate]) -> dict[tuple[str, int], list[int]]:
    """Candidate indices per (actor, topic index), in order of first appearance."""
    groups: dict[tuple[str, int], list[int]] = {}
    for i, c in enumerate(cands):
        groups.setdefault((c.actor, c.topic), []).append(i)
    return groups


__all__ = [
    "MARKER",
    "STANCES",
    "TOPICS",
    "Candidate",
    "StanceModel",
    "aggregate",
    "candidate_cues",
    "candidates",
    "group_pairs",
    "mark_actor",
    "mark_text",
    "mention_span",
    "pair_contexts",
    "pair_features",
    "pair_text",
    "stance_features",
    "stance_text",
    "tag_words",
]
