"""The spool: outages lose nothing, replays duplicate nothing, bad lines never crash a run.

Outages are real cuts, never mocks:

- a TCP proxy that this test runs between the store and the shared node, cut in the middle
  of a run (listener closed, open connections torn down, so new connections are refused)
  and later opened again on the same port; the shared node itself is never stopped;
- a private second node started with ``scripts/es-local`` in a temporary state directory
  (reusing the cached distribution), stopped by its pid in the middle of a run and started
  again (marked slow: about a minute per start on the development machines).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import Environment, StoreSettings
from pipeline.models import Article
from pipeline.store import KINDS, IndexKind, Store
from pipeline.store.spool import BatchResult, Spool, SpoolRecord, SpoolWriter

PROJECT_DIR = Path(__file__).resolve().parent.parent
ES_LOCAL = PROJECT_DIR / "scripts" / "es-local"
SHARED_ES_STATE = Path("/var/lib/stancewatch/es-local")
SETTINGS = StoreSettings(bulk_size=100, max_retries=1, initial_backoff_s=0.05, request_timeout_s=20)


def env_for(url: str, prefix: str, data_dir: Path) -> Environment:
    return Environment(
        es_url=url, index_prefix=prefix, outbox=data_dir / "outbox", data_dir=data_dir
    )


def _load_store_tests() -> Any:
    """test_store.make_article: articles shaped like the pipeline's (classified, stances)."""
    import importlib.util

    path = Path(__file__).with_name("test_store.py")
    spec = importlib.util.spec_from_file_location("_stancewatch_store_tests", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_make_article = _load_store_tests().make_article


def record(kind: IndexKind, doc_id: str, doc: dict[str, Any] | None = None) -> SpoolRecord:
    return SpoolRecord(
        kind=kind,
        op="index" if doc is not None else "delete",
        id=doc_id,
        doc=doc,
        reason="cannot connect (test)",
        spooled_at="2024-03-01T10:00:00Z",
    )


def simple_doc(n: int, version: int = 1) -> dict[str, Any]:
    return {
        "@timestamp": "2024-03-01T08:00:00Z",
        "title": f"Mediators propose a truce, draft {version}",
        "content_hash": f"{n}-{version}",
    }


def counts(store: Store) -> dict[str, int]:
    store.refresh()
    return {kind: store.count(kind) for kind in KINDS}


# ------------------------------------------------------------ the file format, no cluster


def test_records_are_appended_fsynced_and_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    with spool.writer() as writer:
        assert writer.append([]) == 0
        assert writer.path is None  # no empty files
        writer.append([record("articles", "a1", simple_doc(1)), record("stances", "s1", {"x": 1})])
        writer.append([record("articles", "a2", simple_doc(2)), record("articles", "a3")])
    status = spool.status()
    assert status.files == 1 and status.records == 4
    assert status.by_kind == {"articles": 3, "stances": 1}
    assert status.oldest == "2024-03-01T10:00:00Z"
    lines = spool.pending_files()[0].read_text().splitlines()
    assert json.loads(lines[0]) == {
        "v": 1,
        "kind": "articles",
        "op": "index",
        "id": "a1",
        "doc": simple_doc(1),
        "reason": "cannot connect (test)",
        "spooled_at": "2024-03-01T10:00:00Z",
    }
    assert json.loads(lines[3])["op"] == "delete" and "doc" not in json.loads(lines[3])


def test_replay_stops_when_the_cluster_goes_away_and_keeps_the_rest_in_order(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool")
    with spool.writer() as first:
        first.append([record("articles", f"a{i}", simple_doc(i)) for i in range(5)])
        first.append([record("feeds", "f1", {"feed_id": "f1"})])
    with spool.writer() as second:
        second.append([record("articles", "a0", simple_doc(0, version=2))])
    older, newer = spool.pending_files()
    calls: list[tuple[str, list[str]]] = []

    def flaky(kind: IndexKind, batch: list[SpoolRecord]) -> BatchResult:
        calls.append((kind, [r.id for r in batch]))
        if len(calls) == 1:
            return BatchResult(ok=2)
        return BatchResult(unwritten=batch, unavailable="cannot connect (test)")

    report = spool.replay(flaky, batch_size=2)
    assert calls == [("articles", ["a0", "a1"]), ("articles", ["a2", "a3"])]
    assert report.ok == 2 and report.remaining == 4
    assert report.messages == ["replay stopped: cannot connect (test)"]
    left = [json.loads(line)["id"] for line in older.read_text().splitlines()]
    assert left == ["a2", "a3", "a4", "f1"]  # the newer file was not touched
    assert newer.exists()

    def healthy(kind: IndexKind, batch: list[SpoolRecord]) -> BatchResult:
        calls.append((kind, [r.id for r in batch]))
        return BatchResult(ok=len(batch))

    calls.clear()
    report = spool.replay(healthy, batch_size=10)
    assert calls == [("articles", ["a2", "a3", "a4"]), ("feeds", ["f1"]), ("articles", ["a0"])]
    assert report.ok == 5 and report.files_done == 2
    assert not spool.has_pending()


def test_a_file_still_being_written_is_left_alone(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    writer = SpoolWriter(spool.directory)
    writer.append([record("articles", "a1", simple_doc(1))])
    seen: list[str] = []

    def write(kind: IndexKind, batch: list[SpoolRecord]) -> BatchResult:
        seen.extend(r.id for r in batch)
        return BatchResult(ok=len(batch))

    report = spool.replay(write)
    assert report.files_busy == 1 and seen == []
    writer.close()
    assert spool.replay(write).ok == 1 and seen == ["a1"]


def test_a_second_replay_does_not_wait_for_the_first(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    with spool.writer() as writer:
        writer.append([record("articles", "a1", simple_doc(1))])
    with (spool.directory / ".replay.lock").open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        report = spool.replay(lambda kind, batch: BatchResult(ok=len(batch)))
    assert report.ok == 0 and "another replay" in report.messages[0]
    assert spool.has_pending()


# ----------------------------------------------------------------- against the real node


def _write_spool_file(directory: Path, name: str, lines: list[bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(b"".join(lines))
    return path


@pytest.mark.es
def test_corrupt_lines_are_kept_aside_and_the_rest_is_written(
    es_url: str, index_prefix: str, tmp_path: Path
) -> None:
    store = Store(env_for(es_url, index_prefix, tmp_path), SETTINGS)
    good = [record("articles", f"a{i}", simple_doc(i)).to_line().encode() for i in range(3)]
    bad = [
        b"this is not json\n",
        b'{"v":1,"kind":"sausages","op":"index","id":"x","doc":{}}\n',
        b'{"v":1,"kind":"articles","op":"index","id":"no-doc"}\n',
        b"\xff\xfe\xfa broken bytes\n",
        b"[1, 2, 3]\n",
    ]
    torn = b'{"v":1,"kind":"articles","op":"index","id":"a9","doc":{"title":"cut of'
    name = "20240301T100000.000000Z-1-abcdef.jsonl"
    _write_spool_file(
        store.spool.directory, name, [good[0], bad[0], good[1], *bad[1:], good[2], torn]
    )
    report = store.replay_spool()
    assert report.ok == 3 and report.failed == [] and report.spooled == 0
    assert store.last_replay is not None and store.last_replay.corrupt_lines == 6
    kept = (store.spool.directory / "corrupt" / name).read_bytes().splitlines()
    assert len(kept) == 6 and kept[0] == b"this is not json"
    assert not store.spool.has_pending()
    status = store.spool_status()
    assert status.records == 0 and status.corrupt_files == 1
    assert counts(store)["articles"] == 3
    store.close()


@pytest.mark.es
def test_documents_the_cluster_refuses_are_set_aside_with_the_reason(
    es_url: str, index_prefix: str, tmp_path: Path
) -> None:
    with Store(env_for(es_url, index_prefix, tmp_path), SETTINGS) as store:
        with store.spool.writer() as writer:
            writer.append(
                [
                    record("articles", "ok", simple_doc(1)),
                    record("articles", "bad", simple_doc(2) | {"@timestamp": "soon"}),
                ]
            )
        report = store.replay_spool()
        assert report.ok == 1 and [i for i, _ in report.failed] == ["bad"]
        rejected = store.spool.directory / "rejected"
        (kept,) = list(rejected.iterdir())
        line = json.loads(kept.read_text())
        assert line["id"] == "bad" and "failed to parse field [@timestamp]" in line["error"]
        assert store.spool_status().rejected_records == 1
        assert not store.spool.has_pending()


@pytest.mark.es
def test_replaying_twice_changes_nothing(es_url: str, index_prefix: str, tmp_path: Path) -> None:
    with Store(env_for(es_url, index_prefix, tmp_path), SETTINGS) as store:
        with store.spool.writer() as writer:
            writer.append([record("articles", f"a{i}", simple_doc(i)) for i in range(30)])
        (path,) = store.spool.pending_files()
        copy = path.read_bytes()
        assert store.replay_spool().ok == 30
        before = counts(store)
        path.write_bytes(copy)  # the same file again, as after a crash before its removal
        assert store.replay_spool().ok == 30
        assert counts(store) == before == {**dict.fromkeys(KINDS, 0), "articles": 30}


@pytest.mark.es
def test_spooled_writes_go_before_newer_ones(
    es_url: str, index_prefix: str, tmp_path: Path
) -> None:
    env = env_for(es_url, index_prefix, tmp_path)
    with Store(env, SETTINGS) as store, store.spool.writer() as writer:
        writer.append([record("articles", "a1", simple_doc(1, version=1))])
    with Store(env, SETTINGS) as store:
        # no explicit replay: the first write replays the older spooled version first
        report = store.write("articles", [("a1", simple_doc(1, version=2))])
        assert report.ok == 1
        title = store.get_many("articles", ["a1"], fields=["title"])["a1"]["title"]
        assert title.endswith("draft 2")
        assert not store.spool.has_pending()


# ---------------------------------------------------------- outage: a TCP proxy cut mid-run


class TcpProxy:
    """Forwards TCP to the node; ``cut()`` closes the listener and every open connection."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = 0
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.open()

    def open(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(32)
        listener.settimeout(0.1)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.cut()


def _pairs(articles: list[Article]) -> tuple[list[tuple[str, dict[str, Any]]], list[Any]]:
    return [(a.id, a.to_document()) for a in articles], [
        d for a in articles for d in a.stance_documents()
    ]


def _run(store: Store, articles: list[Article], cut_after: int | None, cut: Any) -> dict[str, int]:
    """One "run": articles then their stance mentions; the cut happens while articles stream."""
    docs, stances = _pairs(articles)

    def stream() -> Iterator[tuple[str, dict[str, Any]]]:
        for n, pair in enumerate(docs):
            if n == cut_after:
                cut()
            yield pair

    a = store.write("articles", stream())
    s = store.write("stances", stances)
    return {"ok": a.ok + s.ok, "spooled": a.spooled + s.spooled, "failed": len(a.failed + s.failed)}


@pytest.mark.es
def test_outage_mid_run_spools_and_the_next_run_replays_to_equal_counts(
    es_url: str, index_prefix: str, tmp_path: Path
) -> None:
    articles = [_make_article(n) for n in range(500)]
    n_stances = sum(len(a.stance_documents()) for a in articles)
    host, port = es_url.removeprefix("http://").split(":")
    proxy = TcpProxy((host, int(port)))
    try:
        # the run without an outage, for comparison
        with Store(env_for(es_url, f"{index_prefix}-base", tmp_path / "base"), SETTINGS) as base:
            assert _run(base, articles, None, None) == {
                "ok": 500 + n_stances,
                "spooled": 0,
                "failed": 0,
            }
            expected = counts(base)
        assert expected["articles"] == 500 and expected["stances"] == n_stances == 668

        env = env_for(proxy.url, index_prefix, tmp_path / "cut")
        with Store(env, SETTINGS) as store:
            store.setup()
            result = _run(store, articles, cut_after=250, cut=proxy.cut)
            assert store.down is not None and "cannot connect" in store.down
        # batches 1-2 were written; the batch in flight and everything after is spooled
        assert result == {"ok": 200, "spooled": 300 + n_stances, "failed": 0}
        status = Spool(env.spool_dir / index_prefix).status()
        assert status.by_kind == {"articles": 300, "stances": n_stances}

        proxy.open()  # the cluster is back on the same address
        with Store(env, SETTINGS) as store:
            store.check()
            replayed = store.replay_spool()
            assert replayed.ok == 300 + n_stances and replayed.spooled == 0
            assert counts(store) == expected
            # and the next run of the same articles changes nothing
            assert _run(store, articles, None, None)["ok"] == 500 + n_stances
            assert counts(store) == expected
            ids = {i for i, _ in store.scan("articles", {"match_all": {}}, fields=[])}
            assert ids == {a.id for a in articles}
    finally:
        proxy.close()


# ------------------------------------------------- outage: a private node stopped mid-run


class PrivateNode:
    """A second Elasticsearch node of our own, in a temporary state directory."""

    def __init__(self) -> None:
        # Not under pytest's tmp_path: that is private to root, and the node runs as the
        # es-local system user, which must reach its state directory.
        self.home = Path(tempfile.mkdtemp(prefix="sw-es-", dir="/tmp"))
        dist = SHARED_ES_STATE / "dist"
        for unpacked in dist.glob("elasticsearch-*"):
            (self.home / "dist").mkdir(exist_ok=True)
            (self.home / "dist" / unpacked.name).symlink_to(unpacked)
        for archive in (SHARED_ES_STATE / "downloads").glob("elasticsearch-*.zip"):
            (self.home / "downloads").mkdir(exist_ok=True)
            (self.home / "downloads" / archive.name).symlink_to(archive)
        self.url = ""

    def _script(self, command: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "STANCEWATCH_ES_URL"}
        env.update(STANCEWATCH_ES_HOME=str(self.home), STANCEWATCH_ES_HEAP="512m")
        return subprocess.run(
            [str(ES_LOCAL), command], env=env, capture_output=True, text=True, timeout=400
        )

    def start(self) -> str:
        result = self._script("start")
        assert result.returncode == 0, result.stderr[-2000:]
        self.url = result.stdout.strip().splitlines()[-1]
        return self.url

    def pid(self) -> int:
        return int((self.home / "run" / "es.pid").read_text().strip())

    def stop(self) -> None:
        """Stop the node by its pid (the script sends TERM to that pid and waits)."""
        result = self._script("stop")
        assert result.returncode == 0, result.stderr[-2000:]

    def remove(self) -> None:
        if (self.home / "run" / "es.pid").exists():
            self._script("stop")
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.mark.es
@pytest.mark.slow
def test_private_node_stopped_mid_run_and_restarted_loses_nothing(
    es_url: str, index_prefix: str, tmp_path: Path
) -> None:
    if os.geteuid() != 0 or not (SHARED_ES_STATE / "dist").is_dir():
        pytest.skip("needs root and the cached distribution of scripts/es-local")
    articles = [_make_article(n) for n in range(600)]
    with Store(env_for(es_url, f"{index_prefix}-base", tmp_path / "base"), SETTINGS) as base:
        _run(base, articles, None, None)
        expected = counts(base)
    node = PrivateNode()
    try:
        url = node.start()
        env = env_for(url, index_prefix, tmp_path / "private")
        pid = node.pid()
        with Store(env, SETTINGS) as store:
            store.setup()
            result = _run(store, articles, cut_after=350, cut=node.stop)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # really gone
        n_stances = sum(len(a.stance_documents()) for a in articles)
        assert result == {"ok": 300, "spooled": 300 + n_stances, "failed": 0}
        url = node.start()  # same state directory: the 300 written documents survive
        with Store(env.model_copy(update={"es_url": url}), SETTINGS) as store:
            replayed = store.replay_spool()
            assert replayed.spooled == 0 and replayed.failed == []
            assert counts(store) == expected
    finally:
        node.remove()


@pytest.mark.es
def test_within_one_store_writes_stay_behind_the_spool_until_it_is_replayed(
    es_url: str, index_prefix: str, tmp_path: Path
) -> None:
    host, port = es_url.removeprefix("http://").split(":")
    proxy = TcpProxy((host, int(port)))
    try:
        with Store(env_for(proxy.url, index_prefix, tmp_path), SETTINGS) as store:
            store.setup()
            assert store.write("articles", [("a1", simple_doc(1, version=1))]).ok == 1
            proxy.cut()
            assert store.write("articles", [("a1", simple_doc(1, version=2))]).spooled == 1
            proxy.open()
            store.check()  # the cluster answers again ...
            # ... but a newer version must not overtake the spooled one
            assert store.write("articles", [("a1", simple_doc(1, version=3))]).spooled == 1
            assert store.replay_spool().ok == 1  # both spooled versions, last one wins
            assert store.write("articles", [("a2", simple_doc(2))]).ok == 1  # direct again
            docs = store.get_many("articles", ["a1", "a2"], fields=["title"])
            assert docs["a1"]["title"].endswith("draft 3") and "a2" in docs
            assert not store.spool.has_pending()
    finally:
        proxy.close()
