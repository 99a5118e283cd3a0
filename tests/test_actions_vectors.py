"""
Every hand-collected test vector of Segment's destination (I1-I6, G1-G4, T1-T4, S1-S10, SE1-SE8).

Each vector's inputs become one record whose columns carry the field values (absent fields are null
columns), mapped column-for-column, so the vectors exercise the per-record path: empty-value removal,
coercion, schema validation, Segment's rules and the payload builders. Where this provider deliberately
differs from Segment's destination, the test id says ``difference-...`` and the test asserts our
behaviour.
"""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_segment_profiles.actions import (
    BuiltMessage,
    MessageSkipped,
    RecordRejected,
    compile_mappings,
    get_action,
)
from airflow_provider_segment_profiles.actions.payloads import MISSING_IDS
from airflow_provider_segment_profiles.actions.subscriptions import SV1, SV2, SV3, SV4, SV5, SV6, SV7, SV8

COMMON = {"integrations": {"All": False}, "context": {"consent": {}}}

#: Fields every vector mapping maps, so a vector without them still passes the mapping checks that
#: would otherwise refuse the mapping before any record is read.
ALWAYS_MAPPED = {
    "send_identify": ("user_id", "anonymous_id"),
    "send_group": ("user_id", "anonymous_id", "group_id"),
    "send_track": ("user_id", "anonymous_id", "event_name"),
    "send_subscriptions": (
        "user_id",
        "anonymous_id",
        "email",
        "phone",
        "android_push_token",
        "ios_push_token",
        "email_subscription_status",
        "sms_subscription_status",
        "whatsapp_subscription_status",
        "android_push_subscription_status",
        "ios_push_subscription_status",
    ),
}


def run_vector(action: str, inputs: dict[str, Any]) -> BuiltMessage:
    """Map each field to a same-named column and build the record whose values are ``inputs``."""
    keys = [key for key in get_action(action).fields if key in inputs or key in ALWAYS_MAPPED[action]]
    mapping = {"name": "vector", "action": action, "fields": {key: {"column": key} for key in keys}}
    (compiled,) = compile_mappings([mapping], sync_mode="diff", primary_key="user_id")
    builder = compiled.bind(keys)
    return builder.build([inputs.get(key) for key in keys], primary_key="pk-1", checksum="c0ffee")


def without_message_id(message: dict[str, Any]) -> dict[str, Any]:
    assert message["messageId"].startswith("rs-") and len(message["messageId"]) < 100
    return {key: value for key, value in message.items() if key != "messageId"}


def rejection(action: str, inputs: dict[str, Any]) -> RecordRejected:
    with pytest.raises(RecordRejected) as caught:
        run_vector(action, inputs)
    return caught.value


# --- Identify -------------------------------------------------------------------------------------------

I1 = {
    "user_id": "test-user-ufi5bgkko5",
    "anonymous_id": "arky4h2sh7k",
    "traits": {"name": "Test User", "email": "test-user@test-company.com"},
    "timestamp": "2023-09-26T09:46:28.290Z",
}


def test_i1_identify():
    built = run_vector("send_identify", I1)
    assert without_message_id(built.message) == {
        "userId": "test-user-ufi5bgkko5",
        "anonymousId": "arky4h2sh7k",
        "traits": {"name": "Test User", "email": "test-user@test-company.com"},
        "timestamp": "2023-09-26T09:46:28.290Z",
        "type": "identify",
        **COMMON,
    }
    assert built.warnings == []


@pytest.mark.parametrize(
    "inputs",
    [
        pytest.param({}, id="I2-no-ids"),
        pytest.param({"user_id": "", "anonymous_id": None}, id="I5-empty-and-null-ids-removed"),
    ],
)
def test_identify_without_ids_is_e0(inputs):
    error = rejection("send_identify", {**inputs, "traits": {"a": 1}})
    assert error.reason == MISSING_IDS == "Either `Anonymous ID` or `User ID` must be defined."
    assert error.field == "user_id, anonymous_id"


def test_i3_identify_with_message_id_group_id_and_consent():
    built = run_vector(
        "send_identify",
        {
            "user_id": "u",
            "anonymous_id": "a",
            "group_id": "g",
            "message_id": "m",
            "traits": {"testType": "x"},
            "timestamp": "2021-02-01T00:00:00.000Z",
            "consent": {"categoryPreferences": {"analytics": True, "marketing": False}},
        },
    )
    expected = {
        "userId": "u",
        "anonymousId": "a",
        "groupId": "g",
        "messageId": "m",
        "traits": {"testType": "x"},
        "timestamp": "2021-02-01T00:00:00.000Z",
        "integrations": {"All": False},
        "type": "identify",
        "context": {"consent": {"categoryPreferences": {"analytics": True, "marketing": False}}},
    }
    assert built.message == expected
    assert list(built.message) == list(expected)  # Segment's key order
    assert built.encoded == (
        b'{"userId":"u","anonymousId":"a","groupId":"g","messageId":"m","traits":{"testType":"x"},'
        b'"timestamp":"2021-02-01T00:00:00.000Z","integrations":{"All":false},"type":"identify",'
        b'"context":{"consent":{"categoryPreferences":{"analytics":true,"marketing":false}}}}'
    )


@pytest.mark.parametrize(
    "consent",
    [
        pytest.param({"categoryPreferences": {"analytics": "yes"}}, id="I4-non-boolean-preference"),
        pytest.param({"other": True}, id="no-categoryPreferences"),
        pytest.param({"categoryPreferences": ["analytics"]}, id="preferences-not-an-object"),
    ],
)
def test_i4_invalid_consent_becomes_empty(consent):
    built = run_vector("send_identify", {"user_id": "u", "consent": consent})
    assert built.message["context"] == {"consent": {}}


def test_i6_numeric_user_id_is_text():
    built = run_vector("send_identify", {"user_id": 12345})
    assert built.message["userId"] == "12345"
    assert b'"userId":"12345"' in built.encoded
    assert built.message["traits"] == {}


# --- Group ----------------------------------------------------------------------------------------------

G1 = {
    "user_id": "test-user-ufi5bgkko5",
    "anonymous_id": "arky4h2sh7k",
    "group_id": "test-group-ks2i7e",
    "traits": {"name": "Example Corp", "industry": "Technology"},
    "timestamp": "2023-09-26T09:46:28.290Z",
}
G1_BODY = {
    "userId": "test-user-ufi5bgkko5",
    "anonymousId": "arky4h2sh7k",
    "groupId": "test-group-ks2i7e",
    "traits": {"name": "Example Corp", "industry": "Technology"},
    "timestamp": "2023-09-26T09:46:28.290Z",
    "type": "group",
    **COMMON,
}


def test_g1_group():
    assert without_message_id(run_vector("send_group", G1).message) == G1_BODY


def test_g2_group_without_ids_is_e0():
    assert rejection("send_group", {"group_id": "g"}).reason == MISSING_IDS


def test_g3_group_without_group_id_is_a_schema_rejection():
    error = rejection("send_group", {"user_id": "u"})
    assert error.reason == "The root value is missing the required field 'group_id'."
    assert error.field == "group_id"


def test_g4_same_shape_as_the_legacy_group_endpoint():
    """The legacy destination POSTed G1's body minus ``type`` and ``context`` to ``/v1/group``; our
    batch item is that body plus ``type`` (which picks the endpoint) and ``context``."""
    legacy_body = {key: value for key, value in G1_BODY.items() if key not in ("type", "context")}
    message = without_message_id(run_vector("send_group", G1).message)
    assert {key: value for key, value in message.items() if key not in ("type", "context")} == legacy_body
    assert message["type"] == "group"


# --- Track ----------------------------------------------------------------------------------------------


def test_t1_track():
    built = run_vector(
        "send_track",
        {
            "user_id": "test-user-ufi5bgkko5",
            "anonymous_id": "arky4h2sh7k",
            "event_name": "Test Event",
            "properties": {"plan": "Business"},
        },
    )
    assert without_message_id(built.message) == {
        "userId": "test-user-ufi5bgkko5",
        "anonymousId": "arky4h2sh7k",
        "event": "Test Event",
        "properties": {"plan": "Business"},
        "type": "track",
        **COMMON,
    }


def test_t2_track_without_ids_is_e0():
    assert rejection("send_track", {"event_name": "Test Event"}).reason == MISSING_IDS


def test_t3_difference_track_group_id_sent_as_context_group_id():
    """Segment's destination accepts group_id and drops it; we send it where the tracking spec puts it."""
    built = run_vector("send_track", {"user_id": "u", "event_name": "E", "group_id": "g1"})
    assert without_message_id(built.message) == {
        "userId": "u",
        "event": "E",
        "properties": {},
        "type": "track",
        "integrations": {"All": False},
        "context": {"consent": {}, "groupId": "g1"},
    }
    assert "groupId" not in built.message


def test_t4_track_without_event_name_is_a_schema_rejection():
    error = rejection("send_track", {"user_id": "u"})
    assert error.reason == "The root value is missing the required field 'event_name'."


# --- Send Subscriptions ---------------------------------------------------------------------------------


def X(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"id": key, "type": kind, "collection": "users", "encoding": "none"} for key, kind in pairs]


def MS(*entries: tuple) -> list[dict[str, Any]]:
    result = []
    for entry in entries:
        key, kind, status, *groups = entry
        item: dict[str, Any] = {"key": key, "type": kind, "status": status}
        if groups:
            item["groups"] = groups[0]
        result.append(item)
    return result


def subscription_message(external_ids, subscriptions, **top: Any) -> dict[str, Any]:
    return {
        **top,
        "traits": top.pop("traits", {}),
        "context": {
            "messaging_subscriptions": subscriptions,
            "externalIds": external_ids,
            "messaging_subscriptions_retl": True,
            "consent": {},
        },
        "integrations": {"All": False},
        "type": "identify",
    }


S1_CHANNELS = {
    "email": "tester11@seg.com",
    "email_subscription_status": "true",
    "phone": "+12135618345",
    "sms_subscription_status": "true",
    "whatsapp_subscription_status": "true",
    "android_push_token": "abcd12bbfygdbvbvvvv",
    "android_push_subscription_status": "false",
    "ios_push_token": "abcd12bbfjfsykdbvbvvvvvv",
    "ios_push_subscription_status": "true",
}
S1_X = X(
    ("tester11@seg.com", "email"),
    ("+12135618345", "phone"),
    ("abcd12bbfygdbvbvvvv", "android.push_token"),
    ("abcd12bbfjfsykdbvbvvvvvv", "ios.push_token"),
)


def s1_ms(email_groups=None):
    email = ("tester11@seg.com", "EMAIL", "SUBSCRIBED", *([email_groups] if email_groups else []))
    return MS(
        email,
        ("+12135618345", "SMS", "SUBSCRIBED"),
        ("+12135618345", "WHATSAPP", "SUBSCRIBED"),
        ("abcd12bbfygdbvbvvvv", "ANDROID_PUSH", "UNSUBSCRIBED"),
        # The iOS entry reads the iOS status ("true"), not the Android one ("false").
        ("abcd12bbfjfsykdbvbvvvvvv", "IOS_PUSH", "SUBSCRIBED"),
    )


SUCCESS_VECTORS = [
    pytest.param(
        {
            "user_id": "user1234",
            "anonymous_id": "anonId1234",
            "traits": {"name": "Test User", "email": "test-user@test-company.com"},
            "timestamp": "2023-10-10T07:24:07.036Z",
            **S1_CHANNELS,
        },
        subscription_message(
            S1_X,
            s1_ms(),
            userId="user1234",
            anonymousId="anonId1234",
            traits={"name": "Test User", "email": "test-user@test-company.com"},
            timestamp="2023-10-10T07:24:07.036Z",
        ),
        id="S1-all-channels-ios-entry-reads-ios-status",
    ),
    pytest.param(
        {
            "user_id": "user12",
            "email": "tester11@seg.com",
            "email_subscription_status": True,
            "phone": "+12135618345",
            "sms_subscription_status": True,
        },
        subscription_message(
            X(("tester11@seg.com", "email"), ("+12135618345", "phone")),
            MS(("tester11@seg.com", "EMAIL", "SUBSCRIBED"), ("+12135618345", "SMS", "SUBSCRIBED")),
            userId="user12",
        ),
        id="S2-booleans-coerced",
    ),
    pytest.param(
        {
            "user_id": "user1234",
            **S1_CHANNELS,
            "subscription_groups": {"marketing": True, "ProductUpdates": "", "newsletter": False},
        },
        subscription_message(
            S1_X,
            s1_ms(
                [
                    {"name": "marketing", "status": "SUBSCRIBED"},
                    {"name": "ProductUpdates"},
                    {"name": "newsletter", "status": "UNSUBSCRIBED"},
                ]
            ),
            userId="user1234",
        ),
        id="S3-groups-empty-status-has-no-status-key",
    ),
    pytest.param(
        {"user_id": "u1", "email": "a@x.com", "email_subscription_status": " Subscribed "},
        subscription_message(X(("a@x.com", "email")), MS(("a@x.com", "EMAIL", "SUBSCRIBED")), userId="u1"),
        id="S4-status-trimmed-case-insensitive",
    ),
    pytest.param(
        {
            "anonymous_id": "anon-1",
            "email": "a@x.com",
            "phone": "+15555550100",
            "email_subscription_status": "did_not_subscribe",
            "whatsapp_subscription_status": "FALSE",
        },
        subscription_message(
            X(("a@x.com", "email"), ("+15555550100", "phone")),
            MS(("a@x.com", "EMAIL", "DID_NOT_SUBSCRIBE"), ("+15555550100", "WHATSAPP", "UNSUBSCRIBED")),
            anonymousId="anon-1",
        ),
        id="S6-anonymous-did-not-subscribe-and-uppercase-false",
    ),
    pytest.param(
        {
            "user_id": "u1",
            "email": "a@x.com",
            "email_subscription_status": None,
            "phone": "+1",
            "sms_subscription_status": "true",
        },
        subscription_message(
            X(("a@x.com", "email"), ("+1", "phone")), MS(("+1", "SMS", "SUBSCRIBED")), userId="u1"
        ),
        id="S7-null-status-no-entry-external-id-kept",
    ),
]


@pytest.mark.parametrize(("inputs", "expected"), SUCCESS_VECTORS)
def test_subscription_vectors(inputs, expected):
    built = run_vector("send_subscriptions", inputs)
    assert without_message_id(built.message) == expected


def test_s8_difference_null_group_status_is_no_change():
    """Segment sends ``{"name": "bad", "status": "INVALID"}`` for a null group status; a NULL group is no
    change here, like a NULL status, and is left out (issue 19: this test used to pin a rejection)."""
    built = run_vector(
        "send_subscriptions",
        {
            "user_id": "u1",
            "email": "a@x.com",
            "email_subscription_status": "true",
            "subscription_groups": {"weekly": "did-not-subscribe", "bad": None},
        },
    )
    (entry,) = built.message["context"]["messaging_subscriptions"]
    assert entry["groups"] == [{"name": "weekly", "status": "DID_NOT_SUBSCRIBE"}]


def test_only_null_groups_are_no_groups():
    """No SV4 for groups that are all NULL, and nothing to send when the statuses are NULL too."""
    from airflow_provider_segment_profiles.actions.errors import MessageSkipped

    built = run_vector(
        "send_subscriptions",
        {
            "user_id": "u1",
            "phone": "+1",
            "sms_subscription_status": "true",
            "subscription_groups": {"n": None},
        },
    )
    assert [e["type"] for e in built.message["context"]["messaging_subscriptions"]] == ["SMS"]
    with pytest.raises(MessageSkipped, match="nothing to send"):
        run_vector(
            "send_subscriptions", {"user_id": "u1", "email": "a@x.com", "subscription_groups": {"n": None}}
        )


def test_s8_groups_from_columns_with_skip_null():
    """The way out of S8's rejection: build the groups from columns and leave null ones out."""
    mapping = {
        "action": "send_subscriptions",
        "fields": {
            "user_id": {"column": "id"},
            "email": {"column": "email"},
            "email_subscription_status": "true",
            "subscription_groups": {
                "weekly": {"column": "weekly"},
                "bad": {"column": "bad", "skip_null": True},
            },
        },
    }
    (compiled,) = compile_mappings([mapping], sync_mode="diff", primary_key="id")
    built = compiled.bind(["id", "email", "weekly", "bad"]).build(
        ("u1", "a@x.com", "did-not-subscribe", None), primary_key="u1", checksum="00"
    )
    assert built.message["context"]["messaging_subscriptions"] == MS(
        ("a@x.com", "EMAIL", "SUBSCRIBED", [{"name": "weekly", "status": "DID_NOT_SUBSCRIBE"}])
    )


@pytest.mark.parametrize(
    ("inputs", "field", "reason_start"),
    [
        pytest.param(
            {"user_id": "u1", "email": "a@x.com", "email_subscription_status": "yes"},
            "email_subscription_status",
            "Invalid Subscription Status 'yes' in `Email_Subscription`",
            id="S5-difference-invalid-status-rejected-not-sent-as-INVALID",
        ),
        pytest.param(
            {"email": "a@x.com", "email_subscription_status": "true"},
            "user_id, anonymous_id",
            MISSING_IDS,
            id="S9-difference-no-user-or-anonymous-id-rejected",
        ),
        pytest.param(
            {
                "user_id": "u1",
                "email": "a@x.com",
                "phone": "+1",
                "email_subscription_status": "true",
                "sms_subscription_status": "x",
                "whatsapp_subscription_status": "x",
            },
            "sms_subscription_status",
            "Invalid Subscription Status 'x' in `Sms_Subscription`",
            id="S10-difference-invalid-sms-status-rejected",
        ),
    ],
)
def test_subscription_deliberate_differences(inputs, field, reason_start):
    error = rejection("send_subscriptions", inputs)
    assert error.field == field
    assert error.reason.startswith(reason_start)


ALL_KEYS = {"email": "a@x.com", "phone": "+1", "android_push_token": "at", "ios_push_token": "it"}
ALL_STATUSES_X = {
    "email_subscription_status": "x",
    "sms_subscription_status": "x",
    "whatsapp_subscription_status": "x",
    "android_push_subscription_status": "x",
    "ios_push_subscription_status": "x",
}


@pytest.mark.parametrize(
    ("inputs", "reason"),
    [
        pytest.param({"traits": {"name": "only traits"}}, SV1, id="SE1-SV1"),
        pytest.param(
            {
                "email": "a@x.com",
                "phone": "+1",
                "ios_push_token": "it",
                "subscription_groups": {"news": "true"},  # a NULL group is no change here (issue 19)
            },
            SV2,
            id="SE2-SV2",
        ),
        pytest.param({"email_subscription_status": "true", "phone": "+1"}, SV3, id="SE3-SV3"),
        pytest.param(
            {
                "email": "a@x.com",
                "phone": "+1",
                "sms_subscription_status": "true",
                "subscription_groups": {"marketing": "true"},
            },
            SV4,
            id="SE4-SV4",
        ),
        pytest.param({"email": "a@x.com", "sms_subscription_status": "true"}, SV5, id="SE5-SV5"),
        pytest.param({"email": "a@x.com", "android_push_subscription_status": "true"}, SV6, id="SE6-SV6"),
        pytest.param(
            {
                "email": "a@x.com",
                "email_subscription_status": "true",
                "phone": "+1",
                "ios_push_subscription_status": "true",
            },
            SV7,
            id="SE7-SV7",
        ),
        pytest.param({**ALL_KEYS, **ALL_STATUSES_X}, SV8, id="SE8-SV8"),
    ],
)
def test_subscription_rule_vectors(inputs, reason):
    assert rejection("send_subscriptions", inputs).reason == reason


def test_sv_rules_wording_matches_segment():
    assert SV1 == "Either `Email` or `Phone` or `Android_Push_Token` or `Ios_Push_Token` must be defined."
    assert SV8.startswith("Invalid Subscription Status in `Email_Subscription` or `Sms_Subscription`")


def test_every_status_null_is_skipped_not_rejected():
    """Segment answers SV2 when no status is given; here a NULL status means "no change", so a record with
    nothing but NULL statuses has nothing to send: skipped, not bad data (docs/mappings.md)."""
    with pytest.raises(MessageSkipped, match="every subscription status is NULL or empty") as caught:
        run_vector("send_subscriptions", {"email": "a@x.com", "phone": "+1", "ios_push_token": "it"})
    assert caught.value.field.startswith("email_subscription_status")


def test_sv_rules_come_before_our_id_rule():
    """Segment's rules run first, in its order; our user_id/anonymous_id requirement is checked last."""
    assert (
        rejection("send_subscriptions", {"phone": "+1", "subscription_groups": {"news": "true"}}).reason
        == SV2
    )
    assert rejection("send_subscriptions", {**ALL_KEYS, **ALL_STATUSES_X, "user_id": "u"}).reason == SV8
