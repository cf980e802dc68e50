"""Shared fixtures: a real Elasticsearch node, isolated index prefixes, config dirs, a local
HTTP server.

The node is the one ``scripts/es-local`` runs. When the test run had to start it, the same
fixture stops it at the end (by pid, through the script). ``STANCEWATCH_ES_URL`` points the
suite at another cluster instead.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

PROJECT_DIR = Path(__file__).resolve().parent.parent
ES_LOCAL = PROJECT_DIR / "scripts" / "es-local"

# Never let a test wait on a model hub or write into the developer's var/.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _es_local(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ES_LOCAL), *args], capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(scope="session")
def es_url() -> Iterator[str]:
    """URL of a real Elasticsearch node; started (and later stopped) here if needed."""
    external = os.environ.get("STANCEWATCH_ES_URL")
    if external:
        yield external.rstrip("/")
        return
    running = _es_local("url")
    started_here = running.returncode != 0
    if started_here:
        result = _es_local("start")
        if result.returncode != 0:
            pytest.fail(f"scripts/es-local start failed:\n{result.stderr[-3000:]}")
        url = result.stdout.strip().splitlines()[-1]
    else:
        url = running.stdout.strip().splitlines()[-1]
    try:
        yield url
    finally:
        if started_here:
            _es_local("stop")


@pytest.fixture
def index_prefix(es_url: str) -> Iterator[str]:
    """A fresh index prefix per test; its indices, aliases and templates are deleted after."""
    from elasticsearch import Elasticsearch

    prefix = f"swtest-{uuid.uuid4().hex[:10]}"
    yield prefix
    client = Elasticsearch(es_url, request_timeout=60)
    try:
        client.options(ignore_status=404).indices.delete(
            index=f"{prefix}-*", expand_wildcards="all"
        )
        templates = client.options(ignore_status=404).indices.get_index_template(name=f"{prefix}-*")
        for item in templates.get("index_templates", []) if templates else []:
            client.options(ignore_status=404).indices.delete_index_template(name=item["name"])
    finally:
        client.close()


@pytest.fixture
def sw_env(
    es_url: str, index_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """Environment for a pipeline run against the test node, with state under tmp_path."""
    values = {
        "STANCEWATCH_ES_URL": es_url,
        "STANCEWATCH_INDEX_PREFIX": index_prefix,
        "STANCEWATCH_DATA_DIR": str(tmp_path / "data"),
        "STANCEWATCH_OUTBOX": str(tmp_path / "outbox"),
    }
    for name in ("STANCEWATCH_SMTP_URL", "STANCEWATCH_KIBANA_URL", "STANCEWATCH_ALERT_TO"):
        monkeypatch.delenv(name, raising=False)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


@pytest.fixture(scope="module")
def _server() -> Iterator[HTTPServer]:
    # Threaded: slow handlers must not block the other requests of a test. One per module
    # (stopping a server takes half a second).
    srv = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def server(_server: HTTPServer) -> Iterator[HTTPServer]:
    """A real local HTTP server (pytest-httpserver), with no handlers before and after a test."""
    _server.clear()
    yield _server
    _server.clear()
