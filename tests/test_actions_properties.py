"""
Property-based tests (hypothesis).

* Any record, whatever its warehouse values, either yields a message that serialises to strict JSON
  within 32 KB and whose fields validate against the action's JSON Schema, or a RecordRejected with a
  reason — never another exception.
* The per-record fast check derived from each schema gives exactly jsonschema's verdict.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_segment_profiles.actions import (
    ACTION_NAMES,
    MAX_MESSAGE_BYTES,
    BuiltMessage,
    RecordRejected,
    compile_mappings,
    get_action,
)
from airflow_provider_segment_profiles.actions.json_values import encode_json_bytes
from airflow_provider_segment_profiles.actions.timestamps import format_datetime

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CHEAP_SETTINGS = settings(max_examples=150, deadline=None)

scalar_json = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
finite_scalar_json = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
surrogate_text = st.builds(
    lambda head, lone, tail: head + lone + tail,
    st.text(max_size=5),
    st.sampled_from(["\ud800", "\udfff", "\ud83d\ude00", "\x00"]),
    st.text(max_size=5),
)
json_like = st.recursive(
    st.one_of(scalar_json, surrogate_text),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), surrogate_text), children, max_size=4),
    ),
    max_leaves=12,
)
long_text = st.builds(
    lambda char, count: char * count, st.sampled_from(["a", "é", "😀"]), st.integers(0, 12_000)
)
status_text = st.sampled_from(
    [
        "true",
        "false",
        " Subscribed ",
        "UNSUBSCRIBED",
        "did-not-subscribe",
        "did_not_subscribe",
        "",
        "  ",
        "yes",
    ]
)
timestamp_like = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))])),
    st.dates(),
    st.sampled_from(["2023-09-26T09:46:28.290Z", "2023-09-26", "not a date", "1695721588", " "]),
    st.integers(min_value=-(10**15), max_value=10**15),
)
warehouse_value = st.one_of(
    scalar_json,
    json_like,
    surrogate_text,
    long_text,
    status_text,
    timestamp_like,
    st.decimals(allow_nan=True, allow_infinity=True),
    st.binary(max_size=16),
    st.uuids(),
    st.times(),
    st.timedeltas(),
    st.builds(lambda items: json.dumps(items), json_like.filter(lambda v: not isinstance(v, float))),
)


def column_mapping(action: str) -> tuple[dict[str, Any], list[str]]:
    """Every field of the action mapped to a same-named column (object fields parse JSON text)."""
    spec = get_action(action)
    fields: dict[str, Any] = {}
    for key, field in spec.fields.items():
        fields[key] = {"column": key, "parse_json": True} if field.is_object else {"column": key}
    return {"name": f"{action}_columns", "action": action, "fields": fields}, ["pk", *spec.fields]


def nested_mapping(action: str) -> tuple[dict[str, Any], list[str]]:
    """Object fields built from nested forms and a columns form over raw values."""
    mapping, columns = column_mapping(action)
    columns = [*columns, "a", "b", "c"]
    for key, field in get_action(action).fields.items():
        if field.is_object:
            mapping["fields"][key] = {
                "x": {"column": "a"},
                "y": {"column": "b", "skip_null": True},
                "z": {"inner": {"column": "c", "parse_json": True}, "fixed": [1, "two"]},
                "all": {"columns": ["a", "b"]},
            }
    mapping["name"] = f"{action}_nested"
    return mapping, columns


BUILDERS = {}
for _action in ACTION_NAMES:
    for _make in (column_mapping, nested_mapping):
        _mapping, _columns = _make(_action)
        (_compiled,) = compile_mappings([_mapping], sync_mode="diff", primary_key="pk")
        BUILDERS[_mapping["name"]] = (_action, _compiled.bind(_columns), len(_columns))


def strict_loads(encoded: bytes) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(encoded.decode("utf-8"), parse_constant=refuse)


def fields_from_message(action: str, message: dict[str, Any]) -> dict[str, Any]:
    """Read the action's field values back out of a built message (independently of the builders)."""
    fields: dict[str, Any] = {}
    renames = {
        "userId": "user_id",
        "anonymousId": "anonymous_id",
        "messageId": "message_id",
        "timestamp": "timestamp",
    }
    for message_key, field_key in renames.items():
        if message_key in message:
            fields[field_key] = message[message_key]
    context = message["context"]
    if context["consent"]:
        fields["consent"] = context["consent"]
    if action in ("send_identify", "send_group"):
        fields["traits"] = message["traits"]
        if "groupId" in message:
            fields["group_id"] = message["groupId"]
    elif action == "send_track":
        fields["event_name"] = message["event"]
        fields["properties"] = message["properties"]
        if "groupId" in context:
            fields["group_id"] = context["groupId"]
    else:
        fields["traits"] = message["traits"]
        kinds = {
            "email": "email",
            "phone": "phone",
            "android.push_token": "android_push_token",
            "ios.push_token": "ios_push_token",
        }
        for external in context["externalIds"]:
            fields[kinds[external["type"]]] = external["id"]
        statuses = {
            "EMAIL": "email_subscription_status",
            "SMS": "sms_subscription_status",
            "WHATSAPP": "whatsapp_subscription_status",
            "ANDROID_PUSH": "android_push_subscription_status",
            "IOS_PUSH": "ios_push_subscription_status",
        }
        for entry in context["messaging_subscriptions"]:
            assert entry["status"] in ("SUBSCRIBED", "UNSUBSCRIBED", "DID_NOT_SUBSCRIBE")
            fields[statuses[entry["type"]]] = entry["status"].lower()
            if "groups" in entry:
                fields["subscription_groups"] = {
                    group["name"]: group.get("status", "") for group in entry["groups"]
                }
    return fields


def check_outcome(action: str, builder: Any, row: list[Any]) -> None:
    try:
        built = builder.build(row, primary_key="pk-\ud800", checksum="ab")
    except RecordRejected as rejection:
        assert rejection.reason and rejection.field and rejection.mapping == builder.mapping_name
        assert "internal error" not in rejection.reason
        text = str(rejection)
        assert builder.mapping_name in text and rejection.field in text
        return
    assert isinstance(built, BuiltMessage)
    assert len(built.encoded) <= MAX_MESSAGE_BYTES
    assert strict_loads(built.encoded) == built.message
    assert built.encoded == json.dumps(
        built.message, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")
    message = built.message
    assert message["type"] == get_action(action).message_type
    assert message["integrations"] == {"All": False}
    assert len(message["messageId"]) < 100
    assert "userId" in message or "anonymousId" in message
    fields = fields_from_message(action, message)
    errors = list(get_action(action).validator.iter_errors(fields))
    assert not errors, errors
    for warning in built.warnings:
        warning.encode("utf-8")


@pytest.mark.parametrize("name", sorted(BUILDERS))
@SETTINGS
@given(data=st.data())
def test_any_record_builds_or_is_rejected(name, data):
    action, builder, width = BUILDERS[name]
    row = data.draw(st.lists(warehouse_value, min_size=width, max_size=width))
    check_outcome(action, builder, row)


valid_status = st.sampled_from(["true", "false", " Subscribed ", "UNSUBSCRIBED", "did-not-subscribe"])
identifier = st.one_of(st.text(min_size=1, max_size=10), st.integers(), st.uuids())
VALID_RECORDS = {
    "send_identify": {
        "user_id": identifier,
        "traits": st.dictionaries(st.text(max_size=5), finite_scalar_json, max_size=5),
        "timestamp": st.one_of(
            st.none(), st.datetimes(min_value=datetime(1970, 1, 2)), st.dates(min_value=date(1970, 1, 1))
        ),
    },
    "send_subscriptions": {
        "anonymous_id": identifier,
        "email": st.emails(),
        "email_subscription_status": valid_status,
        "subscription_groups": st.dictionaries(st.text(max_size=5), st.one_of(valid_status, st.booleans())),
        "phone": st.text(alphabet="+0123456789", min_size=1, max_size=12),
        "sms_subscription_status": st.one_of(st.none(), valid_status),
        "whatsapp_subscription_status": st.one_of(st.none(), st.just(""), valid_status),
    },
}


@pytest.mark.parametrize("action", sorted(VALID_RECORDS))
@SETTINGS
@given(data=st.data())
def test_valid_records_always_build(action, data):
    """The success path: records whose values are all valid must build (and pass every check)."""
    _, builder, _width = BUILDERS[f"{action}_columns"]
    columns = ["pk", *get_action(action).fields]
    strategies = VALID_RECORDS[action]
    row = [data.draw(strategies.get(column, st.none())) for column in columns]
    built = builder.build(row, primary_key="pk", checksum="ab")
    check_outcome(action, builder, row)
    assert built.warnings == []


@pytest.mark.parametrize("action", ACTION_NAMES)
@CHEAP_SETTINGS
@given(value=st.one_of(json_like, st.uuids().map(str), st.text(min_size=95, max_size=105)))
def test_fast_check_equals_jsonschema(action, value):
    spec = get_action(action)
    for key, field in spec.fields.items():
        assert field.fast_check()(value) == spec.field_validators[key].is_valid(value), (key, value)


@CHEAP_SETTINGS
@given(present=st.sets(st.sampled_from(list(get_action("send_group").fields))))
def test_required_check_equals_jsonschema(present):
    spec = get_action("send_group")
    values = dict.fromkeys(present, "x")
    fast_ok = all(key in values for key in spec.required_fields) and all(
        spec.fields[key].fast_check()(value) for key, value in values.items()
    )
    assert fast_ok == spec.validator.is_valid(values)


def reference_utc_text(value: datetime) -> str | None:
    """``format_datetime``'s contract written the slow, obvious way."""
    if value.tzinfo is not None and value.utcoffset() is not None:
        try:
            value = value.astimezone(UTC)
        except OverflowError:
            return None
    value = value.replace(tzinfo=None)
    return value.isoformat(timespec="microseconds" if value.microsecond % 1000 else "milliseconds") + "Z"


@CHEAP_SETTINGS
@given(
    value=st.datetimes(
        timezones=st.one_of(
            st.none(),
            st.just(UTC),
            st.builds(lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-1439, 1439)),
        )
    )
)
def test_format_datetime_matches_isoformat(value):
    expected = reference_utc_text(value)
    if expected is not None:
        assert format_datetime(value) == expected


json_documents = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**64),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=12),
        st.sampled_from(["\u2028", "\x7f", "\x00\x1f", '"\\/', "\U0001f600"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


@CHEAP_SETTINGS
@given(document=st.dictionaries(st.text(max_size=6), json_documents, max_size=6))
def test_encoded_bytes_equal_json_dumps(document):
    """Whatever encoder the hot path uses, its bytes are exactly the stdlib's compact, strict JSON."""
    expected = json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    assert encode_json_bytes(document) == expected
