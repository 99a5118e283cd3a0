"""Values a driver cannot hold (``pipeline/driver_values.py``): the marker, its reasons and checksum, the value
policy applied to it, and the safe loaders on real psycopg 3 and psycopg 2 connections."""

from __future__ import annotations

import sqlite3
from datetime import date, datetime, time, timedelta

import pytest

from airflow_provider_segment_profiles.actions import RecordRejected, compile_mappings
from airflow_provider_segment_profiles.actions.errors import FieldRejected
from airflow_provider_segment_profiles.actions.json_values import coerce_to_string, to_json_value
from airflow_provider_segment_profiles.actions.timestamps import normalize_timestamp
from airflow_provider_segment_profiles.pipeline.detection.checksum import Checksummer, record_key
from airflow_provider_segment_profiles.pipeline.driver_values import (
    UnreadableValue,
    install_safe_loaders,
    parse_postgres_interval,
    unreadable,
)
from airflow_provider_segment_profiles.state.watermark import WatermarkError, sort_key


@pytest.mark.parametrize(
    ("type_key", "text", "error", "words"),
    [
        ("date", "infinity", None, "is PostgreSQL's infinity, which no Python date can hold"),
        ("timestamptz", "-infinity", None, "is PostgreSQL's -infinity, which no Python datetime can hold"),
        ("date", "0044-03-15 BC", None, "is before the year 1 (BC)"),
        ("timestamp", "15/03/0044 12:00:00 BC", None, "is before the year 1 (BC)"),
        ("date", "10000-01-01", None, "is after the year 9999"),
        ("timestamp", "Sat Jan 01 00:00:00 10000", None, "is after the year 9999"),
        ("time", "24:00:00", None, "is the end of the day (24:00:00)"),
        ("timetz", "24:00:00+00", None, "is the end of the day (24:00:00)"),
        ("interval", "178000000 years", OverflowError("days too big"), "outside Python's timedelta range"),
        ("jsonb", "[[[]]]", RecursionError("too deep"), "nested deeper than Python's JSON parser can read"),
        (
            "timestamptz",
            "02/01/2020 03:04:05 UTC",
            NotImplementedError("can't parse timestamptz with DateStyle 'SQL, DMY'"),
            "could not be read by the database driver (can't parse timestamptz with DateStyle",
        ),
    ],
)
def test_reasons_are_worded_from_the_text(type_key, text, error, words):
    value = unreadable(type_key, text, error)
    assert value.type_name == f"PostgreSQL {type_key}"
    assert value.text == text
    assert words in value.reason
    assert value.describe() == f"PostgreSQL {type_key} {text!r} {value.reason}"


def test_a_time_with_microseconds_is_not_taken_for_a_big_year():
    assert "year" not in unreadable("timestamp", "2024-01-01 10:00:00.123456", ValueError("x")).reason


def test_the_marker_is_value_based():
    first = unreadable("date", "infinity")
    same = UnreadableValue("PostgreSQL date", "infinity", "another wording of the reason")
    assert repr(first) == repr(same) == "UnreadableValue('PostgreSQL date', 'infinity')"
    assert first == same and hash(first) == hash(same)
    assert first != unreadable("date", "-infinity") and first != unreadable("timestamp", "infinity")
    assert str(first) == "infinity"
    assert record_key(first) == "infinity"  # a key holding such a value compares as its text


def test_checksums_of_markers_are_stable_and_follow_the_value():
    checksum = Checksummer("mappings", [0, 1])
    row = (1, unreadable("date", "infinity"))
    assert checksum(row) == Checksummer("mappings", [0, 1])(
        (1, UnreadableValue("PostgreSQL date", "infinity", ""))
    )
    assert checksum(row) != checksum((1, unreadable("date", "-infinity")))
    assert checksum(row) != checksum((1, "infinity"))  # a text column holding "infinity" is another value


def test_describe_cuts_long_text():
    value = unreadable("jsonb", "[" * 5000 + "]" * 5000, RecursionError())
    described = value.describe()
    assert len(described) < 200 and "(10,000 characters)" in described


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 year 2 mons 3 days 04:05:06.5", timedelta(days=428, seconds=14706, microseconds=500000)),
        ("-1 years -2 mons +3 days -04:05:06.5", timedelta(days=-423, seconds=71693, microseconds=500000)),
        ("-00:00:00.5", timedelta(microseconds=-500000)),
        ("1 day -00:00:00.000001", timedelta(seconds=86399, microseconds=999999)),
        ("2555555555:33:20", timedelta(seconds=9_200_000_000_000)),
        ("999999999 days", timedelta(days=999999999)),
    ],
)
def test_intervals_parse_as_psycopg_reads_them(text, expected):
    assert parse_postgres_interval(text) == expected


def test_intervals_outside_timedelta_or_in_other_styles_raise():
    with pytest.raises(OverflowError):
        parse_postgres_interval("178000000 years")
    for text in ("P1DT2H", "1 2:00:00", "", "infinity"):
        with pytest.raises(ValueError):
            parse_postgres_interval(text)


# -- the value policy ------------------------------------------------------------------------------------
def test_text_and_object_fields_get_the_text_with_a_warning():
    warnings: list[str] = []
    assert to_json_value(unreadable("date", "infinity"), "traits.renews_on", warnings) == "infinity"
    assert warnings == [
        "traits.renews_on: PostgreSQL date 'infinity' is PostgreSQL's infinity, which no Python date can "
        "hold; sent as the warehouse's text"
    ]
    warnings.clear()
    assert coerce_to_string(unreadable("timestamp", "0044-03-15 BC"), "user_id", warnings) == "0044-03-15 BC"
    assert len(warnings) == 1 and warnings[0].startswith("user_id: PostgreSQL timestamp '0044-03-15 BC'")


def test_json_too_deep_for_python_is_rejected_naming_the_field():
    with pytest.raises(FieldRejected) as caught:
        to_json_value(unreadable("jsonb", "[[[]]]", RecursionError()), "traits.doc", [])
    assert caught.value.field == "traits.doc"
    assert "nested deeper than Python's JSON parser" in caught.value.reason


def test_a_marker_is_no_timestamp():
    with pytest.raises(FieldRejected) as caught:
        normalize_timestamp(unreadable("timestamptz", "infinity"), [], "timestamp")
    assert caught.value.field == "timestamp"
    assert caught.value.reason == (
        "PostgreSQL timestamptz 'infinity' is PostgreSQL's infinity, which no Python datetime can hold; "
        "it cannot be sent as a timestamp"
    )


def test_a_marker_is_no_watermark():
    with pytest.raises(WatermarkError):
        sort_key(unreadable("timestamptz", "infinity"))


def test_records_with_markers_through_the_builder():
    (mapping,) = compile_mappings(
        [
            {
                "name": "who",
                "action": "send_track",
                "fields": {
                    "user_id": {"column": "id"},
                    "event_name": "Renewed",
                    "properties": {"columns": "*", "exclude": ["id"]},
                    "timestamp": {"column": "at"},
                },
            }
        ],
        sync_mode="diff",
        primary_key="id",
    )
    builder = mapping.bind(["id", "renews_on", "at"])
    built = builder.build(
        ("7", unreadable("date", "infinity"), datetime(2024, 3, 1)), primary_key="7", checksum="0" * 16
    )
    assert built.message["properties"] == {"renews_on": "infinity", "at": "2024-03-01T00:00:00.000Z"}
    assert len(built.warnings) == 1 and built.warnings[0].startswith("properties.renews_on: PostgreSQL date")
    with pytest.raises(RecordRejected) as caught:
        builder.build(
            ("8", None, unreadable("timestamp", "10000-01-01 00:00:00")), primary_key="8", checksum="0" * 16
        )
    assert (caught.value.mapping, caught.value.primary_key, caught.value.field) == ("who", "8", "timestamp")
    assert "'10000-01-01 00:00:00' is after the year 9999" in str(caught.value)


# -- real connections ------------------------------------------------------------------------------------
#: SQL -> what the driver gives with the safe loaders (for both drivers).
POSTGRES_VALUES = {
    "'infinity'::date": UnreadableValue("PostgreSQL date", "infinity", ""),
    "'-infinity'::timestamp": UnreadableValue("PostgreSQL timestamp", "-infinity", ""),
    "'0044-03-15 12:00 BC'::timestamptz": UnreadableValue(
        "PostgreSQL timestamptz", "0044-03-15 12:00:00+00 BC", ""
    ),
    "'10000-01-01'::date": UnreadableValue("PostgreSQL date", "10000-01-01", ""),
    "'24:00'::time": UnreadableValue("PostgreSQL time", "24:00:00", ""),
    "'24:00+00'::timetz": UnreadableValue("PostgreSQL timetz", "24:00:00+00", ""),
    "interval '178000000 years'": UnreadableValue("PostgreSQL interval", "178000000 years", ""),
    "(repeat('[', 5000) || repeat(']', 5000))::json": UnreadableValue(
        "PostgreSQL json", "[" * 5000 + "]" * 5000, ""
    ),
    "array['infinity'::date, '2024-01-02']": [
        UnreadableValue("PostgreSQL date", "infinity", ""),
        date(2024, 1, 2),
    ],
    # ordinary values keep their types
    "'2024-01-02'::date": date(2024, 1, 2),
    "'2024-01-02 03:04:05'::timestamp": datetime(2024, 1, 2, 3, 4, 5),
    "'23:59:59.999999'::time": time(23, 59, 59, 999999),
    "make_interval(secs => 9.2e12)": timedelta(seconds=9_200_000_000_000),
    "'[[1]]'::jsonb": [[1]],
}
SESSION = "-c DateStyle=ISO,MDY -c TimeZone=UTC -c IntervalStyle=postgres"


def connect(driver: str, dsn: str, options: str = SESSION):
    if driver == "psycopg3":
        import psycopg

        return psycopg.connect(dsn, options=options)
    import psycopg2

    return psycopg2.connect(dsn, options=options)


def fetch_one(conn, sql: str):
    cursor = conn.cursor(name="driver_values_test")  # the reader's kind of cursor: server-side
    cursor.execute(f"SELECT {sql}")
    (row,) = cursor.fetchmany(2)
    return row[0]


@pytest.mark.parametrize("driver", ["psycopg3", "psycopg2"])
def test_safe_loaders_on_real_connections(postgres_dsn, driver):
    conn = connect(driver, postgres_dsn)
    try:
        install_safe_loaders(conn)
        for sql, expected in POSTGRES_VALUES.items():
            got = fetch_one(conn, sql)
            conn.rollback()
            assert got == expected and type(got) is type(expected), sql
            if isinstance(got, UnreadableValue):
                assert repr(got) == repr(expected)  # so the checksum is the same with either driver
    finally:
        conn.close()


@pytest.mark.parametrize("driver", ["psycopg3", "psycopg2"])
def test_other_connections_keep_the_drivers_behaviour(postgres_dsn, driver):
    safe, plain = connect(driver, postgres_dsn), connect(driver, postgres_dsn)
    try:
        install_safe_loaders(safe)
        assert isinstance(fetch_one(safe, "'0044-03-15 BC'::date"), UnreadableValue)
        with pytest.raises(Exception) as caught:
            fetch_one(plain, "'0044-03-15 BC'::date")
        assert type(caught.value).__name__ in {"DataError", "ValueError"}
    finally:
        safe.close()
        plain.close()


def test_psycopg3_timestamptz_in_another_datestyle_is_a_marker_not_a_failure(postgres_dsn):
    """psycopg 3 reads timestamptz only in DateStyle ISO (psycopg 2 sets ISO itself); in another style each
    value is a marker whose reason says so, instead of a failed run."""
    conn = connect("psycopg3", postgres_dsn, "-c DateStyle=SQL,DMY -c TimeZone=UTC")
    try:
        install_safe_loaders(conn)
        value = fetch_one(conn, "'2020-01-02 03:04:05+00'::timestamptz")
        assert isinstance(value, UnreadableValue) and value.text == "02/01/2020 03:04:05 UTC"
        assert "DateStyle" in value.reason
    finally:
        conn.close()


def test_sqlite_and_unknown_connections_are_left_alone():
    conn = sqlite3.connect(":memory:")
    try:
        install_safe_loaders(conn)
        assert conn.text_factory is str
        assert conn.execute("SELECT '0000-01-01', 2.5").fetchone() == ("0000-01-01", 2.5)
    finally:
        conn.close()
    install_safe_loaders(object())  # any other DB-API connection: nothing to do
