"""
What a full refresh still knows of the old state: the records the last committed state holds, so that those
the model no longer has are deleted in Segment although every record read counts as added.

A full refresh is the recovery every :class:`~airflow_provider_segment_profiles.exceptions.StateError`
points to, and the only way to switch ``change_detection``; forgetting the old state's records there would
leave every record deleted from the model meanwhile in Segment for good. Each engine reads its own old state
itself (the worker engine its snapshot, the warehouse engine its state table); when the old state was
committed by the other engine, this module reads it for the new one as ``(unique identifier, version)``
pairs of its live records, which the new engine takes as unconfirmed adds (still in the model: added
again under their version; gone: deleted, under the next version). When the old state cannot be read, the
run goes on and the log says what is lost (:func:`warn_unreadable`).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

    from airflow_provider_segment_profiles.state.location import StateLocation, SyncState

#: Rows fetched per round trip when reading the old warehouse state.
_FETCH = 5000


def committed_engine(state: SyncState) -> str:
    """The engine ``state`` was committed with (state written before the choice existed: ``worker``)."""
    return state.extra.get("change_detection") or "worker"


def old_state_place(state: SyncState, location: StateLocation, state_table: str | None = None) -> str:
    """
    Where ``state``'s records are kept, for messages: its snapshot file under ``state_path`` (worker engine)
    or its state table (warehouse engine).

    :param state_table: the qualified state table name, when known.
    """
    if committed_engine(state) == "warehouse":
        return f"the warehouse state table {state_table or '(state_schema, sp_...)'}"
    return f"the snapshot {location.snapshots / (state.snapshot or '(none)')} under state_path"


def loss_warning(state: SyncState, place: str, reason: str) -> str:
    """
    What a full refresh loses when it cannot read the old state, and how to avoid it (the StateError of an
    engine switch says it in advance, the run's log when it happens).

    :param state: the old committed state.
    :param place: where it is kept (:func:`old_state_place`).
    :param reason: why it cannot be read.
    """
    return (
        f"full_refresh: the old state (generation {state.generation}, {state.records:,} records, "
        f"change_detection={committed_engine(state)!r}) cannot be read from {place} ({reason}). Every record "
        "the model has is sent as added, but those of the old state's records that the model no longer has "
        "cannot be found: they are NOT deleted in Segment. To avoid it, restore the old state and run again; "
        "otherwise delete those profiles in Segment yourself."
    )


def warn_unreadable(log: Any, state: SyncState, place: str, reason: str) -> None:
    """Log :func:`loss_warning`."""
    log.warning("%s", loss_warning(state, place, reason))


def snapshot_keys(state: SyncState, location: StateLocation, workdir: Path) -> Iterator[tuple[str, int]]:
    """
    ``(unique identifier, version)`` of every record of a worker-engine snapshot (unconfirmed adds included),
    read from a local copy.

    :raises StateError: the snapshot named by ``HEAD.json`` cannot be read (before the first pair).
    """
    folder = workdir / "carried"
    folder.mkdir(exist_ok=True)
    local = location.download_snapshot(state, folder)
    if local is None:
        return iter(())
    return _sqlite_keys(local)


def _sqlite_keys(path: Path) -> Iterator[tuple[str, int]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cursor = db.execute("SELECT pk, coalesce(version, 1) FROM snapshot")
        while rows := cursor.fetchmany(_FETCH):
            yield from rows
    finally:
        db.close()


def warehouse_keys(
    state: SyncState, hook: DbApiHook, location: StateLocation, state_schema: str, *, probe: bool = False
) -> tuple[str, list[tuple[str, int]]]:
    """
    The live records of a warehouse-engine state table, checked to be the generation ``state`` committed
    (or one ahead: a try that committed the table but not ``HEAD.json``).

    :param probe: only check that the table can be read (the list is then empty).
    :return: ``(qualified table name, [(unique identifier, version), ...])``.
    :raises LookupError: the table is absent or at another generation (the message says which).
    :raises Exception: whatever the driver raises reading it.
    """
    from airflow_provider_segment_profiles.pipeline.detection.warehouse.dialects import dialect_for
    from airflow_provider_segment_profiles.pipeline.detection.warehouse.engine import state_table_name

    sync_id, name = state_table_name(location)
    conn = hook.get_conn()
    try:
        dialect = dialect_for(conn)
        table, meta = dialect.table(state_schema, name), dialect.table(state_schema, "syncs")
        cursor = conn.cursor()
        exists = dialect.table_exists(cursor, state_schema, name)
        generation = 0
        if exists and dialect.table_exists(cursor, state_schema, "syncs"):
            cursor.execute(f"SELECT generation FROM {meta} WHERE sync_id = {dialect.ph}", (sync_id,))
            row = cursor.fetchone()
            generation = int(row[0]) if row is not None else 0
        problem = warehouse_state_fits(state, exists, generation)
        if problem is not None:
            raise LookupError(f"{table}: {problem}")
        keys: list[tuple[str, int]] = []
        if not probe:
            cursor.execute(f"SELECT pk, coalesce(version, 1) FROM {table} WHERE deleted_at IS NULL")
            while rows := cursor.fetchmany(_FETCH):
                keys.extend((str(pk), int(version)) for pk, version in rows)
        cursor.close()
        return table, keys
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def warehouse_state_fits(state: SyncState | None, exists: bool, generation: int) -> str | None:
    """
    Why the warehouse engine's own state table cannot serve a full refresh of ``state``, or ``None`` when
    it can.

    :param state: the committed state the refresh starts from (``None``: nothing to carry).
    :param exists: whether the state table exists.
    :param generation: the generation its metadata row holds.
    """
    if state is None:
        return None
    if not exists:
        return "the table does not exist (dropped, or another warehouse or state_schema)"
    if generation not in (state.generation, state.generation + 1):
        return f"it is at generation {generation}, HEAD.json at {state.generation}: written by different runs"
    return None


__all__ = [
    "committed_engine",
    "loss_warning",
    "old_state_place",
    "snapshot_keys",
    "warehouse_keys",
    "warehouse_state_fits",
    "warn_unreadable",
]
