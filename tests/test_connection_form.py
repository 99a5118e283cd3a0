"""The connection form's declarations, as each supported Airflow version reads them.

Airflow >= 3.2 builds the form from the provider info's ``conn-fields``/``ui-field-behaviour``; Airflow 3.1
calls the hook's classmethods under the api-server's stand-ins for wtforms and keeps a hook only when every
field is one of the four classes it converts (``HookMetaService`` in
``airflow/api_fastapi/core_api/services/ui/connections.py``, the same in 3.1.8 and 3.3.2). The browser test
(``test_ui_connection_form.py``) checks the rendered form on the installed Airflow.
"""

from __future__ import annotations

import re
import sys
from importlib.util import find_spec
from pathlib import Path
from unittest import mock

from airflow_provider_segment_profiles.get_provider_info import get_provider_info
from airflow_provider_segment_profiles.hooks.profile_api import SegmentProfileApiHook
from airflow_provider_segment_profiles.hooks.regions import DEFAULT_REGION, PROFILE_API_REGIONS, REGIONS
from airflow_provider_segment_profiles.hooks.segment_profiles import SegmentProfilesHook

DOCS = Path(__file__).resolve().parents[1] / "docs"
_WTFORMS_MODULES = [
    "wtforms",
    "wtforms.fields",
    "wtforms.fields.simple",
    "wtforms.validators",
    "flask_babel",
    "flask_appbuilder",
    "flask_appbuilder.fieldwidgets",
]


def _missing(module: str) -> bool:
    try:
        return find_spec(module) is None
    except ModuleNotFoundError:
        return True


def _form_widgets_as_the_api_server_builds_them(
    hook: type = SegmentProfilesHook,
) -> tuple[dict, tuple[type, ...]]:
    """Call the hook's classmethod with the api-server's wtforms stand-ins in place."""
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService as meta

    stand_ins = {name: mock.MagicMock() for name in _WTFORMS_MODULES if _missing(name)}
    with (
        mock.patch.dict(sys.modules, stand_ins),
        mock.patch("wtforms.StringField", meta.MockStringField),
        mock.patch("wtforms.IntegerField", meta.MockIntegerField),
        mock.patch("wtforms.PasswordField", meta.MockPasswordField),
        mock.patch("wtforms.BooleanField", meta.MockBooleanField),
        mock.patch("wtforms.validators.any_of", meta.MockEnum),
    ):
        widgets = hook.get_connection_form_widgets()
    allowed = (meta.MockIntegerField, meta.MockPasswordField, meta.MockStringField, meta.MockBooleanField)
    return widgets, allowed


def _conn_type(name: str) -> dict:
    (conn_type,) = [c for c in get_provider_info()["connection-types"] if c["connection-type"] == name]
    return conn_type


def test_airflow_3_1_gets_only_field_classes_it_supports():
    widgets, allowed = _form_widgets_as_the_api_server_builds_them()
    assert set(widgets) == {"region"}
    for name, widget in widgets.items():
        assert widget.field_class in allowed, f"{name} is a {widget.field_class!r}"
    param = widgets["region"].param.dump()
    assert param["schema"]["title"] == "Endpoint Region"
    assert param["schema"]["enum"] == sorted(REGIONS)
    assert param["value"] == DEFAULT_REGION


def test_both_form_declarations_describe_the_same_fields():
    conn_type = _conn_type("segment_profiles")
    declared = conn_type["conn-fields"]["region"]
    widgets, _ = _form_widgets_as_the_api_server_builds_them()
    param = widgets["region"].param.dump()
    assert param["schema"]["title"] == declared["label"]
    assert param["description"] == declared["description"]
    assert param["schema"]["enum"] == declared["schema"]["enum"]
    assert param["value"] == declared["schema"]["default"]
    behaviour = SegmentProfilesHook.get_ui_field_behaviour()
    assert behaviour["placeholders"] == conn_type["ui-field-behaviour"]["placeholders"]
    assert behaviour["hidden_fields"] == conn_type["ui-field-behaviour"]["hidden-fields"]


def test_the_region_section_names_no_region_and_each_choice_its_host():
    """The heading is the same on every connection, so it names no region (issue 23: a heading naming the
    default read "north_america" on a connection set to europe); the choices name their API hosts."""
    conn_type = _conn_type("segment_profiles")
    schema = conn_type["conn-fields"]["region"]["schema"]
    assert "Endpoint Region" in schema["section"]
    assert "wrong region" in schema["section"]
    assert not any(region in schema["section"] for region in REGIONS)
    assert schema["default"] == DEFAULT_REGION
    assert set(schema["values_display"]) == set(REGIONS)
    for region, shown in schema["values_display"].items():
        assert shown.startswith(region)
        assert REGIONS[region].removeprefix("https://").removesuffix("/v1") in shown


def test_host_placeholder_uses_the_emulators_documented_port():
    documented = re.search(r"testing --port (\d+)", (DOCS / "emulator.md").read_text()).group(1)
    placeholder = SegmentProfilesHook.get_ui_field_behaviour()["placeholders"]["host"]
    assert f"http://127.0.0.1:{documented}/v1" in placeholder
    assert ":8080" not in placeholder  # Airflow's own API server


def test_the_profile_api_form_has_space_id_and_region_in_both_declarations():
    conn_type = _conn_type("segment_profile_api")
    widgets, allowed = _form_widgets_as_the_api_server_builds_them(SegmentProfileApiHook)
    assert set(widgets) == set(conn_type["conn-fields"]) == {"space_id", "region"}
    for name, widget in widgets.items():
        assert widget.field_class in allowed, f"{name} is a {widget.field_class!r}"
        param = widget.param.dump()
        declared = conn_type["conn-fields"][name]
        assert param["schema"]["title"] == declared["label"]
        assert param["description"] == declared["description"]
    region = widgets["region"].param.dump()
    assert (
        region["schema"]["enum"]
        == sorted(PROFILE_API_REGIONS)
        == conn_type["conn-fields"]["region"]["schema"]["enum"]
    )
    assert region["value"] == DEFAULT_REGION
    behaviour = SegmentProfileApiHook.get_ui_field_behaviour()
    assert behaviour["relabeling"]["password"] == "Access Token"
    assert behaviour["hidden_fields"] == conn_type["ui-field-behaviour"]["hidden-fields"]
    assert behaviour["placeholders"] == conn_type["ui-field-behaviour"]["placeholders"]
    for region_name, shown in conn_type["conn-fields"]["region"]["schema"]["values_display"].items():
        assert PROFILE_API_REGIONS[region_name].removeprefix("https://").removesuffix("/v1") in shown
