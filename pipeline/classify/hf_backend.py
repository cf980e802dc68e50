"""Optional backend: a Hugging Face NLI model as a zero-shot topic and stance classifier.

For users with internet (or a model already in their Hugging Face cache) who want a larger
model than the bundled MiniLM, e.g. ``settings.classifier.hf_model:
MoritzLaurer/deberta-v3-large-zeroshot-v2.0``. Topics come from zero-shot classification
with descriptive hypotheses; stances from NLI on each speaker's sentence ("{actor} supports
...", "... opposes ..."). Actors and territories use the same gazetteers as the local
backend.

The default backend never touches the network. This one refuses to start when the model is
neither a local directory nor in the local cache while ``HF_HUB_OFFLINE`` is set (the
CLI sets it): the error says what to do, instead of the hub client retrying for a minute.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.classify.actors import ActorResolver
from pipeline.classify.classifier import Classifier, ClassifyInput, prepare, territory_names
from pipeline.classify.territories import TerritoryGazetteer
from pipeline.config import TOPICS, AppConfig
from pipeline.models import ClassifiedText, StanceMention, TopicScore

HYPOTHESES = {
    "territorial_concessions": "This text is about giving up, trading or refusing to give up "
    "territory to end a war.",
    "peace_talks": "This text is about peace talks, ceasefire negotiations or mediation to end "
    "a war.",
}
STANCE_PHRASES = {
    "territorial_concessions": "territorial concessions to end the war",
    "peace_talks": "peace talks to end the war",
}


class HFModelUnavailable(RuntimeError):
    """The configured Hugging Face model cannot be loaded without the network."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def resolve_model(name: str | None) -> str:
    """A loadable model reference, or a clear error before any slow network retry."""
    if not name:
        raise HFModelUnavailable(
            "settings.classifier.backend is 'huggingface-zero-shot' but settings.classifier."
            "hf_model is not set: name an NLI model (a local directory or a hub id)"
        )
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if _offline():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "config.json")
        except Exception:  # invalid repo id and the like
            cached = None
        if not isinstance(cached, str):
            raise HFModelUnavailable(
                f"Hugging Face model '{name}' is not a local directory and not in the local "
                "cache, and HF_HUB_OFFLINE=1 forbids downloading it: download it once with "
                "internet access (unset HF_HUB_OFFLINE) or point hf_model at a local copy"
            )
    return name


class HFZeroShotClassifier(Classifier):
    def __init__(
        self,
        pipe: Any,
        model_name: str,
        resolver: ActorResolver,
        territories: TerritoryGazetteer,
        batch_size: int = 8,
    ) -> None:
        self.pipe = pipe
        self.name = f"huggingface-zero-shot/{model_name}"
        self.version = "zero-shot"
        self.resolver = resolver
        self.territories = territories
        self.batch_size = batch_size

    def classify(
        self, items: Sequence[ClassifyInput], *, progress: bool = False
    ) -> list[ClassifiedText]:
        out: list[ClassifiedText] = []
        for item in items:
            p = prepare(item)
            result = self.pipe(
                p.text,
                candidate_labels=[HYPOTHESES[t] for t in TOPICS],
                multi_label=True,
                hypothesis_template="{}",
            )
            scores = dict(zip(result["labels"], result["scores"], strict=True))
            topics = {
                t: TopicScore(
                    label=scores[HYPOTHESES[t]] >= 0.5, score=float(scores[HYPOTHESES[t]])
                )
                for t in TOPICS
            }
            analysis = self.resolver.analyse(
                p.text,
                p.sentences,
                item.published,
                tokens=p.tokens,
                surnames_need_anchor=not any(t.label for t in topics.values()),
            )
            stances: list[StanceMention] = []
            seen: set[tuple[str, str]] = set()
            for sidx, speakers in sorted(analysis.speakers.items()):
                sentence = p.sentences[sidx].text
                for m in speakers:
                    for t in TOPICS:
                        if not topics[t].label or (m.actor, t) in seen:
                            continue
                        labels = {
                            "support": f"{m.actor} supports {STANCE_PHRASES[t]}.",
                            "oppose": f"{m.actor} opposes {STANCE_PHRASES[t]}.",
                            "neutral": f"{m.actor} takes no position on {STANCE_PHRASES[t]}.",
                        }
                        r = self.pipe(
                            sentence,
                            candidate_labels=list(labels.values()),
                            hypothesis_template="{}",
                        )
                        best_label, best_score = r["labels"][0], float(r["scores"][0])
                        if best_score < 0.5:
                            continue
                        stance = next(k for k, v in labels.items() if v == best_label)
                        seen.add((m.actor, t))
                        stances.append(
                            StanceMention(
                                actor=m.actor,
                                mention=m.text,
                                topic=t,
                                stance=stance,
                                score=best_score,
                                evidence=sentence,
                                quote='"' in sentence,
                            )
                        )
            out.append(
                ClassifiedText(
                    id=item.id,
                    topics=topics,
                    stances=stances,
                    actors=analysis.actors,
                    territories=self.territories.find(p.text, p.tokens),
                    model=self.name,
                    model_version=self.version,
                )
            )
        return out


def load_hf_classifier(config: AppConfig) -> HFZeroShotClassifier:
    settings = config.settings.classifier
    model = resolve_model(settings.hf_model)
    from transformers import pipeline

    pipe = pipeline("zero-shot-classification", model=model, device=-1)
    return HFZeroShotClassifier(
        pipe,
        str(settings.hf_model),
        ActorResolver(config.actors, exclude=territory_names(config)),
        TerritoryGazetteer(config.territories),
        settings.batch_size,
    )
