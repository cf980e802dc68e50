"""The Classifier: preprocess -> forward -> postprocess, as Hugging Face pipelines do.

``preprocess`` splits each item into sentences (pure Python), ``forward`` runs the encoder
over a batch (the only place that touches torch, batching and threads), ``postprocess``
applies the domain logic: topic heads, actors and quotes, territories, stance per
(actor, topic). Keeping the stages apart lets the benchmark time the encoder alone on the
same texts, and lets the Hugging Face backend reuse everything but the topic scores.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, field_validator

from pipeline.classify.actors import ActorAnalysis, ActorResolver
from pipeline.classify.encoder import ArticleEncoding, Encoder
from pipeline.classify.finetune import BRANCH_FILE, TopicBranch
from pipeline.classify.polarity import Parse, Parser
from pipeline.classify.sentences import Sentence, Token, split_sentences, tokenize
from pipeline.classify.stance import (
    STANCES,
    Candidate,
    StanceModel,
    aggregate,
    candidate_cues,
    candidates,
    group_pairs,
    pair_contexts,
    pair_features,
)
from pipeline.classify.territories import TerritoryGazetteer
from pipeline.classify.topics import TopicModel
from pipeline.config import PROJECT_DIR, TOPICS, AppConfig, ClassifierSettings
from pipeline.models import ClassifiedText, StanceMention, TopicScore

log = logging.getLogger(__name__)

ARTIFACT_FILE = "classifier.npz"
MANIFEST_FILE = "manifest.json"
#: Items per encoder chunk in classify(); also the progress reporting step.
CHUNK = 64


class ClassifyInput(BaseModel):
    """One item to classify: the ``stancewatch classify`` input line."""

    id: str = Field(min_length=1)
    title: str = ""
    text: str = ""
    published: datetime | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value


class ArtifactsMissing(FileNotFoundError):
    """The trained heads are not there: ``stancewatch train`` builds them."""


@dataclass
class Prepared:
    item: ClassifyInput
    text: str
    sentences: list[Sentence]
    #: Word tokens of ``text``, made once and shared by the actor and territory gazetteers.
    tokens: list[Token]


def prepare(item: ClassifyInput) -> Prepared:
    """Title and body as one text (the title is the first sentence) and its sentences."""
    title = item.title.strip()
    body = item.text.strip()
    text = f"{title}\n\n{body}" if title and body else title or body
    return Prepared(item, text, split_sentences(text), tokenize(text))


def artifacts_dir(settings: ClassifierSettings) -> Path:
    return Path(settings.artifacts_dir) if settings.artifacts_dir else PROJECT_DIR / "model"


class Classifier:
    """Interface every backend implements (docs/architecture.md)."""

    name: str = "classifier"
    version: str = "0"

    def classify(
        self, items: Sequence[ClassifyInput], *, progress: bool = False
    ) -> list[ClassifiedText]:
        raise NotImplementedError


class LocalClassifier(Classifier):
    """MiniLM + trained heads + gazetteers; offline, CPU."""

    def __init__(
        self,
        encoder: Encoder,
        topic_model: TopicModel,
        stance_model: StanceModel,
        resolver: ActorResolver,
        territories: TerritoryGazetteer,
        *,
        version: str = "0",
        use_ner: bool = True,
        parser: Any = None,
    ) -> None:
        self.encoder = encoder
        self.topic_model = topic_model
        self.stance_model = stance_model
        self.resolver = resolver
        self.territories = territories
        self.name = f"stancewatch-local/{encoder.name}"
        self.version = version
        self.use_ner = use_ner
        #: Dependency parses of candidate sentences (``parse(texts) -> list[Parse]``).
        self.parser = parser or Parser()
        #: Pair probabilities of the last postprocess() call's stances (per item).
        self.pair_log: list[list[float]] = []
        #: Items the fine-tuned topic branch has scored (the others were screened out).
        self.branch_runs = 0

    # ------------------------------------------------------------------------ stages

    def preprocess(self, items: Sequence[ClassifyInput]) -> list[Prepared]:
        return [prepare(item) for item in items]

    def forward(self, prepared: Sequence[Prepared]) -> list[ArticleEncoding]:
        return self.encoder.encode_articles(
            [p.text for p in prepared],
            [[(s.start, s.end) for s in p.sentences] for p in prepared],
            defer_topics=True,
        )

    def postprocess(
        self, prepared: Sequence[Prepared], encoded: Sequence[ArticleEncoding]
    ) -> list[ClassifiedText]:
        heads: list[np.ndarray] = []
        sentence_scores: list[np.ndarray] = []
        for p, enc in zip(prepared, encoded, strict=True):
            head, sent = self.topic_model.head_probs(
                enc.article, enc.sentences, enc.seen, p.text, [s.text for s in p.sentences]
            )
            heads.append(head)
            sentence_scores.append(sent)
        # The fine-tuned branch only where the article head is not sure the item is
        # off-topic (most feed items are): topics.py, "branch_gate".
        self.encoder.score_topics(
            [e for e, h in zip(encoded, heads, strict=True) if self.topic_model.needs_branch(h)]
        )
        topic_probs = [
            self.topic_model.blend(h, e.topic_logits) for h, e in zip(heads, encoded, strict=True)
        ]
        for e in encoded:
            e.branch_input = None
        self.branch_runs += sum(e.topic_logits is not None for e in encoded)
        labels = [probs >= self.topic_model.thresholds for probs in topic_probs]
        relevant = [i for i, lab in enumerate(labels) if lab.any()]
        self._fill_unseen(prepared, encoded, sentence_scores, relevant)
        analyses = self._actors(prepared, sentence_scores, labels, relevant)
        stances = self._stances(prepared, analyses, sentence_scores, topic_probs, labels)
        out: list[ClassifiedText] = []
        for i, p in enumerate(prepared):
            out.append(
                ClassifiedText(
                    id=p.item.id,
                    topics={
                        t: TopicScore(label=bool(labels[i][k]), score=float(topic_probs[i][k]))
                        for k, t in enumerate(TOPICS)
                    },
                    stances=stances[i],
                    actors=analyses[i].actors,
                    territories=self.territories.find(p.text, p.tokens),
                    embedding=[round(float(x), 5) for x in encoded[i].article],
                    model=self.name,
                    model_version=self.version,
                )
            )
        return out

    def classify(
        self, items: Sequence[ClassifyInput], *, progress: bool = False
    ) -> list[ClassifiedText]:
        with long_lived_objects_frozen():
            return self._classify(items, progress=progress)

    def _classify(self, items: Sequence[ClassifyInput], *, progress: bool) -> list[ClassifiedText]:
        out: list[ClassifiedText] = []
        started = time.monotonic()
        for start in range(0, len(items), CHUNK):
            chunk = items[start : start + CHUNK]
            prepared = self.preprocess(chunk)
            out.extend(self.postprocess(prepared, self.forward(prepared)))
            if progress:
                rate = len(out) / max(time.monotonic() - started, 1e-9)
                print(
                    f"classified {len(out)}/{len(items)} ({rate:.1f} items/s)",
                    file=sys.stderr,
                    flush=True,
                )
        return out

    # ----------------------------------------------------------------------- helpers

    def _fill_unseen(
        self,
        prepared: Sequence[Prepared],
        encoded: Sequence[ArticleEncoding],
        sentence_scores: list[np.ndarray],
        relevant: Sequence[int],
    ) -> None:
        """Encode and score sentences past the token limit, for relevant articles only."""
        jobs = [(i, j) for i in relevant for j, ok in enumerate(encoded[i].seen) if not ok]
        if not jobs:
            return
        texts = [prepared[i].sentences[j].text for i, j in jobs]
        vecs = self.encoder.encode(texts)
        scores = self.topic_model.sentence_scores(vecs, texts)
        for (i, j), row in zip(jobs, scores, strict=True):
            sentence_scores[i][j] = row

    def _actors(
        self,
        prepared: Sequence[Prepared],
        sentence_scores: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        relevant: Sequence[int],
    ) -> list[ActorAnalysis]:
        return analyse_actors(
            self.resolver,
            prepared,
            sentence_scores,
            labels,
            floor=self.stance_model.floor,
            use_ner=self.use_ner,
        )

    def _stances(
        self,
        prepared: Sequence[Prepared],
        analyses: Sequence[ActorAnalysis],
        sentence_scores: Sequence[np.ndarray],
        topic_probs: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
    ) -> list[list[StanceMention]]:
        """Stance per candidate and the pair decisions.

        Each candidate sentence is encoded once on its own (shared by all actors in it; the
        marked text enters through its words): the article pass's in-context sentence
        vectors were cheaper but lost 0.06 stance macro-F1 on the held-out split.
        """
        per_item: list[list[Candidate]] = []
        for i, p in enumerate(prepared):
            topics = [k for k in range(len(TOPICS)) if labels[i][k]]
            per_item.append(
                candidates(
                    p.sentences, analyses[i], sentence_scores[i], topics, self.stance_model.floor
                )
                if topics
                else []
            )
        texts = sorted(
            {prepared[i].sentences[c.sentence].text for i, cs in enumerate(per_item) for c in cs}
        )
        index = {t: k for k, t in enumerate(texts)}
        vecs = self.encoder.encode(texts) if texts else np.zeros((0, self.encoder.dim))
        attach_cues(prepared, per_item, dict(zip(texts, self.parser.parse(texts), strict=True)))
        out: list[list[StanceMention]] = []
        self.pair_log = []
        for i, cands in enumerate(per_item):
            log_i: list[float] = []
            self.pair_log.append(log_i)
            out.append(
                decide_stances(
                    prepared[i],
                    cands,
                    sentence_scores[i],
                    self.stance_model.sentence_probs(
                        vecs[[index[prepared[i].sentences[c.sentence].text] for c in cands]]
                        if cands
                        else vecs[:0],
                        [c.topic for c in cands],
                        [c.marked for c in cands],
                        [c.cues for c in cands],
                    ),
                    topic_probs[i],
                    self.stance_model,
                    log_i,
                )
            )
        return out


@contextlib.contextmanager
def long_lived_objects_frozen() -> Iterator[None]:
    """Keep the objects that exist now (the model, vocabularies, gazetteers, spaCy: about
    380,000) out of the garbage collector's full passes while the block runs.

    A full pass over them took 0.25 s and came about once per 96 news items, an eighth of
    `classify` time on this CPU (gc callbacks in a throw-away script, stop 19). The objects
    made inside the block are collected as usual. Where someone else froze objects already
    (a pre-fork server), we leave their freeze alone.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def attach_cues(
    prepared: Sequence[Prepared], per_item: Sequence[Sequence[Candidate]], parses: dict[str, Parse]
) -> None:
    """Polarity cues (pipeline/classify/polarity.py) for every candidate, from the parse of
    its sentence; one parse per distinct sentence, shared by the actors in it."""
    for p, cands in zip(prepared, per_item, strict=True):
        for c in cands:
            sentence = p.sentences[c.sentence]
            parse = parses.get(sentence.text)
            if parse is not None:
                c.cues = candidate_cues(parse, sentence, c.mentions)


#: Mention sources that name a speaker outright (not pronouns or carried quotes).
_NAMED = frozenset({"alias", "role", "speaker_alias", "fuzzy"})


def analyse_actors(
    resolver: ActorResolver,
    prepared: Sequence[Prepared],
    sentence_scores: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    floor: float,
    use_ner: bool = True,
) -> list[ActorAnalysis]:
    """Gazetteer for all items; spaCy NER only where an unconfigured speaker may be.

    NER costs about as much as the encoder, so it reads only topic sentences of relevant
    items in which the gazetteer found no named speaker; elsewhere configured actors are
    found by the gazetteer alone.
    """
    ner_sentences: dict[int, list[int]] = {}
    if use_ner:
        for i, lab in enumerate(labels):
            topics = [k for k in range(len(TOPICS)) if lab[k]]
            if not topics:
                continue
            p = prepared[i]
            known = resolver.analyse(
                p.text, p.sentences, p.item.published, tokens=p.tokens
            ).speakers
            sc = sentence_scores[i]
            ner_sentences[i] = [
                j
                for j in range(len(sc))
                if any(sc[j, k] >= floor for k in topics)
                and not any(m.source in _NAMED for m in known.get(j, []))
            ]
    flat = [(i, j) for i, js in ner_sentences.items() for j in js]
    docs: dict[tuple[int, int], Any] = {}
    if flat:
        texts = [prepared[i].sentences[j].text for i, j in flat]
        for key, doc in zip(flat, resolver.nlp().pipe(texts, batch_size=64), strict=True):
            docs[key] = doc
    out: list[ActorAnalysis] = []
    for i, p in enumerate(prepared):
        idx = ner_sentences.get(i) or None
        out.append(
            resolver.analyse(
                p.text,
                p.sentences,
                p.item.published,
                tokens=p.tokens,
                ner_sentences=idx,
                ner_docs=[docs[(i, j)] for j in idx] if idx else None,
                # off-topic news: "Mr Sullivan" is mostly not Jake Sullivan (decisions.md)
                surnames_need_anchor=not labels[i].any(),
            )
        )
    return out


def decide_stances(
    prepared: Prepared,
    cands: Sequence[Candidate],
    sentence_scores: np.ndarray,
    probs: np.ndarray,
    topic_probs: np.ndarray,
    model: StanceModel,
    pair_log: list[float] | None = None,
) -> list[StanceMention]:
    """Pairs the pair head accepts, each with its aggregated stance and evidence.

    ``pair_log`` receives the pair probability of every returned stance (training uses it
    to choose the pair threshold end to end on the validation split).
    """
    out: list[StanceMention] = []
    contexts = pair_contexts(cands)
    for (actor, topic), members in group_pairs(cands).items():
        group = [cands[k] for k in members]
        gprobs = probs[members]
        feats = pair_features(
            group,
            gprobs,
            float(topic_probs[topic]),
            len(prepared.sentences),
            sentence_scores,
            topic,
            contexts[topic],
        )
        pair_prob = model.pair_prob(feats, group)
        if pair_prob < model.pair_threshold:
            continue
        if pair_log is not None:
            pair_log.append(pair_prob)
        stance, score, ev = aggregate(group, gprobs)
        best = group[ev]
        sentence = prepared.sentences[best.sentence]
        named = [m for m in best.mentions if m.source not in ("quote",)]
        mention = named[0].text if named else best.mentions[0].text
        out.append(
            StanceMention(
                actor=actor,
                mention=mention,
                topic=TOPICS[topic],
                stance=STANCES[stance],
                score=min(max(score, 0.0), 1.0),
                evidence=sentence.text,
                quote=best.speaker and any(ch in sentence.text for ch in '"“”'),
            )
        )
    return out


# --------------------------------------------------------------------------- loading


def load_artifacts(directory: Path) -> tuple[TopicModel, StanceModel, dict[str, Any]]:
    path = directory / ARTIFACT_FILE
    if not path.exists():
        raise ArtifactsMissing(
            f"{path}: classifier artifacts not found; build them with `stancewatch train`"
        )
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    manifest_path = directory / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    topic_model = TopicModel.from_arrays(arrays)
    if topic_model.branch_weight > 0 and not (directory / BRANCH_FILE).exists():
        raise ArtifactsMissing(
            f"{directory / BRANCH_FILE}: the topic branch of these artifacts is missing; "
            "rebuild them with `stancewatch train`"
        )
    return topic_model, StanceModel.from_arrays(arrays), manifest


def attach_branch(encoder: Encoder, topic_model: TopicModel, directory: Path) -> None:
    """Give the encoder the fine-tuned topic branch the topic model was trained with."""
    if topic_model.branch_weight > 0:
        encoder.attach_topic_branch(TopicBranch.load(encoder.model, directory / BRANCH_FILE))


def territory_names(config: AppConfig) -> list[str]:
    """Place names that NER must not report as unconfigured actors."""
    return [n for t in config.territories for n in [t.name, *t.aliases]]


def load_local(config: AppConfig, encoder: Encoder | None = None) -> LocalClassifier:
    settings = config.settings.classifier
    directory = artifacts_dir(settings)
    topic_model, stance_model, manifest = load_artifacts(directory)
    enc = encoder or Encoder(
        max_tokens=settings.max_tokens,
        batch_size=settings.batch_size,
        bf16=settings.bf16,
        threads=settings.threads,
        engine=settings.engine,
    )
    attach_branch(enc, topic_model, directory)
    return LocalClassifier(
        enc,
        topic_model,
        stance_model,
        ActorResolver(config.actors, exclude=territory_names(config)),
        TerritoryGazetteer(config.territories),
        version=str(manifest.get("version", "0")),
    )
