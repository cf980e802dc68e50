"""Elasticsearch store: templates and aliases, rollover-safe bulk writes, spool, reads.

See docs/architecture.md for the interface and docs/decisions.md ("Store") for the choices.
"""

from pipeline.store.client import StoreUnavailable
from pipeline.store.indices import KINDS, IndexKind, StoreSetupError
from pipeline.store.store import Store, WriteReport

__all__ = ["KINDS", "IndexKind", "Store", "StoreSetupError", "StoreUnavailable", "WriteReport"]
