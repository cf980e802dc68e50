"""``stancewatch classify``, ``train`` and ``evaluate``: the classifier from the command line.

``classify`` is the stable interface of DESIGN.md: JSON Lines in, one JSON line per input
out, no Elasticsearch needed. A bad input line is reported on stderr with its line number
and skipped; the others are still classified, and the exit code is 1 at the end.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import typer
from pydantic import ValidationError

from pipeline.commands.options import CONFIG_OPTION
from pipeline.config import AppConfig

#: Lines classified together; output is written after each batch (streaming).
BATCH_LINES = 256


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "(top level)"
    msg = "required field is missing" if first.get("type") == "missing" else first.get("msg", "")
    return f"{where}: {msg}"


def _read_items(handle: IO[str], failures: list[int]) -> Iterator[tuple[int, Any]]:
    """(line number, ClassifyInput) for good lines; bad ones are reported and counted."""
    from pipeline.classify import ClassifyInput

    for number, line in enumerate(handle, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            _err(f"line {number}: invalid JSON ({exc.msg} at column {exc.colno})")
            failures.append(number)
            continue
        if not isinstance(record, dict):
            _err(f"line {number}: expected a JSON object, got {type(record).__name__}")
            failures.append(number)
            continue
        try:
            yield number, ClassifyInput.model_validate(record)
        except ValidationError as exc:
            _err(f"line {number}: {_describe(exc)}")
            failures.append(number)


def classify_command(
    path: str = typer.Argument(
        "-", help="JSON Lines file of {id, title, text[, published]}; '-' reads stdin."
    ),
    config_dir: Path | None = CONFIG_OPTION,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr."),
) -> None:
    """Classify news items: topics, and per (actor, topic) the stance with its evidence.

    Output: one JSON line per good input line, in input order:
    {"id", "topics": {"territorial_concessions": {"label", "score"}, "peace_talks": {...}},
    "stances": [{"actor", "mention", "topic", "stance", "score", "evidence"}]}.
    """
    from pipeline.classify import ArtifactsMissing, load_classifier

    config = AppConfig(config_dir)
    if path != "-" and not Path(path).is_file():
        _err(f"error: {path}: no such file")
        raise typer.Exit(2)
    try:
        classifier = load_classifier(config)
    except (ArtifactsMissing, RuntimeError, OSError) as exc:
        _err(f"error: {exc}")
        raise typer.Exit(2) from None
    failures: list[int] = []
    handle: IO[str] = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    done = 0
    started = time.monotonic()
    try:
        batch: list[Any] = []
        for _, item in _read_items(handle, failures):
            batch.append(item)
            if len(batch) >= BATCH_LINES:
                done += _write(classifier, batch)
                batch = []
                if not quiet:
                    rate = done / max(time.monotonic() - started, 1e-9)
                    _err(f"classified {done} items ({rate:.1f}/s)")
        if batch:
            done += _write(classifier, batch)
    finally:
        if handle is not sys.stdin:
            handle.close()
    if failures:
        _err(f"{len(failures)} line(s) failed: {', '.join(map(str, failures[:20]))}")
        raise typer.Exit(1)


def _write(classifier: Any, batch: list[Any]) -> int:
    for result in classifier.classify(batch):
        sys.stdout.write(json.dumps(result.to_classify_output(), ensure_ascii=False) + "\n")
    sys.stdout.flush()
    return len(batch)


def train_command(
    config_dir: Path | None = CONFIG_OPTION,
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Artifact directory (default: settings.classifier.artifacts_dir or model/).",
    ),
    seed: int | None = typer.Option(None, "--seed", help="Random seed (default: the fixed one)."),
    no_test: bool = typer.Option(
        False, "--no-test", help="Skip scoring the held-out test split at the end."
    ),
) -> None:
    """Rebuild every classifier artifact from data/ (seeded, reproducible)."""
    from pipeline.classify.train import SEED, train

    result = train(
        AppConfig(config_dir),
        out_dir=out,
        seed=SEED if seed is None else seed,
        evaluate_test=not no_test,
    )
    print(
        json.dumps(
            {
                "artifacts": str(result.directory),
                "seconds": round(result.seconds, 1),
                "version": result.manifest["version"],
            }
        )
    )


def evaluate_command(
    path: Path | None = typer.Argument(
        None,
        help="JSON Lines of classify input plus gold labels (see docs/labelling-guide.md): "
        "topics as {name: bool} or a list of relevant names, stances as "
        "[{actor, topic, stance}], optionally nested under 'gold' or 'labels'.",
    ),
    split: str | None = typer.Option(
        None,
        "--split",
        help="Instead of PATH: the project's own 'test' (held out) or 'val' split of data/, "
        "BBC negatives included, exactly as `stancewatch train` scores it; or 'heldout': "
        "data/heldout/ (labelled items never trained on, see its README).",
    ),
    config_dir: Path | None = CONFIG_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Score the classifier (and a keyword baseline) on labelled items."""
    from pipeline.classify import ArtifactsMissing, load_classifier
    from pipeline.classify.dataset import DataError
    from pipeline.classify.evaluate import evaluate_items, load_gold

    if (path is None) == (split is None):
        _err("error: give either PATH or --split (test, val or heldout)")
        raise typer.Exit(2)
    if split is not None:
        if split not in ("test", "val", "heldout"):
            _err("error: --split must be 'test', 'val' or 'heldout'")
            raise typer.Exit(2)
        items = _project_split(split)
    else:
        assert path is not None
        if not path.is_file():
            _err(f"error: {path}: no such file")
            raise typer.Exit(2)
        try:
            items = load_gold(path)
        except DataError as exc:
            _err(f"error: {exc}")
            raise typer.Exit(2) from None
    config = AppConfig(config_dir)
    try:
        classifier = load_classifier(config)
    except (ArtifactsMissing, RuntimeError, OSError) as exc:
        _err(f"error: {exc}")
        raise typer.Exit(2) from None
    report = evaluate_items(classifier, items, progress=len(items) > 256, actors=config.actors)
    if as_json:
        print(json.dumps(report.summary()))
    else:
        print(report.format())


def _project_split(split: str) -> list[Any]:
    import contextlib
    import io

    from pipeline.classify.dataset import (
        article_files,
        bbc_negatives,
        heldout_files,
        load_articles,
    )
    from pipeline.classify.train import BBC_NEGATIVES, SEED

    if split == "heldout":
        return load_articles(heldout_files())
    items = load_articles(article_files())
    with contextlib.redirect_stdout(io.StringIO()):  # the corpus package prints its path
        items += bbc_negatives(BBC_NEGATIVES, SEED)
    return [a for a in items if a.split == split]


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("classify")(classify_command)
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)
