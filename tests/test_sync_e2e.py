"""End to end: real Airflow DAG runs (``dag.test()``), a real warehouse (SQLite file, PostgreSQL server) and
the emulator over HTTP, through the sequences a scheduled sync lives through."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from airflow_provider_segment_profiles.testing import SegmentEmulator

pytestmark = pytest.mark.airflow_db
WRITE_KEY = "e2e-write-key-0123456789"
DAGS = Path(__file__).parent / "dags"
DAY = datetime(2024, 3, 1, tzinfo=UTC)


class SqliteWarehouse:
    placeholder = "?"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None)

    @property
    def airflow_conn(self) -> dict:
        return {"conn_type": "sqlite", "host": str(self.path)}

    def execute(self, sql: str, rows=()) -> None:
        sql = sql.replace("%s", "?")
        if rows:
            self.conn.executemany(sql, rows)
        else:
            self.conn.execute(sql)

    def close(self) -> None:
        self.conn.close()


class PostgresWarehouse:
    def __init__(self, dsn: str) -> None:
        import psycopg

        self.name = f"segment_e2e_{uuid.uuid4().hex[:10]}"
        self.admin = psycopg.connect(dsn, autocommit=True)
        self.admin.execute(f"CREATE DATABASE {self.name}")
        self.conn = psycopg.connect(f"{dsn} dbname={self.name}", autocommit=True)

    @property
    def airflow_conn(self) -> dict:
        return {
            "conn_type": "postgres",
            "host": "127.0.0.1",
            "port": 5432,
            "login": "postgres",
            "schema": self.name,
        }

    def execute(self, sql: str, rows=()) -> None:
        with self.conn.cursor() as cur:
            if rows:
                cur.executemany(sql, rows)
            else:
                cur.execute(sql)

    def close(self) -> None:
        self.conn.close()
        self.admin.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
        self.admin.close()


@pytest.fixture(params=["sqlite", "postgres"])
def warehouse(request, tmp_path):
    if request.param == "sqlite":
        wh = SqliteWarehouse(tmp_path / "warehouse.db")
    else:
        wh = PostgresWarehouse(request.getfixturevalue("postgres_dsn"))
    yield wh
    wh.close()


class SyncHarness:
    """Runs the test DAGs against one warehouse and one emulator, and reads back their summaries."""

    def __init__(self, warehouse, emulator: SegmentEmulator, state_dir: Path, monkeypatch) -> None:
        self.warehouse = warehouse
        self.emulator = emulator
        self.state_dir = state_dir
        self.monkeypatch = monkeypatch
        monkeypatch.setenv("AIRFLOW_CONN_E2E_WAREHOUSE", json.dumps(warehouse.airflow_conn))
        monkeypatch.setenv("AIRFLOW_CONN_SEGMENT_PROFILES_DEFAULT", json.dumps(emulator.airflow_connection()))
        monkeypatch.setenv("SEGMENT_E2E_STATE_PATH", state_dir.as_uri())
        self.settings: dict = {}
        self.retries = 0

    def run(self, dag_id: str, logical_date: datetime | str | None = "next") -> tuple[str, dict | None]:
        """Run a DAG once; return its state and the sync task's summary (``None`` when it has none)."""
        try:
            from airflow.dag_processing.dagbag import DagBag
        except ImportError:  # Airflow 3.1 (the floor, scripts/ci-floor.sh)
            from airflow.models.dagbag import DagBag

        self.monkeypatch.setenv("SEGMENT_E2E_SETTINGS", json.dumps(self.settings))
        self.monkeypatch.setenv("SEGMENT_E2E_RETRIES", str(self.retries))
        dag = DagBag(dag_folder=str(DAGS)).get_dag(dag_id)
        if logical_date == "next":
            self._day = getattr(self, "_day", DAY) + timedelta(days=1)
            logical_date = self._day
        before = len(self.emulator.messages)
        dagrun = dag.test(logical_date=logical_date)
        self.sent = self.emulator.messages[before:]
        return dagrun.state, self._summary(dag_id, dagrun.run_id)

    @staticmethod
    def _summary(dag_id: str, run_id: str) -> dict | None:
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            row = session.scalars(
                select(XComModel).where(
                    XComModel.dag_id == dag_id, XComModel.run_id == run_id, XComModel.key == "return_value"
                )
            ).first()
            return None if row is None else XComModel.deserialize_value(row)

    def sent_by(self, event_or_type: str) -> list[str]:
        """User ids of the last run's messages of one track event name or message type."""
        return sorted(
            m["userId"] for m in self.sent if m.get("event") == event_or_type or m["type"] == event_or_type
        )


def forget_earlier_runs() -> None:
    """Each test starts its DAGs without runs: earlier tests' XCom state would not fit this test's fresh
    state_path (and the operator rightly refuses to run when they disagree)."""
    from airflow.api.common.delete_dag import delete_dag
    from airflow.exceptions import DagNotFound

    for dag_id in (
        "segment_e2e_customers",
        "segment_e2e_orders",
        "segment_e2e_mapped",
        "segment_e2e_plan_changes",
    ):
        with contextlib.suppress(DagNotFound):
            delete_dag(dag_id)


@pytest.fixture
def harness(warehouse, tmp_path, monkeypatch, airflow_db):
    forget_earlier_runs()
    with SegmentEmulator(write_key=WRITE_KEY) as emulator:
        yield SyncHarness(warehouse, emulator, tmp_path / "state", monkeypatch)


def create_customers(wh, ids) -> None:
    wh.execute(
        "CREATE TABLE customers (customer_id INTEGER, name TEXT, email TEXT, plan TEXT, updated_at TEXT)"
    )
    wh.execute(
        "INSERT INTO customers VALUES (%s, %s, %s, %s, %s)",
        [(i, f"Customer {i}", f"c{i}@example.com", "free", "2024-01-01T00:00:00Z") for i in ids],
    )


def test_diff_sync_through_a_scheduled_life(harness):
    wh = harness.warehouse
    create_customers(wh, range(1, 11))

    state, summary = harness.run("segment_e2e_customers")
    assert state == "success"
    assert summary["records"] == {"added": 10, "updated": 0, "deleted": 0, "unchanged": 0, "rejected": 0}
    assert summary["messages"] == {"delivered": 20, "rejected": 0, "failed": 0}
    assert harness.sent_by("identify") == sorted(str(i) for i in range(1, 11))
    first_ids = {m["userId"]: m["messageId"] for m in harness.sent if m["type"] == "identify"}

    state, summary = harness.run("segment_e2e_customers")
    assert state == "success"
    assert summary["records"]["unchanged"] == 10
    assert summary["messages"] == {"delivered": 0, "rejected": 0, "failed": 0}
    assert harness.sent == []

    wh.execute("UPDATE customers SET plan = 'pro' WHERE customer_id IN (1, 2, 3)")
    wh.execute("DELETE FROM customers WHERE customer_id IN (9, 10)")
    wh.execute(
        "INSERT INTO customers VALUES (11, 'Customer 11', 'c11@example.com', 'free', '2024-01-02T00:00:00Z')"
    )
    state, summary = harness.run("segment_e2e_customers")
    assert state == "success"
    assert summary["records"] == {"added": 1, "updated": 3, "deleted": 2, "unchanged": 5, "rejected": 0}
    assert summary["mappings"] == {
        "customers_identify": {"delivered": 4, "rejected": 0, "failed": 0},
        "customer_signed_up": {"delivered": 1, "rejected": 0, "failed": 0},
        "customer_removed": {"delivered": 2, "rejected": 0, "failed": 0},
    }
    assert harness.sent_by("identify") == ["1", "11", "2", "3"]
    assert harness.sent_by("Customer Signed Up") == ["11"]
    assert harness.sent_by("Customer Removed") == ["10", "9"]
    updated = {m["userId"]: m for m in harness.sent if m["type"] == "identify"}
    assert updated["1"]["traits"]["plan"] == "pro"
    assert updated["1"]["messageId"] != first_ids["1"]  # a new change gets a new messageId

    # Segment fails two users: the rest is delivered, the run fails loudly, state keeps the two.
    wh.execute("UPDATE customers SET plan = 'team' WHERE customer_id IN (4, 5, 6, 7)")
    harness.emulator.fail_user("4", status=500)
    harness.emulator.fail_user("5", status=400)
    state, summary = harness.run("segment_e2e_customers")
    assert state == "failed"
    assert summary["messages"] == {"delivered": 2, "rejected": 0, "failed": 2}
    assert sorted(s["primary_key"] for s in summary["failed_samples"]) == ["4", "5"]
    assert harness.sent_by("identify") == ["6", "7"]
    assert summary["report_path"]
    report = [
        json.loads(line)
        for line in Path(summary["report_path"].removeprefix("file://")).read_text().splitlines()
    ]
    assert sorted(r["primary_key"] for r in report) == ["4", "5"]
    assert all(r["outcome"] == "failed" and r["mapping"] == "customers_identify" for r in report)

    harness.emulator.clear_faults()
    state, summary = harness.run("segment_e2e_customers")
    assert state == "success"
    assert summary["records"]["updated"] == 2
    assert harness.sent_by("identify") == ["4", "5"]

    # A manual run with no logical date continues from the last committed state.
    wh.execute("UPDATE customers SET name = 'Renamed' WHERE customer_id = 8")
    state, summary = harness.run("segment_e2e_customers", logical_date=None)
    assert state == "success"
    assert harness.sent_by("identify") == ["8"]

    # The next scheduled run (whose logical date is earlier than the manual run's) does not go back.
    wh.execute("UPDATE customers SET name = 'Renamed again' WHERE customer_id = 8")
    state, summary = harness.run("segment_e2e_customers")
    assert state == "success"
    assert summary["records"]["updated"] == 1
    assert harness.sent_by("identify") == ["8"]

    # Clearing and re-running the same DAG run sends nothing again.
    state, summary = harness.run("segment_e2e_customers", logical_date=harness._day)
    assert state == "success"
    assert summary["messages"]["delivered"] == 0

    assert_every_change_delivered_once_per_message_id(harness)


def assert_every_change_delivered_once_per_message_id(harness) -> None:
    """Repeats of a message (retries) must reuse its messageId; distinct changes have distinct ids."""
    by_id: dict[str, list[dict]] = {}
    for message in harness.emulator.messages:
        by_id.setdefault(message["messageId"], []).append(message)
    for copies in by_id.values():
        bodies = {json.dumps({k: v for k, v in m.items() if k != "sentAt"}, sort_keys=True) for m in copies}
        assert len(bodies) == 1


def test_retried_try_continues_from_the_state_its_first_try_committed(harness):
    create_customers(harness.warehouse, range(1, 6))
    harness.settings = {"batch_size": 1}
    harness.retries = 1
    # Two attempts per request (retry_policy in the DAG): user 3's first try fails, its retry succeeds.
    harness.emulator.fail_user("3", status=503, times=2)
    state, summary = harness.run("segment_e2e_customers")
    assert state == "success"
    assert summary["messages"]["failed"] == 0
    identify_ids = Counter(m["userId"] for m in harness.emulator.messages if m["type"] == "identify")
    assert identify_ids == Counter({str(i): 1 for i in range(1, 6)})  # try 2 sent only user 3


def test_lost_state_fails_loudly_and_full_refresh_recovers(harness):
    create_customers(harness.warehouse, range(1, 4))
    assert harness.run("segment_e2e_customers")[0] == "success"
    shutil.rmtree(harness.state_dir)
    state, summary = harness.run("segment_e2e_customers")
    assert state == "failed"
    assert summary is None
    assert harness.sent == []  # never a silent full resend

    harness.settings = {"full_refresh": True}
    state, summary = harness.run("segment_e2e_customers")
    assert state == "success"
    assert summary["records"]["added"] == 3
    harness.settings = {}
    state, summary = harness.run("segment_e2e_customers")
    assert state == "success" and summary["records"]["unchanged"] == 3


def test_dry_run_writes_exactly_what_the_real_run_then_sends(harness):
    create_customers(harness.warehouse, range(1, 8))
    harness.settings = {"dry_run": True}
    state, summary = harness.run("segment_e2e_customers")
    assert state == "success"
    assert harness.sent == []
    planned = [
        json.loads(line)
        for line in Path(summary["dry_run_path"].removeprefix("file://")).read_text().splitlines()
    ]
    assert len(planned) == summary["messages"]["delivered"] == 14

    harness.settings = {}
    state, summary = harness.run("segment_e2e_customers")
    assert summary["records"]["added"] == 7  # the dry run kept state untouched

    def comparable(messages):
        return sorted(
            json.dumps({k: v for k, v in m.items() if k != "sentAt"}, sort_keys=True) for m in messages
        )

    assert comparable(planned) == comparable(harness.sent)


def test_null_and_duplicate_keys_are_rejected_and_reported(harness):
    wh = harness.warehouse
    create_customers(wh, [1, 2, 3])
    wh.execute(
        "INSERT INTO customers VALUES (NULL, 'No key', 'n@example.com', 'free', '2024-01-01T00:00:00Z')"
    )
    wh.execute(
        "INSERT INTO customers VALUES (2, 'Second two', 'two@example.com', 'free', '2024-01-01T00:00:00Z')"
    )
    harness.settings = {"max_rejected_fraction": 1.0}
    state, summary = harness.run("segment_e2e_customers")
    assert state == "success"
    assert summary["rows_read"] == 5
    assert summary["records"]["rejected"] == 2
    assert summary["records"]["added"] == 3
    reasons = [s["reason"] for s in summary["rejected_samples"]]
    assert any("is NULL" in r for r in reasons)
    assert any("duplicate unique identifier" in r and "'2'" in r for r in reasons)


def create_orders(wh, rows) -> None:
    wh.execute(
        "INSERT INTO orders (order_id, customer_id, ordered_at, total) VALUES (%s, %s, %s, %s)",
        [(order_id, f"c{order_id}", ordered_at, 10.5) for order_id, ordered_at in rows],
    )


def test_incremental_boundary_with_rows_sharing_the_watermark(harness):
    wh = harness.warehouse
    wh.execute("CREATE TABLE orders (order_id INTEGER, customer_id TEXT, ordered_at TEXT, total REAL)")
    t1, t2, t3 = "2024-01-01T10:00:00", "2024-01-01T11:00:00", "2024-01-01T12:00:00"
    create_orders(wh, [(1, t1), (2, t2), (3, t2), (4, t2)])

    state, summary = harness.run("segment_e2e_orders")
    assert state == "success"
    assert summary["records"]["added"] == 4
    assert harness.sent_by("Order Completed") == ["c1", "c2", "c3", "c4"]

    # Late rows at the watermark itself, and one past it: exactly those are sent.
    create_orders(wh, [(5, t2), (6, t2), (7, t3)])
    state, summary = harness.run("segment_e2e_orders")
    assert summary["records"]["added"] == 3
    assert summary["records"]["unchanged"] == 3  # rows 2-4 re-read at the boundary, skipped by key
    assert harness.sent_by("Order Completed") == ["c5", "c6", "c7"]

    state, summary = harness.run("segment_e2e_orders")
    assert harness.sent == []

    # A failure at the boundary: the failed row is re-sent next run, the delivered ones are not.
    create_orders(wh, [(8, t3), (9, t3), (10, t3)])
    harness.emulator.fail_user("c9", status=400)
    state, summary = harness.run("segment_e2e_orders")
    assert state == "failed"
    assert harness.sent_by("Order Completed") == ["c10", "c8"]
    harness.emulator.clear_faults()
    state, summary = harness.run("segment_e2e_orders")
    assert state == "success"
    assert harness.sent_by("Order Completed") == ["c9"]


def test_mapped_task_instances_keep_state_per_map_index(harness):
    wh = harness.warehouse
    create_customers(wh, range(1, 7))
    wh.execute("UPDATE customers SET plan = 'pro' WHERE customer_id > 3")
    state, _ = harness.run("segment_e2e_mapped")
    assert state == "success"
    assert harness.sent_by("identify") == ["1", "2", "3", "4", "5", "6"]
    roots = sorted(p.name for p in (harness.state_dir / "segment_e2e_mapped" / "sync_plans").iterdir())
    assert roots == ["map_0", "map_1"]

    wh.execute("UPDATE customers SET name = 'Changed' WHERE customer_id IN (2, 5)")
    state, _ = harness.run("segment_e2e_mapped")
    assert state == "success"
    assert harness.sent_by("identify") == ["2", "5"]


def test_write_key_is_in_no_artefact_of_a_run(harness, capfd):
    import base64

    create_customers(harness.warehouse, range(1, 5))
    harness.emulator.fail_user("2", status=400)
    harness.settings = {"max_failed_fraction": 1.0}
    assert harness.run("segment_e2e_customers")[0] == "success"
    harness.settings = {"dry_run": True, "full_refresh": True}
    assert harness.run("segment_e2e_customers")[0] == "success"
    out, err = capfd.readouterr()
    secrets = [WRITE_KEY.encode(), base64.b64encode(f"{WRITE_KEY}:".encode())]
    artefacts = {"task logs (console)": (out + err).encode()}
    for root in (harness.state_dir, Path(os.environ["AIRFLOW_HOME"])):
        for path in root.rglob("*"):
            if path.is_file():
                artefacts[str(path)] = (
                    path.read_bytes()
                )  # reports, dry runs, snapshots, HEAD, metadata DB, logs
    assert any("report" in name for name in artefacts) and any("dry_runs" in name for name in artefacts)
    assert "sync summary" in artefacts["task logs (console)"].decode()
    for name, content in artefacts.items():
        for secret in secrets:
            assert secret not in content, f"write key found in {name}"


def committed_snapshot(harness, dag_id: str) -> Path:
    """The snapshot file the committed ``HEAD.json`` of ``dag_id`` names."""
    (head_file,) = (harness.state_dir / dag_id).rglob("HEAD.json")
    return head_file.parent / "snapshots" / json.loads(head_file.read_text())["snapshot"]


@pytest.mark.parametrize("engine", ["worker", "warehouse"])
def test_a_track_mapping_fires_only_when_its_own_column_changed(harness, engine):
    harness.monkeypatch.setenv("SEGMENT_E2E_PLAN_ENGINE", engine)
    wh = harness.warehouse
    create_customers(wh, range(1, 6))
    state, summary = harness.run("segment_e2e_plan_changes")
    assert state == "success"
    assert harness.sent_by("identify") == ["1", "2", "3", "4", "5"]
    assert harness.sent_by("Plan Changed") == []  # trigger 'updated': added records do not fire it

    wh.execute("UPDATE customers SET email = 'new-' || email WHERE customer_id IN (1, 2)")
    state, summary = harness.run("segment_e2e_plan_changes")
    assert state == "success"
    assert summary["records"]["updated"] == 2
    assert harness.sent_by("identify") == ["1", "2"]
    assert harness.sent_by("Plan Changed") == []  # only the email changed
    assert summary["mapping_changes"] == {"identify_customer": 2, "plan_changed": 0}

    wh.execute("UPDATE customers SET plan = 'pro' WHERE customer_id IN (2, 3)")
    state, summary = harness.run("segment_e2e_plan_changes")
    assert state == "success"
    assert harness.sent_by("identify") == ["2", "3"]
    assert harness.sent_by("Plan Changed") == ["2", "3"]
    assert {m["properties"]["plan"] for m in harness.sent if m.get("event") == "Plan Changed"} == {"pro"}
    assert summary["mapping_changes"] == {"identify_customer": 2, "plan_changed": 2}
    first_plan_ids = {m["userId"]: m["messageId"] for m in harness.sent if m.get("event") == "Plan Changed"}

    wh.execute("UPDATE customers SET name = 'Renamed' WHERE customer_id = 4")  # a column no mapping reads
    state, summary = harness.run("segment_e2e_plan_changes")
    assert state == "success"
    assert summary["records"]["unchanged"] == 5
    assert harness.sent == []

    # Both inputs of 1; 3's plan back to its earlier value: a new change, so a new messageId.
    wh.execute("UPDATE customers SET email = 'c1@example.org', plan = 'team' WHERE customer_id = 1")
    wh.execute("UPDATE customers SET plan = 'free' WHERE customer_id = 3")
    state, summary = harness.run("segment_e2e_plan_changes")
    assert state == "success"
    assert harness.sent_by("identify") == ["1", "3"]
    assert harness.sent_by("Plan Changed") == ["1", "3"]
    again = {m["userId"]: m["messageId"] for m in harness.sent if m.get("event") == "Plan Changed"}
    assert again["3"] != first_plan_ids["3"]

    state, summary = harness.run("segment_e2e_plan_changes")
    assert state == "success" and harness.sent == []
    ids = [m["messageId"] for m in harness.emulator.messages]
    assert len(ids) == len(set(ids))  # no retries here: every message is a distinct change


def strip_mapping_checksums(snapshot: Path) -> None:
    """Rewrite a snapshot's records table in the shape it had before per-mapping checksums existed."""
    db = sqlite3.connect(snapshot, isolation_level=None)
    try:
        db.executescript(
            """
            CREATE TABLE old (pk TEXT PRIMARY KEY, checksum INTEGER, cursor, version INTEGER) WITHOUT ROWID;
            INSERT INTO old SELECT pk, checksum, cursor, version FROM snapshot;
            DROP TABLE snapshot;
            ALTER TABLE old RENAME TO snapshot;
            """
        )
        assert "mapping_checksums" not in {row[1] for row in db.execute("PRAGMA table_info(snapshot)")}
    finally:
        db.close()


def test_a_state_committed_before_per_mapping_changes_sends_nothing_for_unchanged_records(harness):
    wh = harness.warehouse
    dag_id = "segment_e2e_plan_changes"
    create_customers(wh, range(1, 6))
    assert harness.run(dag_id)[0] == "success"
    wh.execute("UPDATE customers SET plan = 'pro' WHERE customer_id = 1")
    assert harness.run(dag_id)[0] == "success"
    strip_mapping_checksums(committed_snapshot(harness, dag_id))

    # The upgraded run: the unchanged records send nothing; the one changed meanwhile goes to every mapping,
    # as before the upgrade (the state cannot say which of its mappings' inputs changed).
    wh.execute("UPDATE customers SET email = 'new-' || email WHERE customer_id = 3")
    state, summary = harness.run(dag_id)
    assert state == "success"
    assert summary["records"] == {"added": 0, "updated": 1, "deleted": 0, "unchanged": 4, "rejected": 0}
    assert harness.sent_by("identify") == ["3"]
    assert harness.sent_by("Plan Changed") == ["3"]
    db = sqlite3.connect(committed_snapshot(harness, dag_id))
    assert db.execute("SELECT count(*) FROM snapshot WHERE mapping_checksums IS NULL").fetchone() == (0,)
    db.close()

    state, summary = harness.run(dag_id)
    assert state == "success" and harness.sent == []
    # From now on every record knows its mappings' checksums: an email change is the Identify's alone.
    wh.execute("UPDATE customers SET email = 'new-' || email WHERE customer_id IN (1, 2)")
    state, summary = harness.run(dag_id)
    assert state == "success"
    assert harness.sent_by("identify") == ["1", "2"]
    assert harness.sent_by("Plan Changed") == []


def warehouse_state_tables(wh) -> list[str]:
    """The warehouse engine's per-sync state tables in ``wh`` (qualified as the warehouse names them)."""
    if isinstance(wh, SqliteWarehouse):
        rows = wh.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'segment_profiles__sp_%'"
        ).fetchall()
        return [f'"{name}"' for (name,) in rows]
    rows = wh.conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'segment_profiles' "
        "AND table_name LIKE 'sp\\_%'"
    ).fetchall()
    return [f'segment_profiles."{name}"' for (name,) in rows]


def test_a_warehouse_state_committed_before_per_mapping_changes_sends_nothing_for_unchanged_records(harness):
    """A state table an earlier release committed has no ``mapping_checksums`` column: the run adds it, sends
    nothing for the unchanged records, sends a record changed meanwhile through every mapping (its state
    cannot say which mapping's inputs changed), and tells mappings apart from then on."""
    wh = harness.warehouse
    dag_id = "segment_e2e_plan_changes"
    harness.monkeypatch.setenv("SEGMENT_E2E_PLAN_ENGINE", "warehouse")
    create_customers(wh, range(1, 6))
    assert harness.run(dag_id)[0] == "success"
    (table,) = warehouse_state_tables(wh)
    wh.execute(f"ALTER TABLE {table} DROP COLUMN mapping_checksums")

    wh.execute("UPDATE customers SET email = 'new-' || email WHERE customer_id = 3")
    state, summary = harness.run(dag_id)
    assert state == "success"
    assert summary["records"] == {"added": 0, "updated": 1, "deleted": 0, "unchanged": 4, "rejected": 0}
    assert harness.sent_by("identify") == ["3"]
    assert harness.sent_by("Plan Changed") == ["3"]

    state, summary = harness.run(dag_id)
    assert state == "success" and harness.sent == []
    wh.execute("UPDATE customers SET email = 'new-' || email WHERE customer_id IN (3, 4)")
    state, summary = harness.run(dag_id)
    assert state == "success"
    # 3 has its mapping checksums since the upgraded run; 4 was never changed since, so it has none.
    assert harness.sent_by("identify") == ["3", "4"]
    assert harness.sent_by("Plan Changed") == ["4"]
    # 4 counts for every mapping (its view is unknown), 3 for the Identify alone.
    assert summary["mapping_changes"] == {"identify_customer": 2, "plan_changed": 1}
