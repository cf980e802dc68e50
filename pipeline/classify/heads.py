"""Linear heads over encoder and text features, stored as plain arrays.

No scikit-learn at run time.

Training fits scikit-learn models (pipeline/classify/train.py) and folds the feature scaling
into the weights, so inference is one matrix product and the artifact is a few hundred KB.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class LinearHead:
    """Binary (one logit per output, sigmoid) or multiclass (softmax) linear model."""

    weights: np.ndarray  # (n_outputs, n_features)
    bias: np.ndarray  # (n_outputs,)
    multiclass: bool = False
    temperature: float = 1.0

    def logits(self, x: np.ndarray) -> np.ndarray:
        return (np.atleast_2d(x) @ self.weights.T + self.bias) / self.temperature

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = self.logits(x)
        if self.multiclass:
            z = z - z.max(axis=1, keepdims=True)
            e = np.exp(z)
            return np.asarray(e / e.sum(axis=1, keepdims=True))
        return np.asarray(1.0 / (1.0 + np.exp(-z)))

    @classmethod
    def from_sklearn(
        cls, model: Any, scaler: Any | None = None, *, multiclass: bool = False
    ) -> LinearHead:
        """Fold a StandardScaler into a fitted LogisticRegression's weights."""
        w = np.asarray(model.coef_, dtype=np.float64)
        b = np.asarray(model.intercept_, dtype=np.float64)
        if scaler is not None:
            scale = np.asarray(scaler.scale_, dtype=np.float64)
            mean = np.asarray(scaler.mean_, dtype=np.float64)
            w = w / scale
            b = b - w @ mean
        if multiclass and w.shape[0] == 1:  # sklearn's binary shape
            w = np.vstack([-w, w]) / 2
            b = np.array([-b[0], b[0]]) / 2
        return cls(w.astype(np.float32), b.astype(np.float32), multiclass)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {
            f"{prefix}.w": self.weights,
            f"{prefix}.b": self.bias,
            f"{prefix}.meta": np.array([float(self.multiclass), self.temperature], np.float32),
        }

    @classmethod
    def from_arrays(cls, arrays: Any, prefix: str) -> LinearHead:
        meta = arrays[f"{prefix}.meta"]
        return cls(
            np.asarray(arrays[f"{prefix}.w"], np.float32),
            np.asarray(arrays[f"{prefix}.b"], np.float32),
            bool(meta[0]),
            float(meta[1]),
        )


_WORD = re.compile(r"(?u)\b\w\w+\b")
_DIGIT = re.compile(r"\d")


def _words(text: str) -> list[str]:
    return _WORD.findall(_DIGIT.sub("0", text.lower()))


def analyse_words(text: str, max_n: int = 2) -> list[str]:
    """Lower-cased word n-grams (1..max_n); digits collapse to 0 so years do not split."""
    words = _words(text)
    out = list(words)
    for n in range(2, max_n + 1):
        out += [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
    return out


@dataclass
class TfidfText:
    """Sublinear TF-IDF with L2 norm, fitted by scikit-learn, applied without it."""

    vocabulary: dict[str, int]
    idf: np.ndarray
    max_n: int = 2
    #: First words of the vocabulary's bigrams: ``transform`` builds only the bigrams that
    #: can be in it (the same features as ``analyse_words``; 10% less time on BBC articles,
    #: since most common words begin some bigram).
    bigram_heads: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.bigram_heads = frozenset(g.split(" ", 1)[0] for g in self.vocabulary if " " in g)

    def _grams(self, text: str) -> list[str]:
        if self.max_n != 2:
            return analyse_words(text, self.max_n)
        words = _words(text)
        heads = self.bigram_heads
        return words + [f"{w} {words[i + 1]}" for i, w in enumerate(words[:-1]) if w in heads]

    def transform(self, texts: Sequence[str]) -> list[dict[int, float]]:
        rows: list[dict[int, float]] = []
        for text in texts:
            counts: dict[int, int] = {}
            for gram in self._grams(text):
                j = self.vocabulary.get(gram)
                if j is not None:
                    counts[j] = counts.get(j, 0) + 1
            row = {j: (1.0 + math.log(c)) * float(self.idf[j]) for j, c in counts.items()}
            norm = math.sqrt(sum(v * v for v in row.values())) or 1.0
            rows.append({j: v / norm for j, v in row.items()})
        return rows

    @classmethod
    def fit(cls, texts: Sequence[str], *, max_n: int = 2, min_df: int = 2) -> TfidfText:
        from sklearn.feature_extraction.text import TfidfVectorizer

        vec = TfidfVectorizer(
            analyzer=lambda t: analyse_words(t, max_n), min_df=min_df, sublinear_tf=True
        )
        vec.fit(list(texts))
        vocab = {str(k): int(v) for k, v in vec.vocabulary_.items()}
        return cls(vocab, np.asarray(vec.idf_, np.float32), max_n)

    def matrix(self, texts: Sequence[str]) -> Any:
        """scipy CSR matrix of ``transform`` (for training)."""
        from scipy.sparse import csr_matrix

        rows = self.transform(texts)
        data, indices, indptr = [], [], [0]
        for row in rows:
            for j, v in sorted(row.items()):
                indices.append(j)
                data.append(v)
            indptr.append(len(indices))
        return csr_matrix(
            (np.array(data, np.float32), np.array(indices, np.int32), np.array(indptr, np.int64)),
            shape=(len(rows), len(self.vocabulary)),
        )

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        words = sorted(self.vocabulary, key=self.vocabulary.__getitem__)
        return {
            f"{prefix}.vocab": np.array(json.dumps(words, ensure_ascii=False)),
            f"{prefix}.idf": self.idf,
            f"{prefix}.max_n": np.array([self.max_n], np.int32),
        }

    @classmethod
    def from_arrays(cls, arrays: Any, prefix: str) -> TfidfText:
        words = json.loads(str(arrays[f"{prefix}.vocab"]))
        return cls(
            {w: i for i, w in enumerate(words)},
            np.asarray(arrays[f"{prefix}.idf"], np.float32),
            int(arrays[f"{prefix}.max_n"][0]),
        )


@dataclass
class HybridHead:
    """A linear model over dense features and TF-IDF text features together.

    Dense features are standardised (folded into the weights) and scaled by ``dense_weight``
    before training so that one C regularises both parts sensibly.
    """

    dense: LinearHead  # weights over dense features, bias included
    sparse_weights: np.ndarray  # (n_outputs, vocabulary)
    vectorizer: TfidfText

    def logits(self, dense_x: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        z = self.dense.logits(dense_x) * self.dense.temperature  # raw, temperature below
        for r, row in enumerate(self.vectorizer.transform(texts)):
            if row:
                idx = np.fromiter(row.keys(), np.int64, len(row))
                val = np.fromiter(row.values(), np.float32, len(row))
                z[r] += self.sparse_weights[:, idx] @ val
        return z / self.dense.temperature

    def predict_proba(self, dense_x: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        z = self.logits(dense_x, texts)
        if self.dense.multiclass:
            z = z - z.max(axis=1, keepdims=True)
            e = np.exp(z)
            return np.asarray(e / e.sum(axis=1, keepdims=True))
        return np.asarray(1.0 / (1.0 + np.exp(-z)))

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {
            **self.dense.to_arrays(f"{prefix}.dense"),
            f"{prefix}.sparse": self.sparse_weights.astype(np.float32),
            **self.vectorizer.to_arrays(f"{prefix}.tfidf"),
        }

    @classmethod
    def from_arrays(cls, arrays: Any, prefix: str) -> HybridHead:
        return cls(
            LinearHead.from_arrays(arrays, f"{prefix}.dense"),
            np.asarray(arrays[f"{prefix}.sparse"], np.float32),
            TfidfText.from_arrays(arrays, f"{prefix}.tfidf"),
        )


def fit_hybrid(
    dense_x: np.ndarray,
    texts: Sequence[str],
    y: np.ndarray,
    *,
    c: float,
    dense_weight: float,
    vectorizer: TfidfText,
    multiclass: bool = False,
    seed: int = 0,
) -> HybridHead:
    """Fit scikit-learn's LogisticRegression on [scaled dense, TF-IDF] and fold it."""
    from scipy.sparse import csr_matrix, hstack
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(dense_x)
    dense = scaler.transform(dense_x) * dense_weight
    x = hstack([csr_matrix(dense), vectorizer.matrix(texts)]).tocsr()
    model = LogisticRegression(C=c, max_iter=5000, class_weight="balanced", random_state=seed)
    model.fit(x, y)
    n_dense = dense_x.shape[1]
    coef = np.asarray(model.coef_, np.float64)
    intercept = np.asarray(model.intercept_, np.float64)
    w_dense = coef[:, :n_dense] * dense_weight / scaler.scale_
    b = intercept - w_dense @ scaler.mean_
    w_sparse = coef[:, n_dense:]
    if multiclass and coef.shape[0] == 1:
        w_dense = np.vstack([-w_dense, w_dense]) / 2
        w_sparse = np.vstack([-w_sparse, w_sparse]) / 2
        b = np.array([-b[0], b[0]]) / 2
    head = LinearHead(w_dense.astype(np.float32), b.astype(np.float32), multiclass)
    return HybridHead(head, w_sparse.astype(np.float32), vectorizer)
