"""
``change_detection="warehouse"``: the model is diffed against state tables inside the warehouse (SQLite and
PostgreSQL here, for real), through real DAG runs against the Segment emulator. The scenarios the worker
engine is known for are also run over both engines in ``test_reliability_state_properties.py`` and
``test_reliability_killed_worker.py``; this module covers what is specific to the warehouse engine.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("reliability_support")
from reliability_support import (  # noqa: E402
    CUSTOMER_MAPPINGS,
    IDENTIFY_MAPPING,
    DagHarness,
    DirectRunner,
    DuckDBWarehouse,
    FakeTaskInstance,
    MariaDBWarehouse,
    PostgresWarehouse,
    SegmentView,
    SqliteWarehouse,
    assert_segment_matches,
    create_customers,
    insert_customers,
    view_differences,
    warehouse_customers,
)

from airflow_provider_segment_profiles.exceptions import ConfigurationError  # noqa: E402

pytest_plugins = ["reliability_support"]
pytestmark = pytest.mark.airflow_db


@pytest.fixture(params=["sqlite", "postgres", "duckdb", "mariadb"])
def wh_harness(request, rel_emulator, tmp_path, monkeypatch, airflow_db) -> DagHarness:
    """A :class:`DagHarness` with ``change_detection="warehouse"`` on SQLite, on a fresh PostgreSQL schema
    (which also holds the state tables, so it is dropped with them) or on a DuckDB file through the DuckDB
    hook, or on a fresh MariaDB database through the MySQL hook (mysql-connector-python)."""
    return _warehouse_harness(request.param, request, rel_emulator, tmp_path, monkeypatch)


@pytest.fixture
def pg_harness(request, rel_emulator, tmp_path, monkeypatch, airflow_db) -> DagHarness:
    """:func:`wh_harness` on PostgreSQL only."""
    return _warehouse_harness("postgres", request, rel_emulator, tmp_path, monkeypatch)


def _warehouse_harness(kind: str, request, rel_emulator, tmp_path, monkeypatch) -> DagHarness:
    if kind == "sqlite":
        warehouse: Any = SqliteWarehouse(tmp_path / "warehouse.db")
    elif kind == "duckdb":
        warehouse = DuckDBWarehouse(tmp_path / "warehouse.duckdb")
    elif kind == "mariadb":
        warehouse = MariaDBWarehouse(request.getfixturevalue("mariadb_params"))
    else:
        warehouse = PostgresWarehouse(request.getfixturevalue("postgres_dsn"))
    request.addfinalizer(warehouse.close)
    h = DagHarness(warehouse, rel_emulator, tmp_path / "state", monkeypatch, name=request.node.name)
    h.operator["change_detection"] = "warehouse"
    if kind in ("postgres", "mariadb"):
        h.operator["state_schema"] = warehouse.schema
    return h


def state_tables(h: DagHarness) -> list[str]:
    """Names of the warehouse engine's tables (excluding the model's)."""
    wh = h.warehouse
    if wh.kind == "sqlite":
        rows = wh.query(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'segment_profiles__%'"
        )
    else:
        rows = wh.query(
            f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{wh.schema}' "
            "AND table_name <> 'customers'"
        )
    return sorted(r[0] for r in rows)


def state_rows(h: DagHarness) -> dict[str, tuple]:
    """``pk -> (checksum, version, uncertain, pending, deleted_at)`` of the sync's state table."""
    wh = h.warehouse
    (table,) = [t for t in state_tables(h) if t.endswith(tuple("0123456789abcdef")) and "sp_" in t]
    name = table if wh.kind == "sqlite" else f"{wh.schema}.{table}"
    return {
        r[0]: tuple(r[1:])
        for r in wh.query(f"SELECT pk, checksum, version, uncertain, pending, deleted_at FROM {name}")
    }


def meta_rows(h: DagHarness) -> list[tuple]:
    wh = h.warehouse
    name = "segment_profiles__syncs" if wh.kind == "sqlite" else f"{wh.schema}.syncs"
    return wh.query(f"SELECT sync_id, generation, dialect, definition, used_columns FROM {name}")


def test_only_changed_rows_cross_the_network(wh_harness: DagHarness):
    """0% and 1% changed: rows_fetched is exactly the number of added + updated records; the totals
    reconcile (rows_read counts the unchanged rows the warehouse counted)."""
    h, wh = wh_harness, wh_harness.warehouse
    create_customers(wh, range(1, 201))
    first = h.run()
    assert first.state == "success"
    assert first.summary["records"]["added"] == 200
    assert first.summary["rows_fetched"] == 200
    assert first.summary["change_detection"] == "warehouse"

    quiet = h.run()  # 0% changed
    assert quiet.state == "success"
    assert quiet.sent == []
    assert quiet.summary["rows_fetched"] == 0
    assert quiet.summary["rows_read"] == 200
    assert quiet.summary["records"]["unchanged"] == 200

    wh.execute(f"UPDATE {wh.t('customers')} SET plan = 'pro' WHERE id <= 2")  # 1% changed
    wh.execute(f"DELETE FROM {wh.t('customers')} WHERE id = 200")
    insert_customers(wh, [201])
    changed = h.run()
    assert changed.state == "success"
    records = changed.summary["records"]
    assert (records["added"], records["updated"], records["deleted"], records["unchanged"]) == (1, 2, 1, 197)
    assert changed.summary["rows_fetched"] == 3
    assert changed.summary["rows_read"] == 200
    assert_segment_matches(h.emulator.messages, warehouse_customers(wh))
    assert h.run().sent == []
    ((_, generation, dialect, definition, columns),) = meta_rows(h)
    assert generation == h.head()["generation"] == 4
    assert (
        dialect
        == {"sqlite": "sqlite", "postgres": "postgresql", "duckdb": "duckdb", "mariadb": "mysql"}[wh.kind]
    )
    assert definition == 1
    assert columns == "id,name,email,plan"


def test_failed_record_keeps_its_old_checksum_and_is_sent_again(wh_harness: DagHarness):
    h, wh = wh_harness, wh_harness.warehouse
    create_customers(wh, range(1, 11))
    assert h.run().state == "success"
    before = state_rows(h)
    wh.execute(f"UPDATE {wh.t('customers')} SET plan = 'pro' WHERE id IN (3, 4)")
    h.emulator.fail_user("3", status=400)
    failed = h.run()
    assert failed.state == "failed"  # max_failed_fraction=0: the task fails after committing the rest
    assert failed.summary is None or failed.summary["messages"]["failed"] >= 1
    after = state_rows(h)
    assert after["3"][:2] == before["3"][:2]  # what Segment held: the old checksum and version
    assert after["3"][2] == 1  # uncertain: sent again even if the value goes back
    assert after["4"][0] != before["4"][0] and after["4"][1] == before["4"][1] + 1
    h.emulator.clear_faults()
    retry = h.run()
    assert retry.state == "success"
    assert {m["userId"] for m in retry.sent} == {"3"}
    assert_segment_matches(h.emulator.messages, warehouse_customers(wh))
    assert state_rows(h)["3"][2] == 0


def test_leave_return_and_flip_back_get_new_message_ids(wh_harness: DagHarness):
    h, wh = wh_harness, wh_harness.warehouse
    create_customers(wh, range(1, 4))
    assert h.run().state == "success"
    wh.execute(f"DELETE FROM {wh.t('customers')} WHERE id = 1")
    assert h.run().state == "success"
    assert state_rows(h)["1"][4] is not None  # a tombstone
    insert_customers(wh, [1])  # back with the same values
    wh.execute(f"UPDATE {wh.t('customers')} SET plan = 'pro' WHERE id = 2")
    assert h.run().state == "success"
    wh.execute(f"UPDATE {wh.t('customers')} SET plan = 'free' WHERE id = 2")  # flip back within 24 h
    assert h.run().state == "success"
    ids = [m["messageId"] for m in h.emulator.messages]
    assert len(ids) == len(set(ids))
    assert_segment_matches(h.emulator.messages, warehouse_customers(wh))
    assert state_rows(h)["1"][1] == 3 and state_rows(h)["2"][1] == 3


def test_full_refresh_rebuilds_and_dry_run_changes_no_table(wh_harness: DagHarness):
    h, wh = wh_harness, wh_harness.warehouse
    create_customers(wh, range(1, 21))
    assert h.plan()  # a dry run on a first run creates nothing
    assert state_tables(h) == []
    assert h.run().state == "success"
    wh.execute(f"UPDATE {wh.t('customers')} SET plan = 'pro' WHERE id <= 5")
    tables, rows, meta = state_tables(h), state_rows(h), meta_rows(h)
    plan = h.plan()
    assert len(plan) == 5
    assert (state_tables(h), state_rows(h), meta_rows(h)) == (tables, rows, meta)
    refreshed = h.run(full_refresh=True)
    assert refreshed.state == "success"
    assert refreshed.summary["records"]["added"] == 20
    assert len(state_rows(h)) == 20 and all(r[1] == 1 for r in state_rows(h).values())
    assert h.run().sent == []
    assert_segment_matches(h.emulator.messages, warehouse_customers(wh))


def test_a_mapping_change_sends_every_record_again(wh_harness: DagHarness):
    h, wh = wh_harness, wh_harness.warehouse
    create_customers(wh, range(1, 6))
    assert h.run().state == "success"
    renamed = {**IDENTIFY_MAPPING, "name": "identify_v2"}
    changed = h.run(mappings=[renamed, *CUSTOMER_MAPPINGS[1:]])
    assert changed.state == "success"
    assert changed.summary["records"]["updated"] == 5
    assert {m["userId"] for m in changed.sent if m["type"] == "identify"} == {"1", "2", "3", "4", "5"}


def test_two_runs_at_once_the_second_to_commit_fails_cleanly(wh_harness: DagHarness, monkeypatch):
    """A run that commits after another run of the same sync did fails with a StateError; the state is the
    other run's, whole, and the next run converges."""
    from airflow_provider_segment_profiles.pipeline.detection.warehouse.engine import WarehouseChangeDetector

    h, wh = wh_harness, wh_harness.warehouse
    create_customers(wh, range(1, 11))
    assert h.run().state == "success"
    wh.execute(f"UPDATE {wh.t('customers')} SET plan = 'pro' WHERE id <= 3")
    real_commit = WarehouseChangeDetector.snapshot_to_commit
    other = DirectRunner(
        {
            "conn_id": "reliability_warehouse",
            "sql": h.operator["sql"],
            "primary_key": "id",
            "mappings": CUSTOMER_MAPPINGS,
            "change_detection": "warehouse",
            "max_events_per_second": None,
            **({"state_schema": h.operator["state_schema"]} if "state_schema" in h.operator else {}),
        },
        h.state_dir,
        dag_id=h.dag_id,
    )
    inner: list[Any] = []

    def commit_after_another_run(self, workdir: Path, watermark: Any):
        if not inner:  # the outer run: a whole second run of the same sync starts and commits first
            inner.append(None)
            inner.append(other.run())
        return real_commit(self, workdir, watermark)

    monkeypatch.setattr(WarehouseChangeDetector, "snapshot_to_commit", commit_after_another_run)
    outer = h.run()
    monkeypatch.setattr(WarehouseChangeDetector, "snapshot_to_commit", real_commit)
    assert inner[1]["records"]["updated"] == 3
    assert outer.state == "failed"
    assert h.head()["generation"] == 2 == meta_rows(h)[0][1]
    wh.execute(f"UPDATE {wh.t('customers')} SET plan = 'team' WHERE id = 1")
    assert h.run().state == "success"
    assert_segment_matches(h.emulator.messages, warehouse_customers(wh))


def test_switching_engines_needs_a_full_refresh(wh_harness: DagHarness):
    h, wh = wh_harness, wh_harness.warehouse
    create_customers(wh, range(1, 6))
    assert h.run(change_detection="worker").state == "success"
    refused = h.run()
    assert refused.state == "failed"
    assert h.head()["extra"]["change_detection"] == "worker"
    assert h.run(full_refresh=True).state == "success"
    assert h.head()["extra"]["change_detection"] == "warehouse"
    wh.execute(f"DELETE FROM {wh.t('customers')} WHERE id = 5")
    assert h.run().summary["records"]["deleted"] == 1
    # The switch re-sends every record under new message ids (the engines' checksums differ, as a full
    # refresh's may): Segment's view is right, the repeats are the documented cost of switching.
    view = SegmentView.of(h.emulator.messages)
    assert view_differences(view.profiles, warehouse_customers(wh)) == []


def test_null_and_repeated_identifiers_are_rejected_per_record(rel_harness: DagHarness):
    h, wh = rel_harness, rel_harness.warehouse
    h.operator["change_detection"] = "warehouse"
    h.operator["max_rejected_fraction"] = 0.5  # 2 of 7 rejected records: over the default 10% (issue 19)
    create_customers(wh, range(1, 6))
    wh.execute("INSERT INTO customers VALUES (NULL, 'Nobody', 'n@example.com', 'free')")
    wh.execute("INSERT INTO customers VALUES (2, 'Again', 'again@example.com', 'free')")
    run = h.run()
    assert run.state == "success"
    assert run.summary["records"]["rejected"] == 2
    assert run.summary["records"]["added"] == 5
    assert run.summary["rows_read"] == 7
    reasons = [s["reason"] for s in run.summary["rejected_samples"]]
    assert any("is NULL" in r for r in reasons) and any(
        "duplicate unique identifier: id '2'" in r for r in reasons
    )
    assert {m["traits"]["name"] for m in run.sent if m["type"] == "identify" and m["userId"] == "2"} == {
        "Customer 2"
    }


def test_mapped_tasks_keep_one_state_each(rel_sqlite: SqliteWarehouse, rel_emulator, tmp_path, monkeypatch):
    import json

    from airflow_provider_segment_profiles.operators.segment_profiles import SegmentProfilesSyncOperator

    monkeypatch.setenv("AIRFLOW_CONN_MAPPED_WAREHOUSE", json.dumps(rel_sqlite.airflow_conn))
    monkeypatch.setenv("AIRFLOW_CONN_SEGMENT_PROFILES_DEFAULT", json.dumps(rel_emulator.airflow_connection()))
    create_customers(rel_sqlite, range(1, 11))
    runner = DirectRunner({}, tmp_path / "state", dag_id=f"mapped_{uuid.uuid4().hex[:6]}")
    stores: dict[int, dict] = {}  # Airflow keeps XCom per map index

    def run(map_index: int, low: int, high: int) -> dict[str, Any]:
        operator = SegmentProfilesSyncOperator(
            task_id="sync",
            conn_id="mapped_warehouse",
            sql=f"SELECT id, name, email, plan FROM customers WHERE id BETWEEN {low} AND {high}",
            primary_key="id",
            mappings=CUSTOMER_MAPPINGS,
            change_detection="warehouse",
            state_path=runner.state_dir.as_uri(),
            max_events_per_second=None,
        )
        run_id = f"run_{uuid.uuid4().hex[:6]}"
        ti = FakeTaskInstance(
            stores.setdefault(map_index, {}),
            dag_id=runner.dag_id,
            task_id="sync",
            run_id=run_id,
            map_index=map_index,
        )
        return operator.execute({"ti": ti, "task_instance": ti, "run_id": run_id})

    assert run(0, 1, 5)["records"]["added"] == 5
    assert run(1, 6, 10)["records"]["added"] == 5
    tables = rel_sqlite.query(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'segment_profiles__sp_%'"
    )
    assert len(tables) == 2
    rel_sqlite.execute("UPDATE customers SET plan = 'pro' WHERE id = 7")
    first, second = run(0, 1, 5), run(1, 6, 10)
    assert (first["records"]["unchanged"], first["records"]["deleted"]) == (5, 0)
    assert (second["records"]["updated"], second["records"]["deleted"]) == (1, 0)


def test_postgres_values_checksum_stably_and_every_change_is_seen(
    rel_postgres, rel_emulator, tmp_path, monkeypatch, airflow_db
):
    wh = rel_postgres
    wh.execute(
        f"CREATE TABLE {wh.t('customers')} (id INTEGER, name TEXT, email TEXT, plan TEXT, score FLOAT8, "
        "balance NUMERIC(12, 2), seen_at TIMESTAMPTZ, active BOOLEAN, tags JSONB)"
    )
    wh.execute(
        f"INSERT INTO {wh.t('customers')} VALUES (1, 'A', 'a@x.test', NULL, 0.1, 10.50, "
        "'2024-03-01 10:00:00+02', true, '{\"a\": 1}'), (2, 'B', 'b@x.test', '', 1e300, 0, NULL, false, NULL)"
    )
    h = DagHarness(wh, rel_emulator, tmp_path / "state", monkeypatch, name="pg_values")
    h.operator.update(
        sql=f"SELECT * FROM {wh.t('customers')}",
        mappings=[IDENTIFY_MAPPING],
        change_detection="warehouse",
        state_schema=wh.schema,
    )
    assert h.run().summary["records"]["added"] == 2
    assert h.run().summary["records"]["unchanged"] == 2  # the same values checksum the same
    h.warehouse.conn.execute("SET TIME ZONE 'America/New_York'")  # another session's zone: no effect
    wh.execute(f"UPDATE {wh.t('customers')} SET score = 0.1 + 1e-16 WHERE id = 1")
    wh.execute(f"UPDATE {wh.t('customers')} SET plan = NULL WHERE id = 2")  # '' -> NULL is a change
    run = h.run()
    assert run.summary["records"]["updated"] == 2 and run.summary["rows_fetched"] == 2
    wh.execute(
        f"UPDATE {wh.t('customers')} SET seen_at = '2024-03-01 08:00:00+00' WHERE id = 1"
    )  # same instant
    assert h.run().summary["records"]["unchanged"] == 2


def test_a_refused_create_is_a_configuration_error_before_anything_is_sent(
    rel_postgres, rel_emulator, tmp_path, monkeypatch, airflow_db
):
    wh = rel_postgres
    role = f"sp_reader_{uuid.uuid4().hex[:8]}"
    create_customers(wh, range(1, 4))
    wh.execute(f"CREATE ROLE {role} LOGIN")
    try:
        wh.execute(f"GRANT USAGE ON SCHEMA {wh.schema} TO {role}")
        wh.execute(f"GRANT SELECT ON {wh.t('customers')} TO {role}")
        h = DagHarness(wh, rel_emulator, tmp_path / "state", monkeypatch, name="pg_grants")
        h.operator.update(change_detection="warehouse", state_schema=f"{wh.schema}_state")
        conn = dict(wh.airflow_conn, login=role)
        monkeypatch.setattr(type(wh), "airflow_conn", property(lambda self: conn))
        run = h.run()
        assert run.state == "failed"
        assert run.sent == []
        assert h.head() is None
        with pytest.raises(ConfigurationError, match="GRANT CREATE ON DATABASE"):
            _engine_setup_as(wh, role, f"{wh.schema}_state", tmp_path)
    finally:
        wh.execute(f"DROP OWNED BY {role}")
        wh.execute(f"DROP ROLE {role}")


def _engine_setup_as(wh: PostgresWarehouse, role: str, schema: str, tmp_path: Path) -> None:
    """Run the engine's set-up (what ``query()`` does first) as ``role``."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from airflow_provider_segment_profiles.pipeline.accounting import SyncAccounting
    from airflow_provider_segment_profiles.pipeline.detection.warehouse.engine import WarehouseChangeDetector
    from airflow_provider_segment_profiles.pipeline.modes import get_mode
    from airflow_provider_segment_profiles.state.location import StateLocation

    class _Hook(PostgresHook):
        def get_conn(self):
            import psycopg2

            return psycopg2.connect(
                host=wh.params.get("host", "127.0.0.1"), user=role, dbname=wh.params.get("dbname", "test")
            )

    detector = WarehouseChangeDetector(
        mode=get_mode("diff"),
        hook=_Hook(),
        location=StateLocation((tmp_path / "s").as_uri(), "dag", "task", -1),
        previous=None,
        head=None,
        outcomes=SyncAccounting([]),
        primary_key="id",
        mappings=[],
        state_schema=schema,
        full_refresh=False,
        dry_run=False,
        journal_tag="t",
        log=__import__("logging").getLogger("test"),
    )
    try:
        detector.query(f"SELECT * FROM {wh.t('customers')}", None)
    finally:
        detector.close()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"sync_mode": "full"}, "only fits sync_mode 'diff'"),
        ({"sync_mode": "incremental", "cursor_column": "id"}, "only fits sync_mode 'diff'"),
        ({"state_schema": "bad-name; drop"}, "plain SQL identifier"),
        ({"change_detection": "cloud"}, "is not one of worker, warehouse"),
    ],
)
def test_engine_settings_are_checked_at_parse_time(settings: dict[str, Any], message: str):
    from airflow_provider_segment_profiles.operators.segment_profiles import SegmentProfilesSyncOperator

    with pytest.raises(ConfigurationError, match=message):
        SegmentProfilesSyncOperator(
            task_id="t",
            conn_id="c",
            sql="SELECT 1 AS id",
            primary_key="id",
            mappings=[IDENTIFY_MAPPING],
            **{"change_detection": "warehouse", **settings},
        )


def _direct_detector(wh: PostgresWarehouse, tmp_path: Path, mappings: list, **kwargs: Any):
    """A warehouse engine over a psycopg 2 connection (the Postgres hook uses psycopg 3 when installed)."""
    import logging

    import psycopg2
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from airflow_provider_segment_profiles.pipeline.accounting import SyncAccounting
    from airflow_provider_segment_profiles.pipeline.detection.warehouse.engine import WarehouseChangeDetector
    from airflow_provider_segment_profiles.pipeline.modes import get_mode
    from airflow_provider_segment_profiles.state.location import StateLocation

    class Psycopg2Hook(PostgresHook):
        def get_conn(self):
            return psycopg2.connect(wh.dsn)

    accounting = SyncAccounting([m.name for m in mappings])
    settings = {"previous": None, "head": None, "full_refresh": False, "dry_run": False, **kwargs}
    detector = WarehouseChangeDetector(
        mode=get_mode("diff"),
        hook=Psycopg2Hook(),
        location=StateLocation((tmp_path / "state").as_uri(), "dag", "task", -1),
        outcomes=accounting,
        primary_key="id",
        mappings=mappings,
        state_schema=wh.schema,
        journal_tag="try1",
        log=logging.getLogger("test"),
        **settings,
    )
    return detector, accounting


def test_psycopg2_connections_classify_mark_and_commit(rel_postgres: PostgresWarehouse, tmp_path: Path):
    """The engine over psycopg 2: named cursors, execute_values for marks, and the commit's rules."""
    from airflow_provider_segment_profiles.actions import compile_mappings
    from airflow_provider_segment_profiles.pipeline.reader import ModelReader
    from airflow_provider_segment_profiles.pipeline.records import Record
    from airflow_provider_segment_profiles.state.location import SyncState

    wh = rel_postgres
    create_customers(wh, range(1, 7001))
    mappings = compile_mappings([IDENTIFY_MAPPING], sync_mode="diff", primary_key="id")
    sql = f"SELECT id, name, email, plan FROM {wh.t('customers')}"

    def one_run(
        head: SyncState | None,
        failed: list[str],
        rejected: tuple[tuple[str, str, str], ...] = (),
        hold: bool = False,
    ) -> tuple[dict, int]:
        detector, accounting = _direct_detector(wh, tmp_path, mappings, previous=head, head=head)
        try:
            query, parameters = detector.query(sql, None)
            reader = ModelReader(None, query, parameters, 1000, detector.source_connection())
            columns = reader.open()
            detector.bind(columns, [0, 1, 2, 3], "|".join(m.fingerprint for m in mappings))
            kinds: dict[str, int] = {}
            for rows in reader.chunks():
                changes = detector.detect([Record(row, str(row[0])) for row in rows])
                for change in changes:
                    kinds[change.kind] = kinds.get(change.kind, 0) + 1
                    kinds["pending"] = kinds.get("pending", 0) + bool(change.pending)
            reader.close()
            if hold:
                detector.hold_deletions()
            for chunk in detector.deletions():
                kinds["deleted"] = kinds.get("deleted", 0) + len(chunk)
            detector.mark_failed(failed)
            detector.mark_rejected(rejected)
            _, count = detector.snapshot_to_commit(tmp_path, None)
            kinds["unchanged"] = accounting.records["unchanged"]
            return kinds, count
        finally:
            detector.close()

    kinds, count = one_run(None, failed=[str(i) for i in range(1, 6001)])  # 6,000 marks: several batches
    assert kinds == {"added": 7000, "pending": 0, "unchanged": 0} and count == 7000
    head = SyncState(
        generation=1, snapshot=None, sync_mode="diff", watermark=None, fingerprint="", records=count
    )
    wh.execute(f"DELETE FROM {wh.t('customers')} WHERE id > 6990")
    kinds, count = one_run(
        head, failed=[], rejected=(("1", "identify", "updated"), ("2", "identify", "updated"))
    )
    # The failed adds are unconfirmed: added again; the delivered ones are unchanged; 10 deleted.
    assert kinds == {"added": 6000, "pending": 0, "unchanged": 990, "deleted": 10}
    assert count == 6990
    # Records 1 and 2 were rejected by a mapping: built again next run although unchanged, flagged pending.
    # The next run's deletions are held (the delete guard): nothing is deleted and the records stay.
    head.generation = 2
    wh.execute(f"DELETE FROM {wh.t('customers')} WHERE id > 6980")
    kinds, count = one_run(head, failed=[], hold=True)
    assert kinds == {"added": 2, "pending": 2, "unchanged": 6978}
    assert count == 6990
    head.generation = 3
    kinds, count = one_run(head, failed=[])
    assert kinds == {"unchanged": 6980, "deleted": 10}  # pending cleared by the delivery; deletes now sent
    assert count == 6980


#: Pairs of rows (two columns each) that must checksum apart: NULL vs '' vs the NULL marker's text, a
#: separator inside a value, quotes, a float's last digit, types that print alike.
APART = [
    ((None, "x"), ("", "x")),
    ((None, "x"), ("N", "x")),
    (("a|b", "c"), ("a", "b|c")),
    (("'", "''"), ("''", "'")),
    ((0.1, "x"), (0.1 + 1e-16, "x")),
    ((1, "x"), ("1", "x")),
    (("a:1", "T1:b"), ("a", "1:T1:b")),
]


def _checksums(dialect, conn, rows: list[tuple], placeholder: str, table: str) -> list[str]:
    sql = dialect.checksum_sql("seed", ["a", "b"], [None, None])
    cursor = conn.cursor()
    results = []
    for row in rows:
        cursor.execute(f"SELECT {sql} FROM (SELECT {placeholder} AS a, {placeholder} AS b) t", row)
        results.append(cursor.fetchone()[0])
    cursor.close()
    return results


def test_sqlite_checksums_tell_apart_values_that_render_alike():
    import sqlite3

    from airflow_provider_segment_profiles.pipeline.detection.warehouse.dialects import SqliteDialect

    dialect = SqliteDialect()
    conn = sqlite3.connect(":memory:")
    dialect.prepare_connection(conn)
    for left, right in APART:
        a, b = _checksums(dialect, conn, [left, right], "?", "t")
        assert a != b, (left, right)
        assert _checksums(dialect, conn, [left], "?", "t") == [a]  # deterministic
        assert len(a) == 16 and int(a, 16) >= 0


def test_postgres_checksums_tell_apart_values_and_ignore_session_settings(postgres_dsn: str):
    import psycopg

    from airflow_provider_segment_profiles.pipeline.detection.warehouse.dialects import PostgresDialect

    dialect = PostgresDialect()
    with psycopg.connect(postgres_dsn) as conn:
        for setting in dialect.session_settings():
            conn.execute(setting)
        for left, right in APART:
            if isinstance(left[0], int) or isinstance(right[0], int):
                continue  # a bound int and text have different result types: the header tells them apart
            a, b = _checksums(dialect, conn, [left, right], "%s", "t")
            assert a != b, (left, right)
        conn.rollback()
        instant = "SELECT {} FROM (SELECT '2024-03-01 10:00:00+02'::timestamptz AS a, NULL::text AS b) t"
        sql = dialect.checksum_sql("seed", ["a", "b"], [1184, 25])
        seen = set()
        for zone in ("UTC", "Asia/Tokyo", "America/New_York"):
            conn.execute(f"SET TIME ZONE '{zone}'")
            for setting in dialect.session_settings():
                conn.execute(setting)
            seen.add(conn.execute(instant.format(sql)).fetchone()[0])
            conn.rollback()
        assert len(seen) == 1


def test_sigkill_mid_send_on_postgres_then_retry_resends_under_the_same_ids(
    pg_harness: DagHarness, tmp_path: Path
):
    """A try SIGKILLed while sending commits nothing in the warehouse; its retry folds the journal in and
    sends every planned message again under the same message ids."""
    from test_reliability_killed_worker import (
        assert_all_planned,
        journal_files,
        prepare_changes,
        sigkill_mid_send,
    )

    h = pg_harness  # SQLite runs the same scenario in test_reliability_killed_worker.py
    h.operator.update(batch_size=5, max_requests_in_flight=1)
    planned = prepare_changes(h)
    rows_before, meta_before = state_rows(h), meta_rows(h)
    day, killed_sent = sigkill_mid_send(h, tmp_path, after_messages=30)
    assert 30 <= len(killed_sent) < len(planned)
    assert_all_planned(killed_sent, planned)
    assert (state_rows(h), meta_rows(h)) == (rows_before, meta_before)  # nothing committed
    assert journal_files(h)
    retry = h.run(logical_date=day)
    assert retry.state == "success"
    assert {m["messageId"] for m in retry.sent} == set(planned)
    assert journal_files(h) == []
    assert h.run().sent == []
    assert_segment_matches(h.emulator.messages, warehouse_customers(h.warehouse))


def test_snowflake_through_fakesnow(rel_emulator, tmp_path: Path, monkeypatch, airflow_db):
    """The Snowflake dialect through the Snowflake hook, with ``fakesnow`` standing in for Snowflake (it
    runs Snowflake SQL on DuckDB): not a real account, but the engine's SQL and the connector's API."""
    import json

    import fakesnow
    import snowflake.connector

    (tmp_path / "snowflake").mkdir()
    with fakesnow.patch(db_path=str(tmp_path / "snowflake")):
        monkeypatch.setenv(
            "AIRFLOW_CONN_SNOW",
            json.dumps(
                {
                    "conn_type": "snowflake",
                    "login": "user",
                    "password": "not-a-secret",
                    "schema": "public",
                    "extra": {"account": "acct", "database": "db1", "warehouse": "wh", "role": "r"},
                }
            ),
        )
        monkeypatch.setenv(
            "AIRFLOW_CONN_SEGMENT_PROFILES_DEFAULT", json.dumps(rel_emulator.airflow_connection())
        )
        conn = snowflake.connector.connect(database="db1", schema="public")
        cursor = conn.cursor()
        cursor.execute("CREATE TABLE customers (id INTEGER, name TEXT, email TEXT, plan TEXT)")
        cursor.execute(
            "INSERT INTO customers VALUES "
            + ", ".join(f"({i}, 'Customer {i}', 'c{i}@example.com', 'free')" for i in range(1, 11))
            + ", (NULL, 'Nobody', 'n@example.com', 'free'), (3, 'Again', 'again@example.com', 'free')"
        )

        def expected() -> dict[str, dict[str, Any]]:
            cursor.execute("SELECT id, name, email, plan FROM customers WHERE id IS NOT NULL")
            rows = {}
            for i, name, email, plan in cursor.fetchall():
                rows.setdefault(str(i), {"name": name, "email": email, "plan": plan})
            return rows

        runner = DirectRunner(
            {
                "conn_id": "snow",
                "sql": 'SELECT id AS "id", name AS "name", email AS "email", plan AS "plan" FROM customers',
                "primary_key": "id",
                "mappings": CUSTOMER_MAPPINGS,
                "change_detection": "warehouse",
                "state_schema": "sp_state",
                "max_events_per_second": None,
                "max_rejected_fraction": 0.5,  # 2 of 12 rejected records: over the default (issue 19)
            },
            tmp_path / "state",
        )
        first = runner.run()
        assert first["records"] == {"added": 10, "updated": 0, "deleted": 0, "unchanged": 0, "rejected": 2}
        quiet = runner.run()
        assert (quiet["records"]["unchanged"], quiet["rows_fetched"], quiet["rows_read"]) == (10, 0, 12)
        cursor.execute("UPDATE customers SET plan = 'pro' WHERE id IN (1, 2)")
        cursor.execute("DELETE FROM customers WHERE id = 10")
        cursor.execute("INSERT INTO customers VALUES (11, 'Customer 11', 'c11@example.com', NULL)")
        dry = runner.run(dry_run=True)
        assert dry["records"]["updated"] == 2 and dry["rows_fetched"] == 3
        changed = runner.run()
        records = changed["records"]
        assert (records["added"], records["updated"], records["deleted"], records["unchanged"]) == (
            1,
            2,
            1,
            7,
        )
        assert changed["rows_fetched"] == 3
        assert runner.run()["records"]["unchanged"] == 10
        # The second 'Customer 3' row was rejected: the first one is what Segment holds.
        assert_segment_matches(rel_emulator.messages, expected())
        conn.close()


def test_head_json_failing_after_the_warehouse_commit_loses_nothing(rel_harness: DagHarness, monkeypatch):
    """The warehouse state commits first; when HEAD.json then cannot be written the try fails, and the next
    run continues from the warehouse state (one generation ahead) without re-sending what it holds."""
    from airflow_provider_segment_profiles.state.location import StateLocation

    h, wh = rel_harness, rel_harness.warehouse
    h.operator["change_detection"] = "warehouse"
    create_customers(wh, range(1, 11))
    assert h.run().state == "success"
    wh.execute(f"UPDATE {wh.t('customers')} SET plan = 'pro' WHERE id <= 3")
    real_commit = StateLocation.commit

    def unwritable(self, expected, new, snapshot_file):
        raise OSError("state_path is read-only")

    monkeypatch.setattr(StateLocation, "commit", unwritable)
    failed = h.run()
    monkeypatch.setattr(StateLocation, "commit", real_commit)
    assert failed.state == "failed"
    assert h.head()["generation"] == 1
    assert meta_rows(h)[0][1] == 2  # the warehouse state moved on
    wh.execute(f"UPDATE {wh.t('customers')} SET plan = 'team' WHERE id = 4")
    recovered = h.run()
    assert recovered.state == "success"
    assert h.head()["generation"] == 2 == meta_rows(h)[0][1]
    # Only id 4 changed: the failed try's sends of ids 1-3 are in the warehouse state it committed, so its
    # journal (named by the generation it started from) is not folded in again.
    assert recovered.summary["records"]["updated"] == 1
    assert sorted(h.state_root.glob("journal/*.json")) == []
    assert_segment_matches(h.emulator.messages, warehouse_customers(wh))
    assert h.run().sent == []
