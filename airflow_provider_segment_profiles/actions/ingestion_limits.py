"""
Unify's ingestion rules, checked on each built message before it is sent.

Segment's tracking API answers 200 to these messages and Unify then loses them (segment-docs
``src/unify/profile-api-limits.md``, 2023-06, "Identity" table and "Unify ingestion limitations"):

* "Engage rejects Identify events with 300 or more traits. If your use case requires more than 300 traits,
  you can split the traits into multiple Identify calls." — an Identify with :data:`MAX_IDENTIFY_TRAITS`
  + 1 or more traits is sent as several Identify calls (:func:`split_identify`);
* "Unify will silently drop events if: The groupId has more than 500 characters. Events have more than 300
  properties/traits. messageId is longer than 100 characters. The groupId is empty in a group call or
  context.groupId is empty in a track call." — such a message is rejected (:func:`ingestion_problem`).

Traits and properties are counted as the top-level keys of the ``traits`` / ``properties`` object (the
page does not say whether nested keys count; nested objects are one trait each, as a profile stores them).
A mapped ``message_id`` over 99 characters is already rejected by the action's schema (``maxLength`` 99,
from the duplicate-data guide's "under 100 characters"); derived ids have 35.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_segment_profiles.actions.message_id import part_message_id
from airflow_provider_segment_profiles.common.segment_limits import (
    MAX_GROUP_ID_CHARS,
    MAX_IDENTIFY_TRAITS,
    MAX_MESSAGE_ID_CHARS,
    MAX_TRAITS_OR_PROPERTIES,
)

_SOURCE = "segment-docs src/unify/profile-api-limits.md"


def ingestion_problem(message: dict[str, Any], splits_identify: bool) -> tuple[str, str] | None:
    """
    The first Unify ingestion rule ``message`` breaks, or ``None``.

    :param message: a built tracking-API message (``type`` set).
    :param splits_identify: whether an Identify over :data:`MAX_IDENTIFY_TRAITS` traits is split (Send
        Identify) rather than rejected (Send Subscriptions, whose subscription context cannot be split).
    :return: ``(field, reason)`` of a message that must not be sent: the mapping field at fault and why.
    """
    kind = message["type"]
    group_id = message.get("groupId")
    if group_id is not None and len(group_id) > MAX_GROUP_ID_CHARS:
        return "group_id", (
            f"group_id is {len(group_id):,} characters; Unify silently drops events whose groupId has more "
            f"than {MAX_GROUP_ID_CHARS} ({_SOURCE})"
        )
    message_id = message.get("messageId")
    if message_id is not None and len(message_id) > MAX_MESSAGE_ID_CHARS:
        return "message_id", (
            f"message_id is {len(message_id):,} characters; Unify silently drops events whose messageId is "
            f"longer than {MAX_MESSAGE_ID_CHARS} ({_SOURCE})"
        )
    if kind == "track":
        count = len(message["properties"])
        if count > MAX_TRAITS_OR_PROPERTIES:
            return "properties", _too_many(count, "properties")
        context_group = message["context"].get("groupId", 0)
        if context_group is None or context_group == "":
            return "group_id", (
                f"context.groupId is empty; Unify silently drops a track call whose context.groupId is empty "
                f"({_SOURCE})"
            )
        if type(context_group) is str and len(context_group) > MAX_GROUP_ID_CHARS:  # read as the groupId rule
            return "group_id", (
                f"group_id is {len(context_group):,} characters; Unify silently drops events whose groupId has "
                f"more than {MAX_GROUP_ID_CHARS} ({_SOURCE})"
            )
        return None
    count = len(message["traits"])
    if kind == "group":
        if group_id is None or group_id == "":
            return "group_id", f"groupId is empty; Unify silently drops a group call without one ({_SOURCE})"
        if count > MAX_TRAITS_OR_PROPERTIES:
            return "traits", _too_many(count, "traits")
    elif count > MAX_IDENTIFY_TRAITS and not splits_identify:
        return "traits", (
            f"{count:,} traits; Engage rejects an Identify with 300 or more traits ({_SOURCE}). Send "
            "Subscriptions cannot be split: send the extra traits through a send_identify mapping"
        )
    return None


def _too_many(count: int, what: str) -> str:
    return (
        f"{count:,} {what}; Unify silently drops events with more than {MAX_TRAITS_OR_PROPERTIES} "
        f"properties/traits ({_SOURCE})"
    )


def needs_split(message: dict[str, Any]) -> bool:
    """Whether ``message`` is an Identify with more traits than one Identify may carry."""
    return message["type"] == "identify" and len(message["traits"]) > MAX_IDENTIFY_TRAITS


def split_identify(message: dict[str, Any]) -> list[dict[str, Any]]:
    """
    Split an Identify over :data:`MAX_IDENTIFY_TRAITS` traits into Identify calls of at most that many
    traits each, as Segment's page advises.

    Every part repeats the message's other keys (ids, ``groupId``, ``timestamp``, ``context``,
    ``integrations``) and takes the traits in the mapping's order, :data:`MAX_IDENTIFY_TRAITS` at a time;
    part ``n`` (1-based) gets :func:`~.message_id.part_message_id` of the message's id. The same record
    gives the same parts and ids on every try, so Segment de-duplicates a part sent again.

    :return: the parts, in order (at least two).
    """
    traits = list(message["traits"].items())
    message_id = message["messageId"]
    parts = []
    for number, start in enumerate(range(0, len(traits), MAX_IDENTIFY_TRAITS), start=1):
        part = dict(message)
        part["messageId"] = part_message_id(message_id, number)
        part["traits"] = dict(traits[start : start + MAX_IDENTIFY_TRAITS])
        parts.append(part)
    return parts
