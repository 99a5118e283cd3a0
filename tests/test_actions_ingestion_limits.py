"""Unify's ingestion rules checked on built messages (segment-docs ``src/unify/profile-api-limits.md``), the
split Identify, and destination-scoped message ids."""

from __future__ import annotations

import json

import pytest

from airflow_provider_segment_profiles.actions import RecordRejected, compile_mappings
from airflow_provider_segment_profiles.actions.ingestion_limits import (
    MAX_GROUP_ID_CHARS,
    MAX_IDENTIFY_TRAITS,
    MAX_TRAITS_OR_PROPERTIES,
    ingestion_problem,
)
from airflow_provider_segment_profiles.actions.message_id import (
    SCOPE_BYTES,
    derive_message_id,
    destination_scope,
    message_id_prefix,
    part_message_id,
)


def builder(action: str, columns: list[str], fields: dict, scope: bytes = b""):
    (compiled,) = compile_mappings(
        [{"name": "m", "action": action, "fields": fields}], sync_mode="diff", primary_key="id"
    )
    return compiled.bind(columns, scope)


def wide(count: int) -> tuple[list[str], tuple]:
    """Columns ``id, c0 .. c{count-1}`` and one row of them."""
    columns = ["id", *(f"c{i}" for i in range(count))]
    return columns, ("u1", *range(count))


def star_identify(count: int, **extra_fields):
    columns, row = wide(count)
    fields = {"user_id": {"column": "id"}, "traits": {"columns": "*", "exclude": ["id"]}, **extra_fields}
    return builder("send_identify", columns, fields), row


def test_an_identify_at_the_trait_limit_is_one_message():
    build, row = star_identify(MAX_IDENTIFY_TRAITS)
    built = build.build(row, primary_key="u1", checksum="ab")
    assert built.parts == () and len(built.message["traits"]) == 299 and built.warnings == []


@pytest.mark.parametrize(("traits", "parts"), [(300, [299, 1]), (700, [299, 299, 102])])
def test_an_identify_over_the_limit_is_split_into_identify_calls(traits, parts):
    """Engage rejects an Identify with 300 or more traits; the page's way out: several Identify calls."""
    build, row = star_identify(traits, group_id={"column": "id"}, timestamp="2024-01-01T00:00:00Z")
    built = build.build(row, primary_key="u1", checksum="ab")
    assert [len(p.message["traits"]) for p in built.parts] == parts
    merged = {}
    for part in built.parts:
        message = part.message
        assert json.loads(part.encoded) == message
        assert message["type"] == "identify" and message["userId"] == "u1" and message["groupId"] == "u1"
        assert message["timestamp"] == "2024-01-01T00:00:00.000Z"
        assert message["integrations"] == {"All": False} and message["context"] == {"consent": {}}
        merged.update(message["traits"])
    assert merged == built.message["traits"] and list(merged) == [f"c{i}" for i in range(traits)]
    ids = [p.message["messageId"] for p in built.parts]
    assert ids == [part_message_id(built.message["messageId"], n) for n in range(1, len(parts) + 1)]
    assert len(set(ids)) == len(ids) and all(len(i) == 35 for i in ids)
    assert built.warnings == [
        f"traits: {traits:,} traits, and Engage rejects an Identify with 300 or more; sent as {len(parts)} "
        "Identify calls of at most 299 traits each"
    ]
    again = build.build(row, primary_key="u1", checksum="ab")
    assert [p.encoded for p in again.parts] == [p.encoded for p in built.parts]  # a retry: the same parts


def test_split_part_ids_follow_a_mapped_message_id():
    columns, row = wide(300)
    fields = {
        "user_id": {"column": "id"},
        "message_id": {"column": "c0"},
        "traits": {"columns": "*", "exclude": ["id"]},
    }
    built = builder("send_identify", columns, fields).build(row, primary_key="u1", checksum="ab")
    assert built.message["messageId"] == "0"
    assert [p.message["messageId"] for p in built.parts] == [part_message_id("0", 1), part_message_id("0", 2)]


def reason_of(build, row) -> RecordRejected:
    with pytest.raises(RecordRejected) as caught:
        build.build(row, primary_key=str(row[0]), checksum="ab")
    return caught.value


@pytest.mark.parametrize(
    ("action", "object_field", "extra"),
    [
        ("send_group", "traits", {"group_id": "g"}),
        ("send_track", "properties", {"event_name": "E"}),
    ],
)
def test_more_than_300_traits_or_properties_are_rejected(action, object_field, extra):
    columns, row = wide(MAX_TRAITS_OR_PROPERTIES + 1)
    fields = {"user_id": {"column": "id"}, object_field: {"columns": "*", "exclude": ["id"]}, **extra}
    rejection = reason_of(builder(action, columns, fields), row)
    assert (rejection.mapping, rejection.primary_key, rejection.field) == ("m", "u1", object_field)
    assert "301" in rejection.reason and "more than 300 properties/traits" in rejection.reason
    assert "src/unify/profile-api-limits.md" in rejection.reason
    columns, row = wide(MAX_TRAITS_OR_PROPERTIES)
    assert builder(action, columns, fields).build(row, primary_key="u1", checksum="ab").parts == ()


def test_send_subscriptions_with_300_traits_is_rejected_not_split():
    columns, row = wide(300)
    fields = {
        "user_id": {"column": "id"},
        "email": "a@example.com",
        "email_subscription_status": "subscribed",
        "traits": {"columns": "*", "exclude": ["id"]},
    }
    rejection = reason_of(builder("send_subscriptions", columns, fields), row)
    assert rejection.field == "traits" and "300 or more traits" in rejection.reason


@pytest.mark.parametrize("action", ["send_identify", "send_group", "send_track"])
def test_a_group_id_over_500_characters_is_rejected(action):
    fields = {"user_id": {"column": "id"}, "group_id": {"column": "g"}}
    if action == "send_track":
        fields["event_name"] = "E"
    build = builder(action, ["id", "g"], fields)
    rejection = reason_of(build, ("u1", "g" * (MAX_GROUP_ID_CHARS + 1)))
    assert rejection.field == "group_id" and "more than 500" in rejection.reason
    assert build.build(("u1", "g" * MAX_GROUP_ID_CHARS), primary_key="u1", checksum="ab")


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"type": "group", "groupId": "", "traits": {}}, "group_id"),
        ({"type": "track", "properties": {}, "context": {"groupId": ""}}, "group_id"),
        ({"type": "track", "properties": {}, "context": {"groupId": None}}, "group_id"),
        ({"type": "identify", "messageId": "m" * 101, "traits": {}}, "message_id"),
    ],
)
def test_rules_the_builders_cannot_reach_are_still_checked(message, field):
    """Segment's empty-value removal drops "" before a message is built and the schema caps a mapped
    message_id at 99 characters, so these come only from a message built some other way."""
    problem = ingestion_problem(message, splits_identify=True)
    assert problem is not None and problem[0] == field


def test_a_mapped_message_id_over_99_characters_is_rejected_by_the_schema():
    build = builder(
        "send_identify", ["id", "m"], {"user_id": {"column": "id"}, "message_id": {"column": "m"}}
    )
    assert reason_of(build, ("u1", "m" * 100)).field == "message_id"


def test_derived_ids_are_scoped_to_the_destination():
    """Segment de-duplicates across workspaces: the same change to two destinations gets two ids; the same
    change to one destination the same id on every try."""
    staging, production = destination_scope("staging-key"), destination_scope("production-key")
    assert len(staging) == SCOPE_BYTES and staging != production
    assert destination_scope("staging-key") == staging and destination_scope("") == b""
    assert b"staging-key" not in staging

    def id_for(scope: bytes) -> str:
        return derive_message_id(message_id_prefix("f" * 32, "upsert", scope), "ab.1", "42")

    ids = {id_for(staging), id_for(production), id_for(b"")}
    assert len(ids) == 3 and all(len(i) == 35 and i.startswith("rs-") for i in ids)
    assert id_for(staging) == id_for(destination_scope("staging-key"))
    build_staging = builder("send_identify", ["id"], {"user_id": {"column": "id"}}, staging)
    build_production = builder("send_identify", ["id"], {"user_id": {"column": "id"}}, production)
    first = build_staging.build(("u1",), primary_key="u1", checksum="ab").message["messageId"]
    assert first == build_staging.build(("u1",), primary_key="u1", checksum="ab").message["messageId"]
    assert first != build_production.build(("u1",), primary_key="u1", checksum="ab").message["messageId"]
