"""Index templates, aliases, numbered backing indices, rollover and lifecycle policies.

Every kind of document (articles, stances, alerts, feeds) lives behind one alias,
``<prefix>-<kind>``, that points at numbered backing indices ``<prefix>-<kind>-000001``,
``-000002`` … The newest is the write index; all of them are read through the alias. The
mappings are JSON files in ``mappings/`` (one composable index template per kind, matching
``<prefix>-<kind>-*``), so every backing index, including those made by rollover, gets them.

Optional features are detected, never assumed, because the test node is the stripped
integration-test distribution while production runs the full one:

- **ILM**: ``GET _ilm/status`` answers → the policy in ``lifecycle/rollover.json`` is
  installed and named in the templates (``index.lifecycle.name`` / ``rollover_alias``), and
  ILM rolls indices over. No handler → :meth:`IndexManager.rollover_if_due` does it with the
  same thresholds (the runner's maintenance step calls it).
- **English analyzer** (module analysis-common): when present, ``<field>.english``
  sub-fields are added to the fields listed in each mapping file's ``_meta``; search
  queries name them always (a missing field in ``multi_match`` is simply ignored).

``setup()`` is idempotent: a template whose content hash is unchanged is left alone; a changed
one is replaced in place and its mappings and dynamic settings are applied to the existing
backing indices (new fields are additive; an incompatible change is reported, not forced).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal, cast, get_args

from elastic_transport import ApiError
from elasticsearch import Elasticsearch, NotFoundError

from pipeline.config import StoreSettings
from pipeline.store.client import StoreUnavailable, describe_error

IndexKind = Literal["articles", "stances", "alerts", "feeds"]
KINDS: tuple[IndexKind, ...] = cast(tuple[IndexKind, ...], get_args(IndexKind))

MAPPINGS_DIR = Path(__file__).resolve().parent / "mappings"
LIFECYCLE_DIR = Path(__file__).resolve().parent / "lifecycle"

#: Above the built-in templates (priority 100-ish), so ours win for our own patterns.
TEMPLATE_PRIORITY = 500
#: ``_meta.managed_by`` on everything we create, so an operator can tell whose it is.
MANAGED_BY = "stancewatch"

# Status codes with which a cluster says "I have no such API" (400 "no handler found for uri"
# on the integration-test distribution; 404/405/410/501 on proxies and other builds).
_NO_SUCH_API = (400, 404, 405, 410, 501)


class StoreSetupError(Exception):
    """Setup cannot continue (e.g. a concrete index sits where an alias must be)."""


@dataclass(frozen=True)
class ClusterFeatures:
    """What the connected cluster can do, detected at setup."""

    ilm: bool
    english_analyzer: bool
    ilm_note: str = ""


@dataclass(frozen=True)
class BackingIndex:
    name: str
    is_write_index: bool


def alias_name(prefix: str, kind: IndexKind) -> str:
    return f"{prefix}-{kind}"


def template_name(prefix: str, kind: IndexKind) -> str:
    # Starts with the prefix so that `<prefix>-*` finds (and tests clean up) every template.
    return f"{prefix}-{kind}"


def first_index_name(prefix: str, kind: IndexKind) -> str:
    return f"{prefix}-{kind}-000001"


def policy_name(prefix: str) -> str:
    return f"{prefix}-rollover"


@cache
def _template_file(kind: IndexKind) -> dict[str, Any]:
    with (MAPPINGS_DIR / f"{kind}.json").open(encoding="utf-8") as stream:
        return cast(dict[str, Any], json.load(stream))


def template_version(kind: IndexKind) -> int:
    return int(_template_file(kind)["version"])


def mapping_for(kind: IndexKind, *, english: bool = False) -> dict[str, Any]:
    """The ``mappings`` block for a kind, with ``.english`` sub-fields when asked for."""
    source = _template_file(kind)
    mappings = copy.deepcopy(source["template"]["mappings"])
    if english:
        for field in source["_meta"].get("english_subfields", []):
            spec = mappings["properties"][field]
            spec.setdefault("fields", {})["english"] = {"type": "text", "analyzer": "english"}
    mappings["_meta"] = {
        "managed_by": MANAGED_BY,
        "kind": kind,
        "template_version": source["version"],
    }
    return mappings


def build_template(
    kind: IndexKind, prefix: str, settings: StoreSettings, features: ClusterFeatures
) -> dict[str, Any]:
    """The composable index template body for one kind, ready for PUT _index_template."""
    source = _template_file(kind)
    index_settings = copy.deepcopy(source["template"].get("settings", {}).get("index", {}))
    index_settings["number_of_shards"] = settings.number_of_shards
    # 0 replicas on one node (green), 1 as soon as a second node joins.
    index_settings["auto_expand_replicas"] = settings.replicas
    if features.ilm:
        index_settings["lifecycle"] = {
            "name": policy_name(prefix),
            "rollover_alias": alias_name(prefix, kind),
        }
    body: dict[str, Any] = {
        "index_patterns": [f"{prefix}-{kind}-*"],
        "priority": TEMPLATE_PRIORITY,
        "version": source["version"],
        "template": {
            "settings": {"index": index_settings},
            "mappings": mapping_for(kind, english=features.english_analyzer),
        },
    }
    body["_meta"] = {
        "managed_by": MANAGED_BY,
        "kind": kind,
        "description": source["_meta"].get("description", ""),
        "content_hash": _content_hash(body),
    }
    return body


def rollover_conditions(settings: StoreSettings) -> dict[str, Any]:
    return {
        "max_docs": settings.rollover_max_docs,
        "max_age": settings.rollover_max_age,
        "max_primary_shard_size": settings.rollover_max_primary_shard_size,
    }


def build_policy(settings: StoreSettings) -> dict[str, Any]:
    """The ILM policy body with the rollover thresholds from the settings."""
    with (LIFECYCLE_DIR / "rollover.json").open(encoding="utf-8") as stream:
        policy = cast(dict[str, Any], json.load(stream))["policy"]
    policy["phases"]["hot"]["actions"]["rollover"] = rollover_conditions(settings)
    policy["_meta"] = {**policy.get("_meta", {}), "content_hash": _content_hash(policy)}
    return policy


def _content_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()[:16]


class IndexManager:
    """Creates and maintains templates, aliases, backing indices and the lifecycle policy."""

    def __init__(self, client: Elasticsearch, prefix: str, settings: StoreSettings, url: str):
        self.client = client
        self.prefix = prefix
        self.settings = settings
        self.url = url
        self._features: ClusterFeatures | None = None

    # ------------------------------------------------------------------ feature detection

    @property
    def features(self) -> ClusterFeatures:
        if self._features is None:
            self._features = self.detect_features()
        return self._features

    def detect_features(self) -> ClusterFeatures:
        """Ask the cluster what it supports (ILM, the english analyzer)."""
        client = self.client.options(max_retries=0)
        ilm, note = False, ""
        try:
            client.ilm.get_status()
            ilm = True
        except ApiError as exc:
            if exc.meta.status in _NO_SUCH_API:
                note = "no ILM on this cluster"
            elif exc.meta.status == 403:
                note = "ILM present but not permitted for this user"
            else:
                raise
        english = True
        try:
            client.indices.analyze(analyzer="english", text="negotiations")
        except ApiError as exc:
            if exc.meta.status != 400:
                raise
            english = False
        return ClusterFeatures(ilm=ilm, english_analyzer=english, ilm_note=note)

    # ----------------------------------------------------------------------------- setup

    def setup(self) -> list[str]:
        """Idempotent: policy, templates, aliases with a first backing index. Says what it did."""
        done: list[str] = []
        features = self.features
        if features.ilm:
            done.append(self._ensure_policy())
        else:
            done.append(
                f"lifecycle policy: skipped ({features.ilm_note}); `stancewatch` maintenance "
                "rolls indices over itself"
            )
        if not features.english_analyzer:
            done.append("english analyzer: not on this cluster; text uses the standard analyzer")
        for kind in KINDS:
            changed, line = self._ensure_template(kind)
            done.append(line)
            done.extend(self._ensure_alias(kind, template_changed=changed))
        return done

    def _ensure_policy(self) -> str:
        name = policy_name(self.prefix)
        desired = build_policy(self.settings)
        try:
            existing = self.client.ilm.get_lifecycle(name=name)
            current = existing[name]["policy"].get("_meta", {}).get("content_hash")
        except NotFoundError:
            current = None
        if current == desired["_meta"]["content_hash"]:
            return f"lifecycle policy {name}: up to date"
        self.client.ilm.put_lifecycle(name=name, policy=desired)
        return f"lifecycle policy {name}: {'created' if current is None else 'updated'}"

    def _ensure_template(self, kind: IndexKind) -> tuple[bool, str]:
        name = template_name(self.prefix, kind)
        desired = build_template(kind, self.prefix, self.settings, self.features)
        try:
            found = self.client.indices.get_index_template(name=name)["index_templates"]
        except NotFoundError:
            found = []
        if found:
            existing = found[0]["index_template"]
            old_hash = existing.get("_meta", {}).get("content_hash")
            if old_hash == desired["_meta"]["content_hash"]:
                return False, f"index template {name}: up to date (v{desired['version']})"
            self.client.indices.put_index_template(name=name, body=desired)
            return True, (
                f"index template {name}: upgraded in place "
                f"(v{existing.get('version', '?')} -> v{desired['version']})"
            )
        self.client.indices.put_index_template(name=name, body=desired)
        return True, f"index template {name}: created (v{desired['version']})"

    def _ensure_alias(self, kind: IndexKind, *, template_changed: bool) -> list[str]:
        alias = alias_name(self.prefix, kind)
        backing = self.backing_indices(kind)
        if backing:
            lines: list[str] = []
            if template_changed:
                lines.extend(self._upgrade_backing(kind, backing))
            write = next((b.name for b in backing if b.is_write_index), None)
            if write is None:
                # An alias with several indices and no write index cannot take writes.
                newest = max(b.name for b in backing)
                self.client.indices.update_aliases(
                    actions=[{"add": {"index": newest, "alias": alias, "is_write_index": True}}]
                )
                lines.append(f"alias {alias}: write index was missing, set to {newest}")
                write = newest
            lines.append(f"alias {alias}: {len(backing)} backing index(es), writes go to {write}")
            return lines
        if self.client.indices.exists(index=alias):
            raise StoreSetupError(
                f"{alias} exists as a plain index, not an alias (probably created by a write "
                f"before `stancewatch setup`); move its documents and delete it, then run setup"
            )
        first = first_index_name(self.prefix, kind)
        try:
            self.client.indices.create(
                index=first, aliases={alias: {"is_write_index": True}}, wait_for_active_shards="1"
            )
        except ApiError as exc:
            if "resource_already_exists_exception" not in str(exc):
                raise
            return [f"alias {alias}: {first} was created concurrently"]
        return [f"alias {alias}: created {first} as its write index"]

    def _upgrade_backing(self, kind: IndexKind, backing: list[BackingIndex]) -> list[str]:
        """Apply a changed template to existing backing indices: mappings, dynamic settings."""
        alias = alias_name(self.prefix, kind)
        names = ",".join(b.name for b in backing)
        lines: list[str] = []
        mappings = mapping_for(kind, english=self.features.english_analyzer)
        try:
            self.client.indices.put_mapping(index=names, body=mappings)
            lines.append(f"alias {alias}: mappings updated in place on {len(backing)} index(es)")
        except ApiError as exc:
            lines.append(
                f"alias {alias}: mappings NOT updated in place ({describe_error(exc)}); "
                "indices created by the next rollover get the new template"
            )
        dynamic: dict[str, Any] = {"index": {"auto_expand_replicas": self.settings.replicas}}
        if self.features.ilm:
            dynamic["index"]["lifecycle"] = {
                "name": policy_name(self.prefix),
                "rollover_alias": alias,
            }
        self.client.indices.put_settings(index=names, settings=dynamic)
        return lines

    # --------------------------------------------------------------------- introspection

    def backing_indices(self, kind: IndexKind) -> list[BackingIndex]:
        """The alias's indices, oldest first; empty when the alias does not exist yet."""
        alias = alias_name(self.prefix, kind)
        try:
            found = self.client.indices.get_alias(name=alias)
        except NotFoundError:
            return []
        out = [
            BackingIndex(
                name=index,
                is_write_index=bool(info["aliases"][alias].get("is_write_index", len(found) == 1)),
            )
            for index, info in found.items()
        ]
        return sorted(out, key=lambda b: b.name)

    def index_stats(self) -> list[dict[str, Any]]:
        """Doc counts and sizes per backing index, for ``stancewatch indices``."""
        rows: list[dict[str, Any]] = []
        for kind in KINDS:
            backing = self.backing_indices(kind)
            if not backing:
                rows.append({"kind": kind, "alias": alias_name(self.prefix, kind), "index": None})
                continue
            cat = self.client.cat.indices(
                index=",".join(b.name for b in backing), format="json", bytes="b"
            )
            by_name = {row["index"]: row for row in cast(list[dict[str, Any]], cat.body)}
            for b in backing:
                row = by_name.get(b.name, {})
                rows.append(
                    {
                        "kind": kind,
                        "alias": alias_name(self.prefix, kind),
                        "index": b.name,
                        "write": b.is_write_index,
                        "docs": int(row.get("docs.count") or 0),
                        "bytes": int(row.get("store.size") or 0),
                        "health": row.get("health"),
                    }
                )
        return rows

    # -------------------------------------------------------------------------- rollover

    def rollover(self, kind: IndexKind, conditions: dict[str, Any] | None = None) -> bool:
        """Roll the alias over (unconditionally without conditions); True when it did."""
        alias = alias_name(self.prefix, kind)
        kwargs: dict[str, Any] = {"alias": alias}
        if conditions:
            kwargs["conditions"] = conditions
        try:
            result = self.client.indices.rollover(**kwargs)
        except NotFoundError:
            raise StoreUnavailable(
                self.url, f"alias {alias} does not exist; run `stancewatch setup`"
            ) from None
        return bool(result.get("rolled_over"))

    def rollover_if_due(self) -> dict[str, bool]:
        """Roll over every alias whose write index passed a threshold (when ILM is absent).

        With ILM the policy does this on its own schedule and nothing is done here.
        """
        if self.features.ilm:
            return dict.fromkeys(KINDS, False)
        conditions = {**rollover_conditions(self.settings), "min_docs": 1}
        return {kind: self.rollover(kind, conditions) for kind in KINDS}
