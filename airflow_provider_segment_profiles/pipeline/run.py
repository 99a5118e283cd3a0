"""
One sync run, stage after stage::

    source -> change detection -> message building -> delivery -> settling -> commit

:class:`SyncRun` owns what lives only as long as a run (its work folder, the report file, the snapshot
store, the model's cursor, the cancel event); the operator creates one per ``execute`` and cancels it from
``on_kill``. See ``docs/architecture.md``.
"""

from __future__ import annotations

import contextlib
import gc
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from airflow_provider_segment_profiles.actions import CompiledMapping
from airflow_provider_segment_profiles.delivery.dispatcher import Dispatcher
from airflow_provider_segment_profiles.delivery.rate_limit import TokenBucket
from airflow_provider_segment_profiles.exceptions import ModelQueryError, SyncCancelled
from airflow_provider_segment_profiles.pipeline import column_types, late_rows
from airflow_provider_segment_profiles.pipeline.accounting import SyncAccounting
from airflow_provider_segment_profiles.pipeline.commit import commit_state
from airflow_provider_segment_profiles.pipeline.detection.factory import make_detector
from airflow_provider_segment_profiles.pipeline.fanout import MessageFanout
from airflow_provider_segment_profiles.pipeline.held_deletes import fingerprint
from airflow_provider_segment_profiles.pipeline.outcomes import OutcomeSink, OutcomeSinks
from airflow_provider_segment_profiles.pipeline.reader import single_statement
from airflow_provider_segment_profiles.pipeline.records import ChangeKind
from airflow_provider_segment_profiles.pipeline.reports import upload
from airflow_provider_segment_profiles.pipeline.settle import Progress, Settler
from airflow_provider_segment_profiles.pipeline.source import RecordSource
from airflow_provider_segment_profiles.state.watermark import from_xcom, sort_key

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

    from airflow_provider_segment_profiles.hooks.segment_profiles import SegmentProfilesHook
    from airflow_provider_segment_profiles.pipeline.config import SyncConfig
    from airflow_provider_segment_profiles.pipeline.detection.base import ChangeDetector
    from airflow_provider_segment_profiles.pipeline.sync_log import SyncLog
    from airflow_provider_segment_profiles.pipeline.verify import VerificationSample
    from airflow_provider_segment_profiles.state.location import StateLocation, SyncState


@contextlib.contextmanager
def _long_lived_objects_frozen():
    """
    Keep the objects that exist before the run (Airflow's, about 160,000) out of the garbage collector's
    full collections while it runs (``gc.freeze``, https://docs.python.org/3/library/gc.html#gc.freeze).

    The typed records of the per-record stages are tuple subclasses, which CPython never untracks, so
    every chunk pushes thousands of them into the oldest generation; without this each full collection
    that triggers re-scans all of Airflow's objects: 0.5 s of a 2.4 s run of 200,000 unchanged records
    (``docs/benchmarks.md``). Objects frozen by someone else stay frozen.
    """
    already_frozen = gc.get_freeze_count() > 0
    gc.freeze()
    try:
        yield
    finally:
        if not already_frozen:
            gc.unfreeze()


class DeletesHeld(NamedTuple):
    """
    The delete guard's finding: ``would_delete`` of the ``committed`` records were missing from the model,
    more than ``limit`` (``max_deleted_fraction``) allows.

    :param sample: up to :data:`~.held_deletes.SAMPLE_SIZE` of the held records' unique identifiers.
    :param digest: fingerprint of the whole set of held identifiers (:func:`~.held_deletes.fingerprint`),
        what an approval (``on_mass_delete="ask"``) is for.
    :param approval_mismatch: an approval was given, but for another set of records than this run found
        missing (the model changed after the question was asked).
    """

    would_delete: int
    committed: int
    limit: float
    sample: tuple[str, ...] = ()
    digest: str = ""
    approval_mismatch: bool = False


class SyncResult(NamedTuple):
    """
    :param summary: the run summary (keys in ``docs/operator.md``).
    :param state: the committed state, or ``None`` for a dry run.
    """

    summary: dict[str, Any]
    state: SyncState | None


class SyncRun:
    """
    Runs one sync.

    :param config: the rendered settings.
    :param mappings: the compiled mappings.
    :param warehouse: the model's common-sql hook.
    :param segment_hooks: Profile Space conn id -> hook, for every conn id of ``space_conn_ids``.
    :param space_conn_ids: mapping name -> Profile Space conn id it sends to.
    :param destinations: Profile Space conn id -> destination id (empty for a dry run).
    :param location: where the sync's state lives.
    :param head: the committed state (checked by :func:`~..state.guards.load_head`), or ``None``.
    :param run_id: the DAG run's id; ``try_number`` the task instance's try.
    :param run_tag: a safe path component naming this try (reports, journal files).
    :param log: the task's logger.
    :param sync_log: a :class:`~.sync_log.SyncLog` collecting every message outcome, or ``None``; the
        caller writes it after the run.
    :param verification_sample: a :class:`~.verify.VerificationSample` that picks delivered records for
        ``verify_sample`` while the run starts, or ``None``; the caller verifies after the run.
    """

    def __init__(
        self,
        config: SyncConfig,
        mappings: Sequence[CompiledMapping],
        *,
        warehouse: DbApiHook,
        segment_hooks: dict[str, SegmentProfilesHook],
        space_conn_ids: dict[str, str],
        destinations: dict[str, str],
        location: StateLocation,
        head: SyncState | None,
        run_id: str,
        try_number: int,
        run_tag: str,
        log: Any,
        sync_log: SyncLog | None = None,
        verification_sample: VerificationSample | None = None,
    ) -> None:
        self.config = config
        self.verification_sample = verification_sample
        self.mappings = list(mappings)
        self.warehouse = warehouse
        self.segment_hooks = segment_hooks
        self.space_conn_ids = space_conn_ids
        self.destinations = destinations
        self.location = location
        self.head = head
        self.run_id = run_id
        self.try_number = try_number
        self.run_tag = run_tag
        self.log = log
        self.sync_log = sync_log
        self._cancelled = threading.Event()
        self._source: RecordSource | None = None
        self._used_names: list[str] = []
        #: The result types of this run (``None`` until a chunk was read), for the state.
        self.column_types: dict[str, str] | None = None
        #: Incremental mode: rows behind the new watermark, committed for the next run (see late_rows).
        self.rows_behind: int | None = None
        self.arrived_behind: int | None = None
        #: Set when the delete guard held this run's deletes.
        self.deletes_held: DeletesHeld | None = None

    def execute(self) -> SyncResult:
        """
        Run every stage and commit.

        :raises PermanentSyncError: configuration, model query or state problems (see :mod:`..exceptions`).
        :raises TransientSyncError: the journal could not be written, totals did not reconcile, or the run
            was cancelled; nothing was committed.
        """
        config, mode = self.config, self.config.mode
        started = time.monotonic()
        previous = mode.resumes_from(self.head, config.full_refresh)
        with contextlib.ExitStack() as stack:
            stack.enter_context(_long_lived_objects_frozen())
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="segment_profiles_")))
            report_file = stack.enter_context(open(workdir / "report.ndjson", "w+b"))
            dry_run_file = (
                stack.enter_context(open(workdir / "dry_run.ndjson", "w+b")) if config.dry_run else None
            )
            accounting = SyncAccounting([m.name for m in self.mappings], report=report_file)
            # Every stage reports its outcomes here: to the accounting, and to the sync log when kept.
            outcomes: OutcomeSink = (
                accounting if self.sync_log is None else OutcomeSinks([accounting, self.sync_log])
            )
            detector = make_detector(
                config,
                location=self.location,
                previous=previous,
                head=self.head,
                workdir=workdir,
                outcomes=outcomes,
                warehouse=self.warehouse,
                mappings=self.mappings,
                journal_tag=None if config.dry_run else self.run_tag,
                log=self.log,
                refresh_from=self._refresh_from(),
            )
            stack.callback(detector.close)
            watermark = self._stream(detector, accounting, outcomes, previous, dry_run_file, started)
            accounting.reconcile()
            summary = accounting.summary()
            fetched = detector.rows_fetched
            summary["rows_fetched"] = accounting.rows_read if fetched is None else fetched
            if mode.uses_cursor:
                summary["behind_watermark"] = self.arrived_behind
            state = None
            if not config.dry_run:
                state = commit_state(
                    config=config,
                    location=self.location,
                    head=self.head,
                    detector=detector,
                    workdir=workdir,
                    watermark=watermark,
                    fingerprint=config.fingerprint([m.fingerprint for m in self.mappings]),
                    messages=accounting.messages,
                    destinations=self.destinations,
                    run_id=self.run_id,
                    try_number=self.try_number,
                    column_types=self.column_types,
                    rows_behind_watermark=self.rows_behind,
                )
                summary["state_generation"] = state.generation
            summary["report_path"] = upload(
                report_file,
                config.report_path,
                self.location.reports / f"{self.run_tag}.ndjson",
                accounting.problems_reported,
            )
            summary["dry_run_path"] = None
            if dry_run_file is not None:
                default = self.location.root / "dry_runs" / f"{self.run_tag}.ndjson"
                summary["dry_run_path"] = upload(dry_run_file, config.dry_run_path, default, 1)
        held = self.deletes_held
        summary["deletes_held"] = (
            None
            if held is None
            else {
                "would_delete": held.would_delete,
                "committed_records": held.committed,
                "max_deleted_fraction": held.limit,
            }
        )
        summary.update(
            sync_mode=config.sync_mode,
            dry_run=config.dry_run,
            full_refresh=config.full_refresh,
            duration_s=round(time.monotonic() - started, 3),
            change_detection=config.change_detection,
        )
        return SyncResult(summary, state)

    def _stream(
        self,
        detector: ChangeDetector,
        accounting: SyncAccounting,
        outcomes: OutcomeSink,
        previous: SyncState | None,
        dry_run_file: IO[bytes] | None,
        started: float,
    ) -> Any:
        """
        Read, detect, build, deliver and settle every record, the stages reporting to ``outcomes``; return the
        watermark to commit.
        """
        config, mode = self.config, self.config.mode
        statement = single_statement(config.sql, self.warehouse)
        sql, parameters = mode.model_query(
            statement, config.parameters, previous, config.cursor_column, self.warehouse
        )
        sql, parameters = detector.query(sql, parameters)
        watermark_start = from_xcom(previous.watermark) if previous is not None and mode.uses_cursor else None
        behind = 0 if mode.uses_cursor and watermark_start is None else None
        if watermark_start is not None:
            behind = late_rows.count_behind(
                self.warehouse, statement, config.parameters, config.cursor_column, watermark_start, self.log
            )
            self.arrived_behind = late_rows.arrived_behind(previous, behind)
            if self.arrived_behind:
                late_rows.warn(self.log, self.arrived_behind, config.cursor_column, watermark_start)
        source = self._source = RecordSource(
            self.warehouse,
            sql,
            parameters,
            primary_key=config.primary_key,
            cursor_column=config.cursor_column if mode.uses_cursor else None,
            outcomes=outcomes,
            fetch_size=config.fetch_size,
            cursor_start=sort_key(watermark_start) if watermark_start is not None else None,
            connection=detector.source_connection(),
        )
        source.reader.model_sql = statement
        try:
            columns = source.open()
            fanout = self._bind(source, detector, columns, outcomes)
            accounting.updating_mappings = fanout.updating
            accounting.adding_mappings = fanout.adding
            limiter = TokenBucket(config.max_events_per_second) if config.max_events_per_second else None
            dispatcher = Dispatcher(
                self.segment_hooks,
                batch_size=config.batch_size,
                max_in_flight=config.max_requests_in_flight,
                rate_limiter=limiter,
                dry_run_sink=dry_run_file,
            )
            progress = Progress(self.log, config.progress_interval_s, started)
            settle = Settler(outcomes, detector, progress, self.raise_if_cancelled)
            sample = self.verification_sample
            if sample is not None:
                settle.observer = sample.settled
            sent_kinds = fanout.kinds_sent
            upserts_all_sent = {ChangeKind.ADDED, ChangeKind.UPDATED} <= sent_kinds
            try:
                for records in source.chunks():
                    self.raise_if_cancelled()
                    if self.column_types is None:
                        self._check_column_types(source, records, previous)
                    changes = detector.detect(records)
                    accounting.count_mapping_changes(changes)
                    if not upserts_all_sent:
                        changes = [c for c in changes if c.kind in sent_kinds or c.pending]
                    self.raise_if_cancelled()
                    detector.write_ahead(changes)
                    # Only while the verification sample collects does a chunk's add go through it.
                    add = (
                        sample.tap(dispatcher.add)
                        if sample is not None and sample.collecting
                        else dispatcher.add
                    )
                    fanout.send(changes, add, settle)
                    detector.mark_rejected(fanout.take_rejected())
                    settle(dispatcher.poll())
                    progress.maybe_log("reading", accounting.rows_read)
                self._guard_deletions(detector)
                for deleted in detector.deletions():
                    if ChangeKind.DELETED in sent_kinds:
                        self.raise_if_cancelled()
                        detector.write_ahead(deleted)
                        fanout.send(deleted, dispatcher.add, settle)
                    progress.maybe_log("deletes", accounting.rows_read)
                progress.maybe_log("sending", accounting.rows_read, force=True)
                self.raise_if_cancelled()
                settle(dispatcher.flush())
                self.raise_if_cancelled()
            finally:
                dispatcher.close()
                accounting.requests = dispatcher.requests
        finally:
            source.close()
            self._source = None
        watermark = detector.watermark(settle.failed_cursor_values)
        read_before = getattr(detector, "rows_read_before", None)
        if behind is not None and read_before is not None:
            self.rows_behind = behind + read_before(watermark)
        return watermark

    def _check_column_types(
        self, source: RecordSource, records: Sequence[Any], previous: SyncState | None
    ) -> None:
        """Keep the result's types and say so when a checksummed column's type changed (both engines)."""
        first_row = records[0].row if records else None
        self.column_types = column_types.result_types(source.reader.description, first_row)
        if previous is not None:
            changes = column_types.changed_types(
                previous.extra.get(column_types.STATE_KEY),
                self.column_types,
                self._used_names,
                self.config.primary_key,
            )
            column_types.log_changed_types(self.log, changes, self.config.primary_key)

    def _refresh_from(self) -> SyncState | None:
        """
        The committed state a full refresh still finds deletions against: only one of this mode and unique
        identifier (another identifier's keys would all look deleted).
        """
        head, config = self.head, self.config
        if not config.full_refresh or not config.mode.detects_deletions or head is None:
            return None
        if head.sync_mode != config.sync_mode or head.extra.get("primary_key") != config.primary_key:
            return None
        return head

    def _guard_deletions(self, detector: ChangeDetector) -> None:
        """
        Hold every delete when the run would delete more than ``max_deleted_fraction`` of the records the
        committed state holds (an emptied or broken model); the operator fails the task after the commit.
        """
        limit = self.config.max_deleted_fraction
        held, missing = detector.deletion_counts()
        if limit is None or not held or missing / held <= limit:
            return
        found = fingerprint(detector.deleted_keys())
        approved = self.config.approved_deletes
        if approved is not None and approved.matches(found):
            self.log.info(
                "Delete guard: sending the %s deletes approved by %s (the same records the question named)",
                f"{missing:,}",
                approved.approved_by or "a human",
            )
            return
        detector.hold_deletions()
        self.deletes_held = DeletesHeld(
            missing, held, limit, found.sample, found.digest, approval_mismatch=approved is not None
        )
        self.log.warning(
            "Delete guard: this run would delete %s of the %s records the committed state holds (%.1f%% > "
            "max_deleted_fraction %.1f%%; e.g. primary keys %s); no delete is sent and those records stay in "
            "state",
            f"{missing:,}",
            f"{held:,}",
            100 * missing / held,
            100 * limit,
            ", ".join(repr(key) for key in found.sample[:5]),
        )

    def _bind(
        self, source: RecordSource, detector: ChangeDetector, columns: list[str], outcomes: OutcomeSink
    ) -> MessageFanout:
        """Check the result's columns against the settings and mappings; bind builders and checksums."""
        problems = source.column_problems()
        for mapping in self.mappings:
            problems.extend(mapping.check_columns(columns))
        if problems:
            raise ModelQueryError(
                "The model's result does not fit the configuration (columns: "
                + ", ".join(columns)
                + "):\n- "
                + "\n- ".join(problems)
            )
        scopes = {conn_id: self._message_id_scope(conn_id) for conn_id in set(self.space_conn_ids.values())}
        builders = {m.name: m.bind(columns, scopes[self.space_conn_ids[m.name]]) for m in self.mappings}
        used = sorted(
            set(range(len(columns)))
            if any(m.uses_all_columns for m in self.mappings)
            else {columns.index(c) for m in self.mappings for c in m.columns}
        )
        detector.bind(columns, used, "|".join(m.fingerprint for m in self.mappings))
        self._used_names = [columns[i] for i in used]
        return MessageFanout(
            self.mappings,
            builders,
            self.space_conn_ids,
            self.config.mode,
            outcomes,
            message_ids=self.sync_log is not None,
        )

    def _message_id_scope(self, conn_id: str) -> bytes:
        """
        The destination's message-id scope (``actions/message_id.py``). A dry run does not need its
        connections; when one cannot be read its payloads carry unscoped ids (they are never sent).
        """
        hook = self.segment_hooks[conn_id]
        if not self.config.dry_run:
            return hook.message_id_scope
        try:
            return hook.message_id_scope
        except Exception as err:  # the dry run goes on: only the ids of its written payloads differ
            self.log.info(
                "Dry run: connection %r could not be read (%s); message ids in the payloads are not "
                "scoped to its destination",
                conn_id,
                type(err).__name__,
            )
            return b""

    def raise_if_cancelled(self) -> None:
        """:raises SyncCancelled: :meth:`cancel` was called."""
        if self._cancelled.is_set():
            raise SyncCancelled("The task was killed while syncing; no state was committed.")

    def cancel(self) -> None:
        """
        Stop the run from another thread (``on_kill``): no more rows are read or messages sent, the
        model's cursor and the HTTP sessions are closed, and nothing is committed.
        """
        self._cancelled.set()
        source = self._source
        if source is not None:
            source.close()
        for hook in self.segment_hooks.values():
            hook.close()
