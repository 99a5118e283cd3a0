"""A change belongs to a mapping in the warehouse engine too: the engine's SQL finds the records whose
whole checksum moved, and the worker tells their mappings apart from the values it fetched and the
per-mapping checksums the warehouse state holds (``mapping_checksums``), committed in the same transaction.

The same decisions as ``test_change_per_mapping.py`` asserts for the worker engine, run on a real SQLite
file and the real PostgreSQL server through the engine's own statements, across committed runs.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_change_per_mapping import COLUMNS, mappings

from airflow_provider_segment_profiles.actions import compile_mappings
from airflow_provider_segment_profiles.pipeline.accounting import SyncAccounting
from airflow_provider_segment_profiles.pipeline.commit import commit_state
from airflow_provider_segment_profiles.pipeline.config import SyncConfig
from airflow_provider_segment_profiles.pipeline.detection.warehouse.engine import WarehouseChangeDetector
from airflow_provider_segment_profiles.pipeline.modes import get_mode
from airflow_provider_segment_profiles.pipeline.records import ChangeKind, Record
from airflow_provider_segment_profiles.state.location import StateLocation

LOG = logging.getLogger("test_change_per_mapping_warehouse")
ADDED, UPDATED = ChangeKind.ADDED, ChangeKind.UPDATED
MODEL = "SELECT id, email, plan, name FROM customers"
ROWS = [("1", "a@e", "free", "Ann"), ("2", "b@e", "free", "Bo"), ("3", "c@e", "free", "Cy")]


class Sqlite:
    placeholder, state_schema, id_type = "?", "segment_profiles", "TEXT"

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "warehouse.db"

    def connect(self):
        return sqlite3.connect(self.path)

    def hook(self):
        return SimpleNamespace(get_conn=self.connect)

    def close(self) -> None:
        pass


class DuckDb(Sqlite):
    """A DuckDB file through the ASF DuckDB provider's hook."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "warehouse.duckdb"

    def connect(self):
        import duckdb

        return duckdb.connect(str(self.path))

    def hook(self):
        from airflow.providers.duckdb.hooks.duckdb import DuckDBHook

        return DuckDBHook(database=str(self.path))


class MariaDb:
    """A fresh database on the MariaDB server through the MySQL provider's hook; it holds the state too."""

    placeholder, id_type = "%s", "VARCHAR(40)"

    def __init__(self, params: dict, monkeypatch) -> None:
        import json

        import mysql.connector

        self.params, self.connector = params, mysql.connector
        self.state_schema = self.name = f"sp_permap_{uuid.uuid4().hex[:10]}"
        self.admin = mysql.connector.connect(**params)
        self.admin.autocommit = True
        self.admin.cursor().execute(f"CREATE DATABASE {self.name} CHARACTER SET utf8mb4")
        conn = {
            "conn_type": "mysql",
            "host": params["host"],
            "port": params["port"],
            "login": params["user"],
            "password": params["password"],
            "schema": self.name,
            "extra": {"client": "mysql-connector-python"},
        }
        monkeypatch.setenv("AIRFLOW_CONN_PERMAP_WH", json.dumps(conn))

    def connect(self):
        return self.connector.connect(**{**self.params, "database": self.name})

    def hook(self):
        from airflow.providers.mysql.hooks.mysql import MySqlHook

        return MySqlHook(mysql_conn_id="permap_wh")

    def close(self) -> None:
        self.admin.cursor().execute(f"DROP DATABASE IF EXISTS {self.name}")
        self.admin.close()


class Postgres:
    placeholder, state_schema, id_type = "%s", "segment_profiles", "TEXT"

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.psycopg, self.dsn = psycopg, dsn
        self.name = f"sp_permap_{uuid.uuid4().hex[:10]}"
        self.admin = psycopg.connect(dsn, autocommit=True)
        self.admin.execute(f"CREATE DATABASE {self.name}")

    def connect(self):
        return self.psycopg.connect(f"{self.dsn} dbname={self.name}")

    def hook(self):
        return SimpleNamespace(get_conn=self.connect)

    def close(self) -> None:
        self.admin.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
        self.admin.close()


def _warehouse(request, tmp_path, monkeypatch):
    if request.param == "sqlite":
        wh = Sqlite(tmp_path)
    elif request.param == "duckdb":
        wh = DuckDb(tmp_path)
    elif request.param == "postgres":
        wh = Postgres(request.getfixturevalue("postgres_dsn"))
    else:
        wh = MariaDb(request.getfixturevalue("mariadb_params"), monkeypatch)
    return wh


@pytest.fixture(params=["sqlite", "postgres", "duckdb", "mariadb"])
def warehouse(request, tmp_path, monkeypatch):
    wh = _warehouse(request, tmp_path, monkeypatch)
    yield wh
    wh.close()


@pytest.fixture(params=["sqlite", "postgres"])
def wrappable_warehouse(request, tmp_path, monkeypatch):
    """The warehouses whose DB-API connection :class:`_Between` can wrap (DuckDB's session and the MySQL
    connector look at the connection's own class), for the tests that write between the two readings."""
    wh = _warehouse(request, tmp_path, monkeypatch)
    yield wh
    wh.close()


def _load(wh, rows) -> None:
    conn = wh.connect()
    cursor = conn.cursor()
    cursor.execute("DROP TABLE IF EXISTS customers")
    cursor.execute(f"CREATE TABLE customers (id {wh.id_type}, email TEXT, plan TEXT, name TEXT)")
    cursor.executemany(f"INSERT INTO customers VALUES ({', '.join([wh.placeholder] * 4)})", rows)
    conn.commit()
    conn.close()


class _Between:
    """A connection that runs ``statement`` just before the engine reads the model a second time (``sp_rows``),
    as if another writer changed the model between the engine's two readings."""

    def __init__(self, conn, statement: str) -> None:
        self._conn, self._statement = conn, statement

    def cursor(self, *args, **kwargs):
        return _BetweenCursor(self._conn.cursor(*args, **kwargs), self)

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def __setattr__(self, name, value):  # e.g. the SQLite dialect's isolation_level
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._conn, name, value)


def _between(conn, statement: str) -> _Between:
    # The engine picks its dialect by the connection's module, so the wrapper carries the driver's.
    return type("Between", (_Between,), {"__module__": type(conn).__module__})(conn, statement)


def _hook_between(hook, between: str | None):
    """``hook``, whose connections run ``between`` before the second reading (:class:`_Between`)."""
    if between is None:
        return hook
    return SimpleNamespace(
        get_conn=lambda: _between(hook.get_conn(), between), dialect_name=getattr(hook, "dialect_name", None)
    )


class _BetweenCursor:
    def __init__(self, cursor, conn: _Between) -> None:
        self._cursor, self._conn = cursor, conn

    def execute(self, statement, *args):
        if self._conn._statement and "sp_rows AS" in statement:
            self._cursor.execute(self._conn._statement)
            self._conn._statement = None
        return self._cursor.execute(statement, *args)

    def __getattr__(self, name):
        return getattr(self._cursor, name)


def _run(wh, tmp_path: Path, head, rows, defined=None, failed=(), rejected=()):
    """
    One warehouse-engine run over ``rows``: diff in the warehouse, read the changed rows as the source
    does, detect, mark, commit. Returns the committed head and ``key -> (kind, changed mappings, token)``.
    """
    head, changes, unchanged = run_changes(wh, tmp_path, head, rows, defined, failed, rejected)
    return head, {c.key: (c.kind, c.changed_mappings, c.token) for c in changes}, unchanged


def run_changes(wh, tmp_path: Path, head, rows, defined=None, failed=(), rejected=(), between=None, log=LOG):
    """:func:`_run`, returning the changes themselves; ``between`` runs before the second reading."""
    if rows is not None:
        _load(wh, rows)
    compiled = compile_mappings(defined or mappings(), sync_mode="diff", primary_key="id")
    location = StateLocation((tmp_path / "state").as_uri(), "dag", "task", -1)
    run = f"r{(head.generation if head else 0) + 1}"
    detector = WarehouseChangeDetector(
        mode=get_mode("diff"),
        hook=_hook_between(wh.hook(), between),
        location=location,
        previous=head,
        head=head,
        outcomes=SyncAccounting([m.name for m in compiled]),
        primary_key="id",
        mappings=compiled,
        state_schema=wh.state_schema,
        full_refresh=False,
        dry_run=False,
        journal_tag=run,
        log=log,
    )
    try:
        query, parameters = detector.query(MODEL, None)
        cursor = detector.source_connection().cursor()
        cursor.execute(query) if parameters is None else cursor.execute(query, parameters)
        fetched = cursor.fetchall()
        cursor.close()
        used = sorted({COLUMNS.index(c) for m in compiled for c in m.columns})
        detector.bind(COLUMNS, used, "|".join(m.fingerprint for m in compiled))
        changes = detector.detect([Record(tuple(row), str(row[0])) for row in fetched])
        changes += [change for chunk in detector.deletions() for change in chunk]
        detector.mark_failed(failed)
        detector.mark_rejected(rejected)
        workdir = tmp_path / run
        workdir.mkdir()
        head = commit_state(
            config=SyncConfig(sql="", primary_key="id", mappings=[], sync_mode="diff"),
            location=location,
            head=head,
            detector=detector,
            workdir=workdir,
            watermark=None,
            fingerprint="f",
            messages={},
            destinations={"conn": "dest"},
            run_id=run,
            try_number=1,
        )
        detector.after_commit()
        unchanged = detector.outcomes.records[ChangeKind.UNCHANGED]
    finally:
        detector.close()
    return head, changes, unchanged


def test_an_updated_record_names_the_mappings_whose_inputs_changed(warehouse, tmp_path):
    head, changes, _ = _run(warehouse, tmp_path, None, ROWS)
    assert {key: kind for key, (kind, _, _) in changes.items()} == {"1": ADDED, "2": ADDED, "3": ADDED}
    assert all(changed is None for _, changed, _ in changes.values())  # added: every mapping

    rows = [("1", "new@e", "free", "Ann"), ("2", "b@e", "pro", "Bo"), ("3", "c@e", "free", "Renamed")]
    head, changes, unchanged = _run(warehouse, tmp_path, head, rows)
    assert changes["1"][:2] == (UPDATED, ("identify",))
    assert changes["2"][:2] == (UPDATED, ("identify", "plan_changed"))
    assert "3" not in changes and unchanged == 1  # 'name' is read by no mapping
    assert changes["1"][2].endswith(".2") and changes["2"][2].endswith(".2")

    # Records unchanged in SQL kept their mapping checksums: the next change is told apart again.
    rows = [("1", "new@e", "pro", "Ann"), ("2", "b@e", "pro", "Bo"), ("3", "c2@e", "free", "Renamed")]
    _, changes, unchanged = _run(warehouse, tmp_path, head, rows)
    assert changes["1"][:2] == (UPDATED, ("identify", "plan_changed"))
    assert changes["3"][:2] == (UPDATED, ("identify",))
    assert "2" not in changes and unchanged == 1


def test_a_failed_record_sends_again_the_mappings_that_sent_under_the_same_ids(warehouse, tmp_path):
    head, _, _ = _run(warehouse, tmp_path, None, ROWS)
    rows = [("1", "a@e", "pro", "Ann"), *ROWS[1:]]
    head, failed_run, _ = _run(warehouse, tmp_path, head, rows, failed=["1"])
    assert failed_run["1"][:2] == (UPDATED, ("identify", "plan_changed"))
    head, retry, _ = _run(warehouse, tmp_path, head, rows)
    assert retry["1"] == failed_run["1"]  # same mappings, same token: the same message ids

    # A failed message whose value then goes back: Segment may hold either value for the mappings that sent.
    head, failed_run, _ = _run(
        warehouse, tmp_path, head, [("1", "x@e", "pro", "Ann"), *ROWS[1:]], failed=["1"]
    )
    assert failed_run["1"][1] == ("identify",)
    _, back, _ = _run(warehouse, tmp_path, head, rows)
    # Uncertain: Segment may hold either email. Only the Identify's inputs moved since the track last
    # delivered, so only the Identify sends. (The worker engine sends every mapping here: it computes no
    # mapping checksums for a record whose whole checksum is the one held.)
    assert back["1"][:2] == (UPDATED, ("identify",))


def test_a_rejected_record_comes_back_through_its_changed_mappings(warehouse, tmp_path):
    head, _, _ = _run(warehouse, tmp_path, None, ROWS)
    rows = [("1", "a@e", "pro", "Ann"), *ROWS[1:]]
    head, rejected_run, _ = _run(warehouse, tmp_path, head, rows, rejected=[("1", "plan_changed", "updated")])
    assert rejected_run["1"][:2] == (UPDATED, ("identify", "plan_changed"))
    # Unchanged since, but pending: it is built again (this engine keeps pending per record).
    _, again, _ = _run(warehouse, tmp_path, head, rows)
    assert again["1"][:2] == (UPDATED, ("identify", "plan_changed"))


def test_adding_removing_and_editing_mappings_touches_only_those_mappings(warehouse, tmp_path):
    head, _, _ = _run(warehouse, tmp_path, None, ROWS)
    # A new mapping: every record's whole checksum changed, but only the new mapping has inputs to send.
    head, changes, _ = _run(warehouse, tmp_path, head, ROWS, defined=mappings(extra=True))
    assert {key: changed for key, (_, changed, _) in changes.items()} == {k: ("email_track",) for k in "123"}
    # Removed again: no mapping's inputs changed, so nothing is sent and the records count as unchanged.
    head, changes, unchanged = _run(warehouse, tmp_path, head, ROWS)
    assert changes == {} and unchanged == 3
    # ... and the state took this run's checksums: the next run finds nothing changed in SQL.
    head, changes, unchanged = _run(warehouse, tmp_path, head, ROWS)
    assert changes == {} and unchanged == 3
    # A literal edited (the event name): that mapping's fingerprint, so that mapping alone, changes.
    _, changes, _ = _run(warehouse, tmp_path, head, ROWS, defined=mappings(event_name="Plan Updated"))
    assert {key: changed for key, (_, changed, _) in changes.items()} == {k: ("plan_changed",) for k in "123"}


# -- the model read twice: the diff from identifiers and checksums, then the changed rows' columns ----------
def test_a_row_changed_between_the_two_readings_is_sent_and_committed_as_read_second(
    wrappable_warehouse, tmp_path
):
    head, _, _ = run_changes(wrappable_warehouse, tmp_path, None, ROWS)
    rows = [("1", "a@e", "pro", "Ann"), *ROWS[1:]]
    late = "UPDATE customers SET email = 'late@e' WHERE id = '1'"
    head, changes, _ = run_changes(wrappable_warehouse, tmp_path, head, rows, between=late)
    (change,) = changes
    assert change.key == "1" and tuple(change.row) == ("1", "late@e", "pro", "Ann")
    # The state took the checksum of what was sent: the table as it is now is unchanged.
    _, changes, unchanged = run_changes(wrappable_warehouse, tmp_path, head, None)
    assert changes == [] and unchanged == 3


def test_a_record_gone_at_the_second_reading_is_neither_sent_nor_committed(
    wrappable_warehouse, tmp_path, caplog
):
    head, _, _ = run_changes(wrappable_warehouse, tmp_path, None, ROWS)
    rows = [("1", "a@e", "pro", "Ann"), *ROWS[1:]]
    gone = "DELETE FROM customers WHERE id = '1'"
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        head, changes, unchanged = run_changes(wrappable_warehouse, tmp_path, head, rows, between=gone)
    assert changes == [] and unchanged == 2
    assert "1 changed records were gone or changed again" in caplog.text
    # Its state is as before: the next run finds it deleted and sends the delete.
    _, changes, unchanged = run_changes(wrappable_warehouse, tmp_path, head, None)
    assert [(c.kind, c.key) for c in changes] == [(ChangeKind.DELETED, "1")] and unchanged == 2


def test_a_repeat_written_between_the_readings_sends_the_row_the_diff_kept(wrappable_warehouse, tmp_path):
    head, _, _ = run_changes(wrappable_warehouse, tmp_path, None, ROWS)
    rows = [("1", "a@e", "pro", "Ann"), *ROWS[1:]]
    repeat = "INSERT INTO customers VALUES ('1', 'dup@e', 'team', 'Dup')"
    head, changes, _ = run_changes(wrappable_warehouse, tmp_path, head, rows, between=repeat)
    (change,) = changes
    assert tuple(change.row) == ("1", "a@e", "pro", "Ann")
