"""Every example in the README and docs/ runs: Python blocks are executed, JSON mappings compiled,
connection exports resolved, and the field tables checked against the shipped JSON Schemas."""

from __future__ import annotations

import inspect
import json
import re
import shlex
from pathlib import Path

import pytest

from airflow_provider_segment_profiles.actions import ACTION_NAMES, compile_mappings, get_action
from airflow_provider_segment_profiles.hooks.profile_api import SegmentProfileApiHook
from airflow_provider_segment_profiles.hooks.regions import PROFILE_API_REGIONS, REGIONS
from airflow_provider_segment_profiles.hooks.segment_profiles import SegmentProfilesHook

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def blocks(language: str) -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for index, match in enumerate(BLOCK.finditer(doc.read_text())):
            if match.group(1) == language:
                found.append((f"{doc.name}#{index}", match.group(2)))
    return found


@pytest.mark.parametrize(("where", "code"), blocks("python"), ids=[w for w, _ in blocks("python")])
def test_python_examples_run(where, code, segment_emulator, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(
        "AIRFLOW_CONN_SEGMENT_PROFILES_DEFAULT", json.dumps(segment_emulator.airflow_connection())
    )
    namespace: dict = {"__name__": f"doc_example_{where}"}
    exec(compile(code, where, "exec"), namespace)
    fixtures = {"segment_emulator": segment_emulator, "monkeypatch": monkeypatch}
    for name, function in list(namespace.items()):
        if name.startswith("test_") and callable(function):
            function(**{p: fixtures[p] for p in inspect.signature(function).parameters})


@pytest.mark.parametrize(("where", "text"), blocks("json"), ids=[w for w, _ in blocks("json")])
def test_json_examples_parse_and_mappings_compile(where, text):
    value = json.loads(text)
    if isinstance(value, dict) and "action" in value:
        (compiled,) = compile_mappings([value], sync_mode="diff", primary_key="customer_id")
        assert compiled.name == value["name"]


def connection_exports() -> list[tuple[str, str]]:
    exports = []
    for where, text in blocks("bash"):
        for line in text.splitlines():
            if line.startswith("export AIRFLOW_CONN_"):
                exports.append((where, line))
    return exports


@pytest.mark.parametrize(("where", "line"), connection_exports(), ids=[w for w, _ in connection_exports()])
def test_connection_exports_resolve(where, line, monkeypatch):
    from airflow.providers.common.sql.hooks.sql import DbApiHook
    from airflow.sdk import BaseHook

    name, value = shlex.split(line.removeprefix("export "))[0].split("=", 1)
    monkeypatch.setenv(name, value)
    conn_id = name.removeprefix("AIRFLOW_CONN_").lower()
    connection = BaseHook.get_connection(conn_id)
    if connection.conn_type == "segment_profile_api":
        profile_api = connection.get_hook()
        assert isinstance(profile_api, SegmentProfileApiHook)
        assert profile_api.base_url == PROFILE_API_REGIONS[profile_api.region]
        assert profile_api.space_id == connection.extra_dejson["space_id"]
        return
    if connection.conn_type != "segment_profiles":
        assert isinstance(connection.get_hook(), DbApiHook)
        return
    hook = SegmentProfilesHook(conn_id)
    if connection.host and "://" in connection.host:  # a base URL
        assert hook.base_url == connection.host.rstrip("/")
    elif connection.host:  # host and port (a URI's form)
        assert hook.base_url == f"http://{connection.host}:{connection.port}/v1"
    else:
        assert hook.base_url == REGIONS[hook.region]


def test_connection_exports_were_found():
    assert len(connection_exports()) >= 7


@pytest.mark.parametrize("action", ACTION_NAMES)
def test_mapping_reference_lists_every_field_as_the_schema_has_it(action):
    text = (ROOT / "docs" / "mappings.md").read_text()
    spec = get_action(action)
    section = text.split(f"(`{action}`)")[1].split("\n### ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = {row.split("|")[1].strip().strip("`"): row for row in rows}
    assert list(documented) == list(spec.fields)
    for key, field in spec.fields.items():
        cells = [c.strip() for c in documented[key].split("|")]
        assert cells[2] == field.label
        assert cells[4] == ("yes" if field.required else "")
