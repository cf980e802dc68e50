"""The classifier stage: topics, actors, stances and territories for news items.

``load_classifier(config)`` returns the backend named by ``settings.classifier.backend``:
``local`` (default; MiniLM + trained heads, offline) or ``huggingface-zero-shot``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.classify.classifier import ArtifactsMissing, Classifier, ClassifyInput

if TYPE_CHECKING:
    from pipeline.config import AppConfig

__all__ = ["ArtifactsMissing", "Classifier", "ClassifyInput", "load_classifier"]


def load_classifier(config: AppConfig) -> Classifier:
    """The configured classifier backend, ready to ``classify``."""
    settings = config.settings.classifier
    if settings.backend == "huggingface-zero-shot":
        from pipeline.classify.hf_backend import load_hf_classifier

        return load_hf_classifier(config)
    from pipeline.classify.classifier import load_local

    return load_local(config)
