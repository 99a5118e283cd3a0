"""
Assets: the example (``example_dags/example_segment_profiles_assets.py``) run with ``dag.test()``: the
sync DAG names an Asset as its outlet, and the DAG scheduled on that Asset reads the sync's counts.

Expected counts come from the rows the test puts into a SQLite warehouse and changes between runs.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_segment_profiles.testing import SegmentEmulator

sys.path.insert(0, str(Path(__file__).resolve().parent / "dags"))

pytestmark = pytest.mark.airflow_db

ASSET_URI = "segment://profiles/jaffle_shop/customers"


def _warehouse(path: Path, customers: list[tuple[str, str]], orders: list[tuple[str, str, str, int]]) -> None:
    """The two Jaffle Shop tables ``customers.sql`` reads, with only the columns it uses."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE IF NOT EXISTS raw_customers (id TEXT, name TEXT)")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS raw_orders (id TEXT, customer TEXT, ordered_at TEXT, order_total INTEGER)"
        )
        conn.executemany("INSERT INTO raw_customers VALUES (?, ?)", customers)
        conn.executemany("INSERT INTO raw_orders VALUES (?, ?, ?, ?)", orders)


def _asset_events() -> list[dict[str, Any]]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(AssetEvent.extra, AssetEvent.source_dag_id)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.uri == ASSET_URI)
            .order_by(AssetEvent.id)
        ).all()
        return [{"extra": extra, "source_dag_id": dag_id} for extra, dag_id in rows]


def _queued_for(dag_id: str) -> int:
    """Asset-triggered runs the scheduler would start for ``dag_id`` (``AssetDagRunQueue`` rows)."""
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        return session.scalar(
            select(func.count()).select_from(AssetDagRunQueue).where(AssetDagRunQueue.target_dag_id == dag_id)
        )


def _unpause(dag_id: str) -> None:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import update

    with create_session() as session:
        session.execute(update(DagModel).where(DagModel.dag_id == dag_id).values(is_paused=False))


def _return_value(dag_run: Any, task_id: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(
                run_id=dag_run.run_id, dag_ids=dag_run.dag_id, key="return_value", task_ids=task_id
            )
        ).first()
        return None if row is None else XComModel.deserialize_value(row)


def test_sync_outlet_asset_events_carry_counts_and_the_downstream_dag_reads_them(
    airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.api.common.delete_dag import delete_dag
    from airflow.exceptions import DagNotFound
    from example_assets_link import load_assets_example

    write_key = f"assets-{uuid.uuid4().hex}"
    warehouse = tmp_path / "jaffle.db"
    customers = [(f"c{i:03d}-{uuid.uuid4().hex[:6]}", f"Customer {i}") for i in range(4)]
    _warehouse(
        warehouse,
        customers,
        [("o1", customers[0][0], "2024-01-02", 1250), ("o2", customers[1][0], "2024-01-03", 990)],
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_JAFFLE_SHOP_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(warehouse)})
    )

    def load() -> Any:
        module = load_assets_example(fresh=True)
        for task in module.sync_dag.tasks:
            task.state_path = f"file://{tmp_path}/state"
            task.max_events_per_second = None
        return module

    module = load()
    for dag in (module.sync_dag, module.after_sync_dag):
        with contextlib.suppress(DagNotFound):
            delete_dag(dag.dag_id)
    before = len(_asset_events())

    with SegmentEmulator(write_key=write_key) as emulator:
        monkeypatch.setenv("AIRFLOW_CONN_SEGMENT_PROFILES_DEFAULT", json.dumps(emulator.airflow_connection()))
        first = load().sync_dag.test(logical_date=datetime(2024, 6, 1, tzinfo=UTC))
        assert first.state == "success"
        assert emulator.message_count == 4
        _unpause("example_segment_profiles_after_customers_sync")  # new DAGs start paused
        # One new customer, one more order for customer 2 (number_of_orders 0 -> 1): added 1, updated 1.
        extra_customer = (f"c999-{uuid.uuid4().hex[:6]}", "Customer 9")
        _warehouse(warehouse, [extra_customer], [("o3", customers[2][0], "2024-01-04", 500)])
        second = load().sync_dag.test(logical_date=datetime(2024, 6, 2, tzinfo=UTC))
        assert second.state == "success"
        assert emulator.message_count == 6

    events = _asset_events()[before:]
    assert [e["source_dag_id"] for e in events] == ["example_segment_profiles_customers_asset"] * 2
    first_extra, second_extra = (e["extra"] for e in events)
    assert first_extra["rows_read"] == 4
    assert first_extra["records"] == {"added": 4, "updated": 0, "deleted": 0, "unchanged": 0, "rejected": 0}
    assert first_extra["messages"] == {"delivered": 4, "rejected": 0, "failed": 0}
    assert first_extra["mappings"] == {"identify_customer": {"delivered": 4, "rejected": 0, "failed": 0}}
    assert second_extra["rows_read"] == 5
    assert second_extra["records"] == {"added": 1, "updated": 1, "deleted": 0, "unchanged": 3, "rejected": 0}
    assert second_extra["messages"] == {"delivered": 2, "rejected": 0, "failed": 0}
    assert (first_extra["dry_run"], second_extra["state_generation"]) == (False, 2)
    for extra in (first_extra, second_extra):
        assert write_key not in json.dumps(extra)
        assert not {"rejected_samples", "failed_samples", "report_path"} & set(extra)

    # The example also keeps a sync log: one row per message of both runs.
    with contextlib.closing(sqlite3.connect(warehouse)) as conn:
        logged = conn.execute(
            "SELECT change_kind, outcome, COUNT(*) FROM segment_sync_log GROUP BY 1, 2 ORDER BY 1"
        ).fetchall()
    assert logged == [("added", "delivered", 5), ("updated", "delivered", 1)]

    # The scheduler would start the downstream DAG (it is scheduled on the Asset) ...
    assert _queued_for("example_segment_profiles_after_customers_sync") == 1
    # ... whose task reads the counts of the latest asset event.
    after = load().after_sync_dag.test(logical_date=datetime(2024, 6, 2, 1, tzinfo=UTC))
    assert after.state == "success"
    assert _return_value(after, "check_customers_sync") == second_extra


def test_no_asset_event_extra_without_outlets_or_context() -> None:
    """``attach_summary`` touches nothing outside a task run, and only ``Asset`` outlets."""
    from airflow.sdk import Asset, AssetAlias

    from airflow_provider_segment_profiles.operators.assets import attach_summary

    class Events(dict):
        def __missing__(self, key: Any) -> Any:
            self[key] = type("Accessor", (), {"extra": {"author": "kept"}})()
            return self[key]

    summary = {"rows_read": 3, "messages": {"delivered": 3}, "rejected_samples": [{"primary_key": "7"}]}
    asset, alias = Asset("segment://a"), AssetAlias("alias")
    assert attach_summary({}, [asset], summary) == 0
    events = Events()
    assert attach_summary({"outlet_events": events}, [asset, alias], summary) == 1
    assert list(events) == [asset]
    assert events[asset].extra == {"author": "kept", "rows_read": 3, "messages": {"delivered": 3}}
