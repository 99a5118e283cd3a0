"""
Behaviours decided by the differential test against Segment's own destination
(``tests/test_differential_segment.py``), pinned here without Node.js: where the provider now does what
Segment's code does, and where it deliberately does otherwise (``docs/mappings.md``).
"""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_segment_profiles.actions import MappingConfigError, RecordRejected, compile_mappings
from airflow_provider_segment_profiles.actions.subscriptions import parse_status


def build(action: str, fields: dict[str, Any], columns: list[str], row: list[Any]):
    mapping = {"name": "fidelity", "action": action, "fields": fields}
    (compiled,) = compile_mappings([mapping], sync_mode="diff", primary_key=columns[0])
    return compiled.bind(columns).build(row, primary_key=str(row[0]), checksum="c0ffee")


SUBSCRIPTION = {
    "user_id": {"column": "id"},
    "email": {"column": "email"},
    "email_subscription_status": {"column": "status"},
}


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("\ufefftrue", "SUBSCRIBED"),  # JavaScript's trim removes a byte order mark; Python's strip keeps it
        ("true\u3000", "SUBSCRIBED"),
        ("\u2028Unsubscribed\t", "UNSUBSCRIBED"),
        ("true\u0085", "INVALID"),  # Python's strip removes U+0085 and U+001C-U+001F; trim keeps them
        ("\u001ftrue", "INVALID"),
        ("\u200btrue", "INVALID"),
    ],
)
def test_statuses_are_trimmed_as_javascript_trims(text, status):
    assert parse_status(text) == status


def test_a_status_with_a_character_javascript_keeps_is_rejected_naming_it():
    with pytest.raises(RecordRejected) as caught:
        build("send_subscriptions", SUBSCRIPTION, ["id", "email", "status"], ["u1", "a@x.com", "true\u0085"])
    assert caught.value.field == "email_subscription_status"
    assert repr("true\u0085") in caught.value.reason


def test_subscription_groups_are_listed_in_javascript_key_order():
    fields = {**SUBSCRIPTION, "subscription_groups": {"column": "groups"}}
    groups = {"weekly": "true", "10": "false", "2": "true", "01": "true", "4294967295": "", "0": "true"}
    built = build(
        "send_subscriptions", fields, ["id", "email", "status", "groups"], ["u1", "a@x.com", "true", groups]
    )
    names = [group["name"] for group in built.message["context"]["messaging_subscriptions"][0]["groups"]]
    # Array-index keys (canonical integers up to 2^32 - 2) first, ascending; then the rest as given.
    assert names == ["0", "2", "10", "weekly", "01", "4294967295"]


@pytest.mark.parametrize("value", [["true"], [True], [None], [], ("true",)])
def test_a_list_in_a_status_field_rejects_the_record(value):
    with pytest.raises(RecordRejected) as caught:
        build("send_subscriptions", SUBSCRIPTION, ["id", "email", "status"], ["u1", "a@x.com", value])
    assert caught.value.field == "email_subscription_status"
    assert repr(value) in caught.value.reason and "is not a subscription status" in caught.value.reason


def test_a_literal_list_status_refuses_the_mapping():
    fields = {**SUBSCRIPTION, "email_subscription_status": ["true"]}
    with pytest.raises(MappingConfigError, match="is not a subscription status"):
        compile_mappings(
            [{"action": "send_subscriptions", "fields": fields}], sync_mode="diff", primary_key="id"
        )


@pytest.mark.parametrize(
    ("traits", "path"),
    [
        ({"__proto__": {"column": "x"}}, "fields.traits.__proto__"),
        ({"columns": ["x", "__proto__"]}, "fields.traits.columns"),
        ({"a": {"literal": {"b": [{"__proto__": 1}]}}}, "fields.traits.a.literal.b[0].__proto__"),
    ],
)
def test_a_proto_key_in_a_mapping_refuses_it(traits, path):
    mapping = {"action": "send_identify", "fields": {"user_id": {"column": "id"}, "traits": traits}}
    with pytest.raises(MappingConfigError) as caught:
        compile_mappings([mapping], sync_mode="diff", primary_key="id")
    (problem,) = caught.value.problems
    assert path in problem and "'__proto__' never reaches Segment" in problem


def test_all_columns_over_a_proto_column_is_refused_when_the_query_runs():
    mapping = {"action": "send_identify", "fields": {"user_id": {"column": "id"}, "traits": {"columns": "*"}}}
    (compiled,) = compile_mappings([mapping], sync_mode="diff", primary_key="id")
    with pytest.raises(MappingConfigError, match="__proto__"):
        compiled.bind(["id", "__proto__"])
    assert compiled.bind(["id", "plan"]).columns == {"id", "plan"}


def test_a_proto_key_in_a_json_value_is_dropped_with_a_warning_as_segment_drops_it():
    value = {"__proto__": {"admin": True}, "plan": "pro", "items": [{"__proto__": 1, "sku": "a"}]}
    built = build(
        "send_identify", {"user_id": {"column": "id"}, "traits": {"column": "j"}}, ["id", "j"], [1, value]
    )
    assert built.message["traits"] == {"plan": "pro", "items": [{"sku": "a"}]}
    assert built.warnings == [
        "traits.__proto__: dropped: Segment's pipeline cannot carry a key named __proto__",
        "traits.items[0].__proto__: dropped: Segment's pipeline cannot carry a key named __proto__",
    ]
    assert value["__proto__"] == {"admin": True}  # the row's value is not changed


@pytest.mark.parametrize("text", ["2023-09-26t09:46:28z", "2023-09-26T09:46:28z", "2023-09-26 09:46:28z"])
def test_rfc3339_lower_case_t_and_z_are_read(text):
    built = build(
        "send_identify", {"user_id": {"column": "id"}, "timestamp": {"column": "t"}}, ["id", "t"], [1, text]
    )
    assert built.message["timestamp"] == "2023-09-26T09:46:28.000Z"


@pytest.mark.parametrize(
    ("fields", "row", "field", "shown"),
    [
        ({"traits": {"column": "v"}}, "not an object", "traits", "'not an object'"),
        ({"traits": {"column": "v"}}, [1, 2], "traits", "[1, 2]"),
        ({"message_id": {"column": "v"}}, "m" * 120, "message_id", "not 120: 'mmmm"),
    ],
)
def test_schema_rejections_name_the_value(fields, row, field, shown):
    with pytest.raises(RecordRejected) as caught:
        build("send_identify", {"user_id": {"column": "id"}, **fields}, ["id", "v"], [1, row])
    assert caught.value.field == field
    assert shown in caught.value.reason
    assert len(caught.value.reason) < 200  # a long value is cut, not copied whole


def test_a_literal_with_an_unpaired_surrogate_compiles_and_is_repaired_per_record():
    built = build("send_identify", {"user_id": {"column": "id"}, "traits": {"name": "x\ud800"}}, ["id"], [1])
    assert built.message["traits"] == {"name": "x\ufffd"}
    assert built.warnings
