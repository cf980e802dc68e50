"""Validate labelled training data against docs/labelling-guide.md.

Written for the part A files, but it works on any article or stance JSON Lines file in
`data/`. It exists because hand-written labels drift: an evidence sentence edited in the text
but not in the stance, a topic flag left false under a stance for that topic, a duplicated id.
Training on such lines teaches the model noise, so the check runs before every commit.

Usage:
    .venv/bin/python scripts/check_data_a.py                      # the part A files
    .venv/bin/python scripts/check_data_a.py data/articles/x.jsonl data/stance/y.jsonl
    .venv/bin/python scripts/check_data_a.py --stats              # also print label counts

Exit status 1 if any error was found. Files under `data/articles/` are checked as articles,
files under `data/stance/` as single sentences.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FILES = [ROOT / "data/articles/part_a.jsonl", ROOT / "data/stance/part_a.jsonl"]
TOPICS = ("territorial_concessions", "peace_talks")
STANCES = {"support", "oppose", "neutral"}
KINDS = {"positive", "hard_negative", "negative"}
ARTICLE_KEYS = (
    "id",
    "title",
    "text",
    "published",
    "conflict",
    "kind",
    "topics",
    "actors",
    "stances",
)
STANCE_KEYS = ("id", "sentence", "actor", "mention", "topic", "stance")
ISO_8601_WITH_ZONE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)$")
MIN_WORDS, MAX_WORDS = 60, 250

Record = dict[str, Any]


def check_article(rec: Record) -> list[str]:
    """Return the problems of one article record (empty when it is valid)."""
    rid = rec.get("id", "?")
    missing = [k for k in ARTICLE_KEYS if k not in rec]
    if missing:
        return [f"{rid}: missing {', '.join(missing)}"]
    errors: list[str] = []
    if not ISO_8601_WITH_ZONE.match(rec["published"]):
        errors.append(f"{rid}: published is not ISO 8601 with a time zone: {rec['published']}")
    if rec["kind"] not in KINDS:
        errors.append(f"{rid}: unknown kind {rec['kind']!r}")
    topics = rec["topics"]
    if set(topics) != set(TOPICS) or not all(isinstance(v, bool) for v in topics.values()):
        errors.append(f"{rid}: topics must be booleans for exactly {TOPICS}")
        return errors
    relevant = any(topics.values())
    if (rec["kind"] == "positive") != relevant:
        errors.append(f"{rid}: kind {rec['kind']} does not match topics {topics}")
    words = len(rec["text"].split())
    if not MIN_WORDS <= words <= MAX_WORDS:
        errors.append(f"{rid}: text has {words} words, expected {MIN_WORDS}-{MAX_WORDS}")
    if not relevant and (rec["stances"] or rec["actors"]):
        errors.append(f"{rid}: an irrelevant article must have no actors and no stances")
    seen: set[tuple[str, str]] = set()
    for st in rec["stances"]:
        key = (st.get("actor", ""), st.get("topic", ""))
        if key in seen:
            errors.append(f"{rid}: more than one stance for {key}")
        seen.add(key)
        if st.get("topic") not in TOPICS or not topics[st["topic"]]:
            errors.append(f"{rid}: stance on {st.get('topic')!r} but that topic is not true")
        if st.get("stance") not in STANCES:
            errors.append(f"{rid}: unknown stance {st.get('stance')!r}")
        evidence = st.get("evidence", "")
        # The title is the first sentence classify reads; the guide allows it as evidence
        # when no sentence of the text shows the stance.
        if not evidence or (evidence not in rec["text"] and evidence != rec.get("title")):
            errors.append(
                f"{rid}: evidence is not a verbatim substring of text or the title: {evidence[:60]!r}"
            )
        if st.get("mention", "") not in evidence:
            errors.append(f"{rid}: mention {st.get('mention')!r} is not in the evidence")
        if st.get("actor") not in rec["actors"]:
            errors.append(f"{rid}: stance actor {st.get('actor')!r} is not listed in actors")
    return errors


def check_stance(rec: Record) -> list[str]:
    """Return the problems of one single-sentence stance record."""
    rid = rec.get("id", "?")
    missing = [k for k in STANCE_KEYS if k not in rec]
    if missing:
        return [f"{rid}: missing {', '.join(missing)}"]
    errors: list[str] = []
    if rec["topic"] not in TOPICS:
        errors.append(f"{rid}: unknown topic {rec['topic']!r}")
    if rec["stance"] not in STANCES:
        errors.append(f"{rid}: unknown stance {rec['stance']!r}")
    if rec["mention"] not in rec["sentence"]:
        errors.append(f"{rid}: mention {rec['mention']!r} is not in the sentence")
    return errors


def load(path: Path) -> tuple[list[Record], list[str]]:
    """Parse a JSON Lines file; unparsable lines are reported, not raised."""
    records: list[Record] = []
    errors: list[str] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            errors.append(f"{path.name}:{lineno}: not valid JSON ({exc.msg})")
    return records, errors


def print_stats(articles: list[Record], sentences: list[Record]) -> None:
    """Print the label distribution, so a batch that skews the balance is noticed."""
    print(f"articles: {len(articles)}, stance sentences: {len(sentences)}")
    print("kind:", dict(Counter(r.get("kind") for r in articles)))
    print("conflict:", dict(Counter(r.get("conflict") for r in articles)))
    flags = Counter(tuple(r.get("topics", {}).get(t) for t in TOPICS) for r in articles)
    print("(territorial_concessions, peace_talks):", dict(flags))
    art = Counter((s["topic"], s["stance"]) for r in articles for s in r.get("stances", []))
    print("article stances:", dict(art))
    print("sentence stances:", dict(Counter((s.get("topic"), s.get("stance")) for s in sentences)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="JSON Lines files (default: part A)")
    parser.add_argument("--stats", action="store_true", help="print label counts")
    args = parser.parse_args(argv)
    files: list[Path] = args.files or DEFAULT_FILES

    errors: list[str] = []
    articles: list[Record] = []
    sentences: list[Record] = []
    ids: Counter[str] = Counter()
    for path in files:
        if not path.exists():
            errors.append(f"{path}: no such file")
            continue
        records, parse_errors = load(path)
        errors += parse_errors
        is_stance = path.resolve().parent.name == "stance"
        for rec in records:
            ids[str(rec.get("id"))] += 1
            errors += check_stance(rec) if is_stance else check_article(rec)
        (sentences if is_stance else articles).extend(records)
    errors += [f"duplicate id {i}" for i, n in ids.items() if n > 1]

    for err in errors:
        print(err)
    if args.stats:
        print_stats(articles, sentences)
    print("OK" if not errors else f"{len(errors)} problem(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
