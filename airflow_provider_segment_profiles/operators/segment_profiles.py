"""Operator that syncs a SQL model into Segment Profiles: Reverse ETL from any common-sql warehouse."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from airflow.sdk import BaseHook, BaseOperator

from airflow_provider_segment_profiles.actions import (
    CompiledMapping,
    MappingConfigError,
    RecordRejected,
    compile_mappings,
)
from airflow_provider_segment_profiles.delivery.dispatcher import DELIVERED, FAILED, Completion, Dispatcher
from airflow_provider_segment_profiles.delivery.limits import DEFAULT_MAX_IN_FLIGHT
from airflow_provider_segment_profiles.delivery.rate_limit import TokenBucket
from airflow_provider_segment_profiles.delivery.retry import RetryPolicy
from airflow_provider_segment_profiles.hooks.segment_profiles import SegmentProfilesHook
from airflow_provider_segment_profiles.sync.accounting import AccountingMismatch, SyncAccounting
from airflow_provider_segment_profiles.sync.checksum import Checksummer, checksum_hex, record_key
from airflow_provider_segment_profiles.sync.journal import SendJournal
from airflow_provider_segment_profiles.sync.reader import (
    ModelQueryError,
    ModelReader,
    single_statement,
    with_watermark_filter,
)
from airflow_provider_segment_profiles.sync.snapshot import Lookup, SnapshotStore, prepare_previous
from airflow_provider_segment_profiles.sync.state import (
    STATE_XCOM_KEY,
    StateError,
    StateLocation,
    SyncState,
    default_state_path,
    safe_component,
)
from airflow_provider_segment_profiles.sync.watermark import WatermarkError, from_xcom, sort_key, to_xcom

try:
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
except ImportError:  # Airflow 3.1
    from airflow.exceptions import AirflowException, AirflowFailException  # type: ignore[no-redef]

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook
    from airflow.sdk import Context

SYNC_MODES = ("diff", "incremental", "full")
#: Segment Engage ingests at most 1,000 events per second per Profile Space
#: (https://segment.com/docs/engage/product-limits/); the default leaves room for other sources.
DEFAULT_MAX_EVENTS_PER_SECOND = 800.0


class SegmentProfilesSyncOperator(BaseOperator):
    """
    Sync a SQL model into Segment Profiles: detect added, updated and deleted records and send each one
    through its mappings as Send Identify, Send Group, Send Subscriptions or Send Track calls.

    Every run streams the model's rows (``fetchmany``; a server-side cursor on PostgreSQL), classifies each
    record against the last committed state, builds and validates one message per selected mapping, sends
    them in batches through :class:`SegmentProfilesHook`, and commits state only with what was delivered.
    See ``docs/operator.md`` for the guide.

    :param conn_id: any common-sql (``DbApiHook``) connection: Postgres, Snowflake, BigQuery, SQLite, ...
    :param sql: the model: one SELECT, or a path to a ``.sql`` file relative to the DAG folder (templated).
    :param primary_key: the model's unique identifier column; compared as a string (``1`` and ``'1'`` are the
        same record).
    :param mappings: up to 50 mapping dicts (format in SPEC.md / ``docs/mappings.md``), templated.
    :param parameters: bind parameters for ``sql`` (sequence or mapping, templated).
    :param segment_conn_id: default ``segment_profiles`` connection for mappings without ``profile_space``.
    :param sync_mode: ``diff`` (default), ``incremental`` or ``full``.
    :param cursor_column: column whose growing values select new rows; required for ``incremental``.
    :param full_refresh: ignore saved state for this run (every record counts as added) and rebuild it.
    :param dry_run: build and validate everything and write the payloads to ``dry_run_path``; send nothing
        and keep state untouched.
    :param state_path: ``ObjectStoragePath`` URI under which state and reports are kept; default
        ``file://$AIRFLOW_HOME/segment_profiles_state`` (use S3/GCS/... when workers do not share a disk).
    :param state_conn_id: Airflow connection for the object store of ``state_path``, if it needs one.
    :param report_path: where the NDJSON report of rejected and failed messages goes (default: under
        ``state_path``).
    :param dry_run_path: where a dry run writes its NDJSON payloads (default: under ``state_path``).
    :param batch_size: most messages per ``/v1/batch`` request (1 to 2,500).
    :param fetch_size: rows per ``fetchmany``.
    :param max_requests_in_flight: HTTP requests sent concurrently (default 16: enough to hide round
        trips of 100 ms; memory is bounded by this many batches of at most 475,000 bytes).
    :param max_events_per_second: token-bucket limit over all requests, retries included, in events per
        second; ``None`` disables it. Default 800, under Segment's 1,000 events/s Engage inbound limit.
    :param max_rejected_fraction: fail the task (no retry) when more than this fraction of selected messages
        is rejected for bad data; state is committed first. Default 0.1.
    :param max_failed_fraction: fail the task (retryable) when more than this fraction of selected messages
        could not be delivered; state is committed first, so a retry sends only those. Default 0.0.
    :param request_retry_policy: :class:`RetryPolicy` or a dict of its fields, for requests to Segment
        (named apart from Airflow's own task-level ``retry_policy``).
    :param request_timeout: ``(connect, read)`` HTTP timeouts in seconds.
    :param progress_interval_s: seconds between progress lines in the task log.
    """

    template_fields: Sequence[str] = (
        "sql",
        "parameters",
        "mappings",
        "conn_id",
        "segment_conn_id",
        "primary_key",
        "cursor_column",
        "state_path",
        "report_path",
        "dry_run_path",
    )
    template_ext: Sequence[str] = (".sql",)
    template_fields_renderers = {"sql": "sql", "parameters": "json", "mappings": "json"}
    ui_color = "#52bd94"

    def __init__(
        self,
        *,
        conn_id: str,
        sql: str,
        primary_key: str,
        mappings: list[dict[str, Any]] | str,
        parameters: Sequence[Any] | Mapping[str, Any] | None = None,
        segment_conn_id: str = SegmentProfilesHook.default_conn_name,
        sync_mode: str = "diff",
        cursor_column: str | None = None,
        full_refresh: bool = False,
        dry_run: bool = False,
        state_path: str | None = None,
        state_conn_id: str | None = None,
        report_path: str | None = None,
        dry_run_path: str | None = None,
        batch_size: int = 500,
        fetch_size: int = 5000,
        max_requests_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_events_per_second: float | None = DEFAULT_MAX_EVENTS_PER_SECOND,
        max_rejected_fraction: float = 0.1,
        max_failed_fraction: float = 0.0,
        request_retry_policy: RetryPolicy | dict[str, float] | None = None,
        request_timeout: tuple[float, float] = (10.0, 30.0),
        progress_interval_s: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.conn_id = conn_id
        self.sql = sql
        self.primary_key = primary_key
        self.mappings = mappings
        self.parameters = parameters
        self.segment_conn_id = segment_conn_id
        self.sync_mode = sync_mode
        self.cursor_column = cursor_column
        self.full_refresh = full_refresh
        self.dry_run = dry_run
        self.state_path = state_path
        self.state_conn_id = state_conn_id
        self.report_path = report_path
        self.dry_run_path = dry_run_path
        self.batch_size = batch_size
        self.fetch_size = fetch_size
        self.max_requests_in_flight = max_requests_in_flight
        self.max_events_per_second = max_events_per_second
        self.max_rejected_fraction = max_rejected_fraction
        self.max_failed_fraction = max_failed_fraction
        self.request_retry_policy = RetryPolicy.coerce(request_retry_policy)
        self.request_timeout = tuple(request_timeout)
        self.progress_interval_s = progress_interval_s
        self._reader: ModelReader | None = None
        self._segment_hooks: dict[str, SegmentProfilesHook] = {}
        self._check_settings()
        if isinstance(mappings, list):
            # Fails DAG import with every problem listed; rendered mappings are checked again at run time.
            self._compile(mappings)

    # -- configuration -------------------------------------------------------------------------------
    def _check_settings(self) -> None:
        problems = []
        if self.sync_mode not in SYNC_MODES:
            problems.append(f"sync_mode {self.sync_mode!r} is not one of {', '.join(SYNC_MODES)}")
        if self.sync_mode == "incremental" and not self.cursor_column:
            problems.append("sync_mode 'incremental' needs cursor_column")
        if self.sync_mode != "incremental" and self.cursor_column:
            problems.append(f"cursor_column is only used by sync_mode 'incremental', not {self.sync_mode!r}")
        if not 1 <= self.batch_size <= 2500:
            problems.append("batch_size must be between 1 and 2,500 (Segment's batch limit)")
        if self.fetch_size < 1 or self.max_requests_in_flight < 1:
            problems.append("fetch_size and max_requests_in_flight must be >= 1")
        if self.max_events_per_second is not None and self.max_events_per_second <= 0:
            problems.append("max_events_per_second must be > 0 or None")
        for name in ("max_rejected_fraction", "max_failed_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be between 0 and 1")
        if problems:
            raise ValueError(f"Invalid SegmentProfilesSyncOperator {self.task_id!r}: " + "; ".join(problems))

    def _compile(self, mappings: Any) -> list[CompiledMapping]:
        if not isinstance(mappings, list):
            raise MappingConfigError(
                [f"mappings must be a list of mapping objects, got {type(mappings).__name__}"]
            )
        return compile_mappings(mappings, sync_mode=self.sync_mode, primary_key=self.primary_key)

    @cached_property
    def warehouse_hook(self) -> DbApiHook:
        """The common-sql hook of ``conn_id``."""
        from airflow.providers.common.sql.hooks.sql import DbApiHook

        hook = BaseHook.get_connection(self.conn_id).get_hook()
        if not isinstance(hook, DbApiHook):
            raise AirflowFailException(
                f"Connection {self.conn_id!r} has a {type(hook).__name__}, not a common-sql DbApiHook; "
                "conn_id must point at a SQL warehouse."
            )
        return hook

    def _segment_hook(self, conn_id: str) -> SegmentProfilesHook:
        hook = self._segment_hooks.get(conn_id)
        if hook is None:
            hook = SegmentProfilesHook(
                conn_id,
                timeout=self.request_timeout,
                retry_policy=self.request_retry_policy,
                pool_size=self.max_requests_in_flight,
            )
            self._segment_hooks[conn_id] = hook
        return hook

    # -- run -----------------------------------------------------------------------------------------
    def execute(self, context: Context) -> dict[str, Any]:
        started = time.monotonic()
        ti = context["ti"]
        # Connections are resolved afresh each run: an operator object can be executed again (dag.test).
        self._segment_hooks = {}
        self._killed = threading.Event()
        self.__dict__.pop("warehouse_hook", None)
        try:
            compiled = self._compile(self.mappings)
        except MappingConfigError as err:
            raise AirflowFailException(str(err)) from err
        spaces = {m.name: (m.profile_space or self.segment_conn_id) for m in compiled}
        if not self.dry_run:
            for space in sorted(set(spaces.values())):
                self._check_segment_connection(space)

        location = StateLocation(
            self.state_path or default_state_path(),
            ti.dag_id,
            ti.task_id,
            getattr(ti, "map_index", -1),
            self.state_conn_id,
        )
        if self.state_path is None:
            self._warn_if_distributed(location)
        head = self._load_head(ti, location)
        destinations = {}
        if not self.dry_run:
            destinations = {space: self._segment_hook(space).destination_id for space in set(spaces.values())}
            if head is not None and not self.full_refresh and self.sync_mode != "full":
                self._check_destinations(head, destinations)
        fingerprint = self._fingerprint(compiled)

        run_tag = f"{safe_component(context.get('run_id') or ti.run_id)}-try{ti.try_number}"
        try:
            with contextlib.ExitStack() as stack:
                workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="segment_profiles_")))
                stack.callback(self._close_connections)
                report_file = stack.enter_context(open(workdir / "report.ndjson", "w+b"))
                dry_run_file = (
                    stack.enter_context(open(workdir / "dry_run.ndjson", "w+b")) if self.dry_run else None
                )
                previous = None
                if head is not None and not self.full_refresh and self.sync_mode != "full":
                    previous = location.download_snapshot(head, workdir)
                journal, journal_files, uncommitted = None, [], []
                if self.sync_mode == "diff":
                    journal = SendJournal(location.journal, head.generation if head else 0, run_tag)
                    journal_files, uncommitted = journal.uncommitted()
                    if uncommitted:
                        self.log.warning(
                            "Tries that did not commit left %d journal files of records they may have sent; "
                            "those records' current values (or deletes) are sent again",
                            len(uncommitted),
                        )
                previous = prepare_previous(previous, workdir, SendJournal.records(uncommitted))
                store = SnapshotStore(workdir, previous)
                stack.callback(store.close)
                accounting = SyncAccounting([m.name for m in compiled], report=report_file)
                watermark_value = self._stream(
                    compiled,
                    spaces,
                    head,
                    store,
                    accounting,
                    dry_run_file,
                    None if self.dry_run else journal,
                    started,
                )
                accounting.reconcile()
                summary = accounting.summary()
                if not self.dry_run:
                    state = self._commit(
                        location,
                        head,
                        store,
                        workdir,
                        watermark_value,
                        fingerprint,
                        accounting,
                        ti,
                        destinations,
                    )
                    if journal is not None:
                        journal.discard(journal_files)
                    ti.xcom_push(key=STATE_XCOM_KEY, value=state.to_dict())
                    summary["state_generation"] = state.generation
                summary["report_path"] = self._upload(
                    report_file,
                    self.report_path,
                    location.reports / f"{run_tag}.ndjson",
                    accounting.problems_reported,
                )
                summary["dry_run_path"] = None
                if dry_run_file is not None:
                    default = location.root / "dry_runs" / f"{run_tag}.ndjson"
                    summary["dry_run_path"] = self._upload(dry_run_file, self.dry_run_path, default, 1)
        except (MappingConfigError, ModelQueryError, WatermarkError, StateError) as err:
            raise AirflowFailException(str(err)) from err
        except AccountingMismatch as err:
            raise AirflowException(str(err)) from err

        summary.update(
            sync_mode=self.sync_mode,
            dry_run=self.dry_run,
            full_refresh=self.full_refresh,
            duration_s=round(time.monotonic() - started, 3),
        )
        self._log_summary(summary)
        if not self.dry_run:
            # A run that fails its thresholds still committed what was delivered; keep its summary visible.
            try:
                self._enforce_thresholds(summary, accounting)
            except AirflowException:
                ti.xcom_push(key="return_value", value=summary)
                raise
        return summary

    def _stream(
        self,
        compiled: list[CompiledMapping],
        spaces: dict[str, str],
        head: SyncState | None,
        store: SnapshotStore,
        accounting: SyncAccounting,
        dry_run_file: IO[bytes] | None,
        journal: SendJournal | None,
        started: float,
    ) -> Any:
        """
        Read, classify, build and send every record; return the incremental watermark to commit. Each
        chunk's records are written to ``journal`` (when given) before their messages are sent.
        """
        db_hook = self.warehouse_hook
        statement = single_statement(self.sql, db_hook)
        sql, parameters = statement, self.parameters
        old_watermark = None
        if self.sync_mode == "incremental" and head is not None and not self.full_refresh:
            old_watermark = from_xcom(head.watermark)
            if old_watermark is not None:
                sql, parameters = with_watermark_filter(
                    statement, self.cursor_column, old_watermark, self.parameters, db_hook
                )
        reader = self._reader = ModelReader(db_hook, sql, parameters, self.fetch_size)
        columns = reader.open()
        binders = self._bind(compiled, columns)
        pk_index = columns.index(self.primary_key)
        cursor_index = columns.index(self.cursor_column) if self.sync_mode == "incremental" else None
        used = sorted(
            set(range(len(columns)))
            if any(m.uses_all_columns for m in compiled)
            else {columns.index(c) for m in compiled for c in m.columns}
        )
        checksummer = Checksummer("|".join(m.fingerprint for m in compiled), used)

        limiter = TokenBucket(self.max_events_per_second) if self.max_events_per_second else None
        hooks = {space: self._segment_hook(space) for space in set(spaces.values())}
        dispatcher = Dispatcher(
            hooks,
            batch_size=self.batch_size,
            max_in_flight=self.max_requests_in_flight,
            rate_limiter=limiter,
            dry_run_sink=dry_run_file,
        )
        progress = _Progress(self.log, self.progress_interval_s, started)
        failed_cursor_values: list[Any] = []
        max_cursor = old_watermark
        max_cursor_key = sort_key(old_watermark) if old_watermark is not None else None
        cursor_kind = _cursor_kind(max_cursor_key) if max_cursor_key is not None else None
        selectors = [(m, binders[m.name], spaces[m.name], self._selector(m)) for m in compiled]
        # Change kinds some mapping sends; records of other kinds need no message and no journal entry.
        sent_changes = {c for c in ("added", "updated") if any(sel(c) for *_, sel in selectors)}
        add = dispatcher.add
        deleted_mappings = [(m, binders[m.name], spaces[m.name]) for m in compiled if m.trigger == "deleted"]

        def settle(completions: list[Completion]) -> None:
            self._raise_if_killed()
            failed_pks: list[str] = []
            failed_deletes: list[str] = []
            for done in completions:
                pk, mapping_name, change, cursor_value = done.ref
                accounting.message(mapping_name, done.outcome, pk, done.reason)
                if done.outcome == FAILED:
                    (failed_deletes if change == "deleted" else failed_pks).append(pk)
                    if cursor_value is not None:
                        failed_cursor_values.append(cursor_value)
                elif done.outcome == DELIVERED:
                    progress.sent += 1
            if failed_pks:
                store.mark_failed(failed_pks)
            if failed_deletes:
                store.mark_delete_failed(failed_deletes)

        try:
            for rows in reader.chunks():
                self._raise_if_killed()
                accounting.rows_read += len(rows)
                batch: list[tuple[str, int, Any]] = []
                accepted: list[tuple[Sequence[Any], str, int, Any]] = []
                seen_in_chunk: set[str] = set()
                for position, row in enumerate(rows):
                    pk = record_key(row[pk_index])
                    if pk is None:
                        accounting.reject_record(
                            None,
                            f"the unique identifier {self.primary_key!r} is NULL "
                            f"(row {accounting.rows_read - len(rows) + position + 1} of the result)",
                            self.primary_key,
                        )
                        continue
                    if pk in seen_in_chunk:
                        accounting.reject_record(
                            pk, _duplicate_reason(self.primary_key, pk), self.primary_key
                        )
                        continue
                    cursor_value = None
                    cursor_key = None
                    if cursor_index is not None:
                        cursor_value = row[cursor_index]
                        try:
                            cursor_key = sort_key(cursor_value)
                        except WatermarkError as err:
                            accounting.reject_record(
                                pk, f"cursor column {self.cursor_column!r}: {err}", self.cursor_column
                            )
                            continue
                        kind = _cursor_kind(cursor_key)
                        if cursor_kind is None:
                            cursor_kind = kind
                        elif kind != cursor_kind:
                            accounting.reject_record(
                                pk,
                                f"cursor column {self.cursor_column!r}: {cursor_value!r} is {kind} but the "
                                f"column's other values are {cursor_kind}; they cannot be ordered together",
                                self.cursor_column,
                            )
                            continue
                    seen_in_chunk.add(pk)
                    checksum = checksummer(row)
                    batch.append((pk, checksum, cursor_key))
                    accepted.append((row, pk, checksum, cursor_value))
                changed: list[tuple[Sequence[Any], str, int, Any, str, int]] = []
                for (row, pk, checksum, cursor_value), lookup in zip(
                    accepted, store.classify(batch), strict=True
                ):
                    if lookup is None:
                        accounting.reject_record(
                            pk, _duplicate_reason(self.primary_key, pk), self.primary_key
                        )
                        continue
                    change, version = self._change(lookup, checksum)
                    accounting.records[change] += 1
                    if cursor_value is not None:
                        key = sort_key(cursor_value)
                        if max_cursor_key is None or key > max_cursor_key:
                            max_cursor, max_cursor_key = cursor_value, key
                    if change in sent_changes:
                        changed.append((row, pk, checksum, cursor_value, change, version))
                self._write_ahead(journal, [(pk, version) for _, pk, _, _, _, version in changed])
                for row, pk, checksum, cursor_value, change, version in changed:
                    id_checksum = self._id_checksum(checksum_hex(checksum), version)
                    for mapping, binder, space, selects in selectors:
                        if not selects(change):
                            continue
                        accounting.mappings[mapping.name].selected += 1
                        try:
                            built = binder.build(row, primary_key=pk, checksum=id_checksum)
                        except RecordRejected as rejection:
                            accounting.message(
                                mapping.name, "rejected", pk, rejection.reason, rejection.field
                            )
                            continue
                        if built.warnings:
                            accounting.warn(mapping.name, pk, built.warnings)
                        completions = add(space, built.encoded, (pk, mapping.name, change, cursor_value))
                        if completions:  # usually empty: most messages only join a batch
                            settle(completions)
                settle(dispatcher.poll())
                progress.maybe_log("reading", accounting.rows_read)

            if self.sync_mode == "diff":
                for deleted in store.deleted():
                    accounting.records["deleted"] += len(deleted)
                    if deleted_mappings:
                        self._write_ahead(journal, [(pk, version) for pk, _, version in deleted])
                    for pk, previous_checksum, version in deleted:
                        id_checksum = _deleted_checksum(previous_checksum, version)
                        for mapping, binder, space in deleted_mappings:
                            accounting.mappings[mapping.name].selected += 1
                            try:
                                built = binder.build_deleted(pk, checksum=id_checksum)
                            except RecordRejected as rejection:
                                accounting.message(
                                    mapping.name, "rejected", pk, rejection.reason, rejection.field
                                )
                                continue
                            completions = add(space, built.encoded, (pk, mapping.name, "deleted", None))
                            if completions:
                                settle(completions)
                    progress.maybe_log("deletes", accounting.rows_read)
            progress.maybe_log("sending", accounting.rows_read, force=True)
            self._raise_if_killed()
            settle(dispatcher.flush())
            self._raise_if_killed()
        finally:
            dispatcher.close()
            reader.close()
            self._reader = None
        accounting.requests = dispatcher.requests
        if failed_cursor_values:
            return min(failed_cursor_values, key=sort_key)
        return max_cursor

    def _write_ahead(self, journal: SendJournal | None, records: list[tuple[str, int]]) -> None:
        """Before a chunk's messages are sent, write ``(pk, version)`` of its records to the journal."""
        self._raise_if_killed()
        if journal is not None:
            journal.record(records)

    def _change(self, lookup: Lookup, checksum: int) -> tuple[str, int]:
        """``(added | updated | unchanged, version of the change)`` of one record (see SnapshotStore)."""
        previous, known, version, uncertain = lookup
        if self.sync_mode == "full":
            return "added", version
        if self.sync_mode == "incremental":
            return ("unchanged" if known else "added"), version
        if previous is None:
            return "added", version
        return ("unchanged" if previous == checksum and not uncertain else "updated"), version

    def _id_checksum(self, hex_checksum: str, version: int) -> str:
        # In diff mode the message id includes the record's version, so a record that returns to an earlier
        # value within Segment's 24 h dedup window is not dropped as a duplicate of that earlier change.
        # Full and incremental modes keep no versions: their ids follow the values alone.
        return f"{hex_checksum}.{version}" if self.sync_mode == "diff" else hex_checksum

    def _selector(self, mapping: CompiledMapping):
        if self.sync_mode == "full":
            return lambda change: mapping.trigger != "deleted"
        return mapping.selects

    def _bind(self, compiled: list[CompiledMapping], columns: list[str]) -> dict[str, Any]:
        problems = []
        if self.primary_key not in columns:
            problems.append(f"primary_key {self.primary_key!r} is not a column of the model's result")
        if self.sync_mode == "incremental" and self.cursor_column not in columns:
            problems.append(f"cursor_column {self.cursor_column!r} is not a column of the model's result")
        for mapping in compiled:
            problems.extend(mapping.check_columns(columns))
        if problems:
            raise ModelQueryError(
                "The model's result does not fit the configuration (columns: "
                + ", ".join(columns)
                + "):\n- "
                + "\n- ".join(problems)
            )
        return {m.name: m.bind(columns) for m in compiled}

    # -- state ---------------------------------------------------------------------------------------
    def _load_head(self, ti: Any, location: StateLocation) -> SyncState | None:
        head = location.read_head()
        if self.full_refresh:
            self.log.info("full_refresh=True: ignoring saved state; every record counts as added")
            return head
        prior = self._newest_xcom_state(ti, first_run=head is None)
        if prior is not None and (head is None or head.generation < prior.generation):
            found = f"generation {head.generation}" if head else "nothing"
            raise StateError(
                f"An earlier run committed sync state generation {prior.generation} (run {prior.run_id!r}), but "
                f"{location.head} holds {found}: the state under state_path was deleted, moved or rolled back. "
                "Restore it, or run once with full_refresh=True to rebuild state (every record is sent again)."
            )
        if head is not None:
            changed = []
            if head.sync_mode != self.sync_mode:
                changed.append(f"sync_mode was {head.sync_mode!r}, now {self.sync_mode!r}")
            for key in ("primary_key", "cursor_column"):
                if head.extra.get(key) != getattr(self, key):
                    changed.append(f"{key} was {head.extra.get(key)!r}, now {getattr(self, key)!r}")
            if changed:
                raise StateError(
                    "The saved state does not fit this sync any more ("
                    + "; ".join(changed)
                    + "). Run once with full_refresh=True to rebuild it."
                )
            self.log.info(
                "Continuing from state generation %d committed by run %s at %s (%d records)",
                head.generation,
                head.run_id,
                head.committed_at,
                head.records,
            )
        return head

    def _check_destinations(self, head: SyncState, destinations: dict[str, str]) -> None:
        """Fail when a Profile Space connection now points elsewhere than where the state was delivered."""
        saved = head.extra.get("destinations") or {}
        moved = sorted(space for space, now in destinations.items() if saved.get(space, now) != now)
        if moved:
            raise StateError(
                f"The Segment connection(s) {', '.join(map(repr, moved))} now point at another destination than "
                f"the one state generation {head.generation} was delivered to: the write key or region changed. Segment answers 200 to an unknown write key or the wrong region and drops the data, "
                "so records the state counts as delivered may be missing there. Run once with "
                "full_refresh=True to send every record to the new destination (mappings on the 'added' "
                "trigger fire again); that also accepts the change."
            )

    def _newest_xcom_state(self, ti: Any, first_run: bool) -> SyncState | None:
        if first_run:
            self.log.info(
                "No committed state under state_path: checking XCom for state of earlier runs. On a first "
                "run Airflow logs 'XCom not found' here, which is expected"
            )
        try:
            pulled = ti.xcom_pull(
                task_ids=self.task_id,
                key=STATE_XCOM_KEY,
                include_prior_dates=True,
                map_indexes=getattr(ti, "map_index", -1),
            )
        except Exception as err:  # an XCom backend hiccup must not block a run: HEAD.json is authoritative
            self.log.warning("Could not read earlier sync state from XCom (%s); relying on state_path", err)
            return None
        values = pulled if isinstance(pulled, list) else [pulled]
        states = [SyncState.from_dict(v) for v in values if isinstance(v, dict) and "generation" in v]
        return max(states, key=lambda s: s.generation, default=None)

    def _commit(
        self,
        location: StateLocation,
        head: SyncState | None,
        store: SnapshotStore,
        workdir: Path,
        watermark_value: Any,
        fingerprint: str,
        accounting: SyncAccounting,
        ti: Any,
        destinations: dict[str, str],
    ) -> SyncState:
        snapshot_file: Path | None = None
        records = 0
        watermark = None
        if self.sync_mode == "diff":
            snapshot_file = workdir / "next.sqlite"
            records = store.write_diff_snapshot(snapshot_file)
        elif self.sync_mode == "incremental" and watermark_value is not None:
            snapshot_file = workdir / "next.sqlite"
            records = store.write_incremental_snapshot(snapshot_file, sort_key(watermark_value))
            watermark = to_xcom(watermark_value)
        new = SyncState(
            generation=0,
            snapshot=None,
            sync_mode=self.sync_mode,
            watermark=watermark,
            fingerprint=fingerprint,
            records=records,
            run_id=str(ti.run_id),
            try_number=int(ti.try_number or 0),
            extra={
                "primary_key": self.primary_key,
                "cursor_column": self.cursor_column,
                "messages": accounting.messages,
                "destinations": destinations,
            },
        )
        expected = head  # full_refresh still guards against a concurrent commit
        return location.commit(expected, new, snapshot_file)

    def _fingerprint(self, compiled: list[CompiledMapping]) -> str:
        material = json.dumps(
            [self.sync_mode, self.primary_key, self.cursor_column, [m.fingerprint for m in compiled]]
        )
        return hashlib.sha256(material.encode()).hexdigest()[:16]

    # -- helpers -------------------------------------------------------------------------------------
    def _check_segment_connection(self, conn_id: str) -> None:
        hook = self._segment_hook(conn_id)
        try:
            hook.base_url  # noqa: B018 - resolves the connection and region now, before any row is read
            hook.session  # noqa: B018 - refuses an empty write key
        except Exception as err:
            raise AirflowFailException(f"Segment Profiles connection {conn_id!r}: {err}") from err

    def _warn_if_distributed(self, location: StateLocation) -> None:
        try:
            from airflow.configuration import conf

            executor = conf.get("core", "executor", fallback="") or ""
        except Exception:
            return
        if any(name in executor for name in ("Celery", "Kubernetes", "Edge", "Ecs", "Batch")):
            self.log.warning(
                "State is kept at the default local path %s while the %s runs tasks on several machines; "
                "set state_path to shared storage (s3://, gs://, ...) or runs on other workers start from scratch.",
                location.root,
                executor,
            )

    def _upload(self, local: IO[bytes], explicit: str | None, default: Any, count: int) -> str | None:
        if count == 0 and explicit is None:
            return None
        from airflow.sdk import ObjectStoragePath

        target = ObjectStoragePath(explicit) if explicit else default
        local.flush()
        local.seek(0)
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as out:
            shutil.copyfileobj(local, out, 1 << 20)
        return str(target)

    def _enforce_thresholds(self, summary: dict[str, Any], accounting: SyncAccounting) -> None:
        selected = sum(t.selected for t in accounting.mappings.values())
        if not selected:
            return
        messages = summary["messages"]
        rejected_fraction = messages["rejected"] / selected
        failed_fraction = messages["failed"] / selected
        if failed_fraction > self.max_failed_fraction:
            raise AirflowException(
                f"{messages['failed']} of {selected} messages could not be delivered ({failed_fraction:.1%} > "
                f"max_failed_fraction {self.max_failed_fraction:.1%}); state keeps them for the next try. "
                f"Report: {summary['report_path']}"
            )
        if rejected_fraction > self.max_rejected_fraction:
            raise AirflowFailException(
                f"{messages['rejected']} of {selected} messages were rejected ({rejected_fraction:.1%} > "
                f"max_rejected_fraction {self.max_rejected_fraction:.1%}); delivered ones are committed. "
                f"Fix the data or mappings. Report: {summary['report_path']}"
            )

    def _log_summary(self, summary: dict[str, Any]) -> None:
        records, messages = summary["records"], summary["messages"]
        lines = [
            f"{'dry run ' if self.dry_run else ''}sync summary ({self.sync_mode}) in {summary['duration_s']} s",
            f"  rows read  {summary['rows_read']:>10}",
            *(f"  {k:<10} {v:>10}" for k, v in records.items()),
            f"  {'mapping':<30} {'delivered':>10} {'rejected':>10} {'failed':>10}",
            *(
                f"  {name:<30} {m['delivered']:>10} {m['rejected']:>10} {m['failed']:>10}"
                for name, m in summary["mappings"].items()
            ),
            f"  {'total':<30} {messages['delivered']:>10} {messages['rejected']:>10} {messages['failed']:>10}",
        ]
        if summary.get("warnings"):
            lines.append(
                f"  {summary['warnings']} warnings: values changed to make messages sendable (each in the report)"
            )
        self.log.info("%s", "\n".join(lines))

    def _close_connections(self) -> None:
        for hook in self._segment_hooks.values():
            hook.close()

    def _raise_if_killed(self) -> None:
        killed = getattr(self, "_killed", None)  # created by execute(); an Event does not survive deepcopy
        if killed is not None and killed.is_set():
            raise AirflowException("The task was killed while syncing; no state was committed.")

    def on_kill(self) -> None:
        """
        Stop the sync: no more rows are read or messages sent, the cursor and HTTP sessions are closed, and
        nothing is committed, so the next try starts from the last committed state.
        """
        killed = getattr(self, "_killed", None)
        if killed is not None:
            killed.set()
        reader = self._reader
        if reader is not None:
            reader.close()
        self._close_connections()


def _deleted_checksum(previous_checksum: int | None, version: int) -> str:
    # NULL marks an added record whose delivery was not confirmed (see SnapshotStore.write_diff_snapshot).
    held = "unconfirmed" if previous_checksum is None else checksum_hex(previous_checksum)
    return f"{held}.{version}"


def _cursor_kind(key: object) -> str:
    # Numbers and texts (dates and times are compared as ISO-8601 text) have no order between them.
    return "a number" if isinstance(key, int | float) else "text or a date"


def _duplicate_reason(column: str, pk: str) -> str:
    return (
        f"duplicate unique identifier: {column} {pk!r} appears more than once in the model; the first row "
        "was synced and this one rejected"
    )


class _Progress:
    """Progress lines in the task log at most every ``interval_s`` seconds."""

    def __init__(self, log: Any, interval_s: float, started: float) -> None:
        self.log = log
        self.interval_s = interval_s
        self.started = started
        self.last = started
        self.sent = 0

    def maybe_log(self, phase: str, rows_read: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.interval_s:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-9)
        self.log.info(
            "phase=%s rows_read=%d messages_delivered=%d rate=%.0f messages/s elapsed=%.0f s",
            phase,
            rows_read,
            self.sent,
            self.sent / elapsed,
            elapsed,
        )
