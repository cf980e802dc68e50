"""MiniLM as an optimised ONNX Runtime graph: built once per source model, cached, checked.

Why: on our AVX-512 Xeons without native bf16, ONNX Runtime with the transformer optimizer's
fused BERT kernels (EmbedLayerNormalization, Attention, BiasGelu, SkipLayerNormalization) runs
the fp32 forward pass faster than PyTorch eager while giving the same vectors (cosine vs
PyTorch >= 0.99999 on real texts; see docs/decisions.md "Classifier speed").

The exported and optimised model (about 90 MB) is a build artifact, never committed: it is
created at first use under ``<data dir>/model-cache/`` (``var/model-cache`` in a checkout,
git-ignored), or ahead of time with ``python -m pipeline.classify.onnx_encoder``. Its file
name carries a hash of the source weights, the export recipe and the ONNX Runtime version,
so a new model or runtime never reads a stale graph. A JSON sidecar holds the file's
SHA-256 and reference vectors computed by PyTorch at export; a file that fails either check
at load is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Bump when the export or optimisation steps change: old cache files are then ignored.
RECIPE = 1
OPSET = 17
#: The cached graph must reproduce the PyTorch reference vectors at least this well.
MIN_COSINE = 0.9999
#: The int8 graph (weights quantised per output channel, activations at run time) trades a
#: little accuracy for ~1.5x speed: its vectors must stay this close to PyTorch's.
MIN_COSINE_INT8 = 0.98
#: Bump when the quantisation recipe changes.
INT8_RECIPE = 1
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")

#: Real-looking texts of different lengths, encoded as one padded batch at export and load.
CHECK_TEXTS = (
    "NATO's secretary general said Ukraine may have to cede territory to end the war.",
    "The striker scored twice as the home side defended their own territory in the second half.",
    "Talks between the two delegations resumed in Doha on Tuesday, mediators said, after a "
    "week-long pause over the sequencing of a ceasefire and the exchange of prisoners. "
    "Officials on both sides said the question of who would administer the border crossings "
    "remained open, and that a draft text circulated by the mediators had not yet been "
    "accepted by either delegation.",
    "Shares in the rail operator rose after it won a 30-year concession.",
)


class OnnxUnavailable(RuntimeError):
    """ONNX Runtime (or ``onnx`` for the export) is missing, or the graph could not be built."""


def default_cache_dir() -> Path:
    """``<data dir>/model-cache``: the data dir follows STANCEWATCH_DATA_DIR like the rest."""
    from pipeline.config import _default_data_dir

    base = os.environ.get("STANCEWATCH_DATA_DIR") or str(_default_data_dir())
    return Path(base).expanduser() / "model-cache"


def source_hash(model_dir: str | Path) -> str:
    """SHA-256 over the files that determine the graph (weights and architecture)."""
    model_dir = Path(model_dir)
    weights = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))
    files = [model_dir / "config.json", *weights]
    # Hashing 90 MB takes ~0.4 s: once per process and file version is enough.
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if stamp not in _SOURCE_HASHES:
        digest = hashlib.sha256()
        for path in files:
            digest.update(path.name.encode())
            digest.update(_file_sha256(path).encode())
        _SOURCE_HASHES[stamp] = digest.hexdigest()
    return _SOURCE_HASHES[stamp]


_SOURCE_HASHES: dict[tuple[tuple[str, int, int], ...], str] = {}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class CachedGraph:
    """The optimised graph, its checked session and what was recorded when it was built."""

    path: Path
    meta: dict[str, Any]
    session: Any  # onnxruntime.InferenceSession
    built: bool  # True when this call exported it (False: reused from the cache)
    cosine: float  # the session's vectors vs the PyTorch reference, on CHECK_TEXTS


def cache_paths(
    model_dir: str | Path, cache_dir: str | Path, *, int8: bool = False
) -> tuple[Path, Path]:
    import onnxruntime

    key = source_hash(model_dir)[:16]
    stem = f"minilm-{key}-r{RECIPE}-ort{onnxruntime.__version__}"
    if int8:
        stem += f"-int8q{INT8_RECIPE}"
    base = Path(cache_dir)
    return base / f"{stem}.onnx", base / f"{stem}.json"


def ensure_graph(
    model_dir: str | Path,
    cache_dir: str | Path | None = None,
    *,
    tokenizer: Any = None,
    reference_model: Callable[[], Any] | None = None,
    threads: int | None = None,
    spinning: bool = True,
    int8: bool = False,
) -> CachedGraph:
    """The optimised graph for ``model_dir`` with a checked session: reused, else (re)built.

    ``reference_model`` returns the PyTorch model for the export and the reference vectors
    (the caller's, so it is loaded once); it is called only when a build is needed. With
    ``int8`` the graph is the fp32 one quantised (built from it, cached beside it).
    """
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise OnnxUnavailable(f"onnxruntime is not installed: {exc}") from exc
    tokenizer = tokenizer or _tokenizer(model_dir)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    onnx_path, meta_path = cache_paths(model_dir, cache)
    opts = {"threads": threads, "spinning": spinning}
    if int8:
        return _ensure_int8(model_dir, cache, tokenizer, reference_model, opts)
    found = _load_checked(onnx_path, meta_path, tokenizer, opts)
    if found is not None:
        return found
    cache.mkdir(parents=True, exist_ok=True)
    with _lock(cache / f".{onnx_path.stem}.lock"):
        # Another process may have built it while we waited for the lock.
        found = _load_checked(onnx_path, meta_path, tokenizer, opts)
        if found is not None:
            return found
        _build(model_dir, onnx_path, meta_path, tokenizer, reference_model)
        found = _load_checked(onnx_path, meta_path, tokenizer, opts, quiet=False)
    if found is None:
        raise OnnxUnavailable(f"{onnx_path}: the graph just built does not load")
    found.built = True
    return found


def _ensure_int8(
    model_dir: str | Path,
    cache: Path,
    tokenizer: Any,
    reference_model: Callable[[], Any] | None,
    opts: dict[str, Any],
) -> CachedGraph:
    """The int8 graph: reused when intact and close enough to PyTorch, else quantised from
    the (reused or built) fp32 graph."""
    onnx_path, meta_path = cache_paths(model_dir, cache, int8=True)
    found = _load_checked(onnx_path, meta_path, tokenizer, opts, min_cosine=MIN_COSINE_INT8)
    if found is not None:
        return found
    source = ensure_graph(
        model_dir, cache, tokenizer=tokenizer, reference_model=reference_model, **opts
    )
    with _lock(cache / f".{onnx_path.stem}.lock"):
        found = _load_checked(onnx_path, meta_path, tokenizer, opts, min_cosine=MIN_COSINE_INT8)
        if found is not None:
            return found
        _quantise(source, onnx_path, meta_path, tokenizer)
        found = _load_checked(
            onnx_path, meta_path, tokenizer, opts, quiet=False, min_cosine=MIN_COSINE_INT8
        )
    if found is None:
        raise OnnxUnavailable(f"{onnx_path}: the graph just quantised does not load")
    found.built = True
    return found


def _quantise(source: CachedGraph, onnx_path: Path, meta_path: Path, tokenizer: Any) -> None:
    """Dynamic int8 quantisation of the fp32 graph's MatMul weights, one scale per output
    channel: per-tensor scales gave cosine 0.91-0.95 against PyTorch on news text, per-channel
    0.989-0.995 (docs/decisions.md, "An int8 encoder, on request")."""
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise OnnxUnavailable(f"cannot quantise the ONNX graph: {exc}") from exc
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=onnx_path.parent, prefix=".quantise-") as tmp:
        out = Path(tmp) / "int8.onnx"
        root = logging.getLogger()  # the quantiser logs every tensor at INFO on the root
        level = root.level
        root.setLevel(max(level, logging.ERROR))
        try:
            with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_dynamic(
                    str(source.path),
                    str(out),
                    weight_type=QuantType.QInt8,
                    per_channel=True,
                    # The fused BERT operators have no ONNX type inference: say what they carry.
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
                )
        finally:
            root.setLevel(level)
        got = _pooled(make_session(out), tokenizer, CHECK_TEXTS, 256)
        cosine = float(np.min(np.sum(got * np.asarray(source.meta["check_vectors"]), axis=1)))
        if cosine < MIN_COSINE_INT8:
            raise OnnxUnavailable(f"int8 graph too far from PyTorch (cosine {cosine:.4f})")
        meta = {
            **{k: source.meta[k] for k in ("opset", "source_sha256", "onnxruntime", "fused")},
            "recipe": RECIPE,
            "int8_recipe": INT8_RECIPE,
            "quantisation": "dynamic int8, per-channel weights (onnxruntime.quantization)",
            "quantised_from_sha256": source.meta["sha256"],
            "cosine_vs_torch": cosine,
            # PyTorch's fp32 vectors: the load check compares the int8 graph with them.
            "check_vectors": source.meta["check_vectors"],
            "build_seconds": round(time.monotonic() - started, 1),
        }
        meta = _publish(out, meta, onnx_path, meta_path)
    log.info(
        "quantised ONNX encoder %s in %.1f s (cosine vs torch %.4f)",
        onnx_path.name,
        meta["build_seconds"],
        cosine,
    )


def _load_checked(
    onnx_path: Path,
    meta_path: Path,
    tokenizer: Any,
    opts: dict[str, Any],
    *,
    quiet: bool = True,
    min_cosine: float = MIN_COSINE,
) -> CachedGraph | None:
    """A session on the cached file when it is intact and reproduces its reference vectors."""
    if not (onnx_path.exists() and meta_path.exists()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if onnx_path.stat().st_size != meta["size"] or _file_sha256(onnx_path) != meta["sha256"]:
            raise ValueError("checksum mismatch")
        session = make_session(onnx_path, **opts)
        got = _pooled(session, tokenizer, CHECK_TEXTS, 256)
        cosine = float(np.min(np.sum(got * np.asarray(meta["check_vectors"]), axis=1)))
        if cosine < min_cosine:
            raise ValueError(f"reference vectors not reproduced (cosine {cosine:.6f})")
    except Exception as exc:  # any damage to the file or sidecar means: rebuild it
        if not quiet:
            raise OnnxUnavailable(f"{onnx_path.name}: {exc}") from exc
        log.warning("ONNX cache %s unusable (%s); rebuilding", onnx_path.name, exc)
        return None
    return CachedGraph(onnx_path, meta, session, built=False, cosine=cosine)


def _tokenizer(model_dir: str | Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


def _build(
    model_dir: str | Path,
    onnx_path: Path,
    meta_path: Path,
    tokenizer: Any,
    reference_model: Callable[[], Any] | None,
) -> dict[str, Any]:
    try:
        import onnx  # noqa: F401  (the exporter and the optimizer both need it)
        import onnxruntime
        import torch
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError as exc:
        raise OnnxUnavailable(f"cannot export to ONNX: {exc}") from exc

    started = time.monotonic()
    if reference_model is None:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()
    else:
        model = reference_model()
    # Eager attention exports as plain MatMul/Softmax, the pattern the optimizer fuses into
    # one Attention node; the SDPA path exports a graph it leaves unfused (slower).
    previous_impl = getattr(model.config, "_attn_implementation", None)
    with contextlib.suppress(Exception):
        model.set_attn_implementation("eager")
    sample = tokenizer(list(CHECK_TEXTS[:2]), padding=True, return_tensors="pt")
    with tempfile.TemporaryDirectory(dir=onnx_path.parent, prefix=".export-") as tmp:
        raw = Path(tmp) / "raw.onnx"
        opt = Path(tmp) / "opt.onnx"
        try:
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    _hidden_states_module(model),
                    tuple(sample[k] for k in INPUT_NAMES),
                    str(raw),
                    input_names=list(INPUT_NAMES),
                    output_names=["last_hidden_state"],
                    dynamic_axes={
                        k: {0: "batch", 1: "sequence"} for k in [*INPUT_NAMES, "last_hidden_state"]
                    },
                    opset_version=OPSET,
                    do_constant_folding=True,
                    dynamo=False,
                )
            with contextlib.redirect_stdout(sys.stderr):
                optimized = optimize_model(
                    str(raw),
                    model_type="bert",
                    num_heads=int(model.config.num_attention_heads),
                    hidden_size=int(model.config.hidden_size),
                    opt_level=0,  # offline fusions only; ORT applies the rest at load
                )
            fused = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
            optimized.save_model_to_file(str(opt))
        finally:
            model.eval()
            if previous_impl:
                with contextlib.suppress(Exception):
                    model.set_attn_implementation(previous_impl)
        if not fused.get("Attention"):
            log.warning("ONNX optimizer fused no attention (%s): the graph will be slower", fused)

        reference_vecs = _torch_pooled(model, tokenizer, CHECK_TEXTS, 256)
        session = make_session(opt)
        got = _pooled(session, tokenizer, CHECK_TEXTS, 256)
        cosine = float(np.min(np.sum(got * reference_vecs, axis=1)))
        if cosine < MIN_COSINE:
            raise OnnxUnavailable(f"exported graph does not match PyTorch (cosine {cosine:.6f})")
        meta = {
            "recipe": RECIPE,
            "opset": OPSET,
            "source_sha256": source_hash(model_dir),
            "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__,
            "fused": fused,
            "cosine_vs_torch": cosine,
            "check_vectors": reference_vecs.round(7).tolist(),
            "build_seconds": round(time.monotonic() - started, 1),
        }
        meta = _publish(opt, meta, onnx_path, meta_path)
    log.info(
        "built ONNX encoder %s in %.1f s (cosine vs torch %.7f, fused %s)",
        onnx_path.name,
        meta["build_seconds"],
        cosine,
        fused,
    )
    return meta


def _publish(graph: Path, meta: dict[str, Any], onnx_path: Path, meta_path: Path) -> dict[str, Any]:
    """Move a finished graph (in a temporary folder) and its sidecar, with the file's size and
    SHA-256 added, into the cache. Atomic: a reader sees the old state or the complete new
    one, never half a file."""
    meta = {**meta, "size": graph.stat().st_size, "sha256": _file_sha256(graph)}
    tmp_meta = graph.with_name("meta.json")
    os.replace(graph, onnx_path)
    tmp_meta.write_text(json.dumps(meta))
    os.replace(tmp_meta, meta_path)
    return meta


def _hidden_states_module(model: Any) -> Any:
    """The Hugging Face model with one graph output, the token states, and fixed inputs."""
    import torch

    class HiddenStates(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
            ).last_hidden_state

    # eval(): the exporter restores the wrapper's mode afterwards, and a fresh Module is in
    # training mode, which would leave the caller's model with dropout switched on.
    return HiddenStates().eval()


def make_session(path: str | Path, *, threads: int | None = None, spinning: bool = True) -> Any:
    """An ONNX Runtime CPU session; ``threads`` intra-op threads (default: usable cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or usable_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive file lock, so that parallel workers export once, not once each."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: at worst two processes build the same file
        yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask.astype(np.float32)[:, :, None]
    pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1.0)
    return (pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)).astype(
        np.float32
    )


def _pooled(session: Any, tokenizer: Any, texts: Sequence[str], max_tokens: int) -> np.ndarray:
    batch = tokenizer(
        list(texts), padding=True, truncation=True, max_length=max_tokens, return_tensors="np"
    )
    feeds = {k: np.asarray(batch[k], dtype=np.int64) for k in INPUT_NAMES}
    [hidden] = session.run(None, feeds)
    return _mean_pool(hidden, feeds["attention_mask"])


def _torch_pooled(model: Any, tokenizer: Any, texts: Sequence[str], max_tokens: int) -> np.ndarray:
    import torch

    batch = tokenizer(
        list(texts), padding=True, truncation=True, max_length=max_tokens, return_tensors="pt"
    )
    with torch.inference_mode():
        hidden = model(**{k: batch[k] for k in INPUT_NAMES}).last_hidden_state.float().numpy()
    return _mean_pool(hidden, batch["attention_mask"].numpy())


def main(argv: Sequence[str] | None = None) -> int:
    """Build (or check) the cached graph ahead of time: ``python -m pipeline.classify.onnx_encoder``."""
    import argparse

    from pipeline.classify.encoder import model_path

    parser = argparse.ArgumentParser(description="Build the cached ONNX MiniLM encoder")
    parser.add_argument("--cache-dir", default=None, help="default: <data dir>/model-cache")
    parser.add_argument(
        "--int8", action="store_true", help="the int8 graph of engine 'onnx-int8' (and fp32)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.monotonic()
    graph = ensure_graph(model_path(), args.cache_dir, int8=args.int8)
    print(
        json.dumps(
            {
                "path": str(graph.path),
                "built": graph.built,
                "seconds": round(time.monotonic() - started, 1),
                "cosine_vs_torch": graph.meta["cosine_vs_torch"],
                "cosine_at_load": graph.cosine,
                "fused": graph.meta["fused"],
            }
        )
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
