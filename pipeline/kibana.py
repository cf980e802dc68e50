"""Kibana saved objects: build, validate and import the "Stancewatch overview" dashboard.

The objects are generated here (so ids, references and field names come from one place) and
committed as ``kibana/stancewatch.ndjson``, the file that ``stancewatch kibana import`` and
the docker-compose setup service send to Kibana. A test keeps the file equal to what
:func:`build_saved_objects` produces.

Kibana cannot run on our development machines, so :func:`validate_saved_objects` checks what
Kibana's importer and the dashboards would trip over: the import format of Kibana 9 (one
object per line with ``type``, ``id``, ``attributes``, ``references``, migration versions
Kibana 9 knows), that every reference resolves to an object in the file, and that every
field a data view, Lens layer, map layer or saved search uses exists in our index mappings
with a type that fits the use (terms on keywords, histograms on dates, averages on numbers,
maps on geo_point).

Import: ``POST /api/saved_objects/_import?overwrite=true`` with the header ``kbn-xsrf:
true`` and the NDJSON as multipart field ``file``. Data views point at the write/read
aliases (``<prefix>-articles`` …); importing for another index prefix rewrites their titles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from pipeline.config import PROJECT_DIR
from pipeline.store.indices import KINDS, IndexKind, mapping_for

DEFAULT_NDJSON = PROJECT_DIR / "kibana" / "stancewatch.ndjson"
DEFAULT_PREFIX = "stancewatch"
DASHBOARD_ID = "stancewatch-overview"
#: Kibana's importer stamps these; fixed values keep the committed file reproducible.
STAMP = "2025-01-01T00:00:00.000Z"

#: Migration versions per type, as exported by Kibana 8.17+/9.x. Kibana refuses objects with
#: a version newer than its own, and runs the migrations after the given one on import.
TYPE_MIGRATION_VERSIONS = {
    "index-pattern": "8.0.0",
    "lens": "8.9.0",
    "search": "10.5.0",
    "map": "8.4.0",
    "dashboard": "10.2.0",
}
CORE_MIGRATION_VERSION = "8.8.0"
REQUIRED_KEYS = ("type", "id", "attributes", "references")

#: The time field of each data view (every document carries ``@timestamp``: publication
#: time for articles and stances, window end for alerts, last attempt for feeds).
TIME_FIELDS: dict[IndexKind, str] = {
    "articles": "@timestamp",
    "stances": "@timestamp",
    "alerts": "@timestamp",
    "feeds": "@timestamp",
}
DATA_VIEW_NAMES: dict[IndexKind, str] = {
    "articles": "Stancewatch articles",
    "stances": "Stancewatch stance mentions",
    "alerts": "Stancewatch alerts",
    "feeds": "Stancewatch feeds",
}

AGGREGATABLE = {
    "keyword",
    "boolean",
    "date",
    "long",
    "integer",
    "short",
    "byte",
    "float",
    "double",
    "half_float",
    "scaled_float",
    "ip",
}
NUMERIC = {"long", "integer", "short", "byte", "float", "double", "half_float", "scaled_float"}


class KibanaObjectsError(Exception):
    """The NDJSON cannot be read (a line is not JSON, or not an object)."""


class KibanaImportError(Exception):
    """Kibana did not accept the import; the message lists what it said."""


def data_view_id(kind: IndexKind) -> str:
    return f"stancewatch-{kind}"


# ----------------------------------------------------------------------------- building


def _saved_object(
    type_: str, id_: str, attributes: dict[str, Any], references: list[dict[str, str]]
) -> dict[str, Any]:
    return {
        "attributes": attributes,
        "coreMigrationVersion": CORE_MIGRATION_VERSION,
        "created_at": STAMP,
        "id": id_,
        "managed": False,
        "references": references,
        "type": type_,
        "typeMigrationVersion": TYPE_MIGRATION_VERSIONS[type_],
        "updated_at": STAMP,
    }


def _data_view(kind: IndexKind, prefix: str) -> dict[str, Any]:
    return _saved_object(
        "index-pattern",
        data_view_id(kind),
        {
            "allowHidden": False,
            "fieldAttrs": "{}",
            "fieldFormatMap": "{}",
            "fields": "[]",
            "name": DATA_VIEW_NAMES[kind],
            "runtimeFieldMap": "{}",
            "sourceFilters": json.dumps([{"value": "embedding"}]) if kind == "articles" else "[]",
            "timeFieldName": TIME_FIELDS[kind],
            "title": f"{prefix}-{kind}",
        },
        [],
    )


def _count(label: str) -> dict[str, Any]:
    return {
        "label": label,
        "customLabel": True,
        "dataType": "number",
        "operationType": "count",
        "sourceField": "___records___",
        "isBucketed": False,
        "scale": "ratio",
        "params": {"emptyAsNull": True},
    }


def _date_histogram() -> dict[str, Any]:
    return {
        "label": "@timestamp",
        "dataType": "date",
        "operationType": "date_histogram",
        "sourceField": "@timestamp",
        "isBucketed": True,
        "scale": "interval",
        "params": {"interval": "auto", "includeEmptyRows": True, "dropPartials": False},
    }


def _terms(field: str, label: str, size: int, order_by: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {
        "size": size,
        "orderBy": order_by,
        "orderDirection": "desc",
        "otherBucket": False,
        "missingBucket": False,
        "parentFormat": {"id": "terms"},
    }
    if order_by.get("type") == "custom":
        params["orderAgg"] = {
            "label": "Count of records",
            "dataType": "number",
            "operationType": "count",
            "sourceField": "___records___",
            "isBucketed": False,
            "scale": "ratio",
        }
    return {
        "label": label,
        "customLabel": True,
        "dataType": "string",
        "operationType": "terms",
        "sourceField": field,
        "isBucketed": True,
        "scale": "ordinal",
        "params": params,
    }


def _lens_xy(
    id_: str,
    title: str,
    description: str,
    kind: IndexKind,
    columns: dict[str, dict[str, Any]],
    column_order: list[str],
    layer: dict[str, Any],
    query: str = "",
) -> dict[str, Any]:
    layer_id = f"{id_}-layer"
    return _saved_object(
        "lens",
        id_,
        {
            "title": title,
            "description": description,
            "visualizationType": "lnsXY",
            "state": {
                "adHocDataViews": {},
                "datasourceStates": {
                    "formBased": {
                        "layers": {
                            layer_id: {
                                "columns": columns,
                                "columnOrder": column_order,
                                "incompleteColumns": {},
                                "sampling": 1,
                            }
                        }
                    }
                },
                "filters": [],
                "internalReferences": [],
                "query": {"language": "kuery", "query": query},
                "visualization": {
                    "legend": {"isVisible": True, "position": "right"},
                    "valueLabels": "hide",
                    "fittingFunction": "None",
                    "preferredSeriesType": layer["seriesType"],
                    "layers": [{"layerId": layer_id, "layerType": "data", **layer}],
                },
            },
        },
        [
            {
                "type": "index-pattern",
                "id": data_view_id(kind),
                "name": f"indexpattern-datasource-layer-{layer_id}",
            }
        ],
    )


def _saved_search(
    id_: str, title: str, description: str, kind: IndexKind, columns: list[str], sort: list[Any]
) -> dict[str, Any]:
    search_source = {
        "query": {"query": "", "language": "kuery"},
        "filter": [],
        "indexRefName": "kibanaSavedObjectMeta.searchSourceJSON.index",
    }
    return _saved_object(
        "search",
        id_,
        {
            "title": title,
            "description": description,
            "columns": columns,
            "sort": sort,
            "grid": {},
            "hideChart": True,
            "isTextBasedQuery": False,
            "timeRestore": False,
            "kibanaSavedObjectMeta": {"searchSourceJSON": json.dumps(search_source)},
        },
        [
            {
                "type": "index-pattern",
                "id": data_view_id(kind),
                "name": "kibanaSavedObjectMeta.searchSourceJSON.index",
            }
        ],
    )


def _territory_map() -> dict[str, Any]:
    layers = [
        {
            "id": "basemap",
            "label": None,
            "type": "EMS_VECTOR_TILE",
            "sourceDescriptor": {"type": "EMS_TMS", "isAutoSelect": True},
            "style": {"type": "TILE"},
            "alpha": 1,
            "visible": True,
            "minZoom": 0,
            "maxZoom": 24,
            "includeInFitToBounds": True,
            "locale": "autoselect",
        },
        {
            "id": "territories",
            "label": "Territories in relevant articles",
            "type": "GEOJSON_VECTOR",
            "sourceDescriptor": {
                "id": "territories-source",
                "type": "ES_GEO_GRID",
                "geoField": "territory_locations",
                "requestType": "point",
                "resolution": "COARSE",
                "metrics": [{"type": "count"}],
                "applyGlobalQuery": True,
                "applyGlobalTime": True,
                "applyForceRefresh": True,
                "indexPatternRefName": "layer_1_source_index_pattern",
            },
            "style": {
                "type": "VECTOR",
                "isTimeAware": True,
                "properties": {
                    "fillColor": {
                        "type": "DYNAMIC",
                        "options": {
                            "color": "Yellow to Red",
                            "field": {"name": "doc_count", "origin": "source"},
                            "fieldMetaOptions": {"isEnabled": True, "sigma": 3},
                            "type": "ORDINAL",
                        },
                    },
                    "iconSize": {
                        "type": "DYNAMIC",
                        "options": {
                            "minSize": 6,
                            "maxSize": 32,
                            "field": {"name": "doc_count", "origin": "source"},
                            "fieldMetaOptions": {"isEnabled": True, "sigma": 3},
                        },
                    },
                    "labelText": {
                        "type": "DYNAMIC",
                        "options": {"field": {"name": "doc_count", "origin": "source"}},
                    },
                },
            },
            "query": {"language": "kuery", "query": "relevant : true"},
            "alpha": 0.75,
            "visible": True,
            "minZoom": 0,
            "maxZoom": 24,
            "includeInFitToBounds": True,
            "joins": [],
        },
    ]
    map_state = {
        "zoom": 3.2,
        "center": {"lon": 33.0, "lat": 47.0},
        "timeFilters": {"from": "now-30d", "to": "now"},
        "refreshConfig": {"isPaused": True, "interval": 0},
        "query": {"query": "", "language": "kuery"},
        "filters": [],
        "settings": {"autoFitToDataBounds": False, "initialLocation": "LAST_SAVED_LOCATION"},
    }
    return _saved_object(
        "map",
        "stancewatch-territories-map",
        {
            "title": "Territories mentioned in relevant articles",
            "description": "Clusters of territories named by articles about concessions or talks",
            "layerListJSON": json.dumps(layers),
            "mapStateJSON": json.dumps(map_state),
            "uiStateJSON": json.dumps({"isLayerTOCOpen": True, "openTOCDetails": []}),
        },
        [
            {
                "type": "index-pattern",
                "id": data_view_id("articles"),
                "name": "layer_1_source_index_pattern",
            }
        ],
    )


def _dashboard(panels: list[tuple[str, str, dict[str, int]]]) -> dict[str, Any]:
    panels_json = []
    references = []
    for index, (type_, id_, grid) in enumerate(panels, start=1):
        panel_index = f"p{index}"
        panels_json.append(
            {
                "type": type_,
                "panelIndex": panel_index,
                "gridData": {**grid, "i": panel_index},
                "embeddableConfig": {"enhancements": {}},
                "panelRefName": f"panel_{panel_index}",
            }
        )
        references.append({"type": type_, "id": id_, "name": f"{panel_index}:panel_{panel_index}"})
    return _saved_object(
        "dashboard",
        DASHBOARD_ID,
        {
            "title": "Stancewatch overview",
            "description": "Relevant coverage per topic, who stands where and how it shifts, "
            "territories, alerts and feed health.",
            "panelsJSON": json.dumps(panels_json),
            "optionsJSON": json.dumps(
                {
                    "useMargins": True,
                    "syncColors": True,
                    "syncCursor": True,
                    "hidePanelTitles": False,
                }
            ),
            "timeRestore": True,
            "timeFrom": "now-30d",
            "timeTo": "now",
            "refreshInterval": {"pause": False, "value": 300000},
            "version": 1,
            "kibanaSavedObjectMeta": {
                "searchSourceJSON": json.dumps(
                    {"query": {"query": "", "language": "kuery"}, "filter": []}
                )
            },
        },
        references,
    )


def build_saved_objects(prefix: str = DEFAULT_PREFIX) -> list[dict[str, Any]]:
    """Every saved object of the dashboard, data views first (Kibana imports in order)."""
    objects = [_data_view(kind, prefix) for kind in KINDS]
    volume = _lens_xy(
        "stancewatch-topic-volume",
        "Relevant articles per topic over time",
        "Articles labelled relevant, split by topic",
        "articles",
        {
            "topic": _terms("topic_labels", "Topic", 5, {"type": "column", "columnId": "count"}),
            "date": _date_histogram(),
            "count": _count("Articles"),
        },
        ["topic", "date", "count"],
        {
            "seriesType": "bar_stacked",
            "xAccessor": "date",
            "splitAccessor": "topic",
            "accessors": ["count"],
        },
        query="relevant : true",
    )
    stance_over_time = _lens_xy(
        "stancewatch-stance-over-time",
        "Stance over time per actor",
        "Average stance of the most-mentioned actors: +1 support, 0 neutral, -1 oppose",
        "stances",
        {
            "actor": _terms("actor", "Actor", 8, {"type": "custom"}),
            "date": _date_histogram(),
            "stance": {
                "label": "Average stance (+1 support, -1 oppose)",
                "customLabel": True,
                "dataType": "number",
                "operationType": "average",
                "sourceField": "stance_value",
                "isBucketed": False,
                "scale": "ratio",
                "params": {"emptyAsNull": True},
            },
        },
        ["actor", "date", "stance"],
        {
            "seriesType": "line",
            "xAccessor": "date",
            "splitAccessor": "actor",
            "accessors": ["stance"],
        },
    )
    top_actors = _lens_xy(
        "stancewatch-top-actors",
        "Top actors by mentions",
        "Stance mentions per actor, split by stance",
        "stances",
        {
            "actor": _terms("actor", "Actor", 15, {"type": "column", "columnId": "count"}),
            "stance": _terms("stance", "Stance", 3, {"type": "column", "columnId": "count"}),
            "count": _count("Mentions"),
        },
        ["actor", "stance", "count"],
        {
            "seriesType": "bar_horizontal_stacked",
            "xAccessor": "actor",
            "splitAccessor": "stance",
            "accessors": ["count"],
        },
    )
    alerts = _saved_search(
        "stancewatch-latest-alerts",
        "Latest alerts",
        "Stance shifts and coverage spikes, newest first, with delivery status",
        "alerts",
        ["kind", "actor", "topic", "from_stance", "to_stance", "status", "subject"],
        [["@timestamp", "desc"]],
    )
    feeds = _saved_search(
        "stancewatch-feed-health",
        "Feed health",
        "Per feed: healthy, consecutive failures, last status and error",
        "feeds",
        [
            "feed_id",
            "healthy",
            "consecutive_failures",
            "last_status",
            "failure_kind",
            "last_success",
            "items_last_run",
            "last_error",
        ],
        [["consecutive_failures", "desc"], ["@timestamp", "desc"]],
    )
    territory_map = _territory_map()
    objects += [volume, stance_over_time, top_actors, territory_map, alerts, feeds]
    objects.append(
        _dashboard(
            [
                ("lens", volume["id"], {"x": 0, "y": 0, "w": 24, "h": 15}),
                ("lens", stance_over_time["id"], {"x": 24, "y": 0, "w": 24, "h": 15}),
                ("lens", top_actors["id"], {"x": 0, "y": 15, "w": 18, "h": 18}),
                ("map", territory_map["id"], {"x": 18, "y": 15, "w": 30, "h": 18}),
                ("search", alerts["id"], {"x": 0, "y": 33, "w": 48, "h": 14}),
                ("search", feeds["id"], {"x": 0, "y": 47, "w": 48, "h": 14}),
            ]
        )
    )
    return objects


def render_ndjson(objects: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(o, sort_keys=True, ensure_ascii=False) + "\n" for o in objects)


def load_ndjson(source: Path | str) -> list[dict[str, Any]]:
    """Parse NDJSON text or a file; a bad line raises KibanaObjectsError with its number."""
    text = source.read_text(encoding="utf-8") if isinstance(source, Path) else source
    objects: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise KibanaObjectsError(f"line {number}: not JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise KibanaObjectsError(f"line {number}: expected a JSON object")
        objects.append(obj)
    return objects


def with_prefix(objects: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """A copy whose data views point at ``<prefix>-<kind>`` instead of the default prefix."""
    out = json.loads(json.dumps(objects))
    for obj in out:
        if obj.get("type") == "index-pattern":
            title = obj["attributes"]["title"]
            if title.startswith(f"{DEFAULT_PREFIX}-"):
                obj["attributes"]["title"] = prefix + title[len(DEFAULT_PREFIX) :]
    return list(out)


# --------------------------------------------------------------------------- validating


def field_catalog(kind: IndexKind) -> dict[str, str]:
    """Every field path of a kind's mapping (multi-fields included) -> its type."""
    catalog: dict[str, str] = {}

    def walk(properties: dict[str, Any], path: str) -> None:
        for name, spec in properties.items():
            full = f"{path}{name}"
            if "properties" in spec:
                catalog[full] = "object"
                walk(spec["properties"], f"{full}.")
                continue
            catalog[full] = spec.get("type", "object")
            for sub, sub_spec in spec.get("fields", {}).items():
                catalog[f"{full}.{sub}"] = sub_spec.get("type", "keyword")

    walk(mapping_for(kind)["properties"], "")
    return catalog


@dataclass
class FieldUse:
    object_id: str
    field: str
    purpose: str  # "terms", "date_histogram", "average", "geo", "column", "time", "sort"


def _lens_field_uses(obj: dict[str, Any]) -> list[FieldUse]:
    uses: list[FieldUse] = []
    layers = obj["attributes"]["state"]["datasourceStates"]["formBased"]["layers"]
    for layer in layers.values():
        for column in layer["columns"].values():
            field = column.get("sourceField")
            if field and field != "___records___":
                uses.append(FieldUse(obj["id"], field, column["operationType"]))
            order_agg = column.get("params", {}).get("orderAgg")
            if order_agg and order_agg.get("sourceField") not in (None, "___records___"):
                uses.append(
                    FieldUse(obj["id"], order_agg["sourceField"], order_agg["operationType"])
                )
    return uses


def _check_use(use: FieldUse, catalog: dict[str, str]) -> str | None:
    kind = catalog.get(use.field)
    if kind is None:
        return f"{use.object_id}: field '{use.field}' ({use.purpose}) is not in the mapping"
    wanted = {
        "terms": AGGREGATABLE,
        "unique_count": AGGREGATABLE,
        "date_histogram": {"date"},
        "time": {"date"},
        "average": NUMERIC,
        "sum": NUMERIC,
        "median": NUMERIC,
        "max": NUMERIC | {"date"},
        "min": NUMERIC | {"date"},
        "geo": {"geo_point"},
        "sort": AGGREGATABLE,
        "count": AGGREGATABLE,
    }.get(use.purpose)
    if wanted is not None and kind not in wanted:
        return (
            f"{use.object_id}: field '{use.field}' is {kind}, which cannot be used for "
            f"{use.purpose}"
        )
    return None


def validate_saved_objects(
    objects: list[dict[str, Any]], prefix: str = DEFAULT_PREFIX
) -> list[str]:
    """Problems that would break the import or the dashboard; an empty list means fine."""
    problems: list[str] = []
    by_key: dict[tuple[str, str], dict[str, Any]] = {}
    for number, obj in enumerate(objects, start=1):
        missing = [k for k in REQUIRED_KEYS if k not in obj]
        if missing:
            problems.append(f"object {number}: missing {', '.join(missing)}")
            continue
        type_ = obj["type"]
        if type_ not in TYPE_MIGRATION_VERSIONS:
            problems.append(f"{obj['id']}: type '{type_}' is not one we import")
        elif obj.get("typeMigrationVersion") != TYPE_MIGRATION_VERSIONS[type_]:
            problems.append(
                f"{obj['id']}: typeMigrationVersion {obj.get('typeMigrationVersion')!r} "
                f"(expected {TYPE_MIGRATION_VERSIONS[type_]})"
            )
        if obj.get("coreMigrationVersion") != CORE_MIGRATION_VERSION:
            problems.append(f"{obj['id']}: coreMigrationVersion must be {CORE_MIGRATION_VERSION}")
        if not isinstance(obj["attributes"], dict) or not obj["attributes"].get("title"):
            problems.append(f"{obj['id']}: attributes.title is missing")
        if (type_, obj["id"]) in by_key:
            problems.append(f"{type_} {obj['id']}: duplicate id")
        by_key[(type_, obj["id"])] = obj

    data_view_kinds: dict[str, IndexKind] = {}
    for (type_, id_), obj in by_key.items():
        if type_ != "index-pattern":
            continue
        title = obj["attributes"].get("title", "")
        kind = next((k for k in KINDS if title == f"{prefix}-{k}"), None)
        if kind is None:
            problems.append(f"{id_}: data view title '{title}' is not one of our aliases")
            continue
        data_view_kinds[id_] = kind
        time_field = obj["attributes"].get("timeFieldName")
        problem = _check_use(FieldUse(id_, time_field or "", "time"), field_catalog(kind))
        if problem:
            problems.append(problem)

    for (type_, id_), obj in by_key.items():
        problems.extend(_check_references(obj, by_key))
        refs = {r["name"]: r for r in obj["references"] if isinstance(r, dict) and "name" in r}
        try:
            problems.extend(_check_fields(obj, refs, data_view_kinds))
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"{type_} {id_}: malformed attributes ({type(exc).__name__}: {exc})")
    return problems


def _check_references(
    obj: dict[str, Any], by_key: dict[tuple[str, str], dict[str, Any]]
) -> list[str]:
    problems = []
    for ref in obj["references"]:
        if not isinstance(ref, dict) or not {"type", "id", "name"} <= ref.keys():
            problems.append(f"{obj['id']}: reference {ref!r} needs type, id and name")
        elif (ref["type"], ref["id"]) not in by_key:
            problems.append(
                f"{obj['id']}: reference '{ref['name']}' -> {ref['type']} {ref['id']} "
                "is not in the file"
            )
    return problems


def _check_fields(
    obj: dict[str, Any], refs: dict[str, dict[str, str]], data_views: dict[str, IndexKind]
) -> list[str]:
    """Fields used by one object, checked against the mapping of the data view it uses."""
    type_, attrs = obj["type"], obj["attributes"]
    problems: list[str] = []

    def catalog_for(ref_name: str) -> dict[str, str] | None:
        ref = refs.get(ref_name)
        if ref is None:
            problems.append(f"{obj['id']}: no reference named '{ref_name}'")
            return None
        kind = data_views.get(ref["id"])
        return field_catalog(kind) if kind else None

    if type_ == "lens":
        layers = attrs["state"]["datasourceStates"]["formBased"]["layers"]
        for layer_id in layers:
            catalog = catalog_for(f"indexpattern-datasource-layer-{layer_id}")
            if catalog is None:
                continue
            for use in _lens_field_uses(obj):
                if problem := _check_use(use, catalog):
                    problems.append(problem)
        visualization = attrs["state"]["visualization"]
        known = {c for layer in layers.values() for c in layer["columns"]}
        for vis_layer in visualization.get("layers", []):
            for key in ("xAccessor", "splitAccessor"):
                if vis_layer.get(key) and vis_layer[key] not in known:
                    problems.append(f"{obj['id']}: {key} '{vis_layer[key]}' is not a column")
            for accessor in vis_layer.get("accessors", []):
                if accessor not in known:
                    problems.append(f"{obj['id']}: accessor '{accessor}' is not a column")
    elif type_ == "search":
        source = json.loads(attrs["kibanaSavedObjectMeta"]["searchSourceJSON"])
        catalog = catalog_for(source.get("indexRefName", ""))
        if catalog is not None:
            for column in attrs.get("columns", []):
                if problem := _check_use(FieldUse(obj["id"], column, "column"), catalog):
                    problems.append(problem)
            for field, _direction in attrs.get("sort", []):
                if problem := _check_use(FieldUse(obj["id"], field, "sort"), catalog):
                    problems.append(problem)
    elif type_ == "map":
        for layer in json.loads(attrs["layerListJSON"]):
            source = layer.get("sourceDescriptor", {})
            ref_name = source.get("indexPatternRefName")
            if not ref_name:
                continue
            catalog = catalog_for(ref_name)
            if catalog is not None and source.get("geoField"):
                use = FieldUse(obj["id"], source["geoField"], "geo")
                if problem := _check_use(use, catalog):
                    problems.append(problem)
    elif type_ == "dashboard":
        for panel in json.loads(attrs["panelsJSON"]):
            name = f"{panel['panelIndex']}:{panel.get('panelRefName')}"
            ref = refs.get(name)
            if ref is None:
                problems.append(f"{obj['id']}: panel {panel['panelIndex']} has no reference {name}")
            elif ref["type"] != panel.get("type"):
                problems.append(
                    f"{obj['id']}: panel {panel['panelIndex']} is {panel.get('type')} but its "
                    f"reference is {ref['type']}"
                )
    return problems


# ---------------------------------------------------------------------------- importing


@dataclass
class ImportResult:
    success_count: int
    objects: int


def import_saved_objects(
    url: str,
    path: Path | None = None,
    *,
    prefix: str = DEFAULT_PREFIX,
    headers: dict[str, str] | None = None,
    auth: tuple[str, str] | None = None,
    timeout_s: float = 60.0,
) -> ImportResult:
    """POST the saved objects to Kibana's import API (overwrite=true); raise on any error."""
    objects = load_ndjson(path) if path else build_saved_objects()
    if prefix != DEFAULT_PREFIX:
        objects = with_prefix(objects, prefix)
    payload = render_ndjson(objects).encode("utf-8")
    endpoint = url.rstrip("/") + "/api/saved_objects/_import"
    try:
        response = httpx.post(
            endpoint,
            params={"overwrite": "true"},
            headers={"kbn-xsrf": "true", **(headers or {})},
            files={"file": ("stancewatch.ndjson", payload, "application/ndjson")},
            auth=auth,
            timeout=timeout_s,
        )
    except httpx.HTTPError as exc:
        raise KibanaImportError(f"Kibana at {url} is unreachable: {exc}") from None
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code >= 400:
        message = body.get("message") if isinstance(body, dict) else None
        raise KibanaImportError(
            f"Kibana at {url} answered HTTP {response.status_code}: {message or response.text[:300]}"
        )
    if not isinstance(body, dict) or not body.get("success"):
        errors = body.get("errors", []) if isinstance(body, dict) else []
        details = "; ".join(
            f"{e.get('type')} {e.get('id')}: {e.get('error', {}).get('type', '')}"
            for e in errors[:10]
        )
        raise KibanaImportError(f"Kibana at {url} rejected the import: {details or body}")
    return ImportResult(success_count=int(body.get("successCount", 0)), objects=len(objects))
