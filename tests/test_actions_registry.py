"""The actions' JSON Schemas: the public field keys, Segment's labels, types, required and hidden flags."""

from __future__ import annotations

from importlib import resources

import pytest
from jsonschema import Draft202012Validator

from airflow_provider_segment_profiles.actions import ACTION_NAMES, actions, get_action
from airflow_provider_segment_profiles.actions.registry import load_schema

#: The public field keys per action (docs/mappings.md), in order, plus the hidden message_id and consent.
SPEC_FIELDS = {
    "send_identify": ["user_id", "anonymous_id", "group_id", "traits", "timestamp", "message_id", "consent"],
    "send_group": ["user_id", "anonymous_id", "group_id", "traits", "timestamp", "message_id", "consent"],
    "send_track": [
        "user_id",
        "anonymous_id",
        "timestamp",
        "event_name",
        "group_id",
        "properties",
        "message_id",
        "consent",
    ],
    "send_subscriptions": [
        "user_id",
        "anonymous_id",
        "email",
        "email_subscription_status",
        "subscription_groups",
        "phone",
        "sms_subscription_status",
        "whatsapp_subscription_status",
        "android_push_token",
        "android_push_subscription_status",
        "ios_push_token",
        "ios_push_subscription_status",
        "traits",
        "timestamp",
        "message_id",
        "consent",
    ],
}
REQUIRED = {
    "send_identify": (),
    "send_group": ("group_id",),
    "send_track": ("event_name",),
    "send_subscriptions": (),
}

#: Segment's labels and types (segmentio/action-destinations ``segment-profiles/send*/generated-types`` and ``index.ts``).
LABELS = {
    "user_id": ("User ID", ("string",)),
    "anonymous_id": ("Anonymous ID", ("string",)),
    "group_id": ("Group ID", ("string",)),
    "traits": ("Traits", ("object",)),
    "properties": ("Properties", ("object",)),
    "event_name": ("Event Name", ("string",)),
    "timestamp": ("Timestamp", ("string", "number")),
    "message_id": ("MessageId", ("string",)),
    "consent": ("Consent", ("object",)),
    "email": ("Email", ("string",)),
    "phone": ("Phone", ("string",)),
    "android_push_token": ("Android Push Token", ("string",)),
    "ios_push_token": ("Ios Push Token", ("string",)),
    "email_subscription_status": ("Email Subscription Status", ("string", "null")),
    "sms_subscription_status": ("SMS Subscription Status", ("string", "null")),
    "whatsapp_subscription_status": ("WhatsApp Subscription Status", ("string", "null")),
    "android_push_subscription_status": ("Android Push Subscription Status", ("string", "null")),
    "ios_push_subscription_status": ("Ios Push Subscription Status", ("string", "null")),
    "subscription_groups": ("Email Subscription Groups", ("object",)),
}
TITLES = {
    "send_identify": ("Send Identify", "identify"),
    "send_group": ("Send Group", "group"),
    "send_track": ("Send Track", "track"),
    "send_subscriptions": ("Send Subscriptions", "identify"),
}


def test_the_four_actions():
    assert ACTION_NAMES == ("send_identify", "send_group", "send_track", "send_subscriptions")
    assert list(actions()) == list(ACTION_NAMES)


@pytest.mark.parametrize("action", ACTION_NAMES)
def test_schema_is_package_data_and_valid_draft_2020_12(action):
    path = resources.files("airflow_provider_segment_profiles.actions").joinpath("schemas", f"{action}.json")
    assert path.is_file()
    schema = load_schema(action)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("action", ACTION_NAMES)
def test_fields_labels_types_required_and_hidden(action):
    spec = get_action(action)
    assert (spec.title, spec.message_type) == TITLES[action]
    assert list(spec.fields) == SPEC_FIELDS[action]
    assert spec.required_fields == REQUIRED[action]
    assert spec.schema["required"] == list(REQUIRED[action])
    for key, field in spec.fields.items():
        assert (field.label, field.types) == LABELS[key], key
        assert field.hidden is (key in ("message_id", "consent")), key
        assert field.description, key


def test_unknown_action():
    with pytest.raises(KeyError):
        get_action("send_page")
