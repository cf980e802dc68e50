"""``stancewatch classify`` / ``evaluate`` as a user runs them (real subprocess, real model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


def run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "STANCEWATCH_CONFIG": str(PROJECT / "config")}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=PROJECT,
        env=env,
        timeout=300,
        check=False,
    )


GOOD = {
    "id": "kyiv-1",
    "title": "Zelenskiy rules out ceding Donbas",
    "text": "President Zelenskiy said on Monday that Ukraine would never give up Donbas, "
    "and that peace talks could only start after a Russian withdrawal.",
    "published": "2024-05-02T10:00:00Z",
}
OTHER = {"id": "sport-1", "title": "Derby ends goalless", "text": "Both sides defended well."}


def test_classify_file_with_bad_lines_keeps_going(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    lines = [json.dumps(GOOD), "{broken json", json.dumps({"title": "no id"}), "[1, 2]",
             "", json.dumps(OTHER)]  # fmt: skip
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run(["classify", str(path)])
    assert result.returncode == 1
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["id"] for o in out] == ["kyiv-1", "sport-1"]
    first = out[0]
    assert set(first) == {"id", "topics", "stances"}
    assert first["topics"]["territorial_concessions"]["label"] is True
    assert any(
        s["actor"] == "Volodymyr Zelenskyy" and s["topic"] == "territorial_concessions"
        for s in first["stances"]
    )
    assert out[1]["topics"]["peace_talks"]["label"] is False
    assert "line 2: invalid JSON" in result.stderr
    assert "line 3: id: required field is missing" in result.stderr
    assert "line 4: expected a JSON object" in result.stderr
    assert "3 line(s) failed: 2, 3, 4" in result.stderr


def test_classify_stdin_all_good() -> None:
    result = run(["classify", "-"], stdin=json.dumps(OTHER) + "\n")
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert json.loads(line)["id"] == "sport-1"


def test_classify_missing_file() -> None:
    result = run(["classify", "/nonexistent/items.jsonl"])
    assert result.returncode == 2
    assert "no such file" in result.stderr


def test_evaluate_prints_metrics_and_baseline(tmp_path: Path) -> None:
    gold = {
        **GOOD,
        "topics": {"territorial_concessions": True, "peace_talks": {"label": True}},
        "actors": ["Volodymyr Zelenskyy"],
        "stances": [
            {
                "actor": "Volodymyr Zelenskyy",
                "mention": "President Zelenskiy",
                "topic": "territorial_concessions",
                "stance": "oppose",
                "evidence": GOOD["text"],
            },
        ],
    }
    negative = {**OTHER, "topics": {"territorial_concessions": False, "peace_talks": False}}
    path = tmp_path / "gold.jsonl"
    path.write_text(json.dumps(gold) + "\n" + json.dumps(negative) + "\n", encoding="utf-8")
    result = run(["evaluate", str(path)])
    assert result.returncode == 0, result.stderr
    for needle in ("topic macro-F1", "keyword baseline", "stance macro-F1", "confusion",
                   "actor recall: 1.000"):  # fmt: skip
        assert needle in result.stdout
    as_json = run(["evaluate", str(path), "--json"])
    summary = json.loads(as_json.stdout)
    assert summary["items"] == 2 and summary["actor_recall"] == 1.0


def test_evaluate_heldout_split_reads_the_untrained_items() -> None:
    # data/heldout/ is labelled data the shipped model was never trained on (part J).
    as_json = run(["evaluate", "--split", "heldout", "--json"])
    assert as_json.returncode == 0, as_json.stderr
    summary = json.loads(as_json.stdout)
    assert summary["items"] == 150 and summary["gold_pairs"] > 300
    assert summary["topic_macro_f1"] > 0.8  # a real model on real items, not a stub
    bad = run(["evaluate", "--split", "train"])
    assert bad.returncode == 2 and "'heldout'" in bad.stderr
