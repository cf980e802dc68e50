"""The Store: the one door to Elasticsearch for every other stage (docs/architecture.md).

Guarantees it gives its callers:

- **Nothing duplicated**: writes are full-document upserts by deterministic id, routed to
  the backing index that already holds the id (see ``writer.py``), so re-runs and
  rollovers never create a second copy.
- **Nothing lost**: when the cluster is unavailable, writes go to the local spool
  (``spool.py``) and the store remembers for the rest of its life that the cluster is down,
  so later writes of the same run are spooled at once and keep their order. Spooled writes
  are replayed before the first direct write of the next store (and by
  :meth:`Store.replay_spool`, which the runner calls first).
- **Ready before use**: the first write to a kind whose alias does not exist runs
  :meth:`setup`, so a write can never auto-create an unmapped index.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

from elastic_transport import ApiError, TransportError
from elasticsearch import Elasticsearch
from elasticsearch.helpers import scan as scan_helper
from pydantic import BaseModel, Field

from pipeline.config import Environment, StoreSettings
from pipeline.store.client import StoreUnavailable, describe_error, is_unavailable, make_client
from pipeline.store.indices import KINDS, IndexKind, IndexManager, alias_name
from pipeline.store.spool import (
    BatchResult,
    ReplayReport,
    Spool,
    SpoolRecord,
    SpoolStatus,
    SpoolWriter,
)
from pipeline.store.writer import BulkWriter, WriteOp

if TYPE_CHECKING:
    from pipeline.config import AppConfig

log = logging.getLogger(__name__)

#: Ids per real-time multi-get (times the number of backing indices).
MGET_CHUNK = 1000


class WriteReport(BaseModel):
    """What a write did: documents written, refused (id, reason), and spooled for later."""

    ok: int = 0
    failed: list[tuple[str, str]] = Field(default_factory=list)
    spooled: int = 0

    def __add__(self, other: WriteReport) -> WriteReport:
        return WriteReport(
            ok=self.ok + other.ok,
            failed=[*self.failed, *other.failed],
            spooled=self.spooled + other.spooled,
        )


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Store:
    """Articles, stance mentions, alerts and feed state in Elasticsearch, with a spool."""

    def __init__(
        self, env: Environment, settings: StoreSettings, client: Elasticsearch | None = None
    ):
        self.env = env
        self.settings = settings
        self.client = client or make_client(env, settings)
        self._own_client = client is None
        self.indices = IndexManager(self.client, env.index_prefix, settings, env.es_url)
        self.spool = Spool(env.spool_dir / env.index_prefix)
        self._bulk = BulkWriter(self.client, settings)
        self._ready: set[IndexKind] = set()
        self._down: str | None = None
        self._spool_writer: SpoolWriter | None = None
        self._replayed_once = False
        self._spooled_any = False
        #: The report of the last spool replay (messages about corrupt lines etc.).
        self.last_replay: ReplayReport | None = None

    @classmethod
    def from_config(cls, config: AppConfig) -> Store:
        return cls(config.env, config.settings.store)

    # ---------------------------------------------------------------------------- basics

    @property
    def url(self) -> str:
        return self.env.es_url

    @property
    def prefix(self) -> str:
        return self.env.index_prefix

    @property
    def down(self) -> str | None:
        """Why the cluster was found unavailable in this store's life (None = it was not)."""
        return self._down

    def alias(self, kind: IndexKind) -> str:
        return alias_name(self.env.index_prefix, kind)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a client call; unavailability becomes StoreUnavailable naming the URL."""
        try:
            return fn(*args, **kwargs)
        except (ApiError, TransportError) as exc:
            if is_unavailable(exc):
                self._down = describe_error(exc)
                raise StoreUnavailable(self.url, f"{what}: {self._down}") from None
            raise

    def check(self) -> None:
        """Raise StoreUnavailable unless the cluster answers and our indices can be served."""
        client = self.client.options(
            max_retries=0, request_timeout=min(10.0, self.settings.request_timeout_s)
        )
        health = self._call(
            "cluster health", client.cluster.health, index=f"{self.prefix}-*", timeout="5s"
        )
        if health.get("status") == "red":
            self._down = "our indices are red (a primary shard is unassigned)"
            raise StoreUnavailable(self.url, self._down)
        if not self._spooled_any:
            # Once this store has spooled, later writes keep going to the spool (behind the
            # spooled ones) until replay_spool() has written them: the last write wins.
            self._down = None

    def setup(self) -> list[str]:
        """Idempotent: lifecycle policy, templates (upgraded in place), aliases. Says what."""
        done = self._call("setup", self.indices.setup)
        self._ready.update(KINDS)
        return list(done)

    def _ensure_ready(self, kind: IndexKind) -> None:
        if kind in self._ready:
            return
        if self._call("alias lookup", self.indices.backing_indices, kind):
            self._ready.add(kind)
            return
        for line in self.setup():
            log.info("setup: %s", line)

    # ---------------------------------------------------------------------------- writes

    def write(self, kind: IndexKind, docs: Iterable[tuple[str, dict[str, Any]]]) -> WriteReport:
        """Full-document upsert by id through the alias; rollover-safe; spools when down."""
        return self._write(kind, (WriteOp("index", doc_id, doc) for doc_id, doc in docs))

    def delete(self, kind: IndexKind, ids: Iterable[str]) -> WriteReport:
        """Delete by id from whichever backing index holds it; spools when down."""
        return self._write(kind, (WriteOp("delete", doc_id) for doc_id in ids))

    def _write(self, kind: IndexKind, ops: Iterable[WriteOp]) -> WriteReport:
        if self._down is None and not self._replayed_once:
            self._replayed_once = True
            if self.spool.has_pending():
                # Older spooled writes first, so that the last write still wins.
                replayed = self.replay_spool()
                log.info("spool replayed before writing: %s", replayed)
        if self._down is None:
            try:
                self._ensure_ready(kind)
            except StoreUnavailable as exc:
                self._down = exc.what
        outcome = self._bulk.write(
            self.alias(kind),
            ops,
            locate=lambda ids: self._locate(kind, ids),
            on_unwritten=lambda batch, reason: self._spool_ops(kind, batch, reason),
            unavailable=self._down,
        )
        if outcome.unavailable is not None and self._down is None:
            self._down = outcome.unavailable
            log.warning("%s unavailable, spooling: %s", self.url, outcome.unavailable)
        return WriteReport(ok=outcome.ok, failed=outcome.failed, spooled=outcome.unwritten)

    def _locate(self, kind: IndexKind, ids: list[str]) -> dict[str, str]:
        """id -> the backing index holding it (real-time; the newest wins if several do)."""
        backing = self.indices.backing_indices(kind)
        found: dict[str, str] = {}
        if not backing or not ids:
            return found
        docs = [{"_index": b.name, "_id": doc_id} for b in backing for doc_id in ids]
        response = self.client.mget(docs=docs, source=False, realtime=True)
        for doc in response["docs"]:
            if doc.get("found"):
                found[doc["_id"]] = doc["_index"]  # backing is oldest first
        return found

    def _spool_ops(self, kind: IndexKind, ops: list[WriteOp], reason: str) -> None:
        if self._spool_writer is None:
            self._spool_writer = self.spool.writer()
        self._spooled_any = True
        stamp = _now_iso()
        self._spool_writer.append(
            SpoolRecord(kind=kind, op=op.op, id=op.id, doc=op.doc, reason=reason, spooled_at=stamp)
            for op in ops
        )

    def replay_spool(self) -> WriteReport:
        """Write what earlier runs spooled, oldest first; what is left stays spooled."""
        self._replayed_once = True
        if self._spool_writer is not None:  # our own file becomes replayable too
            self._spool_writer.close()
            self._spool_writer = None
        if not self.spool.has_pending():
            self.last_replay = ReplayReport()
            return WriteReport()

        def write_batch(kind: IndexKind, records: list[SpoolRecord]) -> BatchResult:
            by_id = {r.id: r for r in records}
            result = BatchResult()
            try:
                self._ensure_ready(kind)
            except StoreUnavailable as exc:
                return BatchResult(unwritten=records, unavailable=exc.what)
            unwritten: list[WriteOp] = []

            def keep(batch: list[WriteOp], reason: str) -> None:
                unwritten.extend(batch)
                result.unavailable = reason

            outcome = self._bulk.write(
                self.alias(kind),
                (WriteOp(r.op, r.id, r.doc) for r in records),
                locate=lambda ids: self._locate(kind, ids),
                on_unwritten=keep,
            )
            result.ok = outcome.ok
            result.failed = [(by_id[i], reason) for i, reason in outcome.failed]
            result.unwritten = [by_id[op.id] for op in unwritten]
            if outcome.unavailable:
                self._down = outcome.unavailable
            return result

        report = self.spool.replay(write_batch, batch_size=self.settings.bulk_size)
        self.last_replay = report
        if report.remaining == 0 and report.files_busy == 0 and not self.spool.has_pending():
            # Everything this store (and earlier runs) spooled is written: direct writes
            # are safe again.
            self._down = None
            self._spooled_any = False
        for message in report.messages:
            log.warning("spool: %s", message)
        return WriteReport(ok=report.ok, failed=report.failed, spooled=report.remaining)

    def spool_status(self) -> SpoolStatus:
        return self.spool.status()

    # ----------------------------------------------------------------------------- reads

    def get_many(
        self, kind: IndexKind, ids: list[str], fields: list[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Documents by id (real-time), only those found; ``fields`` limits ``_source``."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            return {}
        backing = self._call("alias lookup", self.indices.backing_indices, kind)
        if not backing:
            return {}
        source: bool | list[str] = True if fields is None else (fields or False)
        out: dict[str, dict[str, Any]] = {}
        step = max(1, MGET_CHUNK // len(backing))
        for start in range(0, len(ids), step):
            chunk = ids[start : start + step]
            docs = [{"_index": b.name, "_id": doc_id} for b in backing for doc_id in chunk]
            response = self._call("get", self.client.mget, docs=docs, source=source)
            for doc in response["docs"]:
                if doc.get("found"):
                    out[doc["_id"]] = doc.get("_source") or {}
        return out

    def search(self, kind: IndexKind, body: dict[str, Any]) -> dict[str, Any]:
        """A search through the alias; an alias that does not exist yet gives no hits."""
        response = self._call(
            "search",
            self.client.search,
            index=self.alias(kind),
            body=body,
            ignore_unavailable=True,
            allow_no_indices=True,
        )
        return dict(response.body)

    def count(self, kind: IndexKind, query: dict[str, Any] | None = None) -> int:
        kwargs: dict[str, Any] = {"index": self.alias(kind), "ignore_unavailable": True}
        if query is not None:
            kwargs["query"] = query
        return int(self._call("count", self.client.count, **kwargs)["count"])

    def scan(
        self, kind: IndexKind, query: dict[str, Any], fields: list[str] | None = None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every matching document as (id, source). ``query`` is a query clause (or a body
        with a "query" key); ``fields=[]`` returns ids only."""
        body: dict[str, Any] = dict(query) if "query" in query else {"query": query}
        if fields is not None:
            body["_source"] = fields or False
        try:
            for hit in scan_helper(
                self.client,
                query=body,
                index=self.alias(kind),
                ignore_unavailable=True,
                allow_no_indices=True,
            ):
                yield hit["_id"], hit.get("_source") or {}
        except (ApiError, TransportError) as exc:
            if isinstance(exc, ApiError) and not is_unavailable(exc):
                raise
            self._down = describe_error(exc)
            raise StoreUnavailable(self.url, f"scan: {self._down}") from None

    def refresh(self, kind: IndexKind | None = None) -> None:
        """Make recent writes visible to search (reads by id never need this)."""
        kinds = [kind] if kind else list(KINDS)
        self._call(
            "refresh",
            self.client.indices.refresh,
            index=",".join(self.alias(k) for k in kinds),
            ignore_unavailable=True,
            allow_no_indices=True,
        )

    # ------------------------------------------------------------------------- lifecycle

    def rollover_if_due(self) -> dict[str, bool]:
        """Roll over aliases past the thresholds of the settings (ILM does it where present)."""
        return dict(self._call("rollover", self.indices.rollover_if_due))

    def rollover(self, kind: IndexKind, conditions: dict[str, Any] | None = None) -> bool:
        """Roll one alias over now (or when ``conditions`` hold)."""
        self._ensure_ready(kind)
        return bool(self._call("rollover", self.indices.rollover, kind, conditions))

    def index_stats(self) -> list[dict[str, Any]]:
        return list(self._call("index stats", self.indices.index_stats))

    def close(self) -> None:
        if self._spool_writer is not None:
            self._spool_writer.close()
            self._spool_writer = None
        if self._own_client:
            self.client.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
