"""Kibana saved objects: format, references, fields; and the import request.

Kibana cannot run on our machines (it is in no reachable registry and needs the full
distribution), so the NDJSON is checked for what Kibana's importer and the dashboard would
trip over, and ``kibana import`` talks to a local HTTP server (pytest-httpserver) that
stands in for Kibana and checks the shape of the request: method, path, ``overwrite=true``,
the ``kbn-xsrf`` header and a multipart field ``file`` holding the NDJSON.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from pipeline.kibana import (
    DASHBOARD_ID,
    DEFAULT_NDJSON,
    KibanaImportError,
    KibanaObjectsError,
    build_saved_objects,
    field_catalog,
    import_saved_objects,
    load_ndjson,
    render_ndjson,
    validate_saved_objects,
    with_prefix,
)

PROJECT_DIR = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return load_ndjson(DEFAULT_NDJSON)


def by_id(objects: list[dict[str, Any]], object_id: str) -> dict[str, Any]:
    return next(o for o in objects if o["id"] == object_id)


# ------------------------------------------------------------------------ the NDJSON file


def test_committed_file_is_what_the_builder_makes() -> None:
    assert DEFAULT_NDJSON.read_text(encoding="utf-8") == render_ndjson(build_saved_objects())


def test_every_line_is_a_kibana_9_saved_object(objects: list[dict[str, Any]]) -> None:
    lines = [line for line in DEFAULT_NDJSON.read_text().splitlines() if line.strip()]
    assert len(lines) == len(objects) == 11
    for obj in objects:
        assert {"type", "id", "attributes", "references", "typeMigrationVersion"} <= obj.keys()
        assert obj["coreMigrationVersion"] == "8.8.0"
        assert "migrationVersion" not in obj  # the pre-8.8 field; Kibana 9 uses the two above
    types = [o["type"] for o in objects]
    assert types.count("index-pattern") == 4
    assert types[:4] == ["index-pattern"] * 4  # data views first
    assert types[-1] == "dashboard"
    assert validate_saved_objects(objects) == []


def test_data_views_point_at_the_aliases_with_a_time_field(objects: list[dict[str, Any]]) -> None:
    views = {o["attributes"]["title"]: o for o in objects if o["type"] == "index-pattern"}
    assert set(views) == {
        "stancewatch-articles",
        "stancewatch-stances",
        "stancewatch-alerts",
        "stancewatch-feeds",
    }
    for title, view in views.items():
        kind = title.removeprefix("stancewatch-")
        assert field_catalog(kind)[view["attributes"]["timeFieldName"]] == "date"  # type: ignore[arg-type]


def test_the_dashboard_has_the_six_panels(objects: list[dict[str, Any]]) -> None:
    dashboard = by_id(objects, DASHBOARD_ID)
    assert dashboard["attributes"]["title"] == "Stancewatch overview"
    panels = json.loads(dashboard["attributes"]["panelsJSON"])
    titles = []
    for panel in panels:
        ref = next(
            r
            for r in dashboard["references"]
            if r["name"] == f"{panel['panelIndex']}:{panel['panelRefName']}"
        )
        titles.append((panel["type"], by_id(objects, ref["id"])["attributes"]["title"]))
    assert titles == [
        ("lens", "Relevant articles per topic over time"),
        ("lens", "Stance over time per actor"),
        ("lens", "Top actors by mentions"),
        ("map", "Territories mentioned in relevant articles"),
        ("search", "Latest alerts"),
        ("search", "Feed health"),
    ]
    cells: set[tuple[int, int]] = set()
    for panel in panels:  # inside the 48-column grid, no two panels on one cell
        grid = panel["gridData"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 48
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & mine, panel["panelIndex"]
        cells |= mine


def test_map_layer_uses_the_geo_point_field(objects: list[dict[str, Any]]) -> None:
    layers = json.loads(
        by_id(objects, "stancewatch-territories-map")["attributes"]["layerListJSON"]
    )
    source = layers[1]["sourceDescriptor"]
    assert source["geoField"] == "territory_locations"
    assert field_catalog("articles")["territory_locations"] == "geo_point"
    assert source["indexPatternRefName"] == "layer_1_source_index_pattern"


# ------------------------------------------------------------------- the checks can fail


def _problems_after(objects: list[dict[str, Any]], change: Any) -> list[str]:
    broken = copy.deepcopy(objects)
    change(broken)
    return validate_saved_objects(broken)


def test_a_field_missing_from_the_mapping_is_reported(objects: list[dict[str, Any]]) -> None:
    def rename(objs: list[dict[str, Any]]) -> None:
        lens = by_id(objs, "stancewatch-top-actors")
        layer = next(
            iter(lens["attributes"]["state"]["datasourceStates"]["formBased"]["layers"].values())
        )
        layer["columns"]["actor"]["sourceField"] = "speaker"

    assert _problems_after(objects, rename) == [
        "stancewatch-top-actors: field 'speaker' (terms) is not in the mapping"
    ]


def test_terms_on_a_text_field_is_reported(objects: list[dict[str, Any]]) -> None:
    def text_terms(objs: list[dict[str, Any]]) -> None:
        lens = by_id(objs, "stancewatch-topic-volume")
        layer = next(
            iter(lens["attributes"]["state"]["datasourceStates"]["formBased"]["layers"].values())
        )
        layer["columns"]["topic"]["sourceField"] = "title"

    (problem,) = _problems_after(objects, text_terms)
    assert "'title' is text" in problem


def test_a_dangling_reference_is_reported(objects: list[dict[str, Any]]) -> None:
    def drop_view(objs: list[dict[str, Any]]) -> None:
        objs.remove(by_id(objs, "stancewatch-feeds"))

    problems = _problems_after(objects, drop_view)
    assert any("stancewatch-feed-health" in p and "is not in the file" in p for p in problems)


def test_saved_search_columns_and_map_fields_are_checked(objects: list[dict[str, Any]]) -> None:
    def bad_column(objs: list[dict[str, Any]]) -> None:
        by_id(objs, "stancewatch-latest-alerts")["attributes"]["columns"].append("severity")

    assert _problems_after(objects, bad_column) == [
        "stancewatch-latest-alerts: field 'severity' (column) is not in the mapping"
    ]

    def bad_geo(objs: list[dict[str, Any]]) -> None:
        attrs = by_id(objs, "stancewatch-territories-map")["attributes"]
        layers = json.loads(attrs["layerListJSON"])
        layers[1]["sourceDescriptor"]["geoField"] = "territories"
        attrs["layerListJSON"] = json.dumps(layers)

    (problem,) = _problems_after(objects, bad_geo)
    assert "'territories' is keyword" in problem


def test_unknown_type_or_future_version_is_reported(objects: list[dict[str, Any]]) -> None:
    def future(objs: list[dict[str, Any]]) -> None:
        by_id(objs, DASHBOARD_ID)["typeMigrationVersion"] = "99.0.0"

    assert any("typeMigrationVersion" in p for p in _problems_after(objects, future))


def test_bad_ndjson_names_the_line() -> None:
    with pytest.raises(KibanaObjectsError, match="line 2"):
        load_ndjson('{"type": "dashboard"}\n{not json}\n')


def test_another_prefix_rewrites_only_the_data_view_titles(objects: list[dict[str, Any]]) -> None:
    moved = with_prefix(objects, "staging")
    titles = sorted(o["attributes"]["title"] for o in moved if o["type"] == "index-pattern")
    assert titles == ["staging-alerts", "staging-articles", "staging-feeds", "staging-stances"]
    assert [o["id"] for o in moved] == [o["id"] for o in objects]
    assert validate_saved_objects(moved, prefix="staging") == []


# --------------------------------------------------- import against a stand-in for Kibana


class FakeKibanaImport:
    """Checks an import request the way Kibana's route would, and records what came."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.problems: list[str] = []

    def __call__(self, request: Request) -> Response:
        if request.headers.get("kbn-xsrf") != "true":
            self.problems.append("kbn-xsrf header missing")
        if request.args.get("overwrite") != "true":
            self.problems.append("overwrite=true missing")
        if not request.content_type.startswith("multipart/form-data"):
            self.problems.append(f"content type {request.content_type}")
        upload = request.files.get("file")
        if upload is None or not (upload.filename or "").endswith(".ndjson"):
            self.problems.append("multipart field 'file' (.ndjson) missing")
            return Response(json.dumps({"statusCode": 400, "message": "file"}), status=400)
        objects = [json.loads(line) for line in upload.read().decode().splitlines() if line]
        self.received = objects
        if self.problems:
            return Response(json.dumps({"statusCode": 400, "message": self.problems[0]}), 400)
        body = {
            "success": True,
            "successCount": len(objects),
            "successResults": [{"type": o["type"], "id": o["id"]} for o in objects],
        }
        return Response(json.dumps(body), status=200, content_type="application/json")


def test_import_posts_the_ndjson_like_kibana_expects(httpserver: HTTPServer) -> None:
    kibana = FakeKibanaImport()
    httpserver.expect_request("/api/saved_objects/_import", method="POST").respond_with_handler(
        kibana
    )
    result = import_saved_objects(httpserver.url_for("/"), DEFAULT_NDJSON, auth=("elastic", "pw"))
    assert kibana.problems == []
    assert result.success_count == result.objects == 11
    assert [o["id"] for o in kibana.received] == [o["id"] for o in load_ndjson(DEFAULT_NDJSON)]
    (request, _response) = httpserver.log[0]
    assert request.authorization is not None and request.authorization.username == "elastic"


def test_import_reports_what_kibana_rejected(httpserver: HTTPServer) -> None:
    body = {
        "success": False,
        "successCount": 10,
        "errors": [{"type": "lens", "id": "stancewatch-top-actors", "error": {"type": "conflict"}}],
    }
    httpserver.expect_request("/api/saved_objects/_import").respond_with_json(body)
    with pytest.raises(KibanaImportError, match="stancewatch-top-actors: conflict"):
        import_saved_objects(httpserver.url_for("/"))


def test_import_names_kibana_when_it_says_no(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/saved_objects/_import").respond_with_json(
        {"statusCode": 401, "message": "Unauthorized"}, status=401
    )
    with pytest.raises(KibanaImportError, match="HTTP 401: Unauthorized"):
        import_saved_objects(httpserver.url_for("/"))


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "kibana", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_DIR,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        check=False,
    )


def test_cli_import_and_check(httpserver: HTTPServer, tmp_path: Path) -> None:
    kibana = FakeKibanaImport()
    httpserver.expect_request("/api/saved_objects/_import", method="POST").respond_with_handler(
        kibana
    )
    env = {"STANCEWATCH_INDEX_PREFIX": "staging", "STANCEWATCH_DATA_DIR": str(tmp_path)}
    result = _cli("import", "--url", httpserver.url_for("/"), env=env)
    assert result.returncode == 0, result.stderr
    assert "Imported 11 of 11" in result.stdout
    titles = {o["attributes"]["title"] for o in kibana.received if o["type"] == "index-pattern"}
    assert "staging-articles" in titles

    check = _cli("check")
    assert check.returncode == 0, check.stderr
    broken = tmp_path / "broken.ndjson"
    objects = load_ndjson(DEFAULT_NDJSON)
    by_id(objects, "stancewatch-latest-alerts")["attributes"]["columns"].append("severity")
    broken.write_text(render_ndjson(objects))
    failed = _cli("check", "--file", str(broken))
    assert failed.returncode == 1 and "severity" in failed.stderr

    unreachable = _cli("import", "--url", "http://127.0.0.1:9", env=env)
    assert unreachable.returncode == 1 and "unreachable" in unreachable.stderr
