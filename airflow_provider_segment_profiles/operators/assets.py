"""
Asset events of a sync: the run's counts in the ``extra`` of every Asset the DAG author gave as ``outlets``.

Airflow 3 records one asset event per outlet Asset when a task succeeds; a task sets what the event
carries through ``context["outlet_events"][asset].extra`` (task SDK ``OutletEventAccessor``; the
"Attaching extra information to an emitting asset event" section of
https://airflow.apache.org/docs/apache-airflow/stable/authoring-and-scheduling/asset-scheduling.html).
A DAG scheduled on the Asset reads it from ``triggering_asset_events``.

Only counts go there: no samples (they hold unique identifiers and reasons), no paths, never a secret.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: Summary keys copied into an asset event's ``extra`` (all counts or flags).
EXTRA_KEYS = (
    "rows_read",
    "records",
    "messages",
    "mappings",
    "skipped",
    "rejected_carried_over",
    "deletes_held",
    "warnings",
    "requests",
    "sync_mode",
    "dry_run",
    "full_refresh",
    "state_generation",
    "duration_s",
)


def summary_extra(summary: Mapping[str, Any]) -> dict[str, Any]:
    """
    The part of a run summary an asset event carries: its counts and flags (:data:`EXTRA_KEYS`).

    :param summary: the run summary (``docs/operator.md``).
    """
    return {key: summary[key] for key in EXTRA_KEYS if key in summary}


def attach_summary(context: Mapping[str, Any], outlets: Iterable[Any], summary: Mapping[str, Any]) -> int:
    """
    Put :func:`summary_extra` into the asset event of each ``Asset`` in ``outlets`` (what the author set
    there already stays, our keys win). Asset aliases are left alone: their events are added explicitly.

    :param context: the task's context (``outlet_events`` is absent outside a real task run).
    :param outlets: the operator's ``outlets``.
    :param summary: the run summary.
    :return: how many asset events got the counts.
    """
    from airflow.sdk import Asset

    outlet_events = context.get("outlet_events")
    if outlet_events is None:
        return 0
    extra = summary_extra(summary)
    attached = 0
    for outlet in outlets or ():
        if isinstance(outlet, Asset):
            outlet_events[outlet].extra.update(extra)
            attached += 1
    return attached
