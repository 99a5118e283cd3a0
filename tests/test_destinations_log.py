"""
The task log and the connection test say where data goes: Segment answers 200 to events sent to the wrong
region's API and drops them, so a run names, per Profile Space connection, the region and the endpoint host
it sent to (never the key), and the Test button does not claim to have reached a region's API that a Host
override stood in for.
"""

from __future__ import annotations

import json

import pytest

pytest.register_assert_rewrite("reliability_support")
from reliability_support import WRITE_KEY, DagHarness, create_customers  # noqa: E402

from airflow_provider_segment_profiles.hooks.segment_profiles import SegmentProfilesHook  # noqa: E402

pytest_plugins = ["reliability_support"]


@pytest.mark.airflow_db
def test_the_task_log_names_every_destination_it_sent_to(rel_harness: DagHarness, capfd):
    h = rel_harness
    eu = {**h.segment_connection, "extra": json.dumps({"region": "europe"})}
    h.segment_connection = eu
    h.monkeypatch.setenv("AIRFLOW_CONN_SEGMENT_PROFILES_SECOND", json.dumps(h.emulator.airflow_connection()))
    second = {
        "name": "second_space",
        "action": "send_identify",
        "profile_space": "segment_profiles_second",
        "fields": {"user_id": {"column": "id"}},
    }
    h.operator["mappings"] = [*h.operator["mappings"], second]
    create_customers(h.warehouse, range(1, 4))
    capfd.readouterr()
    run = h.run()
    assert run.state == "success"
    out = capfd.readouterr().out
    host = h.emulator.url.partition("://")[2].partition("/")[0]
    europe = (
        f"connection 'segment_profiles_default': region europe, endpoint {host} (the connection's Host, in "
        "place of the europe API events.eu1.segmentapis.com)"
    )
    north_america = (
        f"connection 'segment_profiles_second': region north_america, endpoint {host} (the connection's "
        "Host, in place of the north_america API api.segment.io)"
    )
    assert f"Sending to Profile Space {europe}" in out
    assert f"Sending to Profile Space {north_america}" in out
    assert "Destinations (Profile Space connection: region, endpoint host; messages):" in out
    delivered = run.summary["mappings"]
    default_count = sum(c["delivered"] for name, c in delivered.items() if name != "second_space")
    assert f"  {europe}: {default_count:,} delivered" in out
    assert f"  {north_america}: 3 delivered" in out
    assert WRITE_KEY not in out


def _hook(monkeypatch, conn: dict) -> SegmentProfilesHook:
    monkeypatch.setenv("AIRFLOW_CONN_SEGMENT_WHERE", json.dumps({"conn_type": "segment_profiles", **conn}))
    return SegmentProfilesHook("segment_where")


def test_a_connection_without_host_names_its_region_api(monkeypatch):
    hook = _hook(monkeypatch, {"password": "key-12345", "extra": {"region": "europe"}})
    assert not hook.host_overridden
    assert hook.describe_destination() == (
        "connection 'segment_where': region europe, endpoint events.eu1.segmentapis.com"
    )


def test_the_endpoint_never_carries_credentials(monkeypatch):
    hook = _hook(monkeypatch, {"password": "key-12345", "host": "https://user:pw@proxy.example.com/v1"})
    assert hook.endpoint_host == "proxy.example.com"
    assert "pw" not in hook.describe_destination() and "key-12345" not in hook.describe_destination()


def test_the_connection_test_with_a_host_does_not_claim_the_region_api(monkeypatch, segment_emulator):
    conn = segment_emulator.airflow_connection()
    hook = _hook(monkeypatch, {**conn, "extra": json.dumps({"region": "europe"})})
    ok, message = hook.test_connection()
    assert ok, message
    assert "Reached the europe tracking API" not in message
    assert message.startswith(
        f"Reached the connection's Host {segment_emulator.url}, which replaces the europe tracking API "
        "(https://events.eu1.segmentapis.com/v1, not contacted by this test"
    )
