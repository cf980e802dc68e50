"""The fine-tuned topic branch: its split forward pass, storage, training and loading.

Everything is real: the bundled MiniLM, the committed branch in model/, a short real
fine-tuning run on a handful of texts written for these tests.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.classify import ArtifactsMissing
from pipeline.classify.classifier import ClassifyInput, attach_branch, load_artifacts, prepare
from pipeline.classify.encoder import Encoder
from pipeline.classify.finetune import (
    BRANCH_FILE,
    BRANCH_FROM,
    TopicBranch,
    branch_cache_key,
    branch_logits,
    fine_tune,
    shared_forward,
    shared_states,
    top_forward,
)
from pipeline.config import TOPICS

MODEL_DIR = Path(__file__).resolve().parent.parent / "model"

TEXTS = [
    "Kyiv rules out ceding Donbas\n\nPresident Zelenskyy said Ukraine would never give up the "
    "Donbas or Crimea in exchange for a ceasefire, whatever the pressure from allies.",
    "Delegations resume talks in Doha\n\nMediators said Israeli and Hamas negotiators met on "
    "Tuesday to discuss the sequencing of a truce and a prisoner exchange.",
    "Port operator wins 25-year concession\n\nShares rose after the company won the rail and "
    "port concession in the south of the country.",
    "Union and employer break off wage talks\n\nThe union said the talks had collapsed.",
    "Land swap floated for Kosovo and Serbia\n\nThe two presidents discussed exchanging "
    "territory in the north as part of a final peace agreement.",
    "Striker defends home territory\n\nThe home side held their territory in a goalless draw.",
]
LABELS = np.array([[1, 0], [0, 1], [0, 0], [0, 0], [1, 1], [0, 0]], bool)


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder(engine="torch", bf16="off")


def _padded(encoder: Encoder, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = encoder._tokenize(texts)
    ids, mask = encoder._padded(tokens.ids)
    return torch.from_numpy(ids), torch.from_numpy(mask)


def test_split_forward_is_the_model_forward(encoder: Encoder) -> None:
    # The branch reuses the encoder's bottom layers: both halves together must be exactly
    # BertModel's own forward pass, padding included.
    ids, mask = _padded(encoder, TEXTS)
    with torch.inference_mode():
        ref = encoder.model(
            input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)
        ).last_hidden_state
        shared, mask4 = shared_forward(encoder.model, ids, mask, torch.zeros_like(ids))
        out = top_forward(encoder.model.encoder.layer[BRANCH_FROM:], shared, mask4)
    real = mask.bool()
    assert torch.allclose(ref[real], out[real], atol=1e-5)


def test_committed_branch_scores_in_the_encoder_pass(encoder: Encoder) -> None:
    topic_model, _, _ = load_artifacts(MODEL_DIR)
    assert topic_model.branch_weight > 0
    plain = encoder.encode_articles(TEXTS[:2], [[(0, 10)], [(0, 10)]])
    assert all(e.topic_logits is None for e in plain)
    attach_branch(encoder, topic_model, MODEL_DIR)
    try:
        spans = [
            [(s.start, s.end) for s in prepare(ClassifyInput(id="x", text=t)).sentences]
            for t in TEXTS
        ]
        with_branch = encoder.encode_articles(TEXTS, spans)
    finally:
        encoder.topic_branch = None
    # The token states (and so every other head) do not change when the branch rides along.
    for a, b in zip(plain, with_branch[:2], strict=False):
        assert np.allclose(a.article, b.article, atol=1e-5)
    logits = [e.topic_logits for e in with_branch if e.topic_logits is not None]
    probs = topic_model.branch_probs(np.stack(logits))
    assert probs.shape == (len(TEXTS), len(TOPICS))
    # Land refused and a land swap -> territorial concessions; Doha truce talks -> peace
    # talks; the port concession and the football match -> neither.
    tc, pt = TOPICS.index("territorial_concessions"), TOPICS.index("peace_talks")
    assert probs[0, tc] > 0.5 and probs[4, tc] > 0.5 and probs[1, pt] > 0.5
    assert probs[2].max() < 0.5 and probs[5].max() < 0.5


def test_fine_tune_learns_and_round_trips(encoder: Encoder, tmp_path: Path) -> None:
    states = shared_states(encoder, TEXTS)
    assert [int(s.shape[0]) for s in states] == [len(x) for x in encoder._tokenize(TEXTS).ids]
    first = fine_tune(encoder.model, states, LABELS, TOPICS, seed=3, epochs=4, say=lambda _: None)
    again = fine_tune(encoder.model, states, LABELS, TOPICS, seed=3, epochs=4, say=lambda _: None)
    l1 = branch_logits(first, encoder.model, states)
    assert np.array_equal(l1, branch_logits(again, encoder.model, states))  # seeded
    p1 = 1 / (1 + np.exp(-l1))
    # Four epochs on six texts: the training texts are fitted (a sanity check, not a metric).
    assert ((p1 >= 0.5) == LABELS).mean() >= 5 / 6
    first.save(tmp_path / BRANCH_FILE)
    loaded = TopicBranch.load(encoder.model, tmp_path)
    l2 = branch_logits(loaded, encoder.model, states)
    assert np.abs(l1 - l2).max() < 0.05  # float16 storage
    assert np.allclose(l2, branch_logits(first.rounded(encoder.model), encoder.model, states))


def test_committed_branch_scores_under_bf16_autocast() -> None:
    # On a CPU with native bf16 (AVX512-BF16, AMX) the encoder runs under bf16 autocast and
    # the branch's logits come back as bfloat16, which numpy cannot hold: every article that
    # reached the branch crashed `classify` there. bf16="on" forces autocast on any CPU
    # (emulated where not native, only slower), so this runs everywhere.
    topic_model, _, _ = load_artifacts(MODEL_DIR)
    bf16 = Encoder(engine="torch", bf16="on")
    assert bf16.use_bf16
    attach_branch(bf16, topic_model, MODEL_DIR)
    spans = [
        [(s.start, s.end) for s in prepare(ClassifyInput(id="x", text=t)).sentences] for t in TEXTS
    ]
    # Both paths: the branch in the encoder pass, and deferred to `score_topics` (what
    # `classify` does where the article head is unsure).
    fused = bf16.encode_articles(TEXTS, spans)
    out = bf16.encode_articles(TEXTS, spans, defer_topics=True)
    assert all(e.topic_logits is None for e in out)
    bf16.score_topics(out)
    for a, b in zip(fused, out, strict=True):
        assert a.topic_logits is not None and b.topic_logits is not None
        assert np.allclose(a.topic_logits, b.topic_logits, atol=0.05)
    logits = np.stack([e.topic_logits for e in out if e.topic_logits is not None])
    assert logits.dtype == np.float32 and logits.shape == (len(TEXTS), len(TOPICS))
    probs = topic_model.branch_probs(logits)
    tc, pt = TOPICS.index("territorial_concessions"), TOPICS.index("peace_talks")
    assert probs[0, tc] > 0.5 and probs[4, tc] > 0.5 and probs[1, pt] > 0.5
    assert probs[2].max() < 0.5 and probs[5].max() < 0.5


def test_artifacts_without_their_branch_say_so(tmp_path: Path) -> None:
    for name in ("classifier.npz", "manifest.json"):
        shutil.copy(MODEL_DIR / name, tmp_path / name)
    with pytest.raises(ArtifactsMissing, match=BRANCH_FILE):
        load_artifacts(tmp_path)


def test_branch_cache_key_follows_every_input(encoder: Encoder) -> None:
    known = np.ones_like(LABELS)
    key = branch_cache_key(encoder, TEXTS, LABELS, known, 1)
    assert key == branch_cache_key(encoder, list(TEXTS), LABELS.copy(), known, 1)
    flipped = LABELS.copy()
    flipped[0, 0] = False
    others = {
        branch_cache_key(encoder, TEXTS, LABELS, known, 2),
        branch_cache_key(encoder, [*TEXTS[:-1], "Another text"], LABELS, known, 1),
        branch_cache_key(encoder, TEXTS, flipped, known, 1),
        branch_cache_key(encoder, TEXTS, LABELS, ~known, 1),
    }
    assert key not in others and len(others) == 4


def test_deferred_branch_scores_equal_the_in_pass_scores(encoder: Encoder) -> None:
    # The classifier asks for the branch only after the article head has screened the items:
    # scores computed later from the kept shared states must be the in-pass scores.
    topic_model, _, _ = load_artifacts(MODEL_DIR)
    attach_branch(encoder, topic_model, MODEL_DIR)
    try:
        spans = [[(0, 10)] for _ in TEXTS]
        now = encoder.encode_articles(TEXTS, spans)
        later = encoder.encode_articles(TEXTS, spans, defer_topics=True)
        assert all(e.topic_logits is None and e.branch_input is not None for e in later)
        encoder.score_topics(later[1:3])
        assert later[0].topic_logits is None and later[0].branch_input is not None
        encoder.score_topics(later)
    finally:
        encoder.topic_branch = None
    assert all(e.branch_input is None for e in later)
    for a, b in zip(now, later, strict=True):
        assert a.topic_logits is not None and b.topic_logits is not None
        assert np.allclose(a.topic_logits, b.topic_logits, atol=1e-4)
        assert np.array_equal(a.article, b.article)


def test_gate_skips_the_branch_only_for_items_the_head_rules_out() -> None:
    from pipeline.classify.classifier import load_local
    from pipeline.config import AppConfig

    clf = load_local(AppConfig())
    gate = clf.topic_model.branch_gate
    assert gate is not None and gate.min() > 0 and gate.max() <= 0.05
    items = [ClassifyInput(id=f"t{k}", text=t) for k, t in enumerate(TEXTS)] + [
        ClassifyInput(
            id="weather",
            title="Storm brings heavy rain to the north-west",
            text="Forecasters warned of flooding as up to 80mm of rain was expected over the "
            "hills on Sunday, with gusts of 60mph on exposed coasts.",
        )
    ]
    clf.branch_runs = 0
    gated = clf.classify(items)
    runs = clf.branch_runs
    # The storm report is screened out; the land and talks stories are not.
    assert 0 < runs < len(items)
    assert gated[-1].topics["territorial_concessions"].score < gate[0]
    clf.topic_model.branch_gate = None  # the branch for everything: the same decisions
    clf.branch_runs = 0
    full = clf.classify(items)
    assert clf.branch_runs == len(items)
    for a, b in zip(gated, full, strict=True):
        assert {t: s.label for t, s in a.topics.items()} == {
            t: s.label for t, s in b.topics.items()
        }
    assert gated[0].topics["territorial_concessions"].label
    assert gated[1].topics["peace_talks"].label


def test_blend_refuses_a_missing_branch_score_above_the_gate() -> None:
    topic_model, _, _ = load_artifacts(MODEL_DIR)
    topic_model.branch_gate = np.array([0.01, 0.02], np.float32)
    low = np.array([0.005, 0.01], np.float32)
    assert not topic_model.needs_branch(low)
    assert np.array_equal(topic_model.blend(low, None), low)
    with pytest.raises(ValueError, match="branch"):
        topic_model.blend(np.array([0.005, 0.3], np.float32), None)


def test_branch_gate_is_half_the_least_sure_relevant_item() -> None:
    from pipeline.classify.train import _branch_gate

    head = np.array([[0.2, 0.001], [0.04, 0.5], [0.001, 0.001], [0.3, 0.9]], np.float32)
    gold = np.array([[1, 0], [0, 1], [0, 0], [0, 0]], bool)
    # Territory: relevant item 0 -> 0.1, capped at 0.05. Talks: item 1 -> 0.25, capped.
    # Item 2 (irrelevant, 0.001) does not pull the gate down, whatever the branch says of it.
    assert np.allclose(_branch_gate(head, gold), [0.05, 0.05])
    gold[1, 0] = True  # a relevant item the head scored 0.04
    assert np.allclose(_branch_gate(head, gold), [0.02, 0.05])
    gold[2, 1] = True
    assert np.allclose(_branch_gate(head, gold), [0.02, 0.0005])


def test_branch_thresholds_are_half_the_best_f1_and_steady() -> None:
    from pipeline.classify.train import (
        _best_threshold,
        _calibrated_threshold,
        _choose_blend,
        _f1_at,
    )

    rng = np.random.default_rng(7)
    gold = rng.random(400) < 0.3
    # Scores that separate the classes the way a calibrated model's would (beta per class).
    probs = np.clip(np.where(gold, rng.beta(6, 2, 400), rng.beta(2, 6, 400)), 0.0, 1.0)
    best_f1 = _best_threshold(probs, gold)[1]
    assert _calibrated_threshold(probs, gold) == pytest.approx(best_f1 / 2, abs=1e-3)
    # Flipping the two items nearest the argmax threshold barely moves this one.
    shifted = probs.copy()
    near = np.argsort(np.abs(probs - _best_threshold(probs, gold)[0]))[:2]
    shifted[near] = 1.0 - shifted[near]
    assert abs(_calibrated_threshold(shifted, gold) - _calibrated_threshold(probs, gold)) < 0.02

    head = rng.random((400, 2))
    branch = np.stack([probs, probs], axis=1)
    golds = np.stack([gold, gold], axis=1)
    w, thresholds, f1s = _choose_blend(head, branch, golds, [0.4, 0.6])
    assert w == 1.0  # the random head only adds noise
    assert thresholds == [_calibrated_threshold(probs, gold)] * 2
    assert f1s == [_f1_at(probs, gold, thresholds[0])] * 2  # F1 where it will run, not the best
    # The article head alone keeps its own thresholds (its probabilities are not calibrated).
    w, thresholds, _ = _choose_blend(branch, head, golds, [0.4, 0.6])
    assert (w, thresholds) == (0.0, [0.4, 0.6])
