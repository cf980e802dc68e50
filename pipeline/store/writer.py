"""Bulk writes: rollover-safe full-document upserts through the bulk helpers.

Why the look-up: once an alias has rolled over, ``_id`` is unique only inside one backing
index. Indexing an existing id through the alias would put a second copy into the new write
index. So each batch first asks every backing index (real-time ``mget``, ``_source`` off)
which ids it already holds, then writes those to the index that holds them (``index`` op
with an explicit ``_index``) and only new ids through the write alias. New ids carry
``require_alias`` so that a write can never auto-create a concrete index named like the
alias. The write index is looked up too: a rollover between the look-up and the write then
still lands existing documents on their own index.

Errors are sorted into three bins:

- written (``ok``; deleting a document that is not there counts as done);
- **failed** — the cluster refused this document (a mapping conflict, a malformed value):
  reported per document with Elasticsearch's reason, never retried;
- **unwritten** — the cluster was unavailable (connection refused or lost, timeouts, 429
  after the helper's retries, 502/503/504, 401/403): handed to ``on_unwritten`` (the
  spool) together with everything that was not yet sent, and nothing more is tried in
  this call, so a dead cluster costs one round of retries, not one per batch.

Back-off: the client retries whole requests with jittered exponential back-off (see
``client.py``); ``streaming_bulk`` retries documents rejected with 429 inside a successful
bulk response, starting at ``initial_backoff_s`` and doubling.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from elastic_transport import SerializationError
from elasticsearch import Elasticsearch
from elasticsearch.helpers import streaming_bulk

from pipeline.config import StoreSettings
from pipeline.store.client import (
    UNAVAILABLE_STATUSES,
    describe_error,
    format_es_error,
    is_unavailable,
)

MAX_BACKOFF_S = 30.0


@dataclass(frozen=True, slots=True)
class WriteOp:
    op: Literal["index", "delete"]
    id: str
    doc: dict[str, Any] | None = None


@dataclass
class WriteOutcome:
    ok: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    unwritten: int = 0
    unavailable: str | None = None


Locator = Callable[[list[str]], dict[str, str]]
UnwrittenSink = Callable[[list[WriteOp], str], None]


def batched(ops: Iterable[WriteOp], size: int) -> Iterator[list[WriteOp]]:
    iterator = iter(ops)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def last_write_wins(batch: list[WriteOp]) -> list[WriteOp]:
    """One op per id inside a batch (the last one), in the order of those last ops.

    Two ops for one id in one bulk request would race inside Elasticsearch; keeping the
    last is what sequential writes would have produced.
    """
    if len({op.id for op in batch}) == len(batch):
        return batch
    last: dict[str, WriteOp] = {}
    for op in batch:
        last.pop(op.id, None)
        last[op.id] = op
    return list(last.values())


class BulkWriter:
    """Writes ops for one alias in batches of ``bulk_size`` documents."""

    def __init__(self, client: Elasticsearch, settings: StoreSettings):
        self.client = client
        self.settings = settings

    def write(
        self,
        alias: str,
        ops: Iterable[WriteOp],
        *,
        locate: Locator,
        on_unwritten: UnwrittenSink,
        unavailable: str | None = None,
    ) -> WriteOutcome:
        """Write all ops; with ``unavailable`` set, everything goes to ``on_unwritten``."""
        outcome = WriteOutcome(unavailable=unavailable)
        for batch in batched(ops, self.settings.bulk_size):
            if outcome.unavailable is not None:
                on_unwritten(batch, outcome.unavailable)
                outcome.unwritten += len(batch)
                continue
            self._write_batch(alias, last_write_wins(batch), locate, on_unwritten, outcome)
        return outcome

    def _write_batch(
        self,
        alias: str,
        batch: list[WriteOp],
        locate: Locator,
        on_unwritten: UnwrittenSink,
        outcome: WriteOutcome,
    ) -> None:
        try:
            located = locate([op.id for op in batch])
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            outcome.unavailable = describe_error(exc)
            on_unwritten(batch, outcome.unavailable)
            outcome.unwritten += len(batch)
            return
        pending: dict[str, WriteOp] = {}
        actions: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
        for op in batch:
            index = located.get(op.id)
            if op.op == "delete":
                if index is None:
                    outcome.ok += 1  # already absent: the delete is done
                    continue
                actions.append(({"delete": {"_index": index, "_id": op.id}}, None))
            elif index is None:
                header = {"_index": alias, "_id": op.id, "require_alias": True}
                actions.append(({"index": header}, op.doc))
            else:
                actions.append(({"index": {"_index": index, "_id": op.id}}, op.doc))
            pending[op.id] = op
        if actions:
            self._send(actions, pending, on_unwritten, outcome)

    def _send(
        self,
        actions: list[tuple[dict[str, Any], dict[str, Any] | None]],
        pending: dict[str, WriteOp],
        on_unwritten: UnwrittenSink,
        outcome: WriteOutcome,
    ) -> None:
        unwritten: list[WriteOp] = []
        reason: str | None = None
        try:
            for ok, item in streaming_bulk(
                self.client,
                cast(Any, actions),
                chunk_size=len(actions),
                max_chunk_bytes=self.settings.bulk_max_bytes,
                expand_action_callback=_pre_expanded,
                raise_on_error=False,
                raise_on_exception=False,
                max_retries=self.settings.max_retries,
                initial_backoff=self.settings.initial_backoff_s,
                max_backoff=MAX_BACKOFF_S,
                yield_ok=True,
            ):
                op_type, info = next(iter(item.items()))
                op = pending.pop(str(info.get("_id")), None)
                if op is None:
                    continue
                status = int(info.get("status") or 0)
                if ok or (op_type == "delete" and status == 404):
                    outcome.ok += 1
                elif status in UNAVAILABLE_STATUSES or _unavailable_exception(info):
                    unwritten.append(op)
                    reason = reason or _item_reason(status, info)
                else:
                    outcome.failed.append((op.id, _item_reason(status, info)))
        except SerializationError:
            # One document that cannot be JSON-encoded must not sink its whole batch.
            retry = self._drop_unserializable(actions, pending, outcome)
            if len(retry) == len(actions):
                raise
            if retry:
                self._send(retry, pending, on_unwritten, outcome)
            return
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            reason = describe_error(exc)
        if pending:  # sent but never answered: the connection went away mid-request
            unwritten.extend(pending.values())
        if unwritten:
            outcome.unavailable = reason or "no answer from the cluster"
            on_unwritten(unwritten, outcome.unavailable)
            outcome.unwritten += len(unwritten)

    def _drop_unserializable(
        self,
        actions: list[tuple[dict[str, Any], dict[str, Any] | None]],
        pending: dict[str, WriteOp],
        outcome: WriteOutcome,
    ) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
        """Report the documents that cannot be encoded; the still-pending rest, to resend."""
        serializer = self.client.transport.serializers.get_serializer("application/json")
        keep: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
        for header, body in actions:
            doc_id = str(next(iter(header.values()))["_id"])
            if doc_id not in pending:
                continue
            try:
                if body is not None:
                    serializer.dumps(body)
            except SerializationError as bad:
                pending.pop(doc_id)
                outcome.failed.append((doc_id, f"not serialisable as JSON: {bad}"))
                continue
            keep.append((header, body))
        return keep


def _pre_expanded(action: Any) -> Any:
    """The actions are already (header, body) pairs; skip the helper's copying."""
    return action


def _unavailable_exception(info: dict[str, Any]) -> bool:
    exc = info.get("exception")
    return isinstance(exc, BaseException) and is_unavailable(exc)


def _item_reason(status: int, info: dict[str, Any]) -> str:
    error = info.get("error")
    if error is None and "exception" in info:
        return describe_error(info["exception"])
    return f"HTTP {status}: {format_es_error(error)}"
