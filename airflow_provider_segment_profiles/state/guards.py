"""
Checks that the committed state still fits the sync before a run relies on it. Each failure is a
:class:`~airflow_provider_segment_profiles.exceptions.StateError` whose first line says how to recover, so
that it is what a user sees first in the task log and in the UI.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from airflow_provider_segment_profiles.exceptions import StateError
from airflow_provider_segment_profiles.state.location import StateLocation, SyncState

RECOVER_WITH_FULL_REFRESH = (
    "To recover: run this task once with full_refresh=True (from the Trigger dialog with the run param "
    "full_refresh when the DAG templates it, see docs/operator.md); every record is sent again."
)


def state_error(problem: str, advice: str = RECOVER_WITH_FULL_REFRESH) -> StateError:
    """A :class:`StateError` with the advice on its first line and the problem below it."""
    return StateError(f"{advice}\n{problem}")


def check_not_rolled_back(head: SyncState | None, prior: SyncState | None, location: StateLocation) -> None:
    """
    Fail when an earlier run's XCom says it committed a newer generation than ``HEAD.json`` holds.

    :param head: the state under ``state_path`` (``None`` when there is none).
    :param prior: the newest state an earlier run pushed to XCom, or ``None``.
    :raises StateError: the state under ``state_path`` was deleted, moved or rolled back.
    """
    if prior is not None and (head is None or head.generation < prior.generation):
        found = f"generation {head.generation}" if head else "nothing"
        raise state_error(
            f"An earlier run committed sync state generation {prior.generation} (run {prior.run_id!r}), but "
            f"{location.head} holds {found}: the state under state_path was deleted, moved or rolled back. "
            "Restore it, or run once with full_refresh=True to rebuild state (every record is sent again)."
        )


def check_settings_unchanged(head: SyncState, settings: Mapping[str, Any]) -> None:
    """
    Fail when the sync mode, unique identifier or cursor column differ from the ones the state was built with.

    :param settings: ``sync_mode``, ``primary_key`` and ``cursor_column`` of this run.
    :raises StateError: naming every setting that changed.
    """
    changed = []
    if head.sync_mode != settings["sync_mode"]:
        changed.append(f"sync_mode was {head.sync_mode!r}, now {settings['sync_mode']!r}")
    for key in ("primary_key", "cursor_column"):
        if head.extra.get(key) != settings[key]:
            changed.append(f"{key} was {head.extra.get(key)!r}, now {settings[key]!r}")
    if changed:
        raise state_error(
            "The saved state does not fit this sync any more ("
            + "; ".join(changed)
            + "). Run once with full_refresh=True to rebuild it."
        )


def check_destinations(head: SyncState, destinations: Mapping[str, str]) -> None:
    """
    Fail when a Profile Space connection now points elsewhere than where the state was delivered.

    :param destinations: Profile Space conn id -> its current
        :attr:`~airflow_provider_segment_profiles.hooks.segment_profiles.SegmentProfilesHook.destination_id`.
    :raises StateError: naming the connections whose write key or region changed.
    """
    saved = head.extra.get("destinations") or {}
    moved = sorted(conn_id for conn_id, now in destinations.items() if saved.get(conn_id, now) != now)
    if moved:
        raise state_error(
            f"The Segment connection(s) {', '.join(map(repr, moved))} now point at another destination than "
            f"the one state generation {head.generation} was delivered to: the write key or region changed. "
            "Segment answers 200 to an unknown write key or the wrong region and drops the data, "
            "so records the state counts as delivered may be missing there. Run once with "
            "full_refresh=True to send every record to the new destination (mappings on the 'added' "
            "trigger fire again); that also accepts the change."
        )


def load_head(
    location: StateLocation,
    *,
    full_refresh: bool,
    settings: Mapping[str, Any],
    earlier_xcom_state: Callable[[bool], SyncState | None],
    log: Any,
) -> SyncState | None:
    """
    Read the committed state and check that it still fits (see the other checks of this module).

    :param settings: ``sync_mode``, ``primary_key`` and ``cursor_column`` of this run.
    :param earlier_xcom_state: ``(first_run) ->`` the newest state an earlier run pushed to XCom, or ``None``;
        called only when the state is to be checked.
    :return: the committed state, or ``None`` on a first run. A full refresh returns it unchecked: the run
        rebuilds state, but the commit still guards against a concurrent one.
    :raises StateError: unreadable, rolled back, or built for other settings.
    """
    head = location.read_head()
    if full_refresh:
        log.info("full_refresh=True: ignoring saved state; every record counts as added")
        return head
    check_not_rolled_back(head, earlier_xcom_state(head is None), location)
    if head is not None:
        check_settings_unchanged(head, settings)
        log.info(
            "Continuing from state generation %d committed by run %s at %s (%d records)",
            head.generation,
            head.run_id,
            head.committed_at,
            head.records,
        )
    return head
