"""
Real warehouse result sets -> the exact JSON sent: SQLite (``sqlite3``) and PostgreSQL (psycopg 3).

The PostgreSQL tests use the server on 127.0.0.1:5432 and skip, with the reason, only when it cannot be
reached (the ``postgres_dsn`` fixture in ``conftest.py``; CI fails instead).
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from airflow_provider_segment_profiles.actions import compile_mappings


def build_all(mapping: dict, columns: list[str], rows: list[tuple], primary_key: str = "id"):
    (compiled,) = compile_mappings([mapping], sync_mode="diff", primary_key=primary_key)
    builder = compiled.bind(columns)
    index = columns.index(primary_key)
    return [builder.build(row, primary_key=str(row[index]), checksum="00") for row in rows]


def strict_loads(encoded: bytes):
    def refuse(constant: str):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(encoded, parse_constant=refuse)


def body_without_id(encoded: bytes) -> bytes:
    """The encoded message with its derived ``messageId`` cut out, for exact byte comparison."""
    message = strict_loads(encoded)
    marker = f'"messageId":"{message["messageId"]}",'.encode()
    assert marker in encoded
    return encoded.replace(marker, b"")


SQLITE_QUERY = """
select 'c-1' as id,
       9223372036854775807 as big,
       1.5 as ratio,
       9e999 as up,
       -9e999 as down,
       x'deadbeef' as blob,
       '{"plan": "pro", "seats": 12345678901234567890}' as attrs,
       null as missing,
       'x' || char(0) || 'y' as with_nul,
       '2023-09-26T11:46:28.290+02:00' as updated_at,
       1695721588 as signed_up_epoch
"""


def test_sqlite_result_to_exact_json():
    connection = sqlite3.connect(":memory:")
    cursor = connection.execute(SQLITE_QUERY)
    columns = [description[0] for description in cursor.description]
    rows = cursor.fetchall()
    mapping = {
        "action": "send_identify",
        "fields": {
            "user_id": {"column": "id"},
            "traits": {
                "big": {"column": "big"},
                "ratio": {"column": "ratio"},
                "up": {"column": "up"},
                "down": {"column": "down"},
                "blob": {"column": "blob"},
                "attrs": {"column": "attrs", "parse_json": True},
                "attrs_text": {"column": "attrs"},
                "missing": {"column": "missing"},
                "skipped": {"column": "missing", "skip_null": True},
                "with_nul": {"column": "with_nul"},
            },
            "timestamp": {"column": "updated_at"},
        },
    }
    (built,) = build_all(mapping, columns, rows)
    assert body_without_id(built.encoded) == (
        b'{"userId":"c-1","traits":{"big":"9223372036854775807","ratio":1.5,"up":null,"down":null,'
        b'"blob":"3q2+7w==","attrs":{"plan":"pro","seats":"12345678901234567890"},'
        b'"attrs_text":"{\\"plan\\": \\"pro\\", \\"seats\\": 12345678901234567890}","missing":null,'
        b'"with_nul":"x\\u0000y"},"timestamp":"2023-09-26T09:46:28.290Z","integrations":{"All":false},'
        b'"type":"identify","context":{"consent":{}}}'
    )
    assert built.warnings == [
        "traits.up: inf is not a JSON number; sent as null",
        "traits.down: -inf is not a JSON number; sent as null",
    ]


def test_sqlite_epoch_timestamp_and_integer_ids():
    connection = sqlite3.connect(":memory:")
    connection.execute("create table events (id integer, user_id integer, at integer, total real)")
    connection.executemany(
        "insert into events values (?, ?, ?, ?)", [(1, 42, 1695721588, 9.99), (2, 2**62, 1695721588290, 0.0)]
    )
    cursor = connection.execute("select id, user_id, at, total from events order by id")
    columns = [description[0] for description in cursor.description]
    mapping = {
        "action": "send_track",
        "fields": {
            "user_id": {"column": "user_id"},
            "event_name": "Order Completed",
            "timestamp": {"column": "at"},
            "properties": {"columns": ["id", "total"]},
        },
    }
    first, second = build_all(mapping, columns, cursor.fetchall())
    assert body_without_id(first.encoded) == (
        b'{"userId":"42","timestamp":"2023-09-26T09:46:28.000Z","event":"Order Completed",'
        b'"integrations":{"All":false},"properties":{"id":1,"total":9.99},"context":{"consent":{}},'
        b'"type":"track"}'
    )
    assert second.message["userId"] == str(2**62)  # ids are always exact text
    assert second.message["timestamp"] == "2023-09-26T09:46:28.290Z"  # epoch milliseconds


POSTGRES_QUERY = """
select 'c-1'::text as id,
       9007199254740993::bigint as big,
       42::bigint as small,
       12.10::numeric(10, 2) as price,
       0.1234567890123456789::numeric as precise,
       'NaN'::numeric as numeric_nan,
       'NaN'::float8 as double_nan,
       'Infinity'::float8 as double_inf,
       '-Infinity'::float8 as double_ninf,
       '2023-09-26 11:46:28.29+02'::timestamptz as created_at,
       '2023-09-26 09:46:28.290123'::timestamp as seen_at,
       '1990-05-17'::date as birthday,
       'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid as account_uuid,
       '{"a": 1, "b": [true, null], "big": 12345678901234567890, "f": 1.5}'::jsonb as attrs,
       '\\xdeadbeef'::bytea as avatar,
       '09:30:00'::time as opens_at,
       array[1, 2]::int[] as lucky
"""
POSTGRES_TRAITS = (
    b'{"big":"9007199254740993","small":42,"price":12.1,"precise":"0.1234567890123456789","numeric_nan":null,'
    b'"double_nan":null,"double_inf":null,"double_ninf":null,"created_at":"2023-09-26T09:46:28.290Z",'
    b'"seen_at":"2023-09-26T09:46:28.290123Z","birthday":"1990-05-17T00:00:00.000Z",'
    b'"account_uuid":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",'
    b'"attrs":{"a":1,"b":[true,null],"f":1.5,"big":"12345678901234567890"},"avatar":"3q2+7w==",'
    b'"opens_at":"09:30:00Z","lucky":[1,2]}'
)


@pytest.fixture
def postgres_rows(postgres_dsn):
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(postgres_dsn) as connection:
        cursor = connection.execute(POSTGRES_QUERY)
        columns = [description.name for description in cursor.description]
        return columns, cursor.fetchall()


@pytest.mark.postgres
def test_postgres_types_to_exact_json(postgres_rows):
    columns, rows = postgres_rows
    mapping = {
        "action": "send_identify",
        "fields": {
            "user_id": {"column": "id"},
            "traits": {"columns": "*", "exclude": ["id"]},
            "timestamp": {"column": "created_at"},
        },
    }
    (built,) = build_all(mapping, columns, rows)
    assert body_without_id(built.encoded) == (
        b'{"userId":"c-1","traits":' + POSTGRES_TRAITS + b',"timestamp":"2023-09-26T09:46:28.290Z",'
        b'"integrations":{"All":false},"type":"identify","context":{"consent":{}}}'
    )
    assert built.warnings == [
        "traits.numeric_nan: Decimal('NaN') is not a JSON number; sent as null",
        "traits.double_nan: nan is not a JSON number; sent as null",
        "traits.double_inf: inf is not a JSON number; sent as null",
        "traits.double_ninf: -inf is not a JSON number; sent as null",
    ]
    assert strict_loads(built.encoded) == built.message


@pytest.mark.postgres
def test_postgres_values_as_ids_and_timestamps(postgres_rows):
    columns, rows = postgres_rows
    mapping = {
        "action": "send_group",
        "fields": {
            "user_id": {"column": "big"},
            "anonymous_id": {"column": "account_uuid"},
            "group_id": {"column": "price"},
            "timestamp": {"column": "birthday"},
            "traits": {"column": "attrs"},
        },
    }
    (built,) = build_all(mapping, columns, rows)
    message = built.message
    assert message["userId"] == "9007199254740993"
    assert message["anonymousId"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert message["groupId"] == "12.1"  # as Segment's coercion of the JSON number 12.10 writes it
    assert message["timestamp"] == "1990-05-17T00:00:00.000Z"
    assert message["traits"] == {"a": 1, "b": [True, None], "big": "12345678901234567890", "f": 1.5}
    assert built.warnings == []


@pytest.mark.postgres
def test_postgres_json_text_column_parsed_only_when_asked(postgres_dsn):
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(postgres_dsn) as connection:
        cursor = connection.execute(
            """select 'u1' as id, '{"tier": "gold"}'::text as attrs_text,
                      '{"tier": "gold"}'::json as attrs_json"""
        )
        columns = [description.name for description in cursor.description]
        rows = cursor.fetchall()
    mapping = {
        "action": "send_identify",
        "fields": {
            "user_id": {"column": "id"},
            "traits": {
                "as_text": {"column": "attrs_text"},
                "parsed": {"column": "attrs_text", "parse_json": True},
                "json_type": {"column": "attrs_json"},
            },
        },
    }
    (built,) = build_all(mapping, columns, rows)
    assert built.message["traits"] == {
        "as_text": '{"tier": "gold"}',
        "parsed": {"tier": "gold"},
        "json_type": {"tier": "gold"},
    }
