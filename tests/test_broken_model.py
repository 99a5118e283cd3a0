"""
A broken model is never green: records rejected as a whole (a NULL or repeated unique identifier, as a
broken join gives) count against ``max_rejected_fraction`` like rejected messages do, over both engines,
on PostgreSQL (where the finding came from) through real ``dag.test()`` runs.
"""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("reliability_support")
from reliability_support import (  # noqa: E402
    IDENTIFY_MAPPING,
    DagHarness,
    PostgresWarehouse,
    create_customers,
)

pytest_plugins = ["reliability_support"]
pytestmark = pytest.mark.airflow_db


@pytest.fixture(params=["worker", "warehouse"])
def pg(request, rel_emulator, tmp_path, monkeypatch, airflow_db) -> DagHarness:
    warehouse = PostgresWarehouse(request.getfixturevalue("postgres_dsn"))
    request.addfinalizer(warehouse.close)
    h = DagHarness(warehouse, rel_emulator, tmp_path / "state", monkeypatch, name=request.node.name)
    h.operator.update(
        mappings=[IDENTIFY_MAPPING],
        change_detection=request.param,
        state_schema=warehouse.schema,
        max_events_per_second=None,
    )
    create_customers(warehouse, range(1, 201))
    h.retries = 2
    return h


def _log(capfd) -> str:
    captured = capfd.readouterr()
    return captured.out + captured.err


@pytest.mark.parametrize(
    "key,rejected",
    [("NULL::int", 200), ("1", 199), ("CASE WHEN id <= 5 THEN NULL ELSE id END", 5)],
    ids=["all NULL", "all repeated", "a few NULL"],
)
def test_records_rejected_as_a_whole_count_against_the_threshold(pg: DagHarness, capfd, key, rejected):
    h = pg
    h.operator["sql"] = f"SELECT {key} AS id, name, email, plan FROM {h.warehouse.t('customers')}"
    capfd.readouterr()
    run = h.run()
    assert run.summary["records"]["rejected"] == rejected
    assert run.summary["rows_read"] == 200
    if rejected / 200 <= 0.1:
        assert run.state == "success"
        assert len(run.sent) == 195
        return
    assert run.state == "failed"
    assert run.try_number == 1, "a broken model was retried"
    log = _log(capfd)
    assert f"{rejected} of the 200 records read were rejected as a whole" in log
    assert "max_rejected_fraction 10.0%" in log
    # Like a mapping that rejects everything: what was delivered is committed, the rest is the report's.
    assert h.head()["generation"] == 1
    assert len(run.sent) == 200 - rejected


def test_a_mapping_that_rejects_everything_fails_the_same_way(pg: DagHarness, capfd):
    """The reference the whole-record threshold is measured against."""
    h = pg
    h.operator["mappings"] = [
        {
            "name": "bad",
            "action": "send_identify",
            "fields": {"user_id": {"column": "id"}, "timestamp": {"column": "name"}},
        }
    ]
    capfd.readouterr()
    run = h.run()
    assert run.state == "failed" and run.try_number == 1
    assert run.summary["messages"]["rejected"] == 200
    assert "200 of the 200 messages of the model are rejected" in _log(capfd)


def test_rows_that_arrive_behind_the_watermark_are_counted_and_said(rel_harness: DagHarness, capfd):
    """An event added with an older cursor value than the saved watermark is not read by incremental mode:
    the run counts it (summary ``behind_watermark``) and says so in the log, instead of skipping it
    silently."""
    h = rel_harness
    wh = h.warehouse
    wh.execute("CREATE TABLE events (id INTEGER, ts TEXT)")
    wh.execute(
        "INSERT INTO events VALUES (%s, %s)", [(i, f"2024-01-{i:02d}T00:00:00Z") for i in range(1, 11)]
    )
    track = {"name": "ev", "action": "send_track", "fields": {"user_id": {"column": "id"}, "event_name": "E"}}
    h.operator.update(
        sql="SELECT id, ts FROM events", mappings=[track], sync_mode="incremental", cursor_column="ts"
    )
    first = h.run()
    assert first.state == "success" and len(first.sent) == 10
    assert first.summary["behind_watermark"] is None  # nothing to compare with yet
    wh.execute(
        "INSERT INTO events VALUES (%s, %s)", [(11, "2024-01-05T12:00:00Z"), (12, "2024-01-11T00:00:00Z")]
    )
    capfd.readouterr()
    second = h.run()
    assert second.state == "success"
    assert [m["userId"] for m in second.sent] == ["12"]
    assert second.summary["behind_watermark"] == 1
    log = capfd.readouterr().out
    assert (
        "1 rows arrived behind the incremental watermark since the last run (ts < '2024-01-10T00:00:00Z')"
        in log
    )
    third = h.run()
    assert third.sent == [] and third.summary["behind_watermark"] == 0
