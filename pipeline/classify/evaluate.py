"""``stancewatch evaluate PATH``: how good the classifier is on labelled items.

Metrics (docs/model.md repeats the definitions):

* **Topics**: precision, recall and F1 per topic; topic macro-F1 is their mean.
* **Stance, over (actor, topic) pairs**: gold and predicted pairs are matched per item by
  canonical actor name (case and accents folded) and topic. Every gold pair and every
  predicted pair counts once: a matched pair is (gold stance, predicted stance); a gold pair
  the classifier missed is (gold stance, "none"); a predicted pair with no gold is ("none",
  predicted stance). Per stance class c: TP = matched with both c; FP = predicted c but gold
  is another class or "none"; FN = gold c but predicted another class or "none". Stance
  macro-F1 is the mean F1 over support / oppose / neutral. So a missed pair costs recall
  and an invented pair costs precision, as a user would feel them.
* **Actor recall**: gold actors (per item, folded names) found among the classifier's
  actors (all mentioned actors plus stance actors), micro-averaged over items.
* **Gold names**: a gold actor written as an alias or capital of a configured actor
  ("Zelensky", "Sergei Lavrov", "the Kremlin", "Kyiv") is read as that actor's canonical
  name, so another labeller's spelling is not scored as a miss plus an invented pair; so is
  a name in which the gazetteer finds exactly one configured actor ("President Putin",
  "Zelinsky", "NATO's secretary general" on the item's date). The report lists the names
  it read so.
* The confusion table shows gold rows against predicted columns, "none" included.
* The keyword baseline (pipeline/classify/keyword_baseline.py) is scored on the same items.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from pipeline.classify.actors import (
    ActorResolver,
    country_speaker_aliases,
    institution_aliases,
)
from pipeline.classify.classifier import Classifier, ClassifyInput
from pipeline.classify.dataset import DataError, LabelledArticle, article_from_record
from pipeline.classify.keyword_baseline import keyword_topics
from pipeline.classify.sentences import fold, split_sentences
from pipeline.classify.stance import STANCES
from pipeline.config import TOPICS, ActorConfig
from pipeline.models import ClassifiedText

NONE = "none"


def _name(actor: str) -> str:
    return " ".join(fold(actor).casefold().split())


def canonical_names(actors: Sequence[ActorConfig]) -> dict[str, str]:
    """Folded name, alias, capital or generated institution alias -> canonical name.

    Canonical names win over aliases; an alias that two actors share is left out.
    """
    generated = institution_aliases(actors)
    countries = country_speaker_aliases(actors)
    owners: dict[str, set[str]] = {}
    for a in actors:
        # a.names includes the canonical name; canonical names win below in any case
        for alias in [*a.names, *countries.get(a.name, []), *generated.get(a.name, [])]:
            owners.setdefault(_name(alias), set()).add(a.name)
    out = {key: next(iter(names)) for key, names in owners.items() if len(names) == 1}
    out.update({_name(a.name): a.name for a in actors})
    return out


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f, "tp": tp, "fp": fp, "fn": fn}


@dataclass
class TopicScores:
    per_topic: dict[str, dict[str, float]]

    @property
    def macro_f1(self) -> float:
        return sum(v["f1"] for v in self.per_topic.values()) / max(len(self.per_topic), 1)


def topic_scores(gold: Sequence[dict[str, bool]], pred: Sequence[dict[str, bool]]) -> TopicScores:
    per: dict[str, dict[str, float]] = {}
    for t in TOPICS:
        tp = sum(1 for g, p in zip(gold, pred, strict=True) if g[t] and p[t])
        fp = sum(1 for g, p in zip(gold, pred, strict=True) if not g[t] and p[t])
        fn = sum(1 for g, p in zip(gold, pred, strict=True) if g[t] and not p[t])
        per[t] = _prf(tp, fp, fn)
    return TopicScores(per)


@dataclass
class StanceScores:
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, gold: dict[tuple[str, str], str], pred: dict[tuple[str, str], str]) -> None:
        for key in gold.keys() | pred.keys():
            self.confusion[(gold.get(key, NONE), pred.get(key, NONE))] += 1

    def per_class(self) -> dict[str, dict[str, float]]:
        out = {}
        for c in STANCES:
            tp = self.confusion[(c, c)]
            fp = sum(n for (g, p), n in self.confusion.items() if p == c and g != c)
            fn = sum(n for (g, p), n in self.confusion.items() if g == c and p != c)
            out[c] = _prf(tp, fp, fn)
        return out

    @property
    def macro_f1(self) -> float:
        return sum(v["f1"] for v in self.per_class().values()) / len(STANCES)

    @property
    def matched_accuracy(self) -> float:
        matched = {k: n for k, n in self.confusion.items() if NONE not in k}
        total = sum(matched.values())
        return sum(n for (g, p), n in matched.items() if g == p) / total if total else 0.0

    def gold_only(self) -> StanceScores:
        """The same counts without invented pairs: scores over gold pairs only (a missed pair
        still counts as wrong), the reading of an evaluator that ignores extra pairs."""
        return StanceScores(Counter({k: n for k, n in self.confusion.items() if k[0] != NONE}))

    @property
    def matched_macro_f1(self) -> float:
        """Macro-F1 over pairs found by both gold and prediction (stance quality alone)."""
        matched = StanceScores(Counter({k: n for k, n in self.confusion.items() if NONE not in k}))
        return matched.macro_f1

    def counts(self) -> dict[str, int]:
        return {
            "gold_pairs": sum(n for (g, _), n in self.confusion.items() if g != NONE),
            "predicted_pairs": sum(n for (_, p), n in self.confusion.items() if p != NONE),
            "matched": sum(n for (g, p), n in self.confusion.items() if NONE not in (g, p)),
            "missed": sum(n for (g, p), n in self.confusion.items() if p == NONE),
            "extra": sum(n for (g, p), n in self.confusion.items() if g == NONE),
        }


@dataclass
class EvalReport:
    n_items: int
    topics: TopicScores
    stance: StanceScores
    actor_found: int
    actor_total: int
    stance_actor_found: int
    baseline: TopicScores | None = None
    #: gold actor names read as a configured actor's canonical name, with their counts
    renamed: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def actor_recall(self) -> float:
        return self.actor_found / self.actor_total if self.actor_total else 0.0

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "items": self.n_items,
            "topic_macro_f1": round(self.topics.macro_f1, 4),
            **{f"{t}_f1": round(v["f1"], 4) for t, v in self.topics.per_topic.items()},
            "stance_macro_f1": round(self.stance.macro_f1, 4),
            "stance_matched_macro_f1": round(self.stance.matched_macro_f1, 4),
            "stance_matched_accuracy": round(self.stance.matched_accuracy, 4),
            "actor_recall": round(self.actor_recall, 4),
            "stance_actor_recall": round(
                self.stance_actor_found / self.actor_total if self.actor_total else 0.0, 4
            ),
            **self.stance.counts(),
        }
        if self.baseline is not None:
            out["keyword_baseline_topic_macro_f1"] = round(self.baseline.macro_f1, 4)
        out["gold_names_read_as_configured"] = sum(self.renamed.values())
        return out

    def format(self) -> str:
        lines = [
            f"items: {self.n_items}",
            "",
            "topics           precision  recall      F1   TP  FP  FN",
        ]
        for t, v in self.topics.per_topic.items():
            lines.append(
                f"{t:<24}{v['precision']:>7.3f} {v['recall']:>7.3f} {v['f1']:>7.3f} "
                f"{int(v['tp']):>4}{int(v['fp']):>4}{int(v['fn']):>4}"
            )
        lines.append(f"topic macro-F1: {self.topics.macro_f1:.3f}")
        if self.baseline is not None:
            lines.append("")
            lines.append("keyword baseline (boolean query)")
            for t, v in self.baseline.per_topic.items():
                lines.append(
                    f"{t:<24}{v['precision']:>7.3f} {v['recall']:>7.3f} {v['f1']:>7.3f} "
                    f"{int(v['tp']):>4}{int(v['fp']):>4}{int(v['fn']):>4}"
                )
            lines.append(f"keyword baseline topic macro-F1: {self.baseline.macro_f1:.3f}")
        lines += ["", "stance over (actor, topic) pairs  precision  recall      F1"]
        for c, v in self.stance.per_class().items():
            lines.append(f"{c:<34}{v['precision']:>7.3f} {v['recall']:>7.3f} {v['f1']:>7.3f}")
        lines.append(f"stance macro-F1: {self.stance.macro_f1:.3f}")
        counts = self.stance.counts()
        lines.append(
            "pairs: gold {gold_pairs}, predicted {predicted_pairs}, matched {matched}, "
            "missed {missed}, extra {extra}".format(**counts)
        )
        lines.append(
            f"on matched pairs only: stance macro-F1 {self.stance.matched_macro_f1:.3f}, "
            f"accuracy {self.stance.matched_accuracy:.3f}"
        )
        lines += ["", "confusion (rows gold, columns predicted)"]
        labels = [*STANCES, NONE]
        lines.append(" " * 10 + "".join(f"{c:>9}" for c in labels))
        for g in labels:
            lines.append(
                f"{g:<10}" + "".join(f"{self.stance.confusion[(g, p)]:>9}" for p in labels)
            )
        lines += [
            "",
            f"actor recall: {self.actor_recall:.3f} ({self.actor_found}/{self.actor_total})",
            f"actor recall from stances only: "
            f"{self.stance_actor_found / self.actor_total if self.actor_total else 0.0:.3f}",
        ]
        if self.renamed:
            shown = ", ".join(
                f"{gold!r} -> {canonical} ({n})"
                for (gold, canonical), n in self.renamed.most_common(8)
            )
            more = len(self.renamed) - 8
            lines.append(
                f"gold actor names read as configured actors: {shown}"
                + (f", and {more} more" if more > 0 else "")
            )
        return "\n".join(lines)


#: Reads a gold actor name written some other way; (name, item's publication time) ->
#: canonical name or None.
GoldNameResolver = Callable[[str, datetime | None], str | None]


def gold_name_resolver(actors: Sequence[ActorConfig]) -> GoldNameResolver:
    """Gold names the alias table does not know, read by the actor gazetteer itself.

    Another labeller writes "Ukrainian President Volodymyr Zelenskyy", "President Putin",
    "Zelinsky" or "NATO's secretary general": the gazetteer finds the one configured actor in
    such a name (aliases, typos, role titles on the item's date). A name in which it finds
    no configured actor, or two ("Putin and Xi"), stays as written.
    """
    resolver = ActorResolver(actors)
    memo: dict[tuple[str, date | None], str | None] = {}
    # A lone surname is a name here, not a word: "Tatar" or "Reda" in a gold file means the
    # one configured person of that surname (in running text the gazetteer leaves short or
    # ambiguous surnames alone). Surnames two people share stay as written.
    owners: dict[str, set[str]] = {}
    for a in actors:
        if a.kind == "person":
            for alias in [a.name, *a.aliases]:
                owners.setdefault(_name(alias.split()[-1]), set()).add(a.name)
    surnames = {k: next(iter(v)) for k, v in owners.items() if len(v) == 1}

    def resolve(name: str, published: datetime | None) -> str | None:
        text = " ".join(name.split())
        day = published.date() if published else None
        if (text, day) not in memo:
            found = set()
            if 0 < len(text.split()) <= 10:
                mentions = resolver.analyse(text, split_sentences(text), published).mentions
                found = {m.actor for m in mentions if m.configured}
                # "Putin's spokesman" is somebody else
                if any(text[m.end : m.end + 2] in ("'s", "’s") for m in mentions):
                    found = set()
            if not found and len(text.split()) == 1 and _name(text) in surnames:
                found = {surnames[_name(text)]}
            memo[(text, day)] = found.pop() if len(found) == 1 else None
        return memo[(text, day)]

    return resolve


def score(
    items: Sequence[LabelledArticle],
    predictions: Sequence[ClassifiedText],
    *,
    baseline: bool = True,
    names: Mapping[str, str] | None = None,
    resolve: GoldNameResolver | None = None,
) -> EvalReport:
    """``names``: folded alias -> canonical name (``canonical_names``), applied to both sides;
    ``resolve`` reads the gold names that ``names`` does not know (``gold_name_resolver``)."""
    names = names or {}
    renamed: Counter[tuple[str, str]] = Counter()

    def key(actor: str, gold: LabelledArticle | None = None, count: bool = False) -> str:
        """Comparable name; ``gold``: the item a gold name comes from (its date reads role
        titles); ``count``: list the name in the report when it was read as another."""
        folded = _name(actor)
        canonical = names.get(folded)
        if canonical is None and gold is not None and resolve is not None:
            canonical = resolve(actor, gold.published)
        if canonical is None:
            return folded
        if count and _name(canonical) != folded:
            renamed[(actor, canonical)] += 1
        return _name(canonical)

    gold_topics = [it.topics for it in items]
    pred_topics = [{t: p.topics[t].label for t in TOPICS} for p in predictions]
    stance = StanceScores()
    found = total = stance_found = 0
    for it, p in zip(items, predictions, strict=True):
        gold_pairs = {(key(s.actor, it, count=True), s.topic): s.stance for s in it.stances}
        pred_pairs: dict[tuple[str, str], str] = {}
        for s in sorted(p.stances, key=lambda s: -s.score):
            pred_pairs.setdefault((key(s.actor), s.topic), s.stance)
        stance.add(gold_pairs, pred_pairs)
        gold_actors = {key(a, it) for a in it.actors} | {key(s.actor, it) for s in it.stances}
        predicted = {key(a) for a in p.actors}
        stance_actors = {key(s.actor) for s in p.stances}
        total += len(gold_actors)
        found += len(gold_actors & (predicted | stance_actors))
        stance_found += len(gold_actors & stance_actors)
    base = (
        topic_scores(gold_topics, [keyword_topics(it.title, it.text) for it in items])
        if baseline
        else None
    )
    return EvalReport(
        len(items),
        topic_scores(gold_topics, pred_topics),
        stance,
        found,
        total,
        stance_found,
        base,
        renamed,
    )


def evaluate_items(
    classifier: Classifier,
    items: Sequence[LabelledArticle],
    *,
    baseline: bool = True,
    progress: bool = False,
    actors: Sequence[ActorConfig] = (),
) -> EvalReport:
    """Classify ``items`` and score them; ``actors`` map gold aliases to canonical names."""
    inputs = [
        ClassifyInput(id=i.id, title=i.title, text=i.text, published=i.published) for i in items
    ]
    predictions = classifier.classify(inputs, progress=progress)
    return score(
        items,
        predictions,
        baseline=baseline,
        names=canonical_names(actors),
        resolve=gold_name_resolver(actors) if actors else None,
    )


def load_gold(path: Path) -> list[LabelledArticle]:
    """Gold items from JSON Lines; a bad line raises DataError naming file and line."""
    out: list[LabelledArticle] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object")
            out.append(article_from_record(record, where))
    return out
