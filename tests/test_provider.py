"""The package as Airflow sees it: provider registration and the segment_profiles connection type."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from airflow_provider_segment_profiles.get_provider_info import get_provider_info
from airflow_provider_segment_profiles.hooks.regions import REGIONS, UnknownRegionError, base_url_for_region
from airflow_provider_segment_profiles.hooks.segment_profiles import SegmentProfilesHook


def _airflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "airflow", *args], capture_output=True, text=True, env=os.environ, timeout=120
    )


def test_provider_info_names_the_distribution_and_connection_type():
    info = get_provider_info()
    assert info["package-name"] == "airflow-provider-segment-profiles"
    by_type = {c["connection-type"]: c for c in info["connection-types"]}
    assert set(by_type) == {"segment_profiles", "segment_profile_api"}
    conn_type = by_type["segment_profiles"]
    assert conn_type["connection-type"] == "segment_profiles"
    assert conn_type["hook-class-name"].endswith("SegmentProfilesHook")
    assert conn_type["conn-fields"]["region"]["schema"]["enum"] == ["europe", "north_america"]
    assert conn_type["conn-fields"]["region"]["schema"]["default"] == "north_america"
    assert {"login", "port", "schema", "extra"} <= set(conn_type["ui-field-behaviour"]["hidden-fields"])
    assert conn_type["ui-field-behaviour"]["relabeling"]["password"] == "Write Key"


def test_hook_classmethods_describe_the_same_form():
    behaviour = SegmentProfilesHook.get_ui_field_behaviour()
    assert behaviour["relabeling"]["password"] == "Write Key"
    assert "login" in behaviour["hidden_fields"]


@pytest.mark.parametrize("region", sorted(REGIONS))
def test_region_urls(region):
    assert base_url_for_region(region) == REGIONS[region]
    assert base_url_for_region(region).endswith("/v1")


def test_unknown_region_names_the_allowed_values():
    with pytest.raises(UnknownRegionError, match="allowed values: europe, north_america"):
        base_url_for_region("asia")


def test_airflow_lists_the_provider(airflow_db):
    result = _airflow("providers", "list", "--output", "json")
    assert result.returncode == 0, result.stderr
    names = {p["package_name"] for p in json.loads(result.stdout)}
    assert "airflow-provider-segment-profiles" in names


def test_connection_add_and_get_through_the_cli(airflow_db):
    added = _airflow(
        "connections",
        "add",
        "segment_cli_test",
        "--conn-type",
        "segment_profiles",
        "--conn-password",
        "cli-secret-write-key",
        "--conn-extra",
        json.dumps({"region": "europe"}),
    )
    assert added.returncode == 0, added.stderr
    got = _airflow("connections", "get", "segment_cli_test", "--output", "json")
    assert got.returncode == 0, got.stderr
    (conn,) = json.loads(got.stdout)
    assert conn["conn_type"] == "segment_profiles"
    assert conn["extra_dejson"] == {"region": "europe"}
    hooks = _airflow("providers", "hooks", "--output", "json")
    assert "segment_profiles" in hooks.stdout


@pytest.mark.parametrize(
    ("env_value", "region", "url"),
    [
        (
            json.dumps(
                {"conn_type": "segment_profiles", "password": "k3y-json", "extra": {"region": "europe"}}
            ),
            "europe",
            "https://events.eu1.segmentapis.com/v1",
        ),
        ("segment-profiles://:k3y-uri@/?region=north_america", "north_america", "https://api.segment.io/v1"),
        ("segment-profiles://:k3y-uri@/?region=europe", "europe", "https://events.eu1.segmentapis.com/v1"),
        (
            json.dumps({"conn_type": "segment_profiles", "password": "k", "host": "http://127.0.0.1:9/v1"}),
            "north_america",
            "http://127.0.0.1:9/v1",
        ),
    ],
)
def test_connection_from_environment(monkeypatch, env_value, region, url):
    monkeypatch.setenv("AIRFLOW_CONN_SEGMENT_ENV_TEST", env_value)
    hook = SegmentProfilesHook("segment_env_test")
    assert hook.region == region
    assert hook.base_url == url


def test_connection_with_unknown_region_fails_clearly(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_SEGMENT_BAD_REGION",
        json.dumps({"conn_type": "segment_profiles", "password": "k", "extra": {"region": "mars"}}),
    )
    with pytest.raises(UnknownRegionError, match=r"'mars'.*europe, north_america"):
        SegmentProfilesHook("segment_bad_region").base_url  # noqa: B018
