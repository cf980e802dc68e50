"""The encoder's two engines: same vectors, fallback to PyTorch, the ONNX build cache.

Everything runs for real: the bundled MiniLM, a real export to ONNX and a real ONNX Runtime
session. The only simulation is a missing onnxruntime package (an import that fails through
``sys.modules``), because it is installed here.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipeline.classify import onnx_encoder
from pipeline.classify.classifier import prepare
from pipeline.classify.dataset import article_files, load_articles
from pipeline.classify.encoder import Encoder, _sentence_vectors
from pipeline.config import ClassifierSettings

pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.slow

SENTENCES = [
    "Kyiv will not cede an inch of its land, the president said in his nightly address.",
    "Mediators in Doha said the two delegations had agreed on the sequencing of a truce.",
    "The home side defended their territory well and held on for a goalless draw.",
    "Shares in the port operator rose after it won a 25-year concession in the south.",
    "Talks.",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def onnx_enc(cache_dir: Path) -> Encoder:
    return Encoder(engine="onnx", bf16="off", cache_dir=cache_dir)


@pytest.fixture(scope="module")
def torch_enc() -> Encoder:
    return Encoder(engine="torch", bf16="off")


def real_articles(n: int = 12) -> list[tuple[str, list[tuple[int, int]]]]:
    """Labelled items of data/articles, positives and hard negatives, prepared as classify does."""
    from pipeline.classify.classifier import ClassifyInput

    items = load_articles(article_files())[:n]
    out = []
    for a in items:
        p = prepare(ClassifyInput(id=a.id, title=a.title, text=a.text))
        out.append((p.text, [(s.start, s.end) for s in p.sentences]))
    return out


def test_onnx_and_torch_give_the_same_vectors(onnx_enc: Encoder, torch_enc: Encoder) -> None:
    assert onnx_enc.engine == "onnx" and torch_enc.engine == "torch"
    assert onnx_enc.onnx_cosine is not None and onnx_enc.onnx_cosine >= 0.9999
    a, b = onnx_enc.encode(SENTENCES), torch_enc.encode(SENTENCES)
    assert a.shape == b.shape == (len(SENTENCES), 384)
    assert float(np.min(np.sum(a * b, axis=1))) >= 0.9999

    docs = real_articles()
    texts, spans = [d[0] for d in docs], [d[1] for d in docs]
    ea, eb = onnx_enc.encode_articles(texts, spans), torch_enc.encode_articles(texts, spans)
    assert len(ea) == len(eb) == len(texts)
    for x, y in zip(ea, eb, strict=True):
        assert float(x.article @ y.article) >= 0.9999
        assert x.seen.tolist() == y.seen.tolist()
        cos = np.sum(x.sentences[x.seen] * y.sentences[y.seen], axis=1)
        assert float(cos.min()) >= 0.9999


def test_batching_does_not_change_vectors(onnx_enc: Encoder) -> None:
    """Length-sorted, per-batch padding: a text's vector does not depend on its neighbours."""
    alone = np.stack([onnx_enc.encode([s])[0] for s in SENTENCES])
    together = onnx_enc.encode(SENTENCES)
    assert float(np.min(np.sum(alone * together, axis=1))) >= 0.9999
    assert onnx_enc.encode([]).shape == (0, 384)
    assert onnx_enc.encode_articles([], []) == []


def test_sentence_pooling_matches_token_loop() -> None:
    """The vectorised span pooling equals the per-span loop it replaced."""
    rng = np.random.default_rng(7)
    states = rng.normal(size=(9, 4)).astype(np.float32)
    # CLS, 7 word pieces, SEP: offsets as a fast tokenizer gives them.
    offsets = np.array(
        [[0, 0], [0, 4], [5, 9], [9, 10], [11, 15], [16, 20], [20, 21], [22, 26], [0, 0]]
    )
    spans = [(0, 10), (11, 21), (22, 30), (40, 50)]
    got = _sentence_vectors(states, offsets, spans, states.mean(0))
    assert got.seen.tolist() == [True, True, True, False]
    for j, (s0, s1) in enumerate(spans[:3]):
        sel = [k for k in range(9) if offsets[k, 1] > offsets[k, 0] and s0 <= offsets[k, 0] < s1]
        want = states[sel].mean(0)
        want /= np.linalg.norm(want)
        np.testing.assert_allclose(got.sentences[j], want, rtol=1e-5, atol=1e-6)
    assert not got.sentences[3].any()


def test_engine_torch_builds_nothing(tmp_path: Path) -> None:
    enc = Encoder(engine="torch", bf16="off", cache_dir=tmp_path)
    assert enc.engine == "torch" and enc.onnx_cosine is None
    assert not list(tmp_path.iterdir())


@pytest.fixture
def no_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make ``import onnxruntime`` fail as it does where the package is not installed."""
    for name in list(sys.modules):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    yield


@pytest.mark.usefixtures("no_onnxruntime")
def test_auto_falls_back_to_torch_without_onnxruntime(tmp_path: Path) -> None:
    enc = Encoder(engine="auto", bf16="off", cache_dir=tmp_path)
    assert enc.engine == "torch"
    vec = enc.encode(SENTENCES[:1])
    assert vec.shape == (1, 384) and abs(float(np.linalg.norm(vec)) - 1.0) < 1e-4
    with pytest.raises(onnx_encoder.OnnxUnavailable, match="onnxruntime"):
        Encoder(engine="onnx", bf16="off", cache_dir=tmp_path)


def test_second_load_reuses_the_cache(
    onnx_enc: Encoder, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert onnx_enc.onnx_info["built"] is True  # the module's first load exported it

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached graph should have been reused")

    monkeypatch.setattr(onnx_encoder, "_build", no_export)
    again = Encoder(engine="auto", bf16="off", cache_dir=cache_dir)
    assert again.engine == "onnx" and again.onnx_info["built"] is False
    assert again.onnx_info["path"] == onnx_enc.onnx_info["path"]
    assert float(np.min(np.sum(again.encode(SENTENCES) * onnx_enc.encode(SENTENCES), 1))) > 0.99999


def test_corrupt_cache_file_is_rebuilt(onnx_enc: Encoder, cache_dir: Path, tmp_path: Path) -> None:
    for f in cache_dir.iterdir():
        if f.is_file() and not f.name.startswith("."):
            shutil.copy(f, tmp_path / f.name)
    [graph] = list(tmp_path.glob("*.onnx"))
    data = bytearray(graph.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = b"\x00" * 4096  # damaged weights
    graph.write_bytes(bytes(data))

    enc = Encoder(engine="onnx", bf16="off", cache_dir=tmp_path)
    assert enc.engine == "onnx" and enc.onnx_info["built"] is True
    assert enc.onnx_cosine is not None and enc.onnx_cosine >= 0.9999
    assert graph.read_bytes() != bytes(data)

    # A truncated file (an interrupted copy) is rebuilt as well.
    graph.write_bytes(graph.read_bytes()[:1000])
    again = Encoder(engine="auto", bf16="off", cache_dir=tmp_path)
    assert again.engine == "onnx" and again.onnx_info["built"] is True


def test_int8_engine_stays_close_to_torch_and_is_cached(
    onnx_enc: Encoder, torch_enc: Encoder, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Quantised from the fp32 graph the module already exported (onnx_enc), cached beside it.
    enc = Encoder(engine="onnx-int8", bf16="off", cache_dir=cache_dir)
    assert enc.engine == "onnx-int8" and enc.onnx_info["built"] is True
    int8_path = Path(enc.onnx_info["path"])
    assert int8_path != Path(onnx_enc.onnx_info["path"])
    # int8 weights: well under half the fp32 file
    assert int8_path.stat().st_size < 0.5 * Path(onnx_enc.onnx_info["path"]).stat().st_size
    assert enc.onnx_cosine is not None and enc.onnx_cosine >= onnx_encoder.MIN_COSINE_INT8
    a, b = enc.encode(SENTENCES), torch_enc.encode(SENTENCES)
    assert float(np.min(np.sum(a * b, axis=1))) >= 0.98
    docs = real_articles()
    texts, spans = [d[0] for d in docs], [d[1] for d in docs]
    for x, y in zip(
        enc.encode_articles(texts, spans), torch_enc.encode_articles(texts, spans), strict=True
    ):
        assert float(x.article @ y.article) >= 0.98

    def no_quantise(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached int8 graph should have been reused")

    monkeypatch.setattr(onnx_encoder, "_quantise", no_quantise)
    again = Encoder(engine="onnx-int8", bf16="off", cache_dir=cache_dir)
    assert again.onnx_info["built"] is False and again.onnx_info["path"] == str(int8_path)


def test_engine_setting() -> None:
    assert ClassifierSettings().engine == "torch"  # ONNX measured slower here
    assert ClassifierSettings(engine="torch").engine == "torch"
    assert ClassifierSettings(engine="onnx-int8").engine == "onnx-int8"
    with pytest.raises(ValueError):
        ClassifierSettings(engine="tensorrt")  # type: ignore[arg-type]


def test_onnx_defers_the_topic_branch_like_torch(onnx_enc: Encoder, torch_enc: Encoder) -> None:
    # Under ONNX the graph gives only final states: the deferred branch keeps the token ids
    # and runs the shared layers in PyTorch when asked; the logits match the torch engine's.
    from pipeline.classify.classifier import attach_branch, load_artifacts

    model_dir = Path(__file__).resolve().parent.parent / "model"
    topic_model, _, _ = load_artifacts(model_dir)
    docs = real_articles(6)
    texts, spans = [d[0] for d in docs], [d[1] for d in docs]
    for enc in (onnx_enc, torch_enc):
        attach_branch(enc, topic_model, model_dir)
    try:
        deferred = onnx_enc.encode_articles(texts, spans, defer_topics=True)
        assert all(isinstance(e.branch_input, np.ndarray) for e in deferred)
        onnx_enc.score_topics(deferred)
        in_pass = torch_enc.encode_articles(texts, spans)
    finally:
        onnx_enc.topic_branch = torch_enc.topic_branch = None
    for x, y in zip(deferred, in_pass, strict=True):
        assert x.branch_input is None and x.topic_logits is not None
        assert y.topic_logits is not None
        assert np.allclose(x.topic_logits, y.topic_logits, atol=1e-3)
