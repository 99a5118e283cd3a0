"""
Tracking-API messages built from one record's resolved field values, as Segment's Segment Profiles
destination builds them (segmentio/action-destinations ``segment-profiles/send*/index.ts``; the shapes
are listed in ``docs/mappings.md``, "What every message looks like").

Common to every action:

* ``integrations: {"All": false}``, which keeps the call from being forwarded to the Profile Space's
  destinations;
* ``context.consent``: the mapped ``consent`` object when its ``categoryPreferences`` values are all
  booleans, else ``{}`` (Segment's ``validateConsentObject``);
* keys whose value is absent are left out (JavaScript drops ``undefined`` when serialising);
* ``traits`` / ``properties`` are always present, ``{}`` by default.

Deliberate difference: Send Track puts ``group_id`` in ``context.groupId``, the tracking spec's place
for it (segment-docs ``src/connections/spec/common.md``, "Context"); Segment's destination drops it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from airflow_provider_segment_profiles.actions.errors import FieldRejected
from airflow_provider_segment_profiles.actions.subscriptions import subscription_context

#: Segment's ``MissingUserOrAnonymousIdThrowableError`` text (segment-profiles ``errors.ts``), error E0.
MISSING_IDS = "Either `Anonymous ID` or `User ID` must be defined."
_IDS_FIELD = "user_id, anonymous_id"

MessageBuilder = Callable[[dict[str, Any], str], dict[str, Any]]


def consent_context(consent: Any) -> dict[str, Any]:
    """
    :param consent: the resolved ``consent`` field (absent -> ``None``).
    :return: ``consent`` itself when it is an object whose ``categoryPreferences`` is an object of
        booleans only; otherwise ``{}``.
    """
    if type(consent) is dict:
        preferences = consent.get("categoryPreferences")
        if type(preferences) is dict and all(type(choice) is bool for choice in preferences.values()):
            return consent
    return {}


def _identified(values: dict[str, Any]) -> dict[str, Any]:
    """A new message holding ``userId`` and ``anonymousId`` as mapped; at least one is required (E0)."""
    message: dict[str, Any] = {}
    if "user_id" in values:
        message["userId"] = values["user_id"]
    if "anonymous_id" in values:
        message["anonymousId"] = values["anonymous_id"]
    if not message:
        raise FieldRejected(_IDS_FIELD, MISSING_IDS)
    return message


def _identify_or_group(values: dict[str, Any], message_id: str, message_type: str) -> dict[str, Any]:
    message = _identified(values)
    if "group_id" in values:
        message["groupId"] = values["group_id"]
    message["messageId"] = message_id
    message["traits"] = values.get("traits") or {}
    if "timestamp" in values:
        message["timestamp"] = values["timestamp"]
    message["integrations"] = {"All": False}
    message["type"] = message_type
    message["context"] = {"consent": consent_context(values.get("consent"))}
    return message


def build_identify(values: dict[str, Any], message_id: str) -> dict[str, Any]:
    """Send Identify: ``{userId, anonymousId, groupId, messageId, traits, timestamp, integrations,
    type: "identify", context: {consent}}``; ``groupId`` is top level even on identify, as Segment sends it.

    :raises FieldRejected: neither ``user_id`` nor ``anonymous_id`` (E0).
    """
    return _identify_or_group(values, message_id, "identify")


def build_group(values: dict[str, Any], message_id: str) -> dict[str, Any]:
    """Send Group: the Send Identify shape with ``type: "group"``.

    :raises FieldRejected: neither ``user_id`` nor ``anonymous_id`` (E0).
    """
    return _identify_or_group(values, message_id, "group")


def build_track(values: dict[str, Any], message_id: str) -> dict[str, Any]:
    """Send Track: ``{userId, anonymousId, timestamp, event, messageId, integrations, properties,
    context: {consent, groupId}, type: "track"}``.

    :raises FieldRejected: neither ``user_id`` nor ``anonymous_id`` (E0).
    """
    message = _identified(values)
    if "timestamp" in values:
        message["timestamp"] = values["timestamp"]
    message["event"] = values["event_name"]
    message["messageId"] = message_id
    message["integrations"] = {"All": False}
    message["properties"] = values.get("properties") or {}
    context: dict[str, Any] = {"consent": consent_context(values.get("consent"))}
    if "group_id" in values:
        context["groupId"] = values["group_id"]
    message["context"] = context
    message["type"] = "track"
    return message


def build_subscriptions(values: dict[str, Any], message_id: str) -> dict[str, Any]:
    """Send Subscriptions: an identify carrying ``context.messaging_subscriptions``,
    ``context.externalIds`` and ``context.messaging_subscriptions_retl: true``.

    :raises FieldRejected: Segment's rules SV1-SV8, an invalid status, or neither ``user_id`` nor
        ``anonymous_id`` — in that order (see :mod:`.subscriptions`).
    """
    subscriptions, external_ids = subscription_context(values)
    message = _identified(values)
    message["traits"] = values.get("traits") or {}
    message["context"] = {
        "messaging_subscriptions": subscriptions,
        "externalIds": external_ids,
        "messaging_subscriptions_retl": True,
        "consent": consent_context(values.get("consent")),
    }
    if "timestamp" in values:
        message["timestamp"] = values["timestamp"]
    message["integrations"] = {"All": False}
    message["messageId"] = message_id
    message["type"] = "identify"
    return message


MESSAGE_BUILDERS: dict[str, MessageBuilder] = {
    "send_identify": build_identify,
    "send_group": build_group,
    "send_track": build_track,
    "send_subscriptions": build_subscriptions,
}
