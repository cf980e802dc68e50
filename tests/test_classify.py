"""The classifier end to end on texts written for these tests (trained artifacts in model/)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from pipeline.classify import ArtifactsMissing, ClassifyInput, load_classifier
from pipeline.classify.classifier import LocalClassifier, load_artifacts, load_local
from pipeline.classify.encoder import Encoder
from pipeline.classify.hf_backend import HFModelUnavailable, resolve_model
from pipeline.config import AppConfig

# The founding example, in our own words: the NATO chief floats ceding land, the Ukrainian
# president (misspelt "Zelinsky" in the lead) refuses.
FOUNDING = ClassifyInput(
    id="founding-2023",
    title="NATO chief says Ukraine may have to cede land; Zelinsky refuses",
    text=(
        "BRUSSELS/KYIV, Aug 16 - NATO Secretary General Jens Stoltenberg said on Wednesday "
        "that Ukraine may have to cede some territory to Russia to end the war, remarks that "
        "drew an immediate rebuke from Kyiv. President Zelinsky said Ukraine is not ready to "
        'concede any of its territories. "We will not trade our land for a pause that only '
        'lets Russia regroup," he said in his nightly video address.\n\n'
        "Stoltenberg told a security forum in Oslo that any settlement was for Ukraine to "
        "decide, but that a deal in which Kyiv gave up land in exchange for security "
        "guarantees was one possible outcome of future peace talks."
    ),
    published=datetime(2023, 8, 16, 15, 0, tzinfo=UTC),
)


@pytest.fixture(scope="module")
def classifier() -> LocalClassifier:
    return load_local(AppConfig())


def stances(result) -> dict[tuple[str, str], str]:
    return {(s.actor, s.topic): s.stance for s in result.stances}


def test_founding_example(classifier: LocalClassifier) -> None:
    [result] = classifier.classify([FOUNDING])
    assert result.topics["territorial_concessions"].label
    assert result.topics["peace_talks"].label
    got = stances(result)
    assert got[("Jens Stoltenberg", "territorial_concessions")] == "support"
    assert got[("Volodymyr Zelenskyy", "territorial_concessions")] == "oppose"
    assert {"Jens Stoltenberg", "Volodymyr Zelenskyy"} <= set(result.actors)
    for s in result.stances:
        assert s.evidence in FOUNDING.title + "\n\n" + FOUNDING.text
        assert 0.0 <= s.score <= 1.0


def test_role_title_resolves_by_date(classifier: LocalClassifier) -> None:
    text = FOUNDING.text.replace("NATO Secretary General Jens Stoltenberg", "The NATO chief")
    text = text.replace("Stoltenberg told", "The NATO chief told")
    late = FOUNDING.model_copy(update={"text": text, "published": datetime(2025, 3, 1, tzinfo=UTC)})
    early = FOUNDING.model_copy(update={"text": text})
    r_late, r_early = classifier.classify([late, early])
    assert "Mark Rutte" in r_late.actors and "Jens Stoltenberg" not in r_late.actors
    assert "Jens Stoltenberg" in r_early.actors and "Mark Rutte" not in r_early.actors


HARD_NEGATIVES = [
    ClassifyInput(
        id="mining",
        title="Ministry extends copper concession as villagers claim ancestral territory",
        text=(
            "The mining ministry extended a copper concession by 20 years on Monday, despite "
            "objections from villagers who say the pit has swallowed their ancestral territory. "
            "The company said it had held lengthy negotiations with local leaders and would pay "
            "higher royalties. Talks on a new mining code resume next month."
        ),
    ),
    ClassifyInput(
        id="football",
        title="Leaders refuse to concede ground in tense derby",
        text=(
            "The home side refused to cede an inch of territory in midfield and the match ended "
            "goalless. The coach said after the game that contract talks with the captain would "
            "continue this week, and that he was at peace with the result."
        ),
    ),
    ClassifyInput(
        id="wages",
        title="Rail union and operator resume wage talks",
        text=(
            "Negotiators for the rail union and the operator returned to the table on Tuesday "
            "after a two-day strike. The union said it would not accept further concessions on "
            "pay, while the operator called its latest offer final. A mediator joined the talks."
        ),
    ),
]


def test_hard_negatives_are_not_relevant(classifier: LocalClassifier) -> None:
    for result in classifier.classify(HARD_NEGATIVES):
        assert not result.relevant, result.id
        assert result.stances == []


def test_output_shape_territories_and_embedding(classifier: LocalClassifier) -> None:
    item = ClassifyInput(
        id=7,  # type: ignore[arg-type]  # ints are accepted as ids
        title="Aliyev and Pashinyan agree to resume border talks on Tavush",
        text=(
            "Armenian Prime Minister Nikol Pashinyan said Yerevan was ready to hand back four "
            "villages in Tavush as part of the border delimitation, and Azerbaijani President "
            "Ilham Aliyev said talks on a peace treaty over Nagorno-Karabakh had entered a final "
            "stage."
        ),
    )
    [result] = classifier.classify([item])
    out = result.to_classify_output()
    assert out["id"] == "7"
    assert set(out["topics"]) == {"territorial_concessions", "peace_talks"}
    for value in out["topics"].values():
        assert set(value) == {"label", "score"} and 0 <= value["score"] <= 1
    for s in out["stances"]:
        assert set(s) == {"actor", "mention", "topic", "stance", "score", "evidence"}
    assert [t.name for t in result.territories] == ["Tavush", "Nagorno-Karabakh"]
    assert result.embedding is not None and len(result.embedding) == 384
    assert result.model.startswith("stancewatch-local/")


def test_empty_and_long_items(classifier: LocalClassifier) -> None:
    long_text = " ".join(
        [FOUNDING.text] * 4
    )  # past 256 tokens: later sentences are scored on their own
    results = classifier.classify(
        [ClassifyInput(id="empty"), FOUNDING.model_copy(update={"id": "long", "text": long_text})]
    )
    assert not results[0].relevant and results[0].stances == []
    assert results[1].topics["territorial_concessions"].label


def test_missing_artifacts_give_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactsMissing, match="stancewatch train"):
        load_artifacts(tmp_path)


def test_artifacts_are_small_and_have_a_manifest() -> None:
    model_dir = Path(__file__).resolve().parent.parent / "model"
    assert (model_dir / "classifier.npz").stat().st_size < 3_000_000
    assert (model_dir / "topic_branch.npz").stat().st_size < 10_000_000  # two layers, float16
    _, _, manifest = load_artifacts(model_dir)
    assert manifest["seed"] and manifest["data"]["files"]
    assert "test_metrics" in manifest and "bf16_cosine_vs_fp32" in manifest["encoder"]


def test_hf_backend_without_model_fails_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(HFModelUnavailable, match="not in the local cache"):
        resolve_model("example-org/no-such-nli-model")
    with pytest.raises(HFModelUnavailable, match="hf_model is not set"):
        resolve_model(None)
    (tmp_path / "settings.yaml").write_text(
        "classifier:\n  backend: huggingface-zero-shot\n  hf_model: example-org/no-such-model\n"
    )
    (tmp_path / "feeds.yaml").write_text("feeds: []\n")
    with pytest.raises(HFModelUnavailable):
        load_classifier(AppConfig(tmp_path))
    assert time.monotonic() - started < 10


def test_encoder_sentence_vectors_come_from_one_pass(classifier: LocalClassifier) -> None:
    enc: Encoder = classifier.encoder
    text = "Kyiv will not cede land. The weather was fine."
    [out] = enc.encode_articles([text], [[(0, 24), (25, len(text))]])
    assert out.seen.tolist() == [True, True]
    assert np.linalg.norm(out.article) == pytest.approx(1.0, abs=1e-4)
    alone = enc.encode(["Kyiv will not cede land."])[0]
    assert float(out.sentences[0] @ alone) > 0.8  # in-context vector, close to the sentence
    if enc.bf16_native is False:
        assert not enc.use_bf16  # emulated bf16 is slower than fp32: auto keeps fp32


def test_engine_setting_reaches_the_encoder(
    classifier: LocalClassifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The default config runs PyTorch; settings.yaml's classifier.engine picks the runtime.
    assert classifier.encoder.engine == "torch"
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    for name in ("feeds.yaml", "actors.yaml", "territories.yaml"):
        (config_dir / name).write_bytes((Path("config") / name).read_bytes())
    (config_dir / "settings.yaml").write_text("classifier:\n  engine: onnx\n", encoding="utf-8")
    monkeypatch.setenv("STANCEWATCH_DATA_DIR", str(tmp_path / "data"))
    onnx = load_local(AppConfig(config_dir))
    assert onnx.encoder.engine == "onnx"


def test_tfidf_transform_builds_only_useful_bigrams_and_counts_the_same(
    classifier: LocalClassifier,
) -> None:
    """``TfidfText.transform`` builds only bigrams whose first word begins one in the
    vocabulary; its rows must equal counting every n-gram of ``analyse_words``."""
    import math

    from pipeline.classify.heads import analyse_words

    vec = classifier.topic_model.article_head.vectorizer
    texts = [
        FOUNDING.title,
        FOUNDING.text,
        "Peace talks in 2025: 12 delegates, the line of contact and a land swap.",
        "",
        "Ünïcode Zelenskyy — “quoted” talks; ceasefire-talks CEASEFIRE talks",
    ]
    for text, row in zip(texts, vec.transform(texts), strict=True):
        counts: dict[int, int] = {}
        for gram in analyse_words(text, vec.max_n):
            if gram in vec.vocabulary:
                counts[vec.vocabulary[gram]] = counts.get(vec.vocabulary[gram], 0) + 1
        full = {j: (1.0 + math.log(c)) * float(vec.idf[j]) for j, c in counts.items()}
        norm = math.sqrt(sum(v * v for v in full.values())) or 1.0
        assert row == {j: v / norm for j, v in full.items()}
    assert any(" " in g for g in vec.vocabulary)  # bigrams are in play at all
    assert len(vec.transform([FOUNDING.text])[0]) > 20


def test_classify_freezes_long_lived_objects_only_while_it_runs(
    classifier: LocalClassifier,
) -> None:
    import gc

    assert gc.get_freeze_count() == 0
    seen: list[int] = []
    original = classifier.postprocess

    def spy(prepared, encoded):  # type: ignore[no-untyped-def]
        seen.append(gc.get_freeze_count())
        return original(prepared, encoded)

    classifier.postprocess = spy  # type: ignore[method-assign]
    try:
        classifier.classify([FOUNDING])
        assert seen and seen[0] > 100_000  # the model and gazetteers were frozen
        assert gc.get_freeze_count() == 0  # and given back to the collector after
        # Someone else's freeze (a pre-fork server) is left as it is.
        gc.freeze()
        frozen = gc.get_freeze_count()
        classifier.classify([FOUNDING])
        # (not exactly equal: frozen objects that die by reference count leave the list)
        assert gc.get_freeze_count() > 0.9 * frozen
    finally:
        gc.unfreeze()
        classifier.postprocess = original  # type: ignore[method-assign]


def test_off_topic_news_gets_no_conflict_people_from_bare_surnames(
    classifier: LocalClassifier,
) -> None:
    business = ClassifyInput(
        id="worldcom-trial",
        title="Ex-finance chief tells court he lied to investors",
        text=(
            "NEW YORK - The former finance chief of the telecoms firm told a court on Tuesday "
            "that he had lied about its accounts. Mr Sullivan, 42, has already pleaded guilty "
            "to fraud. Johnson & Johnson shares rose 2% in London, where Mr Harris of the "
            "brokerage said investors were relieved.\n\nThe trial continues next week."
        ),
        published=datetime(2005, 2, 9, tzinfo=UTC),
    )
    result, founding = classifier.classify([business, FOUNDING])
    assert not result.relevant
    assert result.actors == []  # no Jake Sullivan, Boris Johnson, Kamala Harris, Londoño
    assert {"Jens Stoltenberg", "Volodymyr Zelenskyy"} <= set(founding.actors)
