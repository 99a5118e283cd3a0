"""Test environment: an isolated AIRFLOW_HOME, set before anything imports Airflow.

Airflow reads its configuration at import time, so these variables are set at the top of the first
conftest pytest loads. DAG runs (``dag.test()``) need the DAG files inside the configured dags folder
(Airflow >= 3.2), hence ``tests/dags``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
_HOME = Path(tempfile.mkdtemp(prefix="segment_profiles_airflow_home_"))
os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(TESTS / "dags")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_HOME}/airflow.db"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")

POSTGRES_DSN = os.environ.get(
    "SEGMENT_PROFILES_TEST_POSTGRES", "host=127.0.0.1 port=5432 user=postgres dbname=test"
)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated Airflow metadata database (SQLite) for real DAG runs; created once per session."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, env=os.environ
    )
    return _HOME


def postgres_available() -> str | None:
    """``None`` when the PostgreSQL server answers, else the reason it does not."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        with psycopg.connect(POSTGRES_DSN, connect_timeout=3) as conn:
            conn.execute("select 1")
    except Exception as err:
        return f"PostgreSQL at {POSTGRES_DSN!r} is unreachable: {err}"
    return None


@pytest.fixture
def postgres_dsn() -> str:
    """DSN of the test PostgreSQL server. Skips with the reason when it is unreachable, except in CI."""
    reason = postgres_available()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must test against PostgreSQL: {reason}")
        pytest.skip(reason)
    return POSTGRES_DSN


#: The MariaDB (or MySQL) test server: host, port, user, password, database (``.ci/run`` starts MariaDB).
MARIADB = {
    "host": os.environ.get("SEGMENT_PROFILES_TEST_MARIADB_HOST", "127.0.0.1"),
    "port": int(os.environ.get("SEGMENT_PROFILES_TEST_MARIADB_PORT", "3306")),
    "user": os.environ.get("SEGMENT_PROFILES_TEST_MARIADB_USER", "root"),
    "password": os.environ.get("SEGMENT_PROFILES_TEST_MARIADB_PASSWORD", ""),
    "database": "test",
}


def mariadb_available() -> str | None:
    """``None`` when the MariaDB server answers through mysql-connector-python, else the reason it does not."""
    try:
        import mysql.connector
        from airflow.providers.mysql.hooks.mysql import MySqlHook  # noqa: F401
    except ImportError as err:
        return (
            f"the MariaDB tests need the 'test-mysql' extra ({err}): pip install -e '.[test,test-mysql]' "
            "after installing MariaDB's client headers (apt-get install libmariadb-dev pkg-config)"
        )
    try:
        conn = mysql.connector.connect(connection_timeout=3, **MARIADB)
        conn.close()
    except Exception as err:
        return f"MariaDB at {MARIADB['host']}:{MARIADB['port']} is unreachable: {err}"
    return None


@pytest.fixture
def mariadb_params() -> dict:
    """Connection parameters of the test MariaDB server. Skips with the reason when it is unreachable, except
    in CI (``.ci/run`` starts it)."""
    reason = mariadb_available()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must test against MariaDB: {reason}")
        pytest.skip(reason)
    return dict(MARIADB)


#: Markers given from what a test uses, so that ``-m`` selects by cost without every file saying it:
#: a test that needs Airflow's metadata database, or a server, in its fixtures or its parameters.
_MARKED_BY_FIXTURE = {
    "airflow_db": "airflow_db",
    "rel_harness": "airflow_db",
    "postgres_dsn": "postgres",
    "rel_postgres": "postgres",
    "mariadb_params": "mariadb",
}
_MARKED_BY_PARAMETER = {"postgres": "postgres", "mariadb": "mariadb", "duckdb": "duckdb"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by the fixtures it uses and the warehouses it is parametrised over (see README)."""
    for item in items:
        marks = {
            mark for name, mark in _MARKED_BY_FIXTURE.items() if name in getattr(item, "fixturenames", ())
        }
        callspec = getattr(item, "callspec", None)
        if callspec is not None:
            values = {str(value) for value in callspec.params.values()} | set(callspec.id.split("-"))
            marks |= {mark for name, mark in _MARKED_BY_PARAMETER.items() if name in values}
        for mark in sorted(marks):
            item.add_marker(mark)
