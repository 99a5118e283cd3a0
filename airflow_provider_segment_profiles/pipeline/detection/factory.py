"""Which change-detection engine a run uses (``change_detection``), and the check that it fits the state."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_segment_profiles.state.guards import state_error

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

    from airflow_provider_segment_profiles.actions import CompiledMapping
    from airflow_provider_segment_profiles.pipeline.accounting import SyncAccounting
    from airflow_provider_segment_profiles.pipeline.config import SyncConfig
    from airflow_provider_segment_profiles.pipeline.detection.base import ChangeDetector
    from airflow_provider_segment_profiles.state.location import StateLocation, SyncState

#: The ``change_detection`` values.
ENGINES = ("worker", "warehouse")


def committed_engine(state: SyncState) -> str:
    """The engine ``state`` was committed with (state written before the choice existed: ``worker``)."""
    return state.extra.get("change_detection") or "worker"


def make_detector(
    config: SyncConfig,
    *,
    previous: SyncState | None,
    head: SyncState | None,
    location: StateLocation,
    workdir: Path,
    accounting: SyncAccounting,
    warehouse: DbApiHook,
    mappings: Sequence[CompiledMapping],
    journal_tag: str | None,
    log: Any,
    refresh_from: SyncState | None = None,
) -> ChangeDetector:
    """
    The run's change detector for ``config.change_detection``.

    :param refresh_from: on a full refresh, the committed state the worker engine still finds deletions
        against (see :class:`~.worker.WorkerChangeDetector`).
    :raises StateError: the committed state was built by the other engine (switching needs a full refresh,
        or the records the old engine knew would never be deleted).
    :raises ConfigurationError: the warehouse engine cannot work with this warehouse.
    """
    engine = config.change_detection
    if previous is not None and committed_engine(previous) != engine:
        raise state_error(
            f"The committed state (generation {previous.generation}) was built with change_detection="
            f"{committed_engine(previous)!r}, but this run uses {engine!r}: one engine cannot continue from "
            "the other's state. Run once with full_refresh=True to switch (every record is sent again; "
            "docs/change-detection.md)."
        )
    if engine == "warehouse":
        from airflow_provider_segment_profiles.pipeline.detection.warehouse import WarehouseChangeDetector

        return WarehouseChangeDetector(
            mode=config.mode,
            hook=warehouse,
            location=location,
            previous=previous,
            head=head,
            accounting=accounting,
            primary_key=config.primary_key,
            mappings=mappings,
            state_schema=config.state_schema,
            full_refresh=config.full_refresh,
            dry_run=config.dry_run,
            journal_tag=journal_tag,
            log=log,
        )
    from airflow_provider_segment_profiles.pipeline.detection.worker import WorkerChangeDetector

    return WorkerChangeDetector(
        mode=config.mode,
        location=location,
        previous=previous,
        head=head,
        workdir=workdir,
        accounting=accounting,
        primary_key=config.primary_key,
        journal_tag=journal_tag,
        log=log,
        refresh_from=refresh_from,
        mappings=mappings,
    )
