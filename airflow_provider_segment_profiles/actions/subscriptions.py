"""
Send Subscriptions: status parsing, Segment's eight validation rules, and the ``context`` it builds.

Reproduces segmentio/action-destinations ``segment-profiles/sendSubscription/index.ts`` (HEAD
``970a17ee8d``), with the deliberate differences listed in ``docs/mappings.md``:

* a status that is not one of the accepted words rejects the record (Segment sends ``"INVALID"``,
  which Engage cannot apply), after Segment's own rules SV1-SV8 have run in their order;
* a list in a status field rejects the record (Segment's validator takes some one-item lists and
  refuses others; see ``record_builder``);
* a subscription group whose value is NULL is no change, like a NULL status: it is left out (Segment
  sends it as ``"INVALID"``), so groups that are all NULL are no groups (Segment answers SV2 or SV4);
* a record needs ``user_id`` or ``anonymous_id``, checked last (the tracking API drops calls with
  neither; Segment's destination does not check).

The iOS push entry reads ``ios_push_subscription_status``, as ``@segment/action-destinations`` 3.497.0
does (``tests/test_differential_segment.py`` runs it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from airflow_provider_segment_profiles.actions.errors import FieldRejected, NothingToSend
from airflow_provider_segment_profiles.actions.json_values import join_path, js_string

SUBSCRIBED = "SUBSCRIBED"
UNSUBSCRIBED = "UNSUBSCRIBED"
DID_NOT_SUBSCRIBE = "DID_NOT_SUBSCRIBE"
#: What Segment's ``getStatus`` returns for any other non-empty text.
INVALID = "INVALID"

_STATUS_WORDS = {
    "true": SUBSCRIBED,
    "subscribed": SUBSCRIBED,
    "false": UNSUBSCRIBED,
    "unsubscribed": UNSUBSCRIBED,
    "did-not-subscribe": DID_NOT_SUBSCRIBE,
    "did_not_subscribe": DID_NOT_SUBSCRIBE,
}
ACCEPTED_STATUS_TEXT = "true/subscribed, false/unsubscribed or did-not-subscribe/did_not_subscribe (any case)"

#: (key field, external-id type, ((status field, channel type, Segment's label of the status), ...)),
#: in Segment's processing order.
CHANNELS: tuple[tuple[str, str, tuple[tuple[str, str, str], ...]], ...] = (
    ("email", "email", (("email_subscription_status", "EMAIL", "Email_Subscription"),)),
    (
        "phone",
        "phone",
        (
            ("sms_subscription_status", "SMS", "Sms_Subscription"),
            ("whatsapp_subscription_status", "WHATSAPP", "Whatsapp_Subscription"),
        ),
    ),
    (
        "android_push_token",
        "android.push_token",
        (("android_push_subscription_status", "ANDROID_PUSH", "Android_Push_Subscription"),),
    ),
    (
        "ios_push_token",
        "ios.push_token",
        (("ios_push_subscription_status", "IOS_PUSH", "Ios_Push_Subscription"),),
    ),
)
KEY_FIELDS = tuple(channel[0] for channel in CHANNELS)
STATUS_FIELDS = (
    "email_subscription_status",
    "sms_subscription_status",
    "whatsapp_subscription_status",
    "android_push_subscription_status",
    "ios_push_subscription_status",
)
_STATUS_LABELS = {status: label for _, _, statuses in CHANNELS for status, _, label in statuses}

# Segment's error texts (segment-profiles/errors.ts), in the order ``sendSubscription/index.ts`` checks them (SV1-SV8).
SV1 = "Either `Email` or `Phone` or `Android_Push_Token` or `Ios_Push_Token` must be defined."
SV2 = (
    "If any of `Email`, `Phone`, `Android_Push_Token` or `Ios_Push_Token` is present, "
    "`Email_Subscription` or "
    "`Sms_Subscription` or `Whatsapp_Subscription` or `Ios_Push_Subscription` or `Android_Push_Subscription` "
    "must be defined."
)
#: Why a Send Subscriptions record whose statuses are all NULL or empty is skipped, not rejected.
NOTHING_TO_SEND = "every subscription status is NULL or empty, which means no change: nothing to send"
SV3 = "A valid `Email` must be defined for `Email_Subscription`."
SV4 = "`Email_Subscription` must be defined if Subscription Groups are present."
SV5 = "A valid `Phone` must be defined for `Sms_Subscription` or `Whatsapp_Subscription`."
SV6 = "A valid `Android_Push_Token` must be defined for `Android_Push_Subscription`."
SV7 = "A valid `Ios_Push_Token` must be defined for `Ios_Push_Subscription`."
SV8 = (
    "Invalid Subscription Status in `Email_Subscription` or `Sms_Subscription` or `Whatsapp_Subscription` or "
    "`Android_Push_Subscription` or `Ios_Push_Subscription`."
)


#: What JavaScript's ``String.prototype.trim`` removes, which Segment's ``getStatus`` calls: ECMA-262
#: WhiteSpace (TAB, VT, FF, SP, NBSP, ZWNBSP U+FEFF, category Zs) and LineTerminator (LF, CR, U+2028,
#: U+2029). Python's ``str.strip()`` differs: it also removes U+001C-U+001F and U+0085, and keeps U+FEFF.
JS_WHITESPACE = (
    "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]{0,9}")
_MAX_ARRAY_INDEX = 2**32 - 2


def parse_status(value: Any) -> str | None:
    """
    Segment's ``getStatus``: trim (JavaScript's :data:`JS_WHITESPACE`), lower-case, then map the
    accepted words.

    :param value: the status text (``None`` allowed).
    :return: ``SUBSCRIBED``/``UNSUBSCRIBED``/``DID_NOT_SUBSCRIBE``; ``None`` for missing or blank text
        (no entry is made); :data:`INVALID` for any other text.
    """
    if value is None:
        return None
    text = value.strip(JS_WHITESPACE).lower()
    if not text:
        return None
    return _STATUS_WORDS.get(text, INVALID)


def subscription_context(values: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """
    Apply Send Subscriptions' rules to one record and build its ``context`` parts.

    Rules, first failure wins: Segment's SV1-SV8 in Segment's order and wording, then this provider's
    rejection of statuses Segment would send as ``"INVALID"`` (channel statuses, then email group
    statuses). Presence follows JavaScript truthiness on the values left after empty-value removal: a
    field is present when it is a non-empty string (a ``null`` status is absent).

    Built like Segment does:

    * ``externalIds``: one ``{id, type, collection: "users", encoding: "none"}`` per key field present,
      even when its channel has no status;
    * ``messaging_subscriptions``: one ``{key, type, status}`` per status that parses to a value, in
      channel order (EMAIL, SMS, WHATSAPP, ANDROID_PUSH, IOS_PUSH);
    * the EMAIL entry gets ``groups: [{name, status}]`` when ``subscription_groups`` is a non-empty
      object; a group whose status is blank has no ``status`` key.

    :param values: the record's resolved field values.
    :return: ``(messaging_subscriptions, externalIds)``.
    :raises FieldRejected: the first rule that fails.
    """
    get = values.get
    email, phone = get("email"), get("phone")
    android_token, ios_token = get("android_push_token"), get("ios_push_token")
    email_status, sms_status = get("email_subscription_status"), get("sms_subscription_status")
    whatsapp_status = get("whatsapp_subscription_status")
    android_status, ios_status = get("android_push_subscription_status"), get("ios_push_subscription_status")
    groups = get("subscription_groups")
    if isinstance(groups, Mapping):  # a NULL group is no change (docs/mappings.md): left out
        groups = {name: status for name, status in groups.items() if status is not None}
    if not (email or phone or android_token or ios_token):
        raise FieldRejected(", ".join(KEY_FIELDS), SV1)
    if not (email_status or sms_status or whatsapp_status or android_status or ios_status):
        if not groups:
            # Segment's destination answers SV2; here NULL means "no change" (docs/mappings.md): skipped.
            raise NothingToSend(", ".join(STATUS_FIELDS), NOTHING_TO_SEND)
        raise FieldRejected(", ".join(STATUS_FIELDS), SV2)
    if email_status and not email:
        raise FieldRejected("email", SV3)
    if groups and not email_status:
        raise FieldRejected("subscription_groups", SV4)
    if (sms_status or whatsapp_status) and not phone:
        raise FieldRejected("phone", SV5)
    if android_status and not android_token:
        raise FieldRejected("android_push_token", SV6)
    if ios_status and not ios_token:
        raise FieldRejected("ios_push_token", SV7)
    # Statuses parsed once; a falsy status (absent, null) has no entry, like getStatus(undefined).
    email_parsed = parse_status(email_status) if email_status else None
    sms_parsed = parse_status(sms_status) if sms_status else None
    whatsapp_parsed = parse_status(whatsapp_status) if whatsapp_status else None
    android_parsed = parse_status(android_status) if android_status else None
    ios_parsed = parse_status(ios_status) if ios_status else None
    parsed = (email_parsed, sms_parsed, whatsapp_parsed, android_parsed, ios_parsed)
    if INVALID in parsed:
        if parsed.count(INVALID) == len(parsed):
            raise FieldRejected(", ".join(STATUS_FIELDS), SV8)
        # Deliberate difference: Segment would send these as "INVALID".
        field = STATUS_FIELDS[parsed.index(INVALID)]
        raise FieldRejected(
            field,
            f"Invalid Subscription Status {get(field)!r} in `{_STATUS_LABELS[field]}`: expected "
            f'{ACCEPTED_STATUS_TEXT}, or null/empty for no change (Segment would send it as "INVALID")',
        )
    external_ids = [
        {"id": key, "type": external_type, "collection": "users", "encoding": "none"}
        for key, external_type in (
            (email, "email"),
            (phone, "phone"),
            (android_token, "android.push_token"),
            (ios_token, "ios.push_token"),
        )
        if key is not None
    ]
    subscriptions: list[dict[str, Any]] = [
        {"key": key, "type": channel_type, "status": status}
        for key, channel_type, status in (
            (email, "EMAIL", email_parsed),
            (phone, "SMS", sms_parsed),
            (phone, "WHATSAPP", whatsapp_parsed),
            (android_token, "ANDROID_PUSH", android_parsed),
            (ios_token, "IOS_PUSH", ios_parsed),  # the iOS status, not the Android one
        )
        if status is not None
    ]
    if groups and email_parsed is not None:
        subscriptions[0]["groups"] = _email_groups(groups)  # the EMAIL entry comes first
    return subscriptions, external_ids


def _is_array_index(name: str) -> bool:
    return _ARRAY_INDEX.fullmatch(name) is not None and int(name) <= _MAX_ARRAY_INDEX


def _js_key_order(groups: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """
    ``Object.entries`` order, in which Segment lists the groups: keys that are array indexes (canonical
    integers 0 to 2^32 - 2) first in ascending order, then the others in insertion order (ECMA-262
    OrdinaryOwnPropertyKeys).
    """
    items = list(groups.items())
    if not any(name[:1].isdigit() and _is_array_index(name) for name, _ in items):
        return items
    indexes = sorted((item for item in items if _is_array_index(item[0])), key=lambda item: int(item[0]))
    return indexes + [item for item in items if not _is_array_index(item[0])]


def _email_groups(groups: Mapping[str, Any]) -> list[dict[str, str]]:
    """``[{name, status}]`` from ``{name: status}`` (``getStatus(String(v))``) in JavaScript's key order;
    a blank status has no key."""
    entries = []
    for name, group_status in _js_key_order(groups):
        status = parse_status(js_string(group_status))
        if status == INVALID:
            raise FieldRejected(
                join_path("subscription_groups", str(name)),
                f"Invalid Subscription Status {group_status!r} for subscription group {name!r}: expected "
                f"{ACCEPTED_STATUS_TEXT}, or NULL or empty for no change (Segment would send it as "
                '"INVALID")',
            )
        entries.append({"name": name} if status is None else {"name": name, "status": status})
    return entries
