"""A real deployment: Airflow's api-server, scheduler and dag-processor (LocalExecutor, PostgreSQL metadata
database) run ``tests/deployment_dags/segment_deployment_sync.py`` on its five-second schedule.

Three scheduled runs, with the warehouse changed between them: each run waits at a gate until the test has
made that run's changes (see the DAG's docstring). Every run's summary is read from the REST API (XCom
``return_value``) and compared with what the bundled emulator received. The write key must appear in no
component output and no task log.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from airflow_deployment import AirflowDeployment, copy_tree, q

from airflow_provider_segment_profiles.testing import SegmentEmulator

pytestmark = pytest.mark.deployment

DAG_ID = "segment_deployment_sync"
DAGS = Path(__file__).parent / "deployment_dags"


def _changes() -> list[Callable[[sqlite3.Connection], None]]:
    """The warehouse changes made before each run (the first run reads the initial table)."""

    def nothing(db: sqlite3.Connection) -> None:
        pass

    def upgrade_two_and_add_one(db: sqlite3.Connection) -> None:
        db.execute("UPDATE customers SET plan = 'pro' WHERE customer_id IN (1, 2)")
        db.execute("INSERT INTO customers VALUES (5, 'Customer 5', 'c5@example.com', 'free')")

    def remove_one_and_rename_one(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM customers WHERE customer_id = 3")
        db.execute("UPDATE customers SET name = 'Renamed 4' WHERE customer_id = 4")

    return [nothing, upgrade_two_and_add_one, remove_one_and_rename_one]


EXPECTED = [
    {
        "records": {"added": 4, "updated": 0, "deleted": 0, "unchanged": 0, "rejected": 0},
        "sent": {"identify": ["1", "2", "3", "4"], "Customer Signed Up": ["1", "2", "3", "4"]},
    },
    {
        "records": {"added": 1, "updated": 2, "deleted": 0, "unchanged": 2, "rejected": 0},
        "sent": {"identify": ["1", "2", "5"], "Customer Signed Up": ["5"]},
    },
    {
        "records": {"added": 0, "updated": 1, "deleted": 1, "unchanged": 3, "rejected": 0},
        "sent": {"identify": ["4"], "Customer Removed": ["3"]},
    },
]


def _sent(messages: list[dict]) -> dict[str, list[str]]:
    by_kind: dict[str, list[str]] = {}
    for message in messages:
        kind = message.get("event") or message["type"]
        by_kind.setdefault(kind, []).append(message["userId"])
    return {kind: sorted(ids) for kind, ids in by_kind.items()}


def test_scheduler_runs_three_intervals_with_changes_between_them(tmp_path):
    write_key = "deploy-" + secrets.token_hex(12)
    warehouse_path = tmp_path / "warehouse.db"
    warehouse = sqlite3.connect(warehouse_path, isolation_level=None)
    warehouse.execute("CREATE TABLE customers (customer_id INTEGER, name TEXT, email TEXT, plan TEXT)")
    warehouse.executemany(
        "INSERT INTO customers VALUES (?, ?, ?, ?)",
        [(i, f"Customer {i}", f"c{i}@example.com", "free") for i in range(1, 5)],
    )
    gates = tmp_path / "gates"
    gates.mkdir()
    start = (datetime.now(UTC) - timedelta(minutes=1)).replace(microsecond=0)

    with SegmentEmulator(write_key=write_key) as emulator:
        env = {
            "AIRFLOW_CONN_DEPLOY_WAREHOUSE": json.dumps({"conn_type": "sqlite", "host": str(warehouse_path)}),
            "AIRFLOW_CONN_SEGMENT_PROFILES_DEFAULT": json.dumps(emulator.airflow_connection()),
            "SEGMENT_DEPLOY_GATES": str(gates),
            "SEGMENT_DEPLOY_STATE_PATH": (tmp_path / "state").as_uri(),
            "SEGMENT_DEPLOY_START": start.isoformat(),
        }
        dags = copy_tree(DAGS, tmp_path / "dags")
        with AirflowDeployment(tmp_path / "airflow_home", dags_folder=dags, env=env) as airflow:
            airflow.migrate()
            airflow.start("api-server", "scheduler", "dag-processor")

            runs: list[dict] = []
            summaries: list[dict] = []
            sent: list[dict[str, list[str]]] = []
            for change in _changes():
                run = airflow.wait_for(lambda: _next_run(airflow, runs), "the scheduler's next run")
                change(warehouse)
                before = len(emulator.messages)
                (gates / run["dag_run_id"]).touch()
                run = airflow.wait_for(lambda r=run: _finished(airflow, r), f"run {run['dag_run_id']} to end")
                assert run["state"] == "success", airflow.log_tail()
                runs.append(run)
                summaries.append(_summary(airflow, run))
                sent.append(_sent(emulator.messages[before:]))
            paused = airflow.api("PATCH", f"/api/v2/dags/{DAG_ID}", json={"is_paused": True})
            assert paused.status_code == 200, paused.text
            logs = airflow.logs()
    warehouse.close()

    assert [r["run_type"] for r in runs] == ["scheduled"] * 3
    intervals = [r["data_interval_end"] for r in runs]
    assert intervals == sorted(intervals) and len(set(intervals)) == 3
    for number, (summary, messages, expected) in enumerate(zip(summaries, sent, EXPECTED, strict=True), 1):
        delivered = sum(len(ids) for ids in expected["sent"].values())
        assert summary["records"] == expected["records"], f"run {number}"
        assert summary["messages"] == {"delivered": delivered, "rejected": 0, "failed": 0}, f"run {number}"
        assert summary["rows_read"] == sum(
            v for k, v in expected["records"].items() if k not in ("deleted", "rejected")
        )
        assert messages == expected["sent"], f"run {number}"
    upgraded = [m for m in emulator.messages if m["type"] == "identify" and m["userId"] == "1"]
    assert [m["traits"]["plan"] for m in upgraded] == ["free", "pro"]
    assert write_key not in logs
    assert "sync_customers" in logs  # the task logs were read


def _next_run(airflow: AirflowDeployment, done: list[dict]) -> dict | None:
    """The oldest run of the DAG the test has not handled yet, once the scheduler has created it."""
    reply = airflow.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns", params={"order_by": "logical_date"})
    if reply.status_code == 404:  # the dag-processor has not parsed the file yet
        return None
    reply.raise_for_status()
    handled = {r["dag_run_id"] for r in done}
    pending = [r for r in reply.json()["dag_runs"] if r["dag_run_id"] not in handled]
    return pending[0] if pending else None


def _finished(airflow: AirflowDeployment, run: dict) -> dict | None:
    reply = airflow.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{q(run['dag_run_id'])}")
    reply.raise_for_status()
    return reply.json() if reply.json()["state"] in ("success", "failed") else None


def _summary(airflow: AirflowDeployment, run: dict) -> dict:
    reply = airflow.api(
        "GET",
        f"/api/v2/dags/{DAG_ID}/dagRuns/{q(run['dag_run_id'])}/taskInstances/sync_customers"
        "/xcomEntries/return_value",
    )
    assert reply.status_code == 200, reply.text
    value = reply.json()["value"]
    return json.loads(value) if isinstance(value, str) else value
