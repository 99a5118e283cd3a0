"""Where a sync sends, as the task log names it: a wrong region is answered 200 and silently dropped."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow_provider_segment_profiles.hooks.segment_profiles import SegmentProfilesHook


def log_destinations_before(log: Any, hooks: Mapping[str, SegmentProfilesHook]) -> None:
    """One line per Profile Space connection the run will send to (connection id, region, endpoint host)."""
    for conn_id in sorted(hooks):
        log.info("Sending to Profile Space %s", _describe(hooks[conn_id]))


def destinations_report(
    hooks: Mapping[str, SegmentProfilesHook], space_conn_ids: Mapping[str, str], summary: dict[str, Any]
) -> str:
    """
    The lines the task log ends with: for each Profile Space connection, where its messages went and how
    many were delivered there (from the summary's per-mapping counts). Never the write key.

    :param space_conn_ids: mapping name -> the Profile Space connection it sends to.
    """
    delivered = dict.fromkeys(hooks, 0)
    for mapping, counts in summary.get("mappings", {}).items():
        conn_id = space_conn_ids.get(mapping)
        if conn_id in delivered:
            delivered[conn_id] += counts.get("delivered", 0)
    verb = "would have been delivered (dry run)" if summary.get("dry_run") else "delivered"
    lines = ["Destinations (Profile Space connection: region, endpoint host; messages):"]
    lines += [
        f"  {_describe(hooks[conn_id])}: {delivered[conn_id]:,} {verb}" for conn_id in sorted(delivered)
    ]
    return "\n".join(lines)


def _describe(hook: SegmentProfilesHook) -> str:
    try:
        return hook.describe_destination()
    except Exception as err:  # an unreadable connection is reported where it is used; name what is known
        return f"connection {hook.segment_profiles_conn_id!r} ({type(err).__name__})"
