"""
Stage 6, commit: the run's new state becomes the committed one, only with what Segment accepted (failed
records were marked by settling and keep what Segment held). Commits are generation-checked: when another
run of the same sync committed meanwhile, this one fails instead of mixing two states.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_segment_profiles.state.location import SyncState
from airflow_provider_segment_profiles.state.watermark import to_xcom

if TYPE_CHECKING:
    from airflow_provider_segment_profiles.pipeline.config import SyncConfig
    from airflow_provider_segment_profiles.pipeline.detection.base import ChangeDetector
    from airflow_provider_segment_profiles.state.location import StateLocation


def commit_state(
    *,
    config: SyncConfig,
    location: StateLocation,
    head: SyncState | None,
    detector: ChangeDetector,
    workdir: Path,
    watermark: Any,
    fingerprint: str,
    messages: dict[str, int],
    destinations: dict[str, str],
    run_id: str,
    try_number: int,
    column_types: dict[str, str] | None = None,
    rows_behind_watermark: int | None = None,
) -> SyncState:
    """
    Write the detector's snapshot and move ``HEAD.json`` to the new state.

    :param head: the state this run started from (a full refresh still guards against a concurrent commit).
    :param watermark: the incremental watermark value to commit, or ``None``.
    :param messages: the run's message totals, kept in the state for the audit trail.
    :param destinations: Profile Space conn id -> destination id the messages went to.
    :param column_types: the result's column types this run read (``None``: it read no row; the committed
        ones are kept), see :mod:`.column_types`.
    :param rows_behind_watermark: incremental mode: the model's rows behind the new watermark
        (:mod:`.late_rows`).
    :return: the committed state (its ``generation`` filled in).
    :raises StateError: another run committed since this one read ``HEAD.json``.
    """
    snapshot_file, records = detector.snapshot_to_commit(workdir, watermark)
    new = SyncState(
        generation=0,
        snapshot=None,
        sync_mode=config.sync_mode,
        watermark=to_xcom(watermark) if config.mode.uses_cursor else None,
        fingerprint=fingerprint,
        records=records,
        run_id=run_id,
        try_number=try_number,
        extra={
            "primary_key": config.primary_key,
            "cursor_column": config.cursor_column,
            "messages": messages,
            "destinations": destinations,
            "change_detection": config.change_detection,
            "column_types": column_types
            if column_types is not None
            else (head.extra.get("column_types") if head is not None else None),
            "rows_behind_watermark": rows_behind_watermark,
        },
    )
    state = location.commit(head, new, snapshot_file)
    detector.after_commit()
    return state
