"""The command line as users meet it: --help everywhere, one-line config errors, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent


def stancewatch(
    *args: str, env: dict[str, str] | None = None, timeout: int = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=PROJECT_DIR,
        env={**os.environ, **(env or {})},
        check=False,
    )


def command_paths() -> list[list[str]]:
    """Every command and sub-command of the app, from click's own tree."""
    import typer.main

    from pipeline.cli import app

    root = typer.main.get_command(app)
    paths: list[list[str]] = []

    def walk(command: object, prefix: list[str]) -> None:
        commands = getattr(command, "commands", None)
        if commands:
            for name, sub in commands.items():
                paths.append([*prefix, name])
                walk(sub, [*prefix, name])

    walk(root, [])
    return paths


def test_every_command_has_help() -> None:
    paths = command_paths()
    for expected in (["run"], ["ingest"]):
        assert expected in paths
    for path in paths:
        result = stancewatch(*path, "--help")
        assert result.returncode == 0, (path, result.stderr)
        assert "Usage" in result.stdout, path


def test_version() -> None:
    result = stancewatch("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("stancewatch ")


def test_broken_feeds_yaml_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "feeds.yaml").write_text(
        "feeds:\n  - id: kyiv-wire\n    name: Kyiv Wire\n    poll_minutes: 15\n", encoding="utf-8"
    )
    result = stancewatch("run", "--once", "--config", str(tmp_path))
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert str(tmp_path / "feeds.yaml") in lines[0].replace("\n", "")
    assert "url" in lines[0]
    assert "Traceback" not in result.stderr


def test_wrong_type_in_feeds_yaml(tmp_path: Path) -> None:
    (tmp_path / "feeds.yaml").write_text(
        "feeds:\n  - id: kyiv-wire\n    url: https://example.org/rss\n    poll_minutes: hourly\n",
        encoding="utf-8",
    )
    result = stancewatch("run", "--once", "--config", str(tmp_path))
    assert result.returncode == 2
    assert "poll_minutes" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("bad_now", ["yesterday", "2025-13-45"])
def test_bad_now_is_a_usage_error(bad_now: str) -> None:
    result = stancewatch("run", "--once", "--config", "config/demo", "--now", bad_now)
    assert result.returncode == 2
    assert "ISO 8601" in result.stderr
