"""Which change-detection engine a run uses (``change_detection``), and the check that it fits the state."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_segment_profiles.pipeline.detection import carry_over
from airflow_provider_segment_profiles.pipeline.detection.carry_over import committed_engine
from airflow_provider_segment_profiles.state.guards import state_error

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

    from airflow_provider_segment_profiles.actions import CompiledMapping
    from airflow_provider_segment_profiles.pipeline.config import SyncConfig
    from airflow_provider_segment_profiles.pipeline.detection.base import ChangeDetector
    from airflow_provider_segment_profiles.pipeline.outcomes import OutcomeSink
    from airflow_provider_segment_profiles.state.location import StateLocation, SyncState

#: The ``change_detection`` values.
ENGINES = ("worker", "warehouse")


def make_detector(
    config: SyncConfig,
    *,
    previous: SyncState | None,
    head: SyncState | None,
    location: StateLocation,
    workdir: Path,
    outcomes: OutcomeSink,
    warehouse: DbApiHook,
    mappings: Sequence[CompiledMapping],
    journal_tag: str | None,
    log: Any,
    refresh_from: SyncState | None = None,
) -> ChangeDetector:
    """
    The run's change detector for ``config.change_detection``.

    :param outcomes: where either engine reports its outcomes (:mod:`..outcomes`).
    :param refresh_from: on a full refresh, the committed state whose records are still deleted when the
        model no longer has them (see :mod:`.carry_over`); the other engine's state is read for the new one.
    :raises StateError: the committed state was built by the other engine (switching needs a full refresh,
        which carries the old engine's records over; the message says what it cannot carry).
    :raises ConfigurationError: the warehouse engine cannot work with this warehouse.
    """
    engine = config.change_detection
    if previous is not None and committed_engine(previous) != engine:
        raise state_error(_switch_problem(previous, engine, location, config.state_schema, warehouse, log))
    carried = None
    if refresh_from is not None and committed_engine(refresh_from) != engine:
        carried = _carried_keys(refresh_from, engine, location, workdir, warehouse, config.state_schema, log)
        refresh_from = None
    if engine == "warehouse":
        from airflow_provider_segment_profiles.pipeline.detection.warehouse import WarehouseChangeDetector

        return WarehouseChangeDetector(
            mode=config.mode,
            hook=warehouse,
            location=location,
            previous=previous,
            head=head,
            outcomes=outcomes,
            primary_key=config.primary_key,
            mappings=mappings,
            state_schema=config.state_schema,
            full_refresh=config.full_refresh,
            dry_run=config.dry_run,
            journal_tag=journal_tag,
            log=log,
            refresh_from=refresh_from,
            carried=carried,
        )
    from airflow_provider_segment_profiles.pipeline.detection.worker import WorkerChangeDetector

    return WorkerChangeDetector(
        mode=config.mode,
        location=location,
        previous=previous,
        head=head,
        workdir=workdir,
        outcomes=outcomes,
        primary_key=config.primary_key,
        journal_tag=journal_tag,
        log=log,
        refresh_from=refresh_from,
        mappings=mappings,
        carried=carried,
    )


def _carried_keys(
    old: SyncState,
    engine: str,
    location: StateLocation,
    workdir: Path,
    warehouse: DbApiHook,
    state_schema: str,
    log: Any,
) -> Iterable[tuple[str, int]] | None:
    """
    On a full refresh that switches engines: the live records of the other engine's state, for the new
    engine to delete those the model no longer has; ``None`` (and the loss logged) when it cannot be read.
    """
    place = carry_over.old_state_place(old, location)
    try:
        if committed_engine(old) == "worker":
            keys: Iterable[tuple[str, int]] = carry_over.snapshot_keys(old, location, workdir)
        else:
            table, keys = carry_over.warehouse_keys(old, warehouse, location, state_schema)
            place = carry_over.old_state_place(old, location, table)
    except Exception as err:
        carry_over.warn_unreadable(log, old, place, f"{type(err).__name__}: {err}")
        return None
    log.info(
        "full_refresh switches change_detection from %r to %r: the records of %s that the model no longer "
        "has are deleted in Segment",
        committed_engine(old),
        engine,
        place,
    )
    return keys


def _switch_problem(
    previous: SyncState,
    engine: str,
    location: StateLocation,
    state_schema: str,
    warehouse: DbApiHook,
    log: Any,
) -> str:
    """The StateError text of an engine switch: what a full refresh carries over, and what it cannot."""
    old = committed_engine(previous)
    place = carry_over.old_state_place(previous, location)
    problem = None
    try:
        if old == "worker":
            if not previous.snapshot or not (location.snapshots / previous.snapshot).exists():
                problem = "the snapshot file is missing"
        else:
            table, _ = carry_over.warehouse_keys(previous, warehouse, location, state_schema, probe=True)
            place = carry_over.old_state_place(previous, location, table)
    except Exception as err:  # the message must be given whatever the probe meets
        problem = f"{type(err).__name__}: {err}"
    text = (
        f"The committed state (generation {previous.generation}, {previous.records:,} records) was built with "
        f"change_detection={old!r}, but this run uses {engine!r}: one engine cannot continue from the other's "
        "state. Run once with full_refresh=True to switch: every record is sent again, and the records of "
        f"{place} that the model no longer has are deleted in Segment (docs/change-detection.md). Keep that "
        "state until the switch has run: if it cannot be read then, those records are NOT deleted in Segment "
        "(the run's log says so)."
    )
    if problem is not None:
        text += " " + carry_over.loss_warning(previous, place, problem)
        log.warning("%s", carry_over.loss_warning(previous, place, problem))
    return text
