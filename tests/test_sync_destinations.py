"""One DAG, several destinations: derived message ids are scoped to the destination, because Segment
de-duplicates ``messageId`` across every source and workspace (segment-docs ``src/guides/duplicate-data.md``),
and the emulator does the same across the write keys it serves. Real ``dag.test()`` runs, SQLite, the
emulator over HTTP."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from test_sync_e2e import SqliteWarehouse, SyncHarness, create_customers, forget_earlier_runs

from airflow_provider_segment_profiles.actions.message_id import destination_scope
from airflow_provider_segment_profiles.hooks.segment_profiles import SegmentProfilesHook
from airflow_provider_segment_profiles.testing import SegmentEmulator

pytestmark = pytest.mark.airflow_db
STAGING_KEY = "staging-write-key-4f1c9a"
PRODUCTION_KEY = "production-write-key-8e2d7b"
DAG_ID = "segment_e2e_customers"


class TwoWorkspaceHarness(SyncHarness):
    """:class:`SyncHarness` over an emulator with two write keys: :func:`deploy` picks the connection."""

    def __init__(self, warehouse, emulator: SegmentEmulator, state_dir: Path, monkeypatch) -> None:
        self.warehouse = warehouse
        self.emulator = emulator
        self.state_dir = state_dir
        self.monkeypatch = monkeypatch
        monkeypatch.setenv("AIRFLOW_CONN_E2E_WAREHOUSE", json.dumps(warehouse.airflow_conn))
        self.settings: dict = {}
        self.retries = 0


@pytest.fixture
def two_workspaces(tmp_path, monkeypatch, airflow_db):
    """One emulator serving the staging and the production Profile Space's sources, and one warehouse."""
    forget_earlier_runs()
    warehouse = SqliteWarehouse(tmp_path / "warehouse.db")
    with SegmentEmulator(write_key=STAGING_KEY, write_keys=[PRODUCTION_KEY]) as emulator:
        harness = TwoWorkspaceHarness(warehouse, emulator, tmp_path / "state", monkeypatch)
        yield harness, tmp_path
    warehouse.close()


def deploy(harness: SyncHarness, tmp_path: Path, write_key: str, monkeypatch) -> None:
    """Point the DAG at one workspace, as a separate Airflow deployment would: its own connection, its own
    state folder and no DAG runs of the other deployment."""
    forget_earlier_runs()
    connection = harness.emulator.airflow_connection(write_key)
    monkeypatch.setenv("AIRFLOW_CONN_SEGMENT_PROFILES_DEFAULT", json.dumps(connection))
    harness.state_dir = tmp_path / ("state-staging" if write_key == STAGING_KEY else "state-production")
    monkeypatch.setenv("SEGMENT_E2E_STATE_PATH", harness.state_dir.as_uri())


def test_staging_and_production_both_receive_everything(two_workspaces, monkeypatch):
    """The same DAG on the same data into two workspaces: each receives every message. Before ids were
    scoped, production got none (every id was a duplicate of staging's; see the next test)."""
    harness, tmp_path = two_workspaces
    emulator = harness.emulator
    create_customers(harness.warehouse, range(1, 11))
    summaries = {}
    for key in (STAGING_KEY, PRODUCTION_KEY):
        deploy(harness, tmp_path, key, monkeypatch)
        state, summaries[key] = harness.run(DAG_ID)
        assert state == "success"
    for key, summary in summaries.items():
        assert summary["messages"] == {"delivered": 20, "rejected": 0, "failed": 0}, key
        received = emulator.messages_for(key)
        assert len(received) == 20
        assert sorted(m["userId"] for m in received if m["type"] == "identify") == sorted(
            str(i) for i in range(1, 11)
        )
    assert emulator.dropped == []
    staging_ids = {m["messageId"] for m in emulator.messages_for(STAGING_KEY)}
    production_ids = {m["messageId"] for m in emulator.messages_for(PRODUCTION_KEY)}
    assert not staging_ids & production_ids
    assert all(len(i) == 35 and i.startswith("rs-") for i in staging_ids | production_ids)

    # Ids stay deterministic per destination: a full refresh re-sends the same change under the same ids,
    # and Segment (the emulator) drops them as duplicates.
    harness.settings = {"full_refresh": True}
    state, summary = harness.run(DAG_ID)
    assert state == "success" and summary["messages"]["delivered"] == 20  # every record counts as added
    assert {d.message["messageId"] for d in emulator.dropped} == production_ids
    assert emulator.dropped_counts() == {"duplicate_message_id": 20}
    assert len(emulator.messages_for(PRODUCTION_KEY)) == 20


def test_unscoped_ids_lose_the_second_workspace_and_the_emulator_shows_it(two_workspaces, monkeypatch):
    """What happened before: the same ids into two workspaces. Segment answers 200 and drops production's
    copies; the emulator does the same and lists them under ``GET /dropped``."""
    import requests

    harness, tmp_path = two_workspaces
    monkeypatch.setattr(SegmentProfilesHook, "message_id_scope", property(lambda self: b""))
    create_customers(harness.warehouse, range(1, 6))
    for key in (STAGING_KEY, PRODUCTION_KEY):
        deploy(harness, tmp_path, key, monkeypatch)
        assert harness.run(DAG_ID)[0] == "success"
    assert len(harness.emulator.messages_for(STAGING_KEY)) == 10
    assert harness.emulator.messages_for(PRODUCTION_KEY) == []
    listing = requests.get(f"{harness.emulator.url.removesuffix('/v1')}/dropped", timeout=5).json()
    assert listing["count"] == 10 and {d["reason"] for d in listing["dropped"]} == {"duplicate_message_id"}


def test_scope_and_write_key_are_in_no_artefact(two_workspaces, monkeypatch, capfd):
    """The destination scope (and the write key it is keyed by) only go into the id hash: not in the task
    logs, XCom, the report, the sync log table, the state or any file of the Airflow home."""
    harness, tmp_path = two_workspaces
    create_customers(harness.warehouse, range(1, 6))
    deploy(harness, tmp_path, STAGING_KEY, monkeypatch)
    harness.emulator.fail_user("2", status=400)  # a failed message, so the report has a line
    harness.settings = {"max_failed_fraction": 1.0, "sync_log_table": "segment_sync_log"}
    assert harness.run(DAG_ID)[0] == "success"
    harness.settings = {"dry_run": True, "full_refresh": True}
    assert harness.run(DAG_ID)[0] == "success"
    out, err = capfd.readouterr()
    scope = destination_scope(STAGING_KEY)
    secrets = {
        "write key": [STAGING_KEY.encode(), base64.b64encode(f"{STAGING_KEY}:".encode())],
        "scope": [scope, scope.hex().encode(), scope.hex().upper().encode(), base64.b64encode(scope)],
    }
    artefacts = {"task logs (console)": (out + err).encode()}
    for root in (harness.state_dir, Path(os.environ["AIRFLOW_HOME"]), tmp_path):
        for path in root.rglob("*"):
            if path.is_file():
                artefacts[str(path)] = path.read_bytes()  # reports, dry runs, HEAD, metadata DB, warehouse
    assert any("report" in name for name in artefacts) and any("dry_runs" in name for name in artefacts)
    assert "sync summary" in artefacts["task logs (console)"].decode()
    for name, content in artefacts.items():
        for what, forms in secrets.items():
            for form in forms:
                assert form not in content, f"{what} found in {name}"
