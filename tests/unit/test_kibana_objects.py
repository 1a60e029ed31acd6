"""infra/kibana/mlprov-saved-objects.ndjson: importable NDJSON whose references and fields resolve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from controller.logs.es_index import MAPPINGS, index_template
from controller.settings import Settings

NDJSON = Path(__file__).resolve().parents[2] / "infra" / "kibana" / "mlprov-saved-objects.ndjson"
KNOWN_TYPES = {"index-pattern", "search", "lens", "visualization", "dashboard"}


def _objects() -> list[dict[str, Any]]:
    lines = NDJSON.read_text().splitlines()
    assert lines
    assert all(line.strip() for line in lines), "NDJSON: one object per line, no blank lines"
    return [json.loads(line) for line in lines]


def _mapped_fields() -> set[str]:
    template = index_template("mlprov-logs", "mlprov-logs")
    return set(template["template"]["mappings"]["properties"]) | {"___records___"}


def _by_type(kind: str) -> list[dict[str, Any]]:
    return [o for o in _objects() if o["type"] == kind]


def test_valid_ndjson_with_unique_ids_and_known_types() -> None:
    objects = _objects()
    keys = [(o["type"], o["id"]) for o in objects]
    assert len(keys) == len(set(keys))
    assert len({o["id"] for o in objects}) == len(objects)
    for obj in objects:
        assert obj["type"] in KNOWN_TYPES
        assert isinstance(obj["attributes"], dict)
        assert obj["attributes"]["title"]
        assert isinstance(obj["references"], list)


def test_every_reference_resolves_to_an_object_in_the_file() -> None:
    objects = _objects()
    present = {(o["type"], o["id"]) for o in objects}
    for obj in objects:
        names = [ref["name"] for ref in obj["references"]]
        assert len(names) == len(set(names)), obj["id"]
        for ref in obj["references"]:
            assert (ref["type"], ref["id"]) in present, f"{obj['id']} -> {ref}"


def test_data_view_covers_the_data_stream_with_a_date_time_field() -> None:
    (view,) = _by_type("index-pattern")
    assert view["attributes"]["title"] == Settings.model_fields["elasticsearch_data_stream"].default
    time_field = view["attributes"]["timeFieldName"]
    assert MAPPINGS["properties"][time_field]["type"] == "date"
    for name in json.loads(view["attributes"].get("fieldFormatMap", "{}")):
        assert name in _mapped_fields()


def test_saved_searches_use_mapped_fields_and_the_data_view() -> None:
    searches = _by_type("search")
    assert {"mlprov-task-logs", "mlprov-run-logs"} <= {s["id"] for s in searches}
    for search in searches:
        attrs = search["attributes"]
        for column in attrs["columns"]:
            assert column in _mapped_fields(), (search["id"], column)
        for field, direction in attrs["sort"]:
            assert field in _mapped_fields()
            assert direction in ("asc", "desc")
        source = json.loads(attrs["kibanaSavedObjectMeta"]["searchSourceJSON"])
        refs = {r["name"]: r for r in search["references"]}
        assert refs[source["indexRefName"]]["type"] == "index-pattern"


def test_lens_columns_use_mapped_fields_and_layers_reference_the_data_view() -> None:
    lenses = _by_type("lens")
    assert lenses
    for lens in lenses:
        state = lens["attributes"]["state"]
        layers = state["datasourceStates"]["formBased"]["layers"]
        refs = {r["name"]: r for r in lens["references"]}
        for layer_id, layer in layers.items():
            assert refs[f"indexpattern-datasource-layer-{layer_id}"]["type"] == "index-pattern"
            assert sorted(layer["columnOrder"]) == sorted(layer["columns"])
            for column in layer["columns"].values():
                assert column["sourceField"] in _mapped_fields(), (lens["id"], column)
        for vis_layer in state["visualization"]["layers"]:
            columns = layers[vis_layer["layerId"]]["columns"]
            for accessor in [vis_layer["xAccessor"], *vis_layer["accessors"], vis_layer.get("splitAccessor")]:
                assert accessor is None or accessor in columns


@pytest.mark.parametrize("needed", ["component", "level", "task_id"])
def test_dashboard_panels_reference_existing_objects_and_cover_the_brief(needed: str) -> None:
    (dashboard,) = _by_type("dashboard")
    panels = json.loads(dashboard["attributes"]["panelsJSON"])
    refs = {r["name"]: r for r in dashboard["references"]}
    objects = {(o["type"], o["id"]): o for o in _objects()}
    fields_shown: set[str] = set()
    for panel in panels:
        ref = refs[f"{panel['panelIndex']}:{panel['panelRefName']}"]
        assert ref["type"] == panel["type"]
        target = objects[(ref["type"], ref["id"])]
        if target["type"] == "lens":
            for layer in target["attributes"]["state"]["datasourceStates"]["formBased"]["layers"].values():
                fields_shown |= {c["sourceField"] for c in layer["columns"].values()}
    assert needed in fields_shown
    assert len({p["panelIndex"] for p in panels}) == len(panels)
