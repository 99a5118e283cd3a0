"""Shared helpers of the reliability suite (``tests/test_reliability_*.py``) and the pytest plugin that prints
its figures at the end of the run.

Every reliability test module lists this module in ``pytest_plugins``, so the figures are printed whether the
suite runs alone (``pytest tests/test_reliability_*.py``) or inside the whole test run.

What is here:

- :data:`FIGURES` and the two pytest hooks that attribute figures to tests and print them;
- warehouses (a SQLite file, a schema of the PostgreSQL test server) with the Airflow connection for each;
- :class:`SegmentView`: what Segment would hold after the messages the emulator accepted, with Segment's
  de-duplication by ``messageId`` applied, and the checks built on it (lost records, unexplained duplicates);
- :class:`DagHarness`: real ``dag.test()`` runs of ``tests/dags/reliability_sync.py`` (one DAG id per
  test), plus the environment for ``airflow dags test`` subprocesses;
- :class:`DirectRunner`: ``SegmentProfilesSyncOperator.execute()`` with a small fake task instance, for the
  fast property-based state tests.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_segment_profiles.testing import SegmentEmulator

TESTS = Path(__file__).parent
DAGS = TESTS / "dags"
RELIABILITY_DAG_FILE = DAGS / "reliability_sync.py"
#: Write key of the suite's emulators. The security tests use fresh random keys of their own.
WRITE_KEY = "reliability-write-key-5b1e9d27"
DELETE_EVENT = "Customer Deleted"
SIGNED_UP_EVENT = "Customer Signed Up"

IDENTIFY_MAPPING = {
    "name": "identify",
    "action": "send_identify",
    "fields": {"user_id": {"column": "id"}, "traits": {"columns": "*", "exclude": ["id"]}},
}
SIGNED_UP_MAPPING = {
    "name": "signed_up",
    "action": "send_track",
    "trigger": "added",
    "fields": {
        "user_id": {"column": "id"},
        "event_name": SIGNED_UP_EVENT,
        "properties": {"plan": {"column": "plan"}},
    },
}
DELETED_MAPPING = {
    "name": "deleted",
    "action": "send_track",
    "trigger": "deleted",
    "fields": {"user_id": {"column": "id"}, "event_name": DELETE_EVENT},
}
#: Identify on added/updated, a track on added, a track on deleted: every kind of change has a message.
CUSTOMER_MAPPINGS = [IDENTIFY_MAPPING, SIGNED_UP_MAPPING, DELETED_MAPPING]


# ----------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------
def current_test() -> str:
    """Node id of the running test (from ``PYTEST_CURRENT_TEST``), or ``"<outside a test>"``."""
    return os.environ.get("PYTEST_CURRENT_TEST", "<outside a test> (none)").rsplit(" ", 1)[0]


@dataclass
class _TestFigures:
    faults: Counter[str] = field(default_factory=Counter)
    inputs: Counter[str] = field(default_factory=Counter)
    runs: int = 0
    lost: int = 0
    duplicates: int = 0


class Figures:
    """
    The suite's figures, attributed to the test that produced them, so the summary can tell the figures
    of passing tests from those of tests marked ``xfail`` for a known product bug.
    """

    def __init__(self) -> None:
        self.by_test: dict[str, _TestFigures] = defaultdict(_TestFigures)
        self.outcomes: dict[str, str] = {}

    def fault(self, kind: str, count: int = 1) -> None:
        """Count ``count`` injected faults of one kind (that actually reached the code under test)."""
        if count:
            self.by_test[current_test()].faults[kind] += count

    def input(self, kind: str, count: int = 1) -> None:
        """Count inputs tried: a bad value, query or configuration, or a generated sequence of runs."""
        self.by_test[current_test()].inputs[kind] += count

    def run(self, count: int = 1) -> None:
        """Count sync runs (DAG runs, CLI runs or direct ``execute()`` calls)."""
        self.by_test[current_test()].runs += count

    def lost(self, count: int) -> None:
        """Count records whose change never reached Segment (after Segment's de-duplication)."""
        self.by_test[current_test()].lost += count

    def duplicates(self, count: int) -> None:
        """Count unexplained duplicates: one ``messageId`` with two bodies, or one change under two ids."""
        self.by_test[current_test()].duplicates += count

    def totals(self, nodeids: Iterable[str]) -> _TestFigures:
        """Sum of the figures of the given tests."""
        total = _TestFigures()
        for nodeid in nodeids:
            figures = self.by_test[nodeid]
            total.faults.update(figures.faults)
            total.inputs.update(figures.inputs)
            total.runs += figures.runs
            total.lost += figures.lost
            total.duplicates += figures.duplicates
        return total


FIGURES = Figures()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember each test's outcome (``passed``, ``failed``, ``xfailed``, ``skipped``)."""
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        else:
            outcome = report.outcome
        FIGURES.outcomes[report.nodeid] = outcome


def _format_counter(counter: Counter[str]) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in sorted(counter.items()))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Print the reliability figures when any reliability test ran."""
    ran = [n for n in FIGURES.outcomes if "test_reliability_" in n]
    if not ran:
        return
    known_bugs = [n for n in ran if FIGURES.outcomes[n] in ("xfailed", "xpassed")]
    counted = [n for n in ran if n not in known_bugs]
    main = FIGURES.totals(counted)
    bugs = FIGURES.totals(known_bugs)
    outcomes = Counter(FIGURES.outcomes[n] for n in ran)
    write = terminalreporter.write_line
    terminalreporter.section("reliability figures")
    write(f"tests                   {len(ran)} ({_format_counter(outcomes)})")
    write(f"sync runs               {main.runs}")
    write(f"faults injected         {sum(main.faults.values())}  ({_format_counter(main.faults)})")
    write(f"inputs tried            {sum(main.inputs.values())}  ({_format_counter(main.inputs)})")
    write(f"records lost            {main.lost}")
    write(f"unexplained duplicates  {main.duplicates}")
    if known_bugs:
        write(
            f"known product bugs (xfail, not counted above): {len(known_bugs)} tests; there "
            f"{bugs.lost} records lost, {bugs.duplicates} unexplained duplicates"
        )
        for nodeid in known_bugs:
            write(f"  {nodeid}")


# ----------------------------------------------------------------------------------------------------------
# Warehouses
# ----------------------------------------------------------------------------------------------------------
class SqliteWarehouse:
    """A SQLite file as the warehouse; ``t(name)`` is the table's name in SQL."""

    kind = "sqlite"
    placeholder = "?"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None)

    @property
    def airflow_conn(self) -> dict[str, Any]:
        """The Airflow connection (JSON form) of this warehouse."""
        return {"conn_type": "sqlite", "host": str(self.path)}

    def t(self, name: str) -> str:
        """Qualified table name."""
        return name

    def execute(self, sql: str, rows: Sequence[Sequence[Any]] = ()) -> None:
        """Run a statement (``%s`` placeholders), once per row when rows are given."""
        sql = sql.replace("%s", "?")
        if rows:
            with self.conn:  # one transaction, not one fsync per row
                self.conn.execute("BEGIN")
                self.conn.executemany(sql, rows)
        else:
            self.conn.execute(sql)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """All rows of a query."""
        return self.conn.execute(sql).fetchall()

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


class PostgresWarehouse:
    """A fresh schema of the PostgreSQL test server as the warehouse; dropped by :meth:`close`."""

    kind = "postgres"
    placeholder = "%s"

    def __init__(self, dsn: str, extra: dict[str, Any] | None = None) -> None:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        self.dsn = dsn
        self.params = conninfo_to_dict(dsn)
        self.schema = f"rel_{uuid.uuid4().hex[:10]}"
        self.extra = extra or {}
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute(f"CREATE SCHEMA {self.schema}")

    @property
    def airflow_conn(self) -> dict[str, Any]:
        """The Airflow connection (JSON form) of this warehouse."""
        conn: dict[str, Any] = {
            "conn_type": "postgres",
            "host": self.params.get("host", "127.0.0.1"),
            "port": int(self.params.get("port", 5432)),
            "login": self.params.get("user", "postgres"),
            "schema": self.params.get("dbname", "test"),
        }
        if self.params.get("password"):
            conn["password"] = self.params["password"]
        if self.extra:
            conn["extra"] = self.extra
        return conn

    def t(self, name: str) -> str:
        """Qualified table name."""
        return f"{self.schema}.{name}"

    def execute(self, sql: str, rows: Sequence[Sequence[Any]] = ()) -> None:
        """Run a statement (``%s`` placeholders), once per row when rows are given."""
        with self.conn.cursor() as cur:
            if rows:
                cur.executemany(sql, rows)
            else:
                cur.execute(sql)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """All rows of a query."""
        with self.conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()

    def close(self) -> None:
        """Drop the schema and close the connection."""
        try:
            self.conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
        finally:
            self.conn.close()


class DuckDBWarehouse:
    """
    A DuckDB file as the warehouse, read through ``apache-airflow-providers-duckdb``'s ``DuckDBHook``; the
    state lives in its ``segment_profiles`` schema (``schema``), the model's tables in ``main``.

    The file is opened with the configuration the hook opens it with: DuckDB shares one database instance
    per file within a process and refuses a second connection with another configuration.
    """

    kind = "duckdb"
    placeholder = "?"
    schema = "segment_profiles"
    #: ``DuckDBHook.get_connect_config()`` without a connection extra (provider 0.2.1).
    HOOK_CONFIG = {
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": True,
        "allow_community_extensions": False,
    }

    def __init__(self, path: Path) -> None:
        import duckdb

        self.path = path
        self.conn = duckdb.connect(str(path), config=self.HOOK_CONFIG)

    @property
    def airflow_conn(self) -> dict[str, Any]:
        """The Airflow connection (JSON form) of this warehouse."""
        return {"conn_type": "duckdb", "host": str(self.path)}

    def t(self, name: str) -> str:
        """Qualified table name."""
        return name

    def execute(self, sql: str, rows: Sequence[Sequence[Any]] = ()) -> None:
        """Run a statement (``%s`` placeholders), once per row when rows are given."""
        sql = sql.replace("%s", "?")
        if rows:
            self.conn.executemany(sql, [list(row) for row in rows])
        else:
            self.conn.execute(sql)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """All rows of a query."""
        return self.conn.execute(sql).fetchall()

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


class MariaDBWarehouse:
    """
    A fresh database of the MariaDB test server as the warehouse, read through ``MySqlHook`` with the
    ``mysql-connector-python`` client; it also holds the state tables (``schema``), and :meth:`close` drops it.
    """

    kind = "mariadb"
    placeholder = "%s"

    def __init__(self, params: dict[str, Any]) -> None:
        import mysql.connector

        self.params = params
        self.schema = f"rel_{uuid.uuid4().hex[:10]}"
        self.conn = mysql.connector.connect(**params)
        self.conn.autocommit = True
        self.execute(f"CREATE DATABASE {self.schema} CHARACTER SET utf8mb4")

    @property
    def airflow_conn(self) -> dict[str, Any]:
        """The Airflow connection (JSON form) of this warehouse."""
        return {
            "conn_type": "mysql",
            "host": self.params["host"],
            "port": self.params["port"],
            "login": self.params["user"],
            "password": self.params["password"],
            "schema": self.schema,
            "extra": {"client": "mysql-connector-python"},
        }

    def t(self, name: str) -> str:
        """Qualified table name."""
        return f"{self.schema}.{name}"

    def execute(self, sql: str, rows: Sequence[Sequence[Any]] = ()) -> None:
        """Run a statement (``%s`` placeholders), once per row when rows are given."""
        cursor = self.conn.cursor()
        try:
            if rows:
                cursor.executemany(sql, [tuple(row) for row in rows])
            else:
                cursor.execute(sql)
        finally:
            cursor.close()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """All rows of a query."""
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql)
            return cursor.fetchall()
        finally:
            cursor.close()

    def close(self) -> None:
        """Drop the database and close the connection."""
        try:
            self.execute(f"DROP DATABASE IF EXISTS {self.schema}")
        finally:
            self.conn.close()


def create_customers(wh: SqliteWarehouse | PostgresWarehouse, ids: Iterable[int], plan: str = "free") -> None:
    """Create ``customers(id, name, email, plan)`` and insert one row per id."""
    wh.execute(f"CREATE TABLE {wh.t('customers')} (id INTEGER, name TEXT, email TEXT, plan TEXT)")
    insert_customers(wh, ids, plan)


def insert_customers(wh: SqliteWarehouse | PostgresWarehouse, ids: Iterable[int], plan: str = "free") -> None:
    """Insert customers with predictable values."""
    rows = [(i, f"Customer {i}", f"c{i}@example.com", plan) for i in ids]
    if rows:
        wh.execute(f"INSERT INTO {wh.t('customers')} VALUES (%s, %s, %s, %s)", rows)


def warehouse_customers(wh: SqliteWarehouse | PostgresWarehouse) -> dict[str, dict[str, Any]]:
    """The customers table as Segment should hold it: ``{user id: traits}``."""
    return {
        str(i): {"name": name, "email": email, "plan": plan}
        for i, name, email, plan in wh.query(f"SELECT id, name, email, plan FROM {wh.t('customers')}")
    }


# ----------------------------------------------------------------------------------------------------------
# What Segment holds
# ----------------------------------------------------------------------------------------------------------
def comparable(message: dict[str, Any]) -> str:
    """A message as canonical JSON without ``sentAt`` (which each request sets anew)."""
    return json.dumps({k: v for k, v in message.items() if k != "sentAt"}, sort_keys=True)


def change_key(message: dict[str, Any]) -> str:
    """What one change of one record through one mapping looks like, without its ``messageId``."""
    return json.dumps({k: v for k, v in message.items() if k not in ("sentAt", "messageId")}, sort_keys=True)


def message_id_problems(messages: Sequence[dict[str, Any]]) -> list[str]:
    """
    Duplicates that Segment's de-duplication cannot explain, as readable lines:

    - one ``messageId`` carried by two different bodies (Segment would drop the second, a different
      change, as a duplicate);
    - one change sent twice under two ids: the same body for the same record, call type and event, with no
      other body for it in between (Segment would apply it twice). A record that returns to an earlier
      value is a new change, so the same body after a different one may carry a new id; so is a record
      that comes back after its delete (``Customer Deleted``) was sent, and its next delete.
    """
    bodies: dict[str, set[str]] = defaultdict(set)
    last: dict[tuple[Any, ...], tuple[str, str]] = {}
    repeated: dict[str, set[str]] = defaultdict(set)
    for message in messages:
        message_id = message.get("messageId", "<none>")
        body = change_key(message)
        bodies[message_id].add(comparable(message))
        stream = (
            message.get("userId"),
            message.get("anonymousId"),
            message.get("type"),
            message.get("event"),
        )
        previous = last.get(stream)
        if previous is not None and previous[0] == body and previous[1] != message_id:
            repeated[body].update({previous[1], message_id})
        last[stream] = (body, message_id)
        if message.get("event") == DELETE_EVENT:  # the record is gone: its next add is a new change
            for other in [s for s in last if s[0] == stream[0] and s[1] == stream[1] and s != stream]:
                del last[other]
        else:  # the record exists again: its next delete is a new change
            last.pop((stream[0], stream[1], "track", DELETE_EVENT), None)
    problems = [
        f"messageId {mid} carried {len(b)} different bodies" for mid, b in bodies.items() if len(b) > 1
    ]
    problems += [
        f"one change sent under {len(ids)} messageIds {sorted(ids)}: {key[:200]}"
        for key, ids in repeated.items()
    ]
    return problems


@dataclass
class SegmentView:
    """
    What Segment holds after a sequence of accepted messages, applying its de-duplication: a message whose
    ``messageId`` was already seen is dropped (Segment's look-back is ~24 h; every test fits in it).

    :ivar profiles: user id -> traits of the latest applied identify; a ``Customer Deleted`` track removes
        the user.
    :ivar events: ``(userId, event, properties)`` of every other applied track, in order.
    """

    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    applied: int = 0
    dropped_as_duplicates: int = 0

    @classmethod
    def of(cls, messages: Iterable[dict[str, Any]], delete_event: str = DELETE_EVENT) -> SegmentView:
        """Build the view from messages in arrival order."""
        view = cls()
        seen: set[str] = set()
        for message in messages:
            message_id = message.get("messageId")
            if message_id in seen:
                view.dropped_as_duplicates += 1
                continue
            if message_id is not None:
                seen.add(message_id)
            view.applied += 1
            user = str(message.get("userId"))
            if message["type"] == "identify":
                view.profiles[user] = message.get("traits", {})
            elif message["type"] == "track" and message.get("event") == delete_event:
                view.profiles.pop(user, None)
            elif message["type"] == "track":
                view.events.append((user, message["event"], message.get("properties", {})))
        return view


def view_differences(held: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Records on which ``held`` (Segment) and ``expected`` (the warehouse) disagree, as readable lines."""
    lines = []
    for key in sorted(set(held) | set(expected), key=str):
        if key not in held:
            lines.append(f"{key}: missing in Segment, warehouse has {expected[key]!r}")
        elif key not in expected:
            lines.append(f"{key}: Segment still has {held[key]!r}, the warehouse does not have it")
        elif held[key] != expected[key]:
            lines.append(f"{key}: Segment has {held[key]!r}, warehouse has {expected[key]!r}")
    return lines


def assert_segment_matches(
    messages: Sequence[dict[str, Any]], expected: dict[str, dict[str, Any]], delete_event: str = DELETE_EVENT
) -> SegmentView:
    """
    Check that Segment's view of every record equals the warehouse and that no duplicate is unexplained;
    count lost records and unexplained duplicates in :data:`FIGURES` first, so they show even on failure.
    """
    view = SegmentView.of(messages, delete_event)
    differences = view_differences(view.profiles, expected)
    problems = message_id_problems(messages)
    FIGURES.lost(len(differences))
    FIGURES.duplicates(len(problems))
    assert not differences, "Segment's view differs from the warehouse:\n" + "\n".join(differences[:20])
    assert not problems, "unexplained duplicates:\n" + "\n".join(problems[:20])
    return view


def count_emulator_faults(emulator: SegmentEmulator, since: int = 0) -> None:
    """Add the faults the emulator actually applied (failed, user-failed and dropped requests) to FIGURES."""
    for request in emulator.requests[since:]:
        if request.fault == "drop":
            FIGURES.fault("connection dropped")
        elif request.fault is not None:
            kind = "429 Retry-After" if request.status == 429 else f"HTTP {request.status}"
            FIGURES.fault(f"{kind} ({request.fault})")


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` passes; return its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


def closed_port_url() -> str:
    """A loopback URL ending in ``/v1`` whose port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def read_ndjson(uri: str | None) -> list[dict[str, Any]]:
    """The lines of a local NDJSON file given as ``file://`` URI or path (``[]`` for ``None``)."""
    if not uri:
        return []
    return [json.loads(line) for line in Path(uri.removeprefix("file://")).read_text().splitlines() if line]


# ----------------------------------------------------------------------------------------------------------
# Real DAG runs
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One DAG run of the harness: its state, the sync summary (``None`` if none was pushed) and what the
    emulator accepted while it ran."""

    state: str
    summary: dict[str, Any] | None
    sent: list[dict[str, Any]]
    run_id: str
    logical_date: datetime | None
    try_number: int | None


START_DAY = datetime(2024, 3, 1, tzinfo=UTC)


class DagHarness:
    """
    Runs ``tests/dags/reliability_sync.py`` with ``dag.test()`` against one warehouse and one emulator.

    Each harness has its own DAG id, so its runs never see XCom of another test's runs in the session's
    metadata database. ``operator`` holds the operator's keyword arguments for the next run (laid over the
    DAG file's defaults); ``retries`` and ``execution_timeout_s`` are the task's.

    :param warehouse: the warehouse the model is read from.
    :param emulator: the Segment emulator; ``segment_connection`` can be replaced (e.g. an unreachable host).
    :param state_dir: local folder used as ``state_path``.
    :param monkeypatch: to set the environment of each run.
    :param name: a short name for the DAG id.
    :param segment_connection: the default Profile Space connection (for an emulator with several keys).
    """

    def __init__(
        self,
        warehouse: SqliteWarehouse | PostgresWarehouse,
        emulator: SegmentEmulator,
        state_dir: Path,
        monkeypatch: pytest.MonkeyPatch,
        name: str = "sync",
        segment_connection: dict[str, Any] | None = None,
    ) -> None:
        self.warehouse = warehouse
        self.emulator = emulator
        self.state_dir = state_dir
        self.monkeypatch = monkeypatch
        safe = "".join(c if c.isalnum() or c in "_-." else "_" for c in name)[:60]
        self.dag_id = f"rel_{safe}_{uuid.uuid4().hex[:8]}"
        self.task_id = "sync"
        self.segment_connection: dict[str, Any] = segment_connection or emulator.airflow_connection()
        self.operator: dict[str, Any] = {
            "sql": f"SELECT id, name, email, plan FROM {warehouse.t('customers')}",
            "mappings": CUSTOMER_MAPPINGS,
        }
        self.retries = 0
        self.execution_timeout_s: float | None = None
        self._day = START_DAY

    def env(self, **operator_overrides: Any) -> dict[str, str]:
        """Environment variables of one run (also what an ``airflow dags test`` subprocess needs)."""
        spec = {
            "operator": {**self.operator, **operator_overrides},
            "retries": self.retries,
            "execution_timeout_s": self.execution_timeout_s,
        }
        return {
            "RELIABILITY_DAG_ID": self.dag_id,
            "RELIABILITY_TASK_ID": self.task_id,
            "RELIABILITY_SPEC": json.dumps(spec),
            "RELIABILITY_STATE_PATH": self.state_dir.as_uri(),
            "AIRFLOW_CONN_RELIABILITY_WAREHOUSE": json.dumps(self.warehouse.airflow_conn),
            "AIRFLOW_CONN_SEGMENT_PROFILES_DEFAULT": json.dumps(self.segment_connection),
        }

    def next_day(self) -> datetime:
        """The logical date of the next scheduled-looking run."""
        self._day += timedelta(days=1)
        return self._day

    def load_dag(self, **operator_overrides: Any) -> Any:
        """Set the run's environment and parse the DAG."""
        from airflow.dag_processing.dagbag import DagBag

        for name, value in self.env(**operator_overrides).items():
            self.monkeypatch.setenv(name, value)
        dag = DagBag(dag_folder=str(RELIABILITY_DAG_FILE)).get_dag(self.dag_id)
        assert dag is not None, f"DAG {self.dag_id} did not load"
        return dag

    def run(self, logical_date: datetime | str | None = "next", **operator_overrides: Any) -> Run:
        """Run the DAG once with ``dag.test()``; return its :class:`Run`."""
        dag = self.load_dag(**operator_overrides)
        if logical_date == "next":
            logical_date = self.next_day()
        before = self.emulator.message_count
        dagrun = dag.test(logical_date=logical_date)
        FIGURES.run()
        sent = self.emulator.messages[before:]
        _, tries = self.task_state(dagrun.run_id)
        return Run(str(dagrun.state), self.summary(dagrun.run_id), sent, dagrun.run_id, logical_date, tries)

    def plan(self) -> list[dict[str, Any]]:
        """The exact messages the next real run must deliver: a dry run's NDJSON (state is untouched)."""
        run = self.run(dry_run=True)
        assert run.state == "success", "the planning dry run failed"
        assert run.sent == [], "a dry run sent messages"
        return read_ndjson(run.summary["dry_run_path"])

    def summary(self, run_id: str) -> dict[str, Any] | None:
        """The sync summary (XCom ``return_value``) of one run of this DAG."""
        return self.xcom(run_id, "return_value")

    def xcom(self, run_id: str, key: str) -> Any:
        """One XCom value of the sync task in one run (``None`` when absent)."""
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            row = session.scalars(
                select(XComModel).where(
                    XComModel.dag_id == self.dag_id, XComModel.run_id == run_id, XComModel.key == key
                )
            ).first()
            return None if row is None else XComModel.deserialize_value(row)

    def task_state(self, run_id: str) -> tuple[str, int | None]:
        """``(state, try_number)`` of the sync task instance in one run."""
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            ti = session.scalars(
                select(TaskInstance).where(TaskInstance.dag_id == self.dag_id, TaskInstance.run_id == run_id)
            ).first()
            return (str(ti.state), ti.try_number) if ti is not None else ("none", None)

    @property
    def state_root(self) -> Path:
        """This sync's state folder."""
        return self.state_dir / self.dag_id / self.task_id / "task"

    def head(self) -> dict[str, Any] | None:
        """The committed ``HEAD.json`` (``None`` before the first commit)."""
        path = self.state_root / "HEAD.json"
        return json.loads(path.read_text()) if path.exists() else None


# ----------------------------------------------------------------------------------------------------------
# Direct execute() with a fake task instance (property-based state tests)
# ----------------------------------------------------------------------------------------------------------
class FakeTaskInstance:
    """
    The part of a task instance the operator uses: ids, try number, map index and XCom.

    XCom values live in ``store`` (shared across runs of one sync), keyed by key; ``xcom_pull`` with
    ``include_prior_dates`` returns the newest value pushed by any run, as Airflow's pull with
    ``map_indexes`` does for runs whose logical dates increase.
    """

    def __init__(
        self,
        store: dict[str, list[tuple[str, Any]]],
        *,
        dag_id: str,
        task_id: str,
        run_id: str,
        try_number: int = 1,
        map_index: int = -1,
    ) -> None:
        self.store = store
        self.dag_id = dag_id
        self.task_id = task_id
        self.run_id = run_id
        self.try_number = try_number
        self.map_index = map_index

    def xcom_push(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key`` for this run (replacing this run's earlier value)."""
        entries = [(run, v) for run, v in self.store.get(key, []) if run != self.run_id]
        entries.append((self.run_id, json.loads(json.dumps(value))))
        self.store[key] = entries

    def xcom_pull(
        self,
        task_ids: str | None = None,
        key: str = "return_value",
        include_prior_dates: bool = False,
        **_: Any,
    ) -> Any:
        """This run's value, or with ``include_prior_dates`` the newest value of any run."""
        entries = self.store.get(key, [])
        if not include_prior_dates:
            entries = [(run, v) for run, v in entries if run == self.run_id]
        return entries[-1][1] if entries else None


class DirectRunner:
    """
    Runs ``SegmentProfilesSyncOperator.execute()`` in this process with a :class:`FakeTaskInstance`.

    :param settings: operator keyword arguments (``task_id`` and ``state_path`` are filled in).
    :param state_dir: local folder used as ``state_path``.
    """

    def __init__(self, settings: dict[str, Any], state_dir: Path, dag_id: str = "direct_dag") -> None:
        self.settings = settings
        self.state_dir = state_dir
        self.dag_id = dag_id
        self.task_id = "sync"
        self.xcom: dict[str, list[tuple[str, Any]]] = {}
        self.runs = 0

    def run(
        self, run_id: str | None = None, try_number: int = 1, ti_task_id: str | None = None, **overrides: Any
    ) -> dict[str, Any]:
        """
        Execute once; return the summary (exceptions propagate, as they would fail the task).

        :param ti_task_id: the task id the task instance reports, if not the operator's (the operator's own
            must be a valid Airflow key; a task instance's is used for the state folder).
        """
        from airflow_provider_segment_profiles.operators.segment_profiles import SegmentProfilesSyncOperator

        self.runs += 1
        FIGURES.run()
        run_id = run_id or f"direct__{self.runs:04d}"
        operator = SegmentProfilesSyncOperator(
            task_id=self.task_id,
            state_path=self.state_dir.as_uri(),
            **{**self.settings, **overrides},
        )
        ti = FakeTaskInstance(
            self.xcom,
            dag_id=self.dag_id,
            task_id=ti_task_id or self.task_id,
            run_id=run_id,
            try_number=try_number,
        )
        summary = operator.execute({"ti": ti, "task_instance": ti, "run_id": run_id})
        ti.xcom_push("return_value", summary)
        return summary


# ----------------------------------------------------------------------------------------------------------
# Fixtures (this module is a pytest plugin of the reliability tests)
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture
def rel_emulator() -> Iterable[SegmentEmulator]:
    """
    A running emulator accepting :data:`WRITE_KEY`, recording every copy it accepts: these tests count
    what the product sent (a resent batch included) and apply Segment's de-duplication themselves
    (:class:`SegmentView`), so the emulator's own de-duplication is off.
    """
    with SegmentEmulator(write_key=WRITE_KEY, deduplicate=False) as emulator:
        yield emulator


@pytest.fixture
def rel_sqlite(tmp_path: Path) -> Iterable[SqliteWarehouse]:
    """An empty SQLite warehouse file."""
    warehouse = SqliteWarehouse(tmp_path / "warehouse.db")
    yield warehouse
    warehouse.close()


@pytest.fixture
def rel_postgres(postgres_dsn: str) -> Iterable[PostgresWarehouse]:
    """A fresh schema on the PostgreSQL test server (fails in CI, skips elsewhere when it is down)."""
    warehouse = PostgresWarehouse(postgres_dsn)
    yield warehouse
    warehouse.close()


@pytest.fixture
def rel_harness(request, rel_sqlite, rel_emulator, tmp_path, monkeypatch, airflow_db) -> DagHarness:
    """A :class:`DagHarness` on a SQLite warehouse, named after the test."""
    return DagHarness(rel_sqlite, rel_emulator, tmp_path / "state", monkeypatch, name=request.node.name)
