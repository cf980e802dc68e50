"""A local spool for documents that could not be written because the cluster was unavailable.

Nothing is lost when Elasticsearch is down in the middle of a run: the writes that did not
happen are appended to a JSON Lines file and replayed, in order, before anything else is
written on the next run. Replaying is idempotent (every write is a full-document upsert by
a deterministic id), so a replay that is itself interrupted can simply run again.

Layout (``Environment.spool_dir / <index prefix>``, one directory per prefix so a test or
staging prefix never replays into production)::

    20250301T101500.123456Z-4242-a1b2c3.jsonl   one file per writing process, oldest first
    corrupt/<file>                              lines that could not be parsed, kept aside
    rejected/<file>                             documents the cluster refused (mapping errors)

One line per write::

    {"v": 1, "kind": "articles", "op": "index", "id": "...", "doc": {...},
     "reason": "cannot connect (...)", "spooled_at": "2025-03-01T10:15:00Z"}

Durability: each batch of lines is flushed and ``fsync``-ed, and the directory is fsynced
when a file is created, replaced or removed. Concurrency: a writing process holds an
exclusive ``flock`` on its own file, and replay skips files that are still locked; a second
replay waits for nobody (it reports that another one is running).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import BaseModel, Field, ValidationError

from pipeline.store.indices import KINDS, IndexKind

SPOOL_FORMAT_VERSION = 1


class SpoolRecord(BaseModel):
    """One write that is waiting for the cluster."""

    v: int = SPOOL_FORMAT_VERSION
    kind: IndexKind
    op: Literal["index", "delete"]
    id: str = Field(min_length=1)
    doc: dict[str, Any] | None = None
    reason: str = ""
    spooled_at: str = ""

    def to_line(self) -> str:
        data = self.model_dump(exclude_none=True)
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str) + "\n"


class BatchResult(BaseModel):
    """What the writer did with a batch of spooled records during replay."""

    ok: int = 0
    failed: list[tuple[SpoolRecord, str]] = Field(default_factory=list)
    unwritten: list[SpoolRecord] = Field(default_factory=list)
    unavailable: str | None = None


class ReplayReport(BaseModel):
    ok: int = 0
    failed: list[tuple[str, str]] = Field(default_factory=list)
    remaining: int = Field(default=0, description="Records still spooled (cluster went away)")
    corrupt_lines: int = 0
    files_done: int = 0
    files_busy: int = 0
    messages: list[str] = Field(default_factory=list)


class SpoolStatus(BaseModel):
    directory: str
    files: int = 0
    records: int = 0
    bytes: int = 0
    oldest: str | None = None
    by_kind: dict[str, int] = Field(default_factory=dict)
    corrupt_files: int = 0
    corrupt_lines: int = 0
    rejected_files: int = 0
    rejected_records: int = 0


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SpoolWriter:
    """Appends to this writer's own spool file; the file appears on the first record."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.path: Path | None = None
        self._stream: IO[str] | None = None
        self.count = 0

    def _open(self) -> IO[str]:
        if self._stream is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
            self.path = self.directory / f"{stamp}-{os.getpid()}-{secrets.token_hex(3)}.jsonl"
            stream = self.path.open("a", encoding="utf-8")
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX)
            _fsync_dir(self.directory)
            self._stream = stream
        return self._stream

    def append(self, records: Iterable[SpoolRecord]) -> int:
        """Append and fsync; returns how many records were written."""
        lines = [r.to_line() for r in records]
        if not lines:
            return 0
        stream = self._open()
        stream.write("".join(lines))
        stream.flush()
        os.fsync(stream.fileno())
        self.count += len(lines)
        return len(lines)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.flush()
            os.fsync(self._stream.fileno())
            self._stream.close()  # releases the lock: replay may take the file now
            self._stream = None

    def __enter__(self) -> SpoolWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Spool:
    """The spool directory of one index prefix."""

    def __init__(self, directory: Path):
        self.directory = directory

    def writer(self) -> SpoolWriter:
        return SpoolWriter(self.directory)

    def pending_files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob("*.jsonl") if p.is_file())

    def has_pending(self) -> bool:
        return bool(self.pending_files())

    # ------------------------------------------------------------------------- reading

    @staticmethod
    def parse_file(path: Path) -> tuple[list[SpoolRecord], list[str]]:
        """Records of a file, plus its lines that are not valid records (kept verbatim)."""
        records: list[SpoolRecord] = []
        corrupt: list[str] = []
        with path.open("rb") as stream:
            for raw in stream:
                if not raw.strip():
                    continue
                try:
                    text = raw.decode("utf-8")
                    data = json.loads(text)
                    if not isinstance(data, dict):
                        raise ValueError("not an object")
                    record = SpoolRecord.model_validate(data)
                    if record.op == "index" and record.doc is None:
                        raise ValueError("index record without doc")
                    records.append(record)
                except (UnicodeDecodeError, ValueError, ValidationError):
                    # A torn last line after a crash lands here too; it is kept aside.
                    corrupt.append(raw.decode("utf-8", errors="replace").rstrip("\n"))
        return records, corrupt

    def status(self) -> SpoolStatus:
        status = SpoolStatus(directory=str(self.directory))
        for path in self.pending_files():
            records, corrupt = self.parse_file(path)
            status.files += 1
            status.records += len(records)
            status.corrupt_lines += len(corrupt)
            status.bytes += path.stat().st_size
            for record in records:
                status.by_kind[record.kind] = status.by_kind.get(record.kind, 0) + 1
                if record.spooled_at and (
                    status.oldest is None or record.spooled_at < status.oldest
                ):
                    status.oldest = record.spooled_at
        for sub, attr_files in (("corrupt", "corrupt_files"), ("rejected", "rejected_files")):
            folder = self.directory / sub
            if folder.is_dir():
                files = [p for p in folder.iterdir() if p.is_file()]
                setattr(status, attr_files, len(files))
                if sub == "rejected":
                    status.rejected_records = sum(_count_lines(p) for p in files)
        return status

    # ------------------------------------------------------------------------- replaying

    def replay(
        self, write: Callable[[IndexKind, list[SpoolRecord]], BatchResult], batch_size: int = 500
    ) -> ReplayReport:
        """Write every spooled record through ``write``, oldest file first.

        A file is removed only when all its records were written or set aside; when the
        cluster goes away again the file is rewritten with what is left and replay stops, so
        that the order of writes (last write wins) is kept across runs.
        """
        report = ReplayReport()
        if not self.pending_files():
            return report
        with self._replay_lock() as locked:
            if not locked:
                report.messages.append("another replay of this spool is running; skipped")
                return report
            for path in self.pending_files():
                if not self._replay_file(path, write, batch_size, report):
                    break
        return report

    @contextlib.contextmanager
    def _replay_lock(self) -> Iterator[bool]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / ".replay.lock").open("a") as lock:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _replay_file(
        self,
        path: Path,
        write: Callable[[IndexKind, list[SpoolRecord]], BatchResult],
        batch_size: int,
        report: ReplayReport,
    ) -> bool:
        """Replay one file; False when the cluster became unavailable (stop here)."""
        with path.open("r+b") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                report.files_busy += 1  # its writer is still running
                return True
            records, corrupt = self.parse_file(path)
            if corrupt:
                self._set_aside("corrupt", path.name, (line + "\n" for line in corrupt))
                report.corrupt_lines += len(corrupt)
                report.messages.append(
                    f"{path.name}: {len(corrupt)} corrupt line(s) kept in "
                    f"{self.directory / 'corrupt' / path.name}"
                )
            # Order matters only per document, so per kind; keep it within each kind.
            by_kind: dict[IndexKind, list[SpoolRecord]] = {}
            for record in records:
                by_kind.setdefault(record.kind, []).append(record)
            left: list[SpoolRecord] = []
            rejected: list[str] = []
            for kind in KINDS:
                pending = by_kind.get(kind, [])
                if left:  # the cluster went away: keep everything after that point
                    left.extend(pending)
                    continue
                while pending:
                    batch, pending = pending[:batch_size], pending[batch_size:]
                    result = write(kind, batch)
                    report.ok += result.ok
                    for record, reason in result.failed:
                        report.failed.append((record.id, reason))
                        rejected.append(
                            json.dumps(
                                {**record.model_dump(exclude_none=True), "error": reason},
                                ensure_ascii=False,
                                default=str,
                            )
                            + "\n"
                        )
                    if result.unwritten:
                        left.extend(result.unwritten)
                        left.extend(pending)
                        report.messages.append(f"replay stopped: {result.unavailable}")
                        break
            if rejected:
                self._set_aside("rejected", path.name, rejected)
            if left:
                self._rewrite(path, left)
                report.remaining += len(left)
                return False
            path.unlink()
            _fsync_dir(self.directory)
            report.files_done += 1
            return True

    def _set_aside(self, folder: str, name: str, lines: Iterable[str]) -> None:
        target_dir = self.directory / folder
        target_dir.mkdir(parents=True, exist_ok=True)
        with (target_dir / name).open("a", encoding="utf-8") as out:
            out.writelines(lines)
            out.flush()
            os.fsync(out.fileno())
        _fsync_dir(target_dir)

    def _rewrite(self, path: Path, records: list[SpoolRecord]) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("w", encoding="utf-8") as out:
            out.writelines(r.to_line() for r in records)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.directory)


def _count_lines(path: Path) -> int:
    with path.open("rb") as stream:
        return sum(1 for line in stream if line.strip())
