"""The warehouse-value policy, timestamps, message ids and value forms, table-driven."""

from __future__ import annotations

import enum
import ipaddress
import json
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from airflow_provider_segment_profiles.actions import MAX_MESSAGE_BYTES, RecordRejected, compile_mappings
from airflow_provider_segment_profiles.actions.errors import FieldRejected
from airflow_provider_segment_profiles.actions.json_values import (
    MISSING,
    coerce_to_string,
    encode_json,
    js_number_to_string,
    js_string,
    to_json_value,
)
from airflow_provider_segment_profiles.actions.message_id import derive_message_id, message_id_prefix
from airflow_provider_segment_profiles.actions.timestamps import format_datetime, normalize_timestamp

BIG = 2**53


class Plan(enum.Enum):
    PRO = "pro"


@pytest.mark.parametrize(
    ("value", "expected", "warns"),
    [
        pytest.param(None, None, False, id="null"),
        pytest.param("a\x00b", "a\x00b", False, id="NUL-kept"),
        pytest.param(True, True, False, id="bool"),
        pytest.param(BIG - 1, BIG - 1, False, id="int-max-safe"),
        pytest.param(-(BIG - 1), -(BIG - 1), False, id="int-min-safe"),
        pytest.param(BIG, str(BIG), False, id="int-beyond-2**53-as-text"),
        pytest.param(-(2**63), str(-(2**63)), False, id="bigint-min-as-text"),
        pytest.param(1.5, 1.5, False, id="float"),
        pytest.param(float("nan"), None, True, id="NaN-null-with-warning"),
        pytest.param(float("inf"), None, True, id="Infinity-null-with-warning"),
        pytest.param(float("-inf"), None, True, id="-Infinity-null-with-warning"),
        pytest.param(Decimal("12.10"), 12.1, False, id="decimal-float-exact"),
        pytest.param(Decimal("0.1"), 0.1, False, id="decimal-0.1"),
        pytest.param(Decimal("42.00"), 42, False, id="decimal-integral"),
        pytest.param(Decimal("9007199254740993"), "9007199254740993", False, id="decimal-big-integral"),
        pytest.param(
            Decimal("0.123456789012345678901"), "0.123456789012345678901", False, id="decimal-beyond-float"
        ),
        pytest.param(Decimal("1E+30"), "1000000000000000000000000000000", False, id="decimal-1E+30"),
        pytest.param(Decimal("1E+5000"), "1E+5000", False, id="decimal-huge-exponent-scientific"),
        pytest.param(Decimal("NaN"), None, True, id="decimal-NaN"),
        pytest.param(Decimal("-Infinity"), None, True, id="decimal-Infinity"),
        pytest.param(
            datetime(2023, 9, 26, 9, 46, 28, 290000), "2023-09-26T09:46:28.290Z", False, id="naive-is-UTC"
        ),
        pytest.param(
            datetime(2023, 9, 26, 11, 46, 28, 290123, tzinfo=timezone(timedelta(hours=2))),
            "2023-09-26T09:46:28.290123Z",
            False,
            id="aware-to-UTC-microseconds-kept",
        ),
        pytest.param(date(1990, 5, 17), "1990-05-17T00:00:00.000Z", False, id="date-midnight-UTC"),
        pytest.param(time(9, 30), "09:30:00Z", False, id="naive-time-UTC"),
        pytest.param(
            time(9, 30, tzinfo=timezone(timedelta(hours=2))), "09:30:00+02:00", False, id="aware-time"
        ),
        pytest.param(timedelta(days=1, seconds=1.5), 86401.5, False, id="interval-seconds"),
        pytest.param(timedelta(hours=2), 7200, False, id="interval-whole-seconds"),
        pytest.param(
            uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            False,
            id="uuid",
        ),
        pytest.param(b"\xde\xad\xbe\xef", "3q2+7w==", False, id="bytes-base64"),
        pytest.param(memoryview(b"\x00\x01"), "AAE=", False, id="memoryview-base64"),
        pytest.param(bytearray(b"hi"), "aGk=", False, id="bytearray-base64"),
        pytest.param(Plan.PRO, "pro", False, id="enum-value"),
        pytest.param(ipaddress.ip_address("10.0.0.1"), "10.0.0.1", False, id="inet"),
        pytest.param(
            {"a": [1, BIG, float("nan")], 2: None}, {"a": [1, str(BIG), None], "2": None}, True, id="dict"
        ),
        pytest.param((1, "x"), [1, "x"], False, id="tuple-array"),
        pytest.param({"b", "a"}, ["a", "b"], False, id="set-sorted"),
        pytest.param({True: 1, None: 2, 1.5: 3}, {"true": 1, "null": 2, "1.5": 3}, False, id="non-text-keys"),
    ],
)
def test_to_json_value(value, expected, warns):
    warnings: list[str] = []
    assert to_json_value(value, "traits.x", warnings) == expected
    assert bool(warnings) is warns
    if warns:
        assert warnings[0].startswith("traits.x") and "sent as null" in warnings[0]
    json.dumps(to_json_value(value, "traits.x", []), allow_nan=False)


def test_unknown_type_sent_as_text_with_warning():
    class Point:
        def __str__(self) -> str:
            return "(1,2)"

    warnings: list[str] = []
    assert to_json_value(Point(), "traits.p", warnings) == "(1,2)"
    assert warnings == ["traits.p: Point value has no JSON form; sent as its text"]


def test_json_column_values_are_not_copied_when_nothing_changes():
    document = {"a": 1, "b": ["x", {"c": None}]}
    assert to_json_value(document, "traits", []) is document


def test_nesting_limit_rejects():
    deep: list = []
    for _ in range(100):
        deep = [deep]
    with pytest.raises(FieldRejected, match="nested deeper than 64 levels"):
        to_json_value(deep, "traits.deep", [])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("abc", "abc"),
        ("", MISSING),
        (None, MISSING),
        (True, "true"),
        (False, "false"),
        (12345, "12345"),
        (2**64, "18446744073709551616"),
        (12345.0, "12345"),
        (1.5, "1.5"),
        (Decimal("12345.00"), "12345"),
        (Decimal("99999999999999999999"), "99999999999999999999"),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (["only"], "only"),
        ([7], "7"),
        (["a", "b"], ["a", "b"]),  # not coercible: left for the schema to reject
        ({"a": 1}, {"a": 1}),
    ],
)
def test_string_field_coercion(value, expected):
    assert coerce_to_string(value, "user_id", []) == expected


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (12345.0, "12345"),
        (1e-7, "1e-7"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (0.000001, "0.000001"),
        (-2.5e-7, "-2.5e-7"),
        (123e-20, "1.23e-18"),
        (0.0, "0"),
        (-1.5, "-1.5"),
        (5e-324, "5e-324"),
    ],
)
def test_js_number_to_string(number, text):
    assert js_number_to_string(number) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "null"), (True, "true"), ("", ""), (1.0, "1"), (["a", None, 1], "a,,1"), ({}, "[object Object]")],
)
def test_js_string(value, text):
    assert js_string(value) == text


@pytest.mark.parametrize(
    ("value", "expected", "warns"),
    [
        pytest.param("2023-09-26T09:46:28.290Z", "2023-09-26T09:46:28.290Z", False, id="iso-Z-unchanged"),
        pytest.param(
            "2023-09-26T11:46:28.29+02:00", "2023-09-26T09:46:28.290Z", False, id="iso-offset-to-UTC"
        ),
        pytest.param("2023-09-26 09:46:28", "2023-09-26T09:46:28.000Z", False, id="iso-naive-is-UTC"),
        pytest.param("2023-09-26", "2023-09-26T00:00:00.000Z", False, id="iso-date"),
        pytest.param(" 2023-09-26T09:46:28Z ", "2023-09-26T09:46:28.000Z", False, id="iso-trimmed"),
        pytest.param(1695721588, "2023-09-26T09:46:28.000Z", False, id="epoch-seconds"),
        pytest.param(1695721588.29, "2023-09-26T09:46:28.290Z", False, id="epoch-seconds-fraction"),
        pytest.param(1695721588290, "2023-09-26T09:46:28.290Z", False, id="epoch-milliseconds"),
        pytest.param("1695721588", "2023-09-26T09:46:28.000Z", False, id="epoch-text"),
        pytest.param(Decimal("1695721588.5"), "2023-09-26T09:46:28.500Z", False, id="epoch-decimal"),
        pytest.param(
            datetime(2023, 9, 26, 9, 46, 28, 290000, tzinfo=UTC), "2023-09-26T09:46:28.290Z", False, id="dt"
        ),
        pytest.param(date(2023, 9, 26), "2023-09-26T00:00:00.000Z", False, id="date"),
        pytest.param(datetime(1969, 12, 31, 23, 59), "1969-12-31T23:59:00.000Z", True, id="pre-1970-warns"),
        pytest.param(-1, "1969-12-31T23:59:59.000Z", True, id="negative-epoch-warns"),
        pytest.param(None, None, False, id="null-dropped"),
        pytest.param("", None, False, id="empty-dropped"),
        pytest.param(True, True, False, id="bool-left-for-schema"),
    ],
)
def test_normalize_timestamp(value, expected, warns):
    warnings: list[str] = []
    assert normalize_timestamp(value, warnings) == expected
    assert bool(warnings) is warns


@pytest.mark.parametrize(
    "value",
    ["yesterday", "2023-13-01", "2023-09-26T24:00:00", float("nan"), 1e300, time(9, 30), "nan", object()],
)
def test_unparseable_timestamps_reject(value):
    with pytest.raises(FieldRejected) as caught:
        normalize_timestamp(value, [])
    assert caught.value.field == "timestamp"


def test_unparseable_timestamp_rejects_the_record():
    (compiled,) = compile_mappings(
        [{"action": "send_identify", "fields": {"user_id": {"column": "id"}, "timestamp": {"column": "ts"}}}],
        sync_mode="diff",
        primary_key="id",
    )
    with pytest.raises(RecordRejected) as caught:
        compiled.bind(["id", "ts"]).build(("u1", "soon"), primary_key="u1", checksum="00")
    assert caught.value.field == "timestamp"
    assert "'u1'" in str(caught.value) and "send_identify_0" in str(caught.value)


def test_message_id_is_deterministic_short_and_changes_with_each_input():
    upsert = message_id_prefix("f" * 32, "upsert")
    first = derive_message_id(upsert, "abc123", "customer-1")
    assert first == derive_message_id(upsert, "abc123", "customer-1")
    assert first.startswith("rs-") and len(first) == 35 < 100
    others = {
        derive_message_id(upsert, "abc124", "customer-1"),
        derive_message_id(upsert, "abc123", "customer-2"),
        derive_message_id(message_id_prefix("e" * 32, "upsert"), "abc123", "customer-1"),
        derive_message_id(message_id_prefix("f" * 32, "deleted"), "abc123", "customer-1"),
    }
    assert first not in others and len(others) == 4


def test_built_message_ids_follow_mapping_key_and_checksum():
    mapping = {"action": "send_identify", "fields": {"user_id": {"column": "id"}}}
    (compiled,) = compile_mappings([mapping], sync_mode="diff", primary_key="id")
    builder = compiled.bind(["id"])
    one = builder.build(("u1",), primary_key="u1", checksum="aa").message["messageId"]
    assert builder.build(("u1",), primary_key="u1", checksum="aa").message["messageId"] == one
    assert builder.build(("u1",), primary_key="u1", checksum="ab").message["messageId"] != one
    assert builder.build_deleted("u1", checksum="aa").message["messageId"] != one


def test_mapped_message_id_is_used_and_limited_to_99_characters():
    mapping = {
        "action": "send_identify",
        "fields": {"user_id": {"column": "id"}, "message_id": {"column": "m"}},
    }
    (compiled,) = compile_mappings([mapping], sync_mode="diff", primary_key="id")
    builder = compiled.bind(["id", "m"])
    assert builder.build(("u1", "x" * 99), primary_key="u1", checksum="aa").message["messageId"] == "x" * 99
    with pytest.raises(RecordRejected) as caught:
        builder.build(("u1", "x" * 100), primary_key="u1", checksum="aa")
    assert caught.value.field == "message_id" and "at most 99 characters" in caught.value.reason


def build_identify(traits_form, columns, row, **extra):
    fields = {"user_id": {"column": "id"}, "traits": traits_form, **extra}
    (compiled,) = compile_mappings(
        [{"action": "send_identify", "fields": fields}], sync_mode="diff", primary_key="id"
    )
    return compiled.bind(columns).build(row, primary_key=str(row[0]), checksum="00")


@pytest.mark.parametrize(
    ("traits_form", "columns", "row", "traits"),
    [
        pytest.param(
            {"a": {"column": "a"}}, ["id", "a"], ("u", None), {"a": None}, id="null-sent-by-default"
        ),
        pytest.param({"a": {"column": "a", "skip_null": True}}, ["id", "a"], ("u", None), {}, id="skip_null"),
        pytest.param(
            {"a": {"column": "a", "skip_null": True}},
            ["id", "a"],
            ("u", float("nan")),
            {},
            id="skip_null-after-NaN",
        ),
        pytest.param(
            {"s": "warehouse", "n": 1, "l": [1, {"x": 2}]},
            ["id"],
            ("u",),
            {"s": "warehouse", "n": 1, "l": [1, {"x": 2}]},
            id="literals",
        ),
        pytest.param(
            {"o": {"literal": {"column": "literally"}}},
            ["id"],
            ("u",),
            {"o": {"column": "literally"}},
            id="literal-object",
        ),
        pytest.param(
            {"addr": {"city": {"column": "c"}, "geo": {"lat": {"column": "lat"}}}},
            ["id", "c", "lat"],
            ("u", "Paris", 48.85),
            {"addr": {"city": "Paris", "geo": {"lat": 48.85}}},
            id="nested-objects",
        ),
        pytest.param(
            {"columns": ["a", "b"]}, ["id", "a", "b"], ("u", 1, 2), {"a": 1, "b": 2}, id="columns-list"
        ),
        pytest.param(
            {"columns": "*", "exclude": ["id"]},
            ["id", "a", "b"],
            ("u", 1, None),
            {"a": 1, "b": None},
            id="columns-star",
        ),
        pytest.param(
            {"columns": "*", "exclude": ["id"], "skip_null": True},
            ["id", "a", "b"],
            ("u", 1, None),
            {"a": 1},
            id="columns-star-skip-null",
        ),
        pytest.param(
            {"doc": {"column": "j", "parse_json": True}},
            ["id", "j"],
            ("u", '{"k": [1, 2]}'),
            {"doc": {"k": [1, 2]}},
            id="parse_json-nested",
        ),
        pytest.param(
            {"doc": {"column": "j"}},
            ["id", "j"],
            ("u", '{"k": 1}'),
            {"doc": '{"k": 1}'},
            id="json-text-stays-text-unless-asked",
        ),
        pytest.param(
            {"column": "j", "parse_json": True},
            ["id", "j"],
            ("u", '{"k": 1}'),
            {"k": 1},
            id="parse_json-whole-traits",
        ),
        pytest.param({"column": "j"}, ["id", "j"], ("u", {"k": 1}), {"k": 1}, id="jsonb-dict-whole-traits"),
        pytest.param({"column": "j"}, ["id", "j"], ("u", None), {}, id="null-traits-default-empty"),
    ],
)
def test_value_forms(traits_form, columns, row, traits):
    built = build_identify(traits_form, columns, row)
    assert built.message["traits"] == traits
    assert json.loads(built.encoded) == built.message


@pytest.mark.parametrize(
    ("traits_form", "value", "field", "fragment"),
    [
        ({"column": "j"}, '{"k": 1}', "traits", 'add "parse_json": true'),
        ({"column": "j"}, [1, 2], "traits", "must be an object"),
        (
            {"column": "j", "parse_json": True},
            "{not json",
            "traits",
            "parse_json: the column does not hold valid JSON",
        ),
        ({"column": "j", "parse_json": True}, "[1]", "traits", "must be an object"),
        ({"x": {"column": "j", "parse_json": True}}, "{oops", "traits.x", "valid JSON"),
    ],
)
def test_object_field_rejections(traits_form, value, field, fragment):
    with pytest.raises(RecordRejected) as caught:
        build_identify(traits_form, ["id", "j"], ("u", value))
    assert caught.value.field == field
    assert fragment in caught.value.reason


def test_nan_becomes_null_with_a_warning_naming_the_field():
    built = build_identify({"score": {"column": "s"}}, ["id", "s"], ("u", float("nan")))
    assert built.message["traits"] == {"score": None}
    assert built.warnings == ["traits.score: nan is not a JSON number; sent as null"]
    assert b'"score":null' in built.encoded


def test_unpaired_surrogates_are_replaced_with_a_warning():
    built = build_identify({"name": {"column": "n"}}, ["id", "n"], ("u", "Ad\ud800a"))
    assert built.message["traits"]["name"] == "Ad\ufffda"
    assert built.encoded.decode("utf-8") == json.dumps(
        built.message, separators=(",", ":"), ensure_ascii=False
    )
    assert any(w.startswith("traits.name:") and "U+FFFD" in w for w in built.warnings)


def test_size_limit_on_final_utf8_bytes():
    # "é" is 2 bytes in UTF-8: a value under 32,768 characters can still exceed 32,768 bytes.
    columns, base = ["id", "t"], build_identify({"t": {"column": "t"}}, ["id", "t"], ("u", "")).encoded
    room = MAX_MESSAGE_BYTES - len(base)
    fits = build_identify({"t": {"column": "t"}}, columns, ("u", "é" * (room // 2)))
    assert len(fits.encoded) <= MAX_MESSAGE_BYTES
    with pytest.raises(RecordRejected) as caught:
        build_identify({"t": {"column": "t"}}, columns, ("u", "é" * (room // 2 + 1)))
    assert caught.value.field == "traits"
    assert "over Segment's limit of 32,768 bytes" in caught.value.reason
    assert len("é" * (room // 2 + 1)) < MAX_MESSAGE_BYTES


def test_encoded_is_exactly_compact_json_of_message():
    built = build_identify({"a": {"column": "a"}, "b": "ü"}, ["id", "a"], ("u", [1.5, None, "\n"]))
    assert built.encoded == json.dumps(
        built.message, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")
    assert encode_json("é") == '"é"'


def test_build_deleted_holds_only_the_primary_key():
    mapping = {
        "action": "send_track",
        "trigger": "deleted",
        "fields": {
            "user_id": {"column": "id"},
            "event_name": "Customer Removed",
            "properties": {"was": "here"},
        },
    }
    (compiled,) = compile_mappings([mapping], sync_mode="diff", primary_key="id")
    built = compiled.bind(["email", "id"]).build_deleted("42", checksum="ff")
    assert built.message["userId"] == "42"
    assert built.message["event"] == "Customer Removed"
    assert built.message["properties"] == {"was": "here"}


def test_a_row_of_unexpected_types_is_rejected_never_raised():
    class Hostile:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    with pytest.raises(RecordRejected) as caught:
        build_identify({"h": {"column": "h"}}, ["id", "h"], ("u", Hostile()))
    assert caught.value.field == "traits.h"


class _NoOffset(tzinfo):
    def utcoffset(self, dt):
        return None

    def dst(self, dt):
        return None


@pytest.mark.parametrize(
    ("value", "text"),
    [
        pytest.param(
            datetime(2024, 1, 1, 12, tzinfo=_NoOffset()), "2024-01-01T12:00:00.000Z", id="tz-without-offset"
        ),
        pytest.param(
            datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))),
            "0001-01-01T00:00:00.000+05:00",
            id="unrepresentable-in-UTC-keeps-offset",
        ),
        pytest.param(
            datetime(2024, 6, 1, 14, 0, tzinfo=ZoneInfo("Europe/Paris")),
            "2024-06-01T12:00:00.000Z",
            id="zoneinfo",
        ),
        pytest.param(
            datetime(2024, 6, 1, 12, 0, tzinfo=ZoneInfo("Etc/UTC")),
            "2024-06-01T12:00:00.000Z",
            id="zoneinfo-utc",
        ),
    ],
)
def test_format_datetime_edge_zones(value, text):
    assert format_datetime(value) == text


def test_bound_columns_expand_the_star():
    mapping = {
        "action": "send_identify",
        "fields": {"user_id": {"column": "id"}, "traits": {"columns": "*", "exclude": ["id", "secret"]}},
    }
    (compiled,) = compile_mappings([mapping], sync_mode="diff", primary_key="id")
    assert compiled.columns == frozenset({"id"}) and compiled.uses_all_columns
    assert compiled.bind(["id", "email", "secret", "plan"]).columns == frozenset({"id", "email", "plan"})
