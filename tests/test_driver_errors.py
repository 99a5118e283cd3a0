"""
Driver errors are classified once (``pipeline/db_errors.py``), by SQLSTATE class where the driver gives
one: a data exception in the model's SQL fails without retry, an administrator shutdown is retried, both
with the model named, over both engines on real PostgreSQL; drivers without SQLSTATE (sqlite3) keep the
DB-API class rules.
"""

from __future__ import annotations

import sqlite3

import psycopg
import psycopg2
import pytest

pytest.register_assert_rewrite("reliability_support")
from reliability_support import IDENTIFY_MAPPING, DagHarness, PostgresWarehouse, create_customers  # noqa: E402

from airflow_provider_segment_profiles.exceptions import ModelQueryError, ModelReadError  # noqa: E402
from airflow_provider_segment_profiles.pipeline import db_errors  # noqa: E402
from airflow_provider_segment_profiles.pipeline.db_errors import ErrorKind  # noqa: E402

pytest_plugins = ["reliability_support"]


class _WithArgs(Exception):
    """A driver error that carries its SQLSTATE only as an argument."""


class _WithSqlstate(Exception):
    sqlstate = "40001"


@pytest.mark.parametrize(
    "err,kind,state",
    [
        (psycopg.errors.NumericValueOutOfRange("integer out of range"), ErrorKind.PERMANENT, "22003"),
        (psycopg.errors.UndefinedColumn("no such column"), ErrorKind.PERMANENT, "42703"),
        (psycopg.errors.InvalidPassword("bad password"), ErrorKind.PERMANENT, "28P01"),
        (psycopg.errors.SerializationFailure("could not serialize"), ErrorKind.TRANSIENT, "40001"),
        (psycopg.errors.AdminShutdown("terminating connection"), ErrorKind.TRANSIENT, "57P01"),
        (psycopg.errors.ConnectionFailure("lost"), ErrorKind.TRANSIENT, "08006"),
        (psycopg.errors.LockNotAvailable("lock"), ErrorKind.TRANSIENT, "55P03"),
        (_WithArgs(1264, "22003", "Out of range value"), ErrorKind.PERMANENT, "22003"),
        (_WithSqlstate("serialization"), ErrorKind.TRANSIENT, "40001"),
        (_WithArgs("ERROR"), ErrorKind.UNKNOWN, None),
        (sqlite3.ProgrammingError("several statements"), ErrorKind.PERMANENT, None),
        (sqlite3.OperationalError("no such table: x"), ErrorKind.UNKNOWN, None),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_classification_by_sqlstate_class_else_by_dbapi_class(err, kind, state):
    assert db_errors.sqlstate(err) == state
    assert db_errors.classify(err)[0] is kind


def test_psycopg2_gives_its_sqlstate_as_pgcode(postgres_dsn):
    conn = psycopg2.connect(postgres_dsn)
    try:
        with pytest.raises(psycopg2.Error) as caught, conn.cursor() as cursor:
            cursor.execute("SELECT 2147483647::int + 1")
    finally:
        conn.close()
    assert caught.value.pgcode == "22003"
    kind, why = db_errors.classify(caught.value)
    assert kind is ErrorKind.PERMANENT and why == "SQLSTATE 22003, class 22 data exception"
    mapped = db_errors.model_error(caught.value, db_errors.model_label("SELECT 1", "pg"))
    assert isinstance(mapped, ModelQueryError)
    assert "Model: the model (conn_id 'pg': SELECT 1)" in str(mapped)
    assert isinstance(db_errors.model_error(psycopg.errors.AdminShutdown("x"), "m"), ModelReadError)
    assert db_errors.model_error(sqlite3.OperationalError("locked"), "m") is None


@pytest.fixture(params=["worker", "warehouse"])
def pg(request, rel_emulator, tmp_path, monkeypatch, airflow_db) -> DagHarness:
    warehouse = PostgresWarehouse(request.getfixturevalue("postgres_dsn"))
    request.addfinalizer(warehouse.close)
    h = DagHarness(warehouse, rel_emulator, tmp_path / "state", monkeypatch, name=request.node.name)
    h.operator.update(
        mappings=[IDENTIFY_MAPPING], change_detection=request.param, state_schema=warehouse.schema
    )
    create_customers(warehouse, range(1, 21))
    return h


def _log(capfd) -> str:
    captured = capfd.readouterr()
    return captured.out + captured.err


@pytest.mark.airflow_db
def test_a_data_exception_in_the_model_fails_without_retry_naming_the_model(pg: DagHarness, capfd):
    h = pg
    h.retries = 2
    h.operator["sql"] = f"SELECT id, (id * 1000000000)::int AS score FROM {h.warehouse.t('customers')}"
    capfd.readouterr()
    run = h.run()
    assert run.state == "failed"
    assert run.try_number == 1, "a data exception was retried"
    assert run.sent == [] and h.head() is None
    log = _log(capfd)
    assert "The database refused the model's SQL (SQLSTATE 22003, class 22 data exception; permanent" in log
    assert "integer out of range" in log
    assert (
        "Model: the model (conn_id 'reliability_warehouse': SELECT id, (id * 1000000000)::int AS score" in log
    )


@pytest.mark.airflow_db
def test_an_admin_shutdown_while_reading_the_model_is_retried(pg: DagHarness, capfd):
    h = pg
    h.retries = 1
    h.operator["sql"] = (
        f"SELECT id, name, pg_terminate_backend(pg_backend_pid()) AS gone FROM {h.warehouse.t('customers')}"
    )
    capfd.readouterr()
    run = h.run()
    assert run.state == "failed"
    assert run.try_number == 2, "a transient error was not retried"
    assert run.sent == []
    log = _log(capfd)
    assert "Reading the model failed (SQLSTATE 57P01, class 57 operator intervention; transient" in log
