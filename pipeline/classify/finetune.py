"""The topic branch: MiniLM's top layers fine-tuned for the two topics.

Frozen-encoder heads plateaued at topic macro-F1 0.89 on validation; fine-tuning the whole
encoder end to end reached 0.91-0.93, and fine-tuning only the top two of its six layers
did as well (docs/decisions.md, "Classifier: a fine-tuned topic branch"). So the frozen
encoder stays as it is for everything else (sentence vectors, stance), and the branch
shares its bottom layers:

    embeddings -> layers 0..3 (shared) -> layers 4..5 (frozen)  -> token states, as before
                                       \\-> layers 4..5 (tuned) -> mean pool -> topic logits

One article costs the bottom four layers once and the top two twice: about a third more
than the bare encoder, instead of a second full forward pass.

Training runs on the CPU in ``stancewatch train`` on the training articles plus short texts
(labelled stance sentences as positives of their topic, as many sentences of articles
without a topic as its negatives): trained on articles alone the branch found only 77-86 %
of single land sentences. The shared states are computed once, then only the branch learns (seeded shuffles, dropout and
initialisation, so a rerun on the same machine gives the same weights). The weights are
stored as float16 in ``model/topic_branch.npz`` (about 7 MB) and every score the trainer
reports is computed from the float16 round trip, exactly what ``classify`` loads.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Layers below this index are shared with the frozen encoder; the rest are tuned.
BRANCH_FROM = 4
BRANCH_FILE = "topic_branch.npz"
EPOCHS = 10
LEARNING_RATE = 1.5e-4  # encoder layers; the fresh linear head learns at HEAD_LEARNING_RATE
HEAD_LEARNING_RATE = 1e-3
BATCH_SIZE = 16
WARMUP_SHARE = 0.1
WEIGHT_DECAY = 0.01


def attention_mask_4d(model: Any, states: Any, mask: Any) -> Any:
    """The mask exactly as BertModel hands it to its layers (for its attention kernel)."""
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=model.config, inputs_embeds=states, attention_mask=mask)


def shared_forward(model: Any, ids: Any, mask: Any, types: Any) -> tuple[Any, Any]:
    """Embeddings and the shared bottom layers: (states at BRANCH_FROM, the 4-d mask)."""
    states = model.embeddings(input_ids=ids, token_type_ids=types)
    mask4 = attention_mask_4d(model, states, mask)
    for layer in model.encoder.layer[:BRANCH_FROM]:
        states = layer(states, mask4)
    return states, mask4


def top_forward(layers: Any, states: Any, mask4: Any) -> Any:
    for layer in layers:
        states = layer(states, mask4)
    return states


def mean_pool(states: Any, mask: Any) -> Any:
    m = mask.unsqueeze(-1).to(states.dtype)
    return (states * m).sum(1) / m.sum(1).clamp(min=1.0)


class TopicBranch:
    """Tuned copies of the encoder's top layers plus a linear head (one logit per topic)."""

    def __init__(self, layers: Any, head: Any, topics: Sequence[str]) -> None:
        self.layers = layers  # torch.nn.ModuleList
        self.head = head  # torch.nn.Linear(dim, len(topics))
        self.topics = tuple(topics)

    @classmethod
    def initial(cls, model: Any, topics: Sequence[str]) -> TopicBranch:
        """Copies of the encoder's top layers and a fresh head (drawn from torch's RNG:
        the caller seeds it when the start must be reproducible)."""
        import torch

        layers = copy.deepcopy(model.encoder.layer[BRANCH_FROM:])
        head = torch.nn.Linear(int(model.config.hidden_size), len(topics))
        return cls(layers, head, topics)

    def train(self, mode: bool = True) -> None:
        self.layers.train(mode)
        self.head.train(mode)

    def logits(self, shared: Any, mask4: Any, mask: Any) -> Any:
        return self.head(mean_pool(top_forward(self.layers, shared, mask4), mask))

    # ----------------------------------------------------------------------- storage

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {
            f"layers.{k}": v.detach().numpy().astype(np.float16)
            for k, v in self.layers.state_dict().items()
        }
        out.update(
            {
                f"head.{k}": v.detach().numpy().astype(np.float16)
                for k, v in self.head.state_dict().items()
            }
        )
        out["topics"] = np.array(self.topics)
        return out

    @classmethod
    def from_arrays(cls, model: Any, arrays: dict[str, np.ndarray]) -> TopicBranch:
        import torch

        topics = [str(t) for t in arrays["topics"]]
        branch = cls.initial(model, topics)  # every weight is overwritten below

        def state(prefix: str) -> dict[str, Any]:
            return {
                k[len(prefix) :]: torch.from_numpy(v.astype(np.float32))
                for k, v in arrays.items()
                if k.startswith(prefix)
            }

        branch.layers.load_state_dict(state("layers."))
        branch.head.load_state_dict(state("head."))
        branch.train(False)
        return branch

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **self.to_arrays())  # type: ignore[arg-type]
        return path

    @classmethod
    def load(cls, model: Any, path: Path) -> TopicBranch:
        """From a file written by :meth:`save` (a directory means its ``BRANCH_FILE``)."""
        if path.is_dir():
            path = path / BRANCH_FILE
        with np.load(path) as data:
            return cls.from_arrays(model, {k: data[k] for k in data.files})

    def rounded(self, model: Any) -> TopicBranch:
        """This branch after the float16 round trip of save/load: what classify will run."""
        return TopicBranch.from_arrays(model, self.to_arrays())


# ------------------------------------------------------------------------------ training


def shared_states(encoder: Any, texts: Sequence[str]) -> list[Any]:
    """Per text, its token states after the shared layers (unpadded float32 tensors)."""
    return shared_states_of_ids(encoder, encoder._tokenize(texts).ids)


def shared_states_of_ids(encoder: Any, ids: Sequence[np.ndarray]) -> list[Any]:
    """Shared-layer states for unpadded token ids (also the ONNX engine's deferred branch)."""
    import torch

    out: list[Any] = [None] * len(ids)
    for idx in encoder._batches([len(x) for x in ids]):
        padded, mask = encoder._padded([ids[i] for i in idx])
        with torch.inference_mode():
            states, _ = shared_forward(
                encoder.model,
                torch.from_numpy(padded),
                torch.from_numpy(mask),
                torch.from_numpy(np.zeros_like(padded)),
            )
        for row, i in enumerate(idx):
            out[i] = states[row, : len(ids[i])].clone()
    return out


def branch_cache_key(
    encoder: Any, texts: Sequence[str], labels: np.ndarray, known: np.ndarray, seed: int
) -> str:
    """Digest of everything a trained branch depends on: texts, labels, seed, settings,
    library versions and this module's own source."""
    import hashlib

    import torch
    import transformers

    digest = hashlib.sha256(Path(__file__).read_bytes())
    settings = (
        f"{encoder.name}|{encoder.max_tokens}|{seed}|{torch.__version__}|"
        f"{transformers.__version__}|{labels.shape}"
    )
    digest.update(settings.encode())
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    digest.update(np.ascontiguousarray(labels, dtype=bool).tobytes())
    digest.update(np.ascontiguousarray(known, dtype=bool).tobytes())
    return digest.hexdigest()[:20]


def _pad(states: Sequence[Any]) -> tuple[Any, Any]:
    import torch

    width = max(int(s.shape[0]) for s in states)
    dim = int(states[0].shape[1])
    batch = torch.zeros(len(states), width, dim)
    mask = torch.zeros(len(states), width, dtype=torch.long)
    for row, s in enumerate(states):
        batch[row, : s.shape[0]] = s
        mask[row, : s.shape[0]] = 1
    return batch, mask


def branch_logits(branch: TopicBranch, model: Any, states: Sequence[Any]) -> np.ndarray:
    """Topic logits (n, n_topics) of the branch over shared states."""
    import torch

    branch.train(False)
    out = np.zeros((len(states), len(branch.topics)), dtype=np.float32)
    order = sorted(range(len(states)), key=lambda i: int(states[i].shape[0]))
    with torch.inference_mode():
        for start in range(0, len(order), 32):
            idx = order[start : start + 32]
            batch, mask = _pad([states[i] for i in idx])
            logits = branch.logits(batch, attention_mask_4d(model, batch, mask), mask)
            # .float(): under bf16 autocast (native-bf16 CPUs) the logits come back bf16,
            # which numpy cannot hold.
            out[idx] = logits.float().numpy()
    return out


def _length_buckets(states: Sequence[Any], generator: Any) -> list[list[int]]:
    """Shuffled batches of similar length: shuffle, sort within pools of 8 batches, shuffle
    the batches. Padding to the longest article of a random batch doubled the epoch time."""
    import torch

    order = torch.randperm(len(states), generator=generator).tolist()
    pool = BATCH_SIZE * 8
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: int(states[i].shape[0]))
        batches.extend(chunk[k : k + BATCH_SIZE] for k in range(0, len(chunk), BATCH_SIZE))
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[k] for k in shuffled]


def fine_tune(
    model: Any,
    states: Sequence[Any],
    labels: np.ndarray,
    topics: Sequence[str],
    *,
    known: np.ndarray | None = None,
    seed: int,
    epochs: int = EPOCHS,
    say: Callable[[str], None] = print,
) -> TopicBranch:
    """Train a branch on shared states of labelled texts (labels: (n, n_topics) bool).

    ``known`` (same shape) marks the labels that count: a labelled stance sentence says its
    own topic is present but nothing about the other one.
    """
    import torch

    torch.manual_seed(seed)  # the head's initialisation and dropout
    branch = TopicBranch.initial(model, topics)
    branch.train(True)
    optimiser = torch.optim.AdamW(
        [
            {"params": list(branch.layers.parameters()), "lr": LEARNING_RATE},
            {"params": list(branch.head.parameters()), "lr": HEAD_LEARNING_RATE},
        ],
        weight_decay=WEIGHT_DECAY,
    )
    steps = epochs * ((len(states) + BATCH_SIZE - 1) // BATCH_SIZE)
    warmup = max(1.0, WARMUP_SHARE * steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, (steps - s) / steps)
    )
    targets = torch.from_numpy(labels.astype(np.float32))
    weights = torch.from_numpy(
        (np.ones(labels.shape) if known is None else known).astype(np.float32)
    )
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        started, total = time.monotonic(), 0.0
        for idx in _length_buckets(states, generator):
            batch, mask = _pad([states[i] for i in idx])
            logits = branch.logits(batch, attention_mask_4d(model, batch, mask), mask)
            each = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, targets[idx], reduction="none"
            )
            loss = (each * weights[idx]).sum() / weights[idx].sum().clamp(min=1.0)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach()) * len(idx)
        say(
            f"topic branch epoch {epoch + 1}/{epochs}: loss {total / len(states):.4f} "
            f"({time.monotonic() - started:.0f} s)"
        )
    branch.train(False)
    return branch
