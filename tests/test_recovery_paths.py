"""
The recovery paths a user takes when something already went wrong must lose no delete: a full refresh
(the advice of every state error) and a switch of ``change_detection`` (which needs one) still delete in
Segment what the model lost since the old state was committed, over both engines, on SQLite, PostgreSQL,
DuckDB and MariaDB, through real ``dag.test()`` runs against the emulator. When the old state cannot be read, the
log (and, for a switch, the error before it) says what is lost.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.register_assert_rewrite("reliability_support")
from reliability_support import (  # noqa: E402
    DELETE_EVENT,
    DELETED_MAPPING,
    FIGURES,
    IDENTIFY_MAPPING,
    DagHarness,
    DuckDBWarehouse,
    MariaDBWarehouse,
    PostgresWarehouse,
    SegmentView,
    SqliteWarehouse,
    assert_segment_matches,
    create_customers,
    view_differences,
    warehouse_customers,
)

pytest_plugins = ["reliability_support"]
pytestmark = pytest.mark.airflow_db

ENGINES = ("worker", "warehouse")


@pytest.fixture(params=["sqlite", "postgres", "duckdb", "mariadb"])
def harness(request, rel_emulator, tmp_path, monkeypatch, airflow_db) -> DagHarness:
    """A harness over a 200-row view ``v_customers`` of ``customers`` (identify + a ``deleted`` track)."""
    if request.param == "sqlite":
        warehouse: Any = SqliteWarehouse(tmp_path / "warehouse.db")
    elif request.param == "duckdb":
        warehouse = DuckDBWarehouse(tmp_path / "warehouse.duckdb")
    elif request.param == "mariadb":
        warehouse = MariaDBWarehouse(request.getfixturevalue("mariadb_params"))
    else:
        warehouse = PostgresWarehouse(request.getfixturevalue("postgres_dsn"))
    request.addfinalizer(warehouse.close)
    h = DagHarness(warehouse, rel_emulator, tmp_path / "state", monkeypatch, name=request.node.name)
    create_customers(warehouse, range(1, 201))
    _cut_view(h, 200)
    h.operator.update(
        sql=f"SELECT id, name, email, plan FROM {warehouse.t('v_customers')}",
        mappings=[IDENTIFY_MAPPING, DELETED_MAPPING],
        max_events_per_second=None,
    )
    if request.param in ("postgres", "mariadb"):
        h.operator["state_schema"] = warehouse.schema
    return h


def _cut_view(h: DagHarness, rows: int) -> None:
    wh = h.warehouse
    wh.execute(f"DROP VIEW IF EXISTS {wh.t('v_customers')}")
    wh.execute(f"CREATE VIEW {wh.t('v_customers')} AS SELECT * FROM {wh.t('customers')} WHERE id <= {rows}")


def _deletes(sent: list[dict]) -> list[str]:
    return sorted((m["userId"] for m in sent if m.get("event") == DELETE_EVENT), key=int)


def _log(capfd) -> str:
    captured = capfd.readouterr()
    return captured.out + captured.err


def _view_rows(h: DagHarness) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in warehouse_customers(h.warehouse).items() if int(k) <= 195}


@pytest.mark.parametrize("engine", ENGINES)
def test_a_full_refresh_sends_the_deletes_in_both_engines(harness: DagHarness, engine: str):
    """The issue's reproduction: 200 rows, cut to 195, full refresh: 195 added, the 5 deleted, and no
    later run has anything left to send."""
    h = harness
    h.operator["change_detection"] = engine
    assert h.run().state == "success"
    _cut_view(h, 195)
    refreshed = h.run(full_refresh=True)
    FIGURES.input("full refresh with pending deletes")
    assert refreshed.state == "success"
    assert refreshed.summary["records"] == {
        "added": 195,
        "updated": 0,
        "deleted": 5,
        "unchanged": 0,
        "rejected": 0,
    }
    assert _deletes(refreshed.sent) == ["196", "197", "198", "199", "200"]
    assert h.head()["records"] == 195
    quiet = h.run()
    assert quiet.sent == [] and quiet.summary["records"]["unchanged"] == 195
    assert_segment_matches(h.emulator.messages, _view_rows(h))


@pytest.mark.parametrize("engine", ENGINES)
def test_a_full_refresh_that_cannot_read_the_old_state_warns_what_is_lost(
    harness: DagHarness, engine: str, capfd
):
    h = harness
    h.operator["change_detection"] = engine
    assert h.run().state == "success"
    _cut_view(h, 195)
    wh = h.warehouse
    if engine == "worker":
        for snapshot in (h.state_root / "snapshots").iterdir():
            snapshot.unlink()
    elif wh.kind == "sqlite":
        (table,) = [
            r[0]
            for r in wh.query("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '%__sp_%'")
        ]
        wh.execute(f'DROP TABLE "{table}"')
    else:
        (table,) = [
            r[0]
            for r in wh.query(
                "SELECT table_name FROM information_schema.tables "
                f"WHERE table_schema = '{wh.schema}' AND table_name LIKE 'sp!_%' ESCAPE '!'"
            )
        ]
        quote = "`" if wh.kind == "mariadb" else '"'
        wh.execute(f"DROP TABLE {wh.schema}.{quote}{table}{quote}")
    capfd.readouterr()
    refreshed = h.run(full_refresh=True)
    assert refreshed.state == "success"
    assert refreshed.summary["records"]["added"] == 195
    assert _deletes(refreshed.sent) == []
    log = _log(capfd)
    assert "full_refresh: the old state (generation 1, 200 records" in log
    assert "they are NOT deleted in Segment. To avoid it, restore the old state" in log


@pytest.mark.parametrize("old,new", [("worker", "warehouse"), ("warehouse", "worker")])
def test_switching_engines_carries_the_deletes_across(harness: DagHarness, old: str, new: str, capfd):
    """The switch's StateError says what the full refresh will do; the refresh reads the old engine's
    state (the snapshot file, or the state table) and deletes the 5 records the model lost."""
    h = harness
    assert h.run(change_detection=old).state == "success"
    _cut_view(h, 195)
    capfd.readouterr()
    refused = h.run(change_detection=new)
    assert refused.state == "failed" and refused.sent == []
    log = _log(capfd)
    assert f"was built with change_detection={old!r}, but this run uses {new!r}" in log
    assert "that the model no longer has are deleted in Segment" in log
    switched = h.run(change_detection=new, full_refresh=True)
    assert switched.state == "success"
    assert switched.summary["records"]["added"] == 195
    assert switched.summary["records"]["deleted"] == 5
    assert _deletes(switched.sent) == ["196", "197", "198", "199", "200"]
    assert h.head()["extra"]["change_detection"] == new
    assert f"switches change_detection from {old!r} to {new!r}" in _log(capfd)
    quiet = h.run(change_detection=new)
    assert quiet.sent == [] and quiet.summary["records"]["unchanged"] == 195
    _cut_view(h, 194)
    assert _deletes(h.run(change_detection=new).sent) == ["195"]
    # The switch re-sends every record under new message ids (the engines' checksums differ): Segment's
    # view is right, the repeats are the documented cost of switching.
    view = SegmentView.of(h.emulator.messages)
    assert view_differences(view.profiles, {k: v for k, v in _view_rows(h).items() if k != "195"}) == []


@pytest.mark.parametrize("old,new", [("worker", "warehouse"), ("warehouse", "worker")])
def test_a_switch_whose_old_state_is_gone_says_what_is_lost(harness: DagHarness, old: str, new: str, capfd):
    h = harness
    assert h.run(change_detection=old).state == "success"
    if old == "worker":
        for snapshot in (h.state_root / "snapshots").iterdir():
            snapshot.unlink()
    else:
        h.operator["state_schema"] = "elsewhere"  # the old state table is not where this run looks
    _cut_view(h, 195)
    capfd.readouterr()
    refused = h.run(change_detection=new)
    assert refused.state == "failed"
    log = _log(capfd)
    assert "cannot be read from" in log and "they are NOT deleted in Segment" in log
    switched = h.run(change_detection=new, full_refresh=True)
    assert switched.state == "success"
    assert _deletes(switched.sent) == []
    assert "they are NOT deleted in Segment. To avoid it, restore the old state" in _log(capfd)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_changed_key_type_says_why_every_record_is_sent_again(harness: DagHarness, engine: str, capfd):
    """``id`` from integer to text: the checksums cover values with their types, so every record is sent
    again as updated (no delete: the identifiers render the same); the log says why, in both engines."""
    h = harness
    h.operator["change_detection"] = engine
    assert h.run().state == "success"
    view = h.warehouse.t("v_customers")
    text = "CHAR" if h.warehouse.kind == "mariadb" else "TEXT"  # MySQL casts to CHAR, not TEXT
    capfd.readouterr()
    changed = h.run(sql=f"SELECT CAST(id AS {text}) AS id, name, email, plan FROM {view}")
    assert changed.state == "success"
    assert changed.summary["records"]["updated"] == 200
    assert changed.summary["records"]["deleted"] == 0
    log = _log(capfd)
    assert "The result type of id (" in log
    assert "every record counts as updated and is sent again under new message ids" in log
    assert "no record counts as deleted" in log
    capfd.readouterr()
    assert h.run(sql=f"SELECT CAST(id AS {text}) AS id, name, email, plan FROM {view}").sent == []
    assert "The result type of" not in _log(capfd)
