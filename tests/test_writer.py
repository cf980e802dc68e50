"""Bulk writes under pressure: 429 back-off, a node lost after it took a batch, bad documents.

The real local node cannot be made to answer 429 on demand, so these tests put a small HTTP
proxy (a real server in this process) between the store and the node. It forwards every
request to the node unchanged and injects one fault into ``_bulk`` requests: item-level
429s in a real bulk response, whole-request 429s, or a connection dropped after the node
has already written the batch. Everything else is the real node.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from pipeline.config import Environment, StoreSettings
from pipeline.store import Store
from pipeline.store.writer import WriteOp, batched, last_write_wins

SETTINGS = StoreSettings(bulk_size=50, max_retries=2, initial_backoff_s=0.2, request_timeout_s=20)


def doc(n: int, version: int = 1) -> dict[str, Any]:
    return {
        "@timestamp": f"2024-03-{1 + n % 28:02d}T08:00:00Z",
        "url": f"https://wire.example.net/2024/{n}",
        "title": f"Ceasefire talks, day {n} (revision {version})",
        "summary": "Negotiators met again behind closed doors; no statement was issued.",
        "topic_labels": ["peace_talks"],
        "relevant": True,
        "content_hash": f"h{n}-{version}",
    }


class FaultyProxy(ThreadingHTTPServer):
    """Forwards to the real node; ``mode`` decides what happens to ``_bulk`` requests."""

    daemon_threads = True

    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 9200)
        self.mode = "pass"
        self.bulk_requests: list[int] = []  # item count of each bulk request seen
        self.dead = False
        self.drop_on_bulk = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultyProxy

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def _forward(self, body: bytes | None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(*self.server.upstream, timeout=30)
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in ("host", "connection", "content-length")
        }
        conn.request(self.command, self.path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        out_headers = {
            k: v
            for k, v in response.getheaders()
            if k.lower() not in ("transfer-encoding", "connection", "content-length")
        }
        conn.close()
        return response.status, out_headers, data

    def _reply(self, status: int, headers: dict[str, str], data: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        proxy = self.server
        if proxy.dead:
            self.close_connection = True  # like a node that died: no answer at all
            return
        if self.path.split("?")[0].endswith("/_bulk"):
            items = sum(1 for line in (body or b"").splitlines() if b'"index"' in line[:12])
            with proxy.lock:
                proxy.bulk_requests.append(items)
                attempt = len(proxy.bulk_requests)
            if proxy.mode == "request_429":
                error = {
                    "error": {
                        "type": "es_rejected_execution_exception",
                        "reason": "rejected execution of bulk (test proxy)",
                    },
                    "status": 429,
                }
                self._reply(429, {"Content-Type": "application/json"}, json.dumps(error).encode())
                return
            status, headers, data = self._forward(body)
            if proxy.mode == "item_429_first" and attempt == 1:
                data = _reject_items(data, count=7)
            if proxy.mode == "drop_after_write" and attempt == proxy.drop_on_bulk:
                proxy.dead = True  # the node took the batch, then went away
                self.close_connection = True
                return
            self._reply(status, headers, data)
            return
        self._reply(*self._forward(body))

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle


def _reject_items(data: bytes, count: int) -> bytes:
    """Turn the first items of a real bulk response into 429 rejections."""
    response = json.loads(data)
    for item in response["items"][:count]:
        info = next(iter(item.values()))
        info.pop("result", None)
        info["status"] = 429
        info["error"] = {
            "type": "es_rejected_execution_exception",
            "reason": "rejected execution of coordinating operation (test proxy)",
        }
    response["errors"] = True
    return json.dumps(response).encode()


@pytest.fixture
def proxy(es_url: str) -> Iterator[FaultyProxy]:
    server = FaultyProxy(es_url)
    yield server
    server.stop()


def make_store(url: str, prefix: str, tmp_path: Path, settings: StoreSettings = SETTINGS) -> Store:
    env = Environment(
        es_url=url, index_prefix=prefix, outbox=tmp_path / "outbox", data_dir=tmp_path / "data"
    )
    return Store(env, settings)


def count(es_url: str, prefix: str, tmp_path: Path) -> int:
    with make_store(es_url, prefix, tmp_path) as direct:
        direct.refresh("articles")
        return direct.count("articles")


# ----------------------------------------------------------------------------- pure parts


def test_last_write_wins_inside_a_batch() -> None:
    ops = [WriteOp("index", "a", {"v": 1}), WriteOp("index", "b", {"v": 1})]
    ops += [WriteOp("index", "a", {"v": 2}), WriteOp("delete", "b")]
    assert last_write_wins(ops) == [WriteOp("index", "a", {"v": 2}), WriteOp("delete", "b")]
    unique = [WriteOp("index", str(i)) for i in range(3)]
    assert last_write_wins(unique) is unique


def test_batched_keeps_order_and_sizes() -> None:
    ops = (WriteOp("index", str(i)) for i in range(7))
    assert [[op.id for op in b] for b in batched(ops, 3)] == [
        ["0", "1", "2"],
        ["3", "4", "5"],
        ["6"],
    ]


# ---------------------------------------------------------------- against the real node


@pytest.mark.es
def test_item_level_429_is_retried_with_back_off(
    proxy: FaultyProxy, es_url: str, index_prefix: str, tmp_path: Path
) -> None:
    with make_store(es_url, index_prefix, tmp_path) as direct:
        direct.setup()
    proxy.mode = "item_429_first"
    with make_store(proxy.url, index_prefix, tmp_path) as store:
        started = time.perf_counter()
        report = store.write("articles", [(f"d{n}", doc(n)) for n in range(20)])
        took = time.perf_counter() - started
    assert report.ok == 20 and report.failed == [] and report.spooled == 0
    assert proxy.bulk_requests == [20, 7]  # only the rejected documents went again
    assert took >= SETTINGS.initial_backoff_s
    assert count(es_url, index_prefix, tmp_path) == 20


@pytest.mark.es
def test_persistent_429_spools_instead_of_losing_documents(
    proxy: FaultyProxy, es_url: str, index_prefix: str, tmp_path: Path
) -> None:
    with make_store(es_url, index_prefix, tmp_path) as direct:
        direct.setup()
    proxy.mode = "request_429"
    with make_store(proxy.url, index_prefix, tmp_path) as store:
        report = store.write("articles", [(f"d{n}", doc(n)) for n in range(120)])
        assert store.down is not None and "429" in store.down
        later = store.write("articles", [("late", doc(999))])  # same run: straight to spool
    assert report.ok == 0 and report.failed == [] and report.spooled == 120
    assert later.spooled == 1
    # the first batch was tried 1 + max_retries times by the helper (each with transport
    # retries), the other two batches were not sent at all
    assert len(proxy.bulk_requests) >= 1 + SETTINGS.max_retries
    assert set(proxy.bulk_requests) == {50}
    with make_store(es_url, index_prefix, tmp_path) as direct:
        replay = direct.replay_spool()
    assert replay.ok == 121 and replay.spooled == 0
    assert count(es_url, index_prefix, tmp_path) == 121


@pytest.mark.es
def test_node_lost_after_taking_a_batch_nothing_lost_nothing_doubled(
    proxy: FaultyProxy, es_url: str, index_prefix: str, tmp_path: Path
) -> None:
    docs = [(f"d{n}", doc(n)) for n in range(200)]
    with make_store(es_url, f"{index_prefix}-base", tmp_path / "base") as baseline:
        assert baseline.write("articles", docs).ok == 200
    with make_store(es_url, index_prefix, tmp_path) as direct:
        direct.setup()
    proxy.mode = "drop_after_write"
    proxy.drop_on_bulk = 2
    with make_store(proxy.url, index_prefix, tmp_path) as store:
        report = store.write("articles", docs)
    assert report.ok == 50 and report.spooled == 150 and not report.failed
    assert count(es_url, index_prefix, tmp_path) == 100  # the node wrote batch 2 anyway
    proxy.dead = False
    with make_store(proxy.url, index_prefix, tmp_path) as store:
        assert store.replay_spool().ok == 150
    assert count(es_url, index_prefix, tmp_path) == 200
    assert count(es_url, f"{index_prefix}-base", tmp_path / "base") == 200


@pytest.mark.es
def test_an_unserialisable_document_fails_alone(
    es_url: str, index_prefix: str, tmp_path: Path
) -> None:
    with make_store(es_url, index_prefix, tmp_path) as store:
        bad = doc(3) | {"title": object()}
        report = store.write("articles", [("d1", doc(1)), ("d3", bad), ("d2", doc(2))])
    assert report.ok == 2
    assert [doc_id for doc_id, _ in report.failed] == ["d3"]
    assert "not serialisable as JSON" in report.failed[0][1]
    assert count(es_url, index_prefix, tmp_path) == 2


@pytest.mark.es
def test_duplicate_ids_in_one_call_keep_the_last_version(
    es_url: str, index_prefix: str, tmp_path: Path
) -> None:
    with make_store(es_url, index_prefix, tmp_path) as store:
        report = store.write("articles", [("d1", doc(1, 1)), ("d2", doc(2)), ("d1", doc(1, 2))])
        assert report.ok == 2
        assert store.get_many("articles", ["d1"], fields=["title"])["d1"]["title"].endswith(
            "(revision 2)"
        )
