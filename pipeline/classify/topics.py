"""Topic relevance: territorial_concessions and peace_talks, multi-label.

Two small heads over the frozen MiniLM encoder plus TF-IDF word features (the choice and its
measurements are in docs/decisions.md, "Classifier"):

* a **sentence head** scores each sentence (its vector pooled from the article's own forward
  pass, and its words) for each topic; it learns from labelled stance and evidence sentences;
* an **article head** reads the article embedding and words plus, per topic, the best and
  the mean of the two best sentence scores and the title's score. One clear sentence ("Kyiv will not
  give up Donbas") makes an article relevant even when the rest is battlefield news, and a
  match on vocabulary alone ("concession stand") does not.

A third opinion comes from the encoder itself: the fine-tuned topic branch
(finetune.py) scores the article in the encoder's pass; the final probability is
``branch_weight`` x branch + (1 - branch_weight) x article head, the weight picked on
validation. The branch fits its training articles almost perfectly, so its logits are
divided by a per-topic temperature fitted on validation before the sigmoid: without it a
saturated 0.00 or 1.00 would overrule the head.

Thresholds are chosen on the validation split (max F1) and stored with the weights.

The branch costs a third of the encoder pass, and most feed items are plainly off-topic. So
the article head (nearly free: it reads the frozen pass) screens first: an item whose head
probability is below ``branch_gate`` for every topic is reported as not relevant without the
branch running. The gate is half the lowest head probability of any relevant validation item
(article or single labelled sentence), and at most 0.05 (train.py, ``_branch_gate``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.classify.heads import HybridHead
from pipeline.config import TOPICS

N_SENTENCE_FEATURES = 3  # per topic: max, mean of top 2, title


def sentence_features(sentence_scores: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Per-topic summary of sentence scores (n_sentences, n_topics) -> flat vector."""
    n_topics = sentence_scores.shape[1] if sentence_scores.ndim == 2 else len(TOPICS)
    out = np.zeros(n_topics * N_SENTENCE_FEATURES, dtype=np.float32)
    if sentence_scores.size == 0 or not seen.any():
        return out
    scores = sentence_scores[seen]
    for t in range(n_topics):
        col = np.sort(scores[:, t])[::-1]
        out[t * N_SENTENCE_FEATURES + 0] = col[0]
        out[t * N_SENTENCE_FEATURES + 1] = col[:2].mean()
        out[t * N_SENTENCE_FEATURES + 2] = sentence_scores[0, t] if seen[0] else 0.0
    return out


_WORD = re.compile(r"\w\w+")


def article_text(text: str) -> str:
    """Words of the article plus its title's words tagged ("ti_cede"): a headline word says
    more about the topic than the same word in the background paragraph."""
    title = text.split("\n", 1)[0] if "\n" in text else ""
    return text + " " + " ".join(f"ti_{w}" for w in _WORD.findall(title.lower()))


def article_features(article_vec: np.ndarray, sent_features: np.ndarray) -> np.ndarray:
    return np.concatenate([article_vec, sent_features]).astype(np.float32)


@dataclass
class TopicModel:
    sentence_head: HybridHead  # n_topics sigmoid outputs: sentence vector + sentence words
    article_head: HybridHead  # n_topics sigmoid outputs: article_features + article words
    thresholds: np.ndarray  # (n_topics,) for the final (blended) probability
    #: Share of the fine-tuned topic branch in the final probability; 0 = no branch.
    branch_weight: float = 0.0
    #: (n_topics,) temperatures for the branch's logits (calibration on validation).
    branch_temperature: np.ndarray | None = None
    #: (n_topics,) article-head probabilities below which (for every topic) the branch is
    #: not run and the item is not relevant; None or zeros: the branch always runs.
    branch_gate: np.ndarray | None = None
    topics: tuple[str, ...] = TOPICS

    def branch_probs(self, logits: np.ndarray) -> np.ndarray:
        temperature = 1.0 if self.branch_temperature is None else self.branch_temperature
        return (1.0 / (1.0 + np.exp(-np.asarray(logits) / temperature))).astype(np.float32)

    def needs_branch(self, head_probs: np.ndarray) -> bool:
        """Must the branch score this item, or is the article head sure it is off-topic?"""
        if self.branch_weight <= 0.0:
            return False
        if self.branch_gate is None:
            return True
        return bool((np.asarray(head_probs) >= self.branch_gate).any())

    def blend(self, head_probs: np.ndarray, branch_logits: np.ndarray | None) -> np.ndarray:
        """Final topic probabilities from the article head's and the branch's.

        An item the gate screened out keeps its head probabilities (below the gate, so
        below every threshold)."""
        if self.branch_weight <= 0.0:
            return head_probs
        if branch_logits is None:
            if not self.needs_branch(head_probs):
                return head_probs
            raise ValueError("this topic model needs the fine-tuned topic branch's scores")
        w = self.branch_weight
        return (w * self.branch_probs(branch_logits) + (1.0 - w) * head_probs).astype(np.float32)

    def sentence_scores(self, sentence_vecs: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        if len(sentence_vecs) == 0:
            return np.zeros((0, len(self.topics)), dtype=np.float32)
        return self.sentence_head.predict_proba(sentence_vecs, texts).astype(np.float32)

    def predict(
        self,
        article_vec: np.ndarray,
        sentence_vecs: np.ndarray,
        seen: np.ndarray,
        text: str,
        sentence_texts: Sequence[str],
        branch_logits: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(article probabilities per topic, sentence scores per sentence and topic)."""
        head, sent = self.head_probs(article_vec, sentence_vecs, seen, text, sentence_texts)
        return self.blend(head, branch_logits), sent

    def head_probs(
        self,
        article_vec: np.ndarray,
        sentence_vecs: np.ndarray,
        seen: np.ndarray,
        text: str,
        sentence_texts: Sequence[str],
    ) -> tuple[np.ndarray, np.ndarray]:
        """(article head probabilities per topic, sentence scores): all but the branch."""
        sent = self.sentence_scores(sentence_vecs, sentence_texts)
        feats = article_features(article_vec, sentence_features(sent, seen))
        return self.article_head.predict_proba(feats, [article_text(text)])[0], sent

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            **self.sentence_head.to_arrays("topic.sentence"),
            **self.article_head.to_arrays("topic.article"),
            "topic.thresholds": self.thresholds.astype(np.float32),
            "topic.branch_weight": np.array(self.branch_weight, np.float32),
            "topic.branch_temperature": (
                np.ones(len(self.topics), np.float32)
                if self.branch_temperature is None
                else self.branch_temperature.astype(np.float32)
            ),
            "topic.branch_gate": (
                np.zeros(len(self.topics), np.float32)
                if self.branch_gate is None
                else self.branch_gate.astype(np.float32)
            ),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> TopicModel:
        return cls(
            HybridHead.from_arrays(arrays, "topic.sentence"),
            HybridHead.from_arrays(arrays, "topic.article"),
            np.asarray(arrays["topic.thresholds"], np.float32),
            float(arrays["topic.branch_weight"]) if "topic.branch_weight" in arrays else 0.0,
            arrays.get("topic.branch_temperature"),
            arrays.get("topic.branch_gate"),
        )
