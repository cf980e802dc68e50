"""Linear heads over encoder features, stored as plain arrays (no scikit-learn at run time).

Training fits scikit-learn models (pipeline/classify/train.py) and folds the feature scaling
into the weights, so inference is one matrix product and the artifact is a few hundred KB.
"""

from __future__ import annotations

from dataclasses import dataclass
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
