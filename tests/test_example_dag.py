"""
The example DAG (``example_dags/example_segment_profiles_sync.py``) on jafgen data, run twice with
``dag.test()`` against SQLite and against a fresh PostgreSQL database, into the Segment emulator.

Every figure asserted is computed independently in ``airflow_provider_segment_profiles/testing/jaffle.py`` from the generated CSV
files and the deterministic change made between the two runs, not from the DAG's SQL.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent / "dags"))

from airflow_provider_segment_profiles.testing import jaffle as jaffle_data  # noqa: E402

#: Days of Jaffle Shop to simulate: long enough for the second store to open (day 192), in about a third of
#: the time jafgen takes for its one year.
SIMULATED_DAYS = 240
RUN_DATES = (datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 6, 2, tzinfo=UTC))
#: customers.sql subscribes customers with at least this many orders to the "newsletter" group.
NEWSLETTER_MIN_ORDERS = 52
TASK_IDS = ("sync_customers", "sync_stores", "sync_customer_store", "sync_orders")

pytestmark = pytest.mark.airflow_db


@pytest.fixture(scope="module")
def jaffle_csv_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Jaffle Shop CSV files generated once for this module's tests."""
    return jaffle_data.generate(tmp_path_factory.mktemp("jafgen"), days=SIMULATED_DAYS)


@pytest.fixture
def example_dag(airflow_db: Path, tmp_path: Path):
    """
    Return a loader of the example DAG: each call gives new DAG and operator objects (as a worker parses
    the file for every task), with state under ``tmp_path``, no rate limit and no retries.

    The DAG starts without runs: the operator checks its saved state against the sync state recorded in
    earlier runs' XComs, so another test's runs would not fit this test's fresh state.
    """
    from airflow.api.common.delete_dag import delete_dag
    from airflow.exceptions import DagNotFound
    from example_dag_link import load_example_module

    def load() -> Any:
        dag = load_example_module(fresh=True).dag
        for task in dag.tasks:
            task.state_path = f"file://{tmp_path}/segment_profiles_state"
            task.max_events_per_second = None
            task.retries = 0
        return dag

    with contextlib.suppress(DagNotFound):
        delete_dag(load().dag_id)
    return load


def test_example_dag_parses_without_import_errors():
    """What ``airflow dags list-import-errors`` checks, with ``example_dags`` as the dags folder."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "example_dags"))
    assert bag.import_errors == {}
    dag = bag.dags["example_segment_profiles_sync"]
    assert sorted(dag.task_ids) == sorted(TASK_IDS)
    for task in dag.tasks:  # each .sql file was found and read in place of its name
        assert task.sql.lstrip().startswith("--"), task.task_id


def _summaries(dag_run: Any) -> dict[str, dict[str, Any]]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(
            XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_run.dag_id, key="return_value")
        ).all()
        return {row.task_id: XComModel.deserialize_value(row) for row in rows}


def _assert_run(
    load_dag: Callable[[], Any],
    logical_date: datetime,
    expected: dict[str, jaffle_data.TaskExpectation],
    emulator: Any,
) -> list[dict[str, Any]]:
    emulator.reset()
    dag_run = load_dag().test(logical_date=logical_date)
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert dag_run.state == "success", states
    summaries = _summaries(dag_run)
    assert set(summaries) == set(TASK_IDS)
    for task_id, expectation in expected.items():
        summary = summaries[task_id]
        delivered = sum(expectation.delivered.values())
        assert summary["rows_read"] == expectation.rows_read, task_id
        assert summary["records"] == {**expectation.records, "rejected": 0}, task_id
        assert summary["messages"] == {"delivered": delivered, "rejected": 0, "failed": 0}, task_id
        assert summary["mappings"] == {
            name: {"delivered": count, "rejected": 0, "failed": 0}
            for name, count in expectation.delivered.items()
        }, task_id
    messages = emulator.messages
    assert Counter(m["type"] for m in messages) == +jaffle_data.expected_message_types(expected)
    assert not emulator.dropped
    assert not emulator.duplicate_message_ids()
    return messages


def _run_example_twice(
    load_dag: Callable[[], Any], load_warehouse, change_warehouse, csv_dir: Path, emulator: Any
) -> None:
    """Load, run, change the data, run again; assert both runs' summaries and messages."""
    changes = jaffle_data.plan_changes(csv_dir)
    first_expected, second_expected = jaffle_data.expected_runs(csv_dir, changes)
    load_warehouse()

    first = _assert_run(load_dag, RUN_DATES[0], first_expected, emulator)
    orders = jaffle_data.read_csv(csv_dir, "raw_orders")
    tracked_orders = {m["properties"]["order_id"] for m in first if m.get("event") == "Order Completed"}
    assert tracked_orders == {row["id"] for row in orders}
    orders_per_customer = Counter(row["customer"] for row in orders)
    newsletter = {
        m["userId"]: m["context"]["messaging_subscriptions"][0]["groups"]
        for m in first
        if "messaging_subscriptions" in m.get("context", {})
    }
    assert newsletter == {
        customer_id: [
            {
                "name": "newsletter",
                "status": "SUBSCRIBED" if count >= NEWSLETTER_MIN_ORDERS else "DID_NOT_SUBSCRIBE",
            }
        ]
        for customer_id, count in orders_per_customer.items()
    }

    change_warehouse(changes)
    second = _assert_run(load_dag, RUN_DATES[1], second_expected, emulator)

    removed = [m["userId"] for m in second if m.get("event") == "Customer Removed"]
    assert sorted(removed) == sorted(changes.removed_customers)
    identified = {m["userId"]: m["traits"] for m in second if "name" in m.get("traits", {})}
    subscribed = {
        m["userId"]: m["context"]["messaging_subscriptions"][0]["key"]
        for m in second
        if "messaging_subscriptions" in m.get("context", {})
    }
    for customer_id, name in changes.renamed_customers.items():
        assert identified[customer_id]["name"] == name
        assert "jaffleson" in identified[customer_id]["email"]
        assert subscribed[customer_id] == identified[customer_id]["email"]
    new_orders = {
        m["properties"]["order_id"]: m
        for m in second
        if m["type"] == "track" and m["event"] == "Order Completed"
    }
    assert set(new_orders) == {row["id"] for row in changes.new_orders}
    sample = changes.new_orders[0]
    properties = new_orders[sample["id"]]["properties"]
    assert properties["total"] == int(sample["order_total"]) / 100
    assert properties["item_count"] == 2
    assert new_orders[sample["id"]]["timestamp"].startswith(sample["ordered_at"])


def _segment_connection(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SEGMENT_PROFILES_DEFAULT", json.dumps(emulator.airflow_connection()))


def test_example_dag_on_sqlite(example_dag, jaffle_csv_dir, segment_emulator, tmp_path, monkeypatch):
    warehouse_file = tmp_path / "jaffle_shop.db"
    monkeypatch.setenv(
        "AIRFLOW_CONN_JAFFLE_SHOP_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(warehouse_file)})
    )
    _segment_connection(monkeypatch, segment_emulator)

    def load() -> None:
        with sqlite3.connect(warehouse_file) as conn:
            jaffle_data.load(conn, "sqlite", jaffle_csv_dir)
        conn.close()

    def change(changes: jaffle_data.ChangeSet) -> None:
        with sqlite3.connect(warehouse_file) as conn:
            jaffle_data.apply_changes(conn, "sqlite", changes)
        conn.close()

    _run_example_twice(example_dag, load, change, jaffle_csv_dir, segment_emulator)


@pytest.mark.postgres
def test_example_dag_on_postgres(postgres_dsn, segment_emulator, monkeypatch, request):
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    # Requested only now, so an unreachable server skips the test before the data is generated.
    jaffle_csv_dir = request.getfixturevalue("jaffle_csv_dir")
    example_dag = request.getfixturevalue("example_dag")

    server = conninfo_to_dict(postgres_dsn)
    database = f"segment_profiles_example_{uuid.uuid4().hex[:12]}"
    database_dsn = make_conninfo(postgres_dsn, dbname=database)
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    try:
        connection = {
            "conn_type": "postgres",
            "host": server.get("host", "127.0.0.1"),
            "port": int(server.get("port", 5432)),
            "login": server.get("user", "postgres"),
            "schema": database,
        }
        if server.get("password"):
            connection["password"] = server["password"]
        monkeypatch.setenv("AIRFLOW_CONN_JAFFLE_SHOP_WAREHOUSE", json.dumps(connection))
        _segment_connection(monkeypatch, segment_emulator)

        def load() -> None:
            with psycopg.connect(database_dsn) as conn:
                jaffle_data.load(conn, "postgres", jaffle_csv_dir)

        def change(changes: jaffle_data.ChangeSet) -> None:
            with psycopg.connect(database_dsn) as conn:
                jaffle_data.apply_changes(conn, "postgres", changes)

        _run_example_twice(example_dag, load, change, jaffle_csv_dir, segment_emulator)
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
