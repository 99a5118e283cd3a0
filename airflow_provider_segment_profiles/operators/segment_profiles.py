"""Operator that syncs a SQL model into Segment Profiles: Reverse ETL from any common-sql warehouse."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook, BaseOperator

from airflow_provider_segment_profiles.actions import CompiledMapping, MappingConfigError, compile_mappings
from airflow_provider_segment_profiles.delivery.limits import DEFAULT_MAX_IN_FLIGHT
from airflow_provider_segment_profiles.delivery.retry import RetryPolicy
from airflow_provider_segment_profiles.exceptions import ConfigurationError, SegmentProfilesError
from airflow_provider_segment_profiles.hooks.segment_profiles import SegmentProfilesHook
from airflow_provider_segment_profiles.operators.airflow_errors import airflow_error
from airflow_provider_segment_profiles.operators.assets import attach_summary
from airflow_provider_segment_profiles.operators.destinations import (
    destinations_report,
    log_destinations_before,
    segment_hook,
    verification,
)
from airflow_provider_segment_profiles.operators.lineage import lineage_facts, operator_lineage
from airflow_provider_segment_profiles.operators.mass_delete import check_on_mass_delete, fail_or_ask, resume
from airflow_provider_segment_profiles.operators.state_lookup import newest_xcom_state, state_location
from airflow_provider_segment_profiles.operators.summary import format_summary, run_breach
from airflow_provider_segment_profiles.pipeline.config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHANGE_DETECTION,
    DEFAULT_FETCH_SIZE,
    DEFAULT_MAX_DELETED_FRACTION,
    DEFAULT_MAX_EVENTS_PER_SECOND,
    DEFAULT_MAX_FAILED_FRACTION,
    DEFAULT_MAX_REJECTED_FRACTION,
    DEFAULT_PROGRESS_INTERVAL_S,
    DEFAULT_STATE_SCHEMA,
    DEFAULT_SYNC_MODE,
    SyncConfig,
    as_bool,
    as_fraction,
    check_settings,
    holds_template,
)
from airflow_provider_segment_profiles.pipeline.held_deletes import ApprovedDeletes
from airflow_provider_segment_profiles.pipeline.run import SyncRun
from airflow_provider_segment_profiles.pipeline.sync_log import SyncLog, check_table_name
from airflow_provider_segment_profiles.pipeline.verify import VerificationPolicy, check_verification_settings
from airflow_provider_segment_profiles.pipeline.verify import off as verification_off
from airflow_provider_segment_profiles.state.guards import check_destinations, load_head
from airflow_provider_segment_profiles.state.location import STATE_XCOM_KEY, safe_component

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook
    from airflow.sdk import Context


class SegmentProfilesSyncOperator(BaseOperator):
    """
    Sync a SQL model into Segment Profiles: detect added, updated and deleted records and send each one
    through its mappings as Send Identify, Send Group, Send Subscriptions or Send Track calls.

    Every run streams the model's rows (``fetchmany``; a server-side cursor on PostgreSQL), classifies each
    record against the last committed state, builds and validates one message per selected mapping, sends
    them in batches through :class:`SegmentProfilesHook`, and commits state only with what was delivered
    (the stages: ``docs/architecture.md``; the guide: ``docs/operator.md``).

    :param conn_id: any common-sql (``DbApiHook``) connection: Postgres, Snowflake, BigQuery, SQLite, ...
    :param sql: the model: one SELECT, or a path to a ``.sql`` file relative to the DAG folder (templated).
    :param primary_key: the model's unique identifier column; compared as a string (``1`` and ``'1'`` are the
        same record).
    :param mappings: up to 50 mapping dicts (format in ``docs/mappings.md``), templated.
    :param parameters: bind parameters for ``sql`` (sequence or mapping, templated).
    :param segment_conn_id: default ``segment_profiles`` connection for mappings without ``profile_space``.
    :param sync_mode: ``diff`` (default), ``incremental`` or ``full``.
    :param cursor_column: column whose growing values select new rows; required for ``incremental``.
    :param full_refresh: ignore saved state for this run (every record counts as added) and rebuild it.
        Templated: ``"{{ params.full_refresh }}"`` renders to text, read as a boolean (true/false, 1/0,
        yes/no, on/off).
    :param dry_run: build and validate everything and write the payloads to ``dry_run_path``; send nothing
        and keep state untouched. Templated like ``full_refresh``.
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
        is rejected for bad data, or more than this fraction of the rows read is rejected as a whole (NULL or
        repeated unique identifier); state is committed first. Default 0.1.
    :param max_failed_fraction: fail the task (retryable) when more than this fraction of selected messages
        could not be delivered; state is committed first, so a retry sends only those. Default 0.0.
    :param max_deleted_fraction: the mass-delete guard (diff mode): when a run would delete more than this
        fraction of the records the committed state holds, no delete is sent, those records stay in state,
        adds and updates are synced as usual, and the task fails without retry naming the counts. Default
        0.5; ``None`` disables it. Templated (``"{{ params.max_deleted_fraction }}"``), so one run can be let
        through from the Trigger dialog.
    :param request_retry_policy: :class:`RetryPolicy` or a dict of its fields, for requests to Segment
        (named apart from Airflow's own task-level ``retry_policy``).
    :param request_timeout: ``(connect, read)`` HTTP timeouts in seconds.
    :param progress_interval_s: seconds between progress lines in the task log.
    :param sync_log_table: a table in the model's warehouse (``table`` or ``schema.table``) that every run
        appends one row per message outcome to, created if absent; ``None`` (default) keeps no sync log.
        Dry runs write none. A failed write is a warning, never a failed sync (``docs/lineage.md``).
    :param change_detection: ``worker`` (default: the worker reads every row and compares it with a
        snapshot under ``state_path``) or ``warehouse`` (diff mode only: the comparison runs in the warehouse,
        which keeps the state in ``state_schema``, and only changed rows are read; docs/change-detection.md).
    :param state_schema: schema (PostgreSQL, Snowflake; created when absent) or table-name prefix (SQLite)
        of the warehouse engine's state tables.
    :param verify_sample: after delivery, read back up to this many delivered records (their Identify
        traits) through Segment's Profile API and compare them with what was sent; ``0`` (default) is
        off. A sample that finds nothing kept fails the task without retry (``docs/operator.md``).
    :param profile_api_conn_id: the ``segment_profile_api`` connection (the Space's access token and space
        id) that ``verify_sample`` reads through; it must read the Space of ``segment_conn_id``.
    :param verify_policy: the read-back's bounds for eventual consistency:
        :class:`~airflow_provider_segment_profiles.pipeline.verify.VerificationPolicy` or a dict of its
        fields (``budget_s``, ``max_attempts``, ``first_wait_s``, ``max_wait_s``, ``requests_per_second``).
    :param on_mass_delete: what the delete guard does with the deletes it holds: ``"fail"`` (default: the
        task fails without retry) or ``"ask"`` (Airflow 3.1+: the run syncs adds and updates, then asks in
        the Airflow UI, naming the counts and a sample of keys; *Approve* sends exactly the held deletes,
        *Reject* keeps them held and ends the task successfully, no answer within ``mass_delete_timeout``
        fails it as ``"fail"`` would). See ``docs/operator.md``, "A mass delete that asks".
    :param mass_delete_timeout: how long ``on_mass_delete="ask"`` waits for an answer (default 24 hours;
        ``None``: no limit).
    :raises ValueError: (a :class:`~airflow_provider_segment_profiles.exceptions.ConfigurationError`) at DAG
        parse time, listing every invalid setting or mapping problem.
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
        "full_refresh",
        "dry_run",
        "max_deleted_fraction",
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
        sync_mode: str = DEFAULT_SYNC_MODE,
        cursor_column: str | None = None,
        full_refresh: bool | str = False,
        dry_run: bool | str = False,
        state_path: str | None = None,
        state_conn_id: str | None = None,
        report_path: str | None = None,
        dry_run_path: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        fetch_size: int = DEFAULT_FETCH_SIZE,
        max_requests_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_events_per_second: float | None = DEFAULT_MAX_EVENTS_PER_SECOND,
        max_rejected_fraction: float = DEFAULT_MAX_REJECTED_FRACTION,
        max_failed_fraction: float = DEFAULT_MAX_FAILED_FRACTION,
        max_deleted_fraction: float | str | None = DEFAULT_MAX_DELETED_FRACTION,
        request_retry_policy: RetryPolicy | dict[str, float] | None = None,
        request_timeout: tuple[float, float] = (10.0, 30.0),
        progress_interval_s: float = DEFAULT_PROGRESS_INTERVAL_S,
        sync_log_table: str | None = None,
        change_detection: str = DEFAULT_CHANGE_DETECTION,
        state_schema: str = DEFAULT_STATE_SCHEMA,
        verify_sample: int = 0,
        profile_api_conn_id: str = "segment_profile_api_default",
        verify_policy: VerificationPolicy | dict[str, Any] | None = None,
        on_mass_delete: str = "fail",
        mass_delete_timeout: timedelta | None = timedelta(hours=24),
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
        self.max_deleted_fraction = max_deleted_fraction
        self.request_retry_policy = RetryPolicy.coerce(request_retry_policy)
        self.request_timeout = tuple(request_timeout)
        self.progress_interval_s = progress_interval_s
        self.sync_log_table = None if sync_log_table is None else check_table_name(sync_log_table)
        self.change_detection = change_detection
        self.state_schema = state_schema
        self.verify_sample = verify_sample
        self.profile_api_conn_id = profile_api_conn_id
        self.verify_policy = check_verification_settings(
            task_id=self.task_id,
            verify_sample=verify_sample,
            profile_api_conn_id=profile_api_conn_id,
            verify_policy=verify_policy,
        )
        check_on_mass_delete(on_mass_delete, mass_delete_timeout)
        self.on_mass_delete = on_mass_delete
        self.mass_delete_timeout = mass_delete_timeout
        self._run: SyncRun | None = None
        #: Plain data of the last run for OpenLineage (``operators/lineage.py``), no run objects.
        self._lineage_facts: dict[str, Any] | None = None
        check_settings(
            task_id=self.task_id,
            sync_mode=sync_mode,
            cursor_column=cursor_column,
            batch_size=batch_size,
            fetch_size=fetch_size,
            max_requests_in_flight=max_requests_in_flight,
            max_events_per_second=max_events_per_second,
            fractions={
                "max_rejected_fraction": max_rejected_fraction,
                "max_failed_fraction": max_failed_fraction,
                "max_deleted_fraction": None
                if holds_template(max_deleted_fraction)
                else as_fraction("max_deleted_fraction", max_deleted_fraction),
            },
            change_detection=change_detection,
            state_schema=state_schema,
        )
        for name in ("full_refresh", "dry_run"):
            if not holds_template(getattr(self, name)):
                as_bool(name, getattr(self, name))
        if isinstance(mappings, list):
            # Fails DAG import with every problem listed; rendered mappings are checked again at run time.
            self._compile(mappings)

    def _compile(self, mappings: Any) -> list[CompiledMapping]:
        if not isinstance(mappings, list):
            raise MappingConfigError(
                [f"mappings must be a list of mapping objects, got {type(mappings).__name__}"]
            )
        return compile_mappings(mappings, sync_mode=self.sync_mode, primary_key=self.primary_key)

    @cached_property
    def warehouse_hook(self) -> DbApiHook:
        """
        The common-sql hook of ``conn_id``.

        :raises ConfigurationError: the connection's hook is not a ``DbApiHook``.
        """
        from airflow.providers.common.sql.hooks.sql import DbApiHook

        hook = BaseHook.get_connection(self.conn_id).get_hook()
        if not isinstance(hook, DbApiHook):
            raise ConfigurationError(
                f"Connection {self.conn_id!r} has a {type(hook).__name__}, not a common-sql DbApiHook; "
                "conn_id must point at a SQL warehouse."
            )
        return hook

    # -- run -----------------------------------------------------------------------------------------
    def execute(self, context: Context) -> dict[str, Any]:
        """
        Sync once and return the run summary (pushed to XCom as ``return_value``); a successful run puts
        its counts into the asset event of each Asset in ``outlets`` (``operators/assets.py``).

        :raises AirflowFailException: a permanent error (configuration, model query, state) or the
            rejected-message threshold; the task is not retried.
        :raises AirflowException: a transient error or the failed-message threshold; Airflow retries it.
        :raises TaskAwaitingInput: (or ``TaskDeferred`` before Airflow 3.3) with ``on_mass_delete="ask"``, when
            the delete guard held deletes: the task waits for a human's answer (:meth:`execute_complete`).
        """
        return self._sync(context)

    def execute_complete(self, context: Context, held: dict[str, Any], event: dict[str, Any]) -> Any:
        """
        Resume after the mass-delete question (``on_mass_delete="ask"``) was answered.

        *Approve*: sync again, letting through exactly the deletes the question named (the model is read
        again; when the records missing from it are not those any more, no delete is sent and the task
        fails). *Reject*: the deletes stay held; the asking run's summary is returned and the task succeeds.
        No answer in time: fails as ``on_mass_delete="fail"`` does.

        :param held: the held deletes the question was about (:func:`~.mass_delete.held_payload`) and the
            asking run's ``summary``.
        :param event: Airflow's resume event with the answer.
        :raises AirflowFailException: on a timeout, or when the approved deletes no longer fit the model.
        """
        resumed = resume(held, event, self.task_id, self.mass_delete_timeout, self.log)
        if resumed.approved is None:
            attach_summary(context, self.outlets, resumed.summary)
            return resumed.summary
        result = self._sync(context, approved=resumed.approved)
        result["mass_delete"] = resumed.summary["mass_delete"]
        return result

    def _sync(self, context: Context, approved: ApprovedDeletes | None = None) -> dict[str, Any]:
        """One sync run (``execute``); ``approved``: the deletes a human let through (``execute_complete``)."""
        ti = context["ti"]
        # Connections are resolved afresh each run: an operator object can be executed again (dag.test).
        self.__dict__.pop("warehouse_hook", None)
        hooks: dict[str, SegmentProfilesHook] = {}
        self._lineage_facts = None
        sync_log: SyncLog | None = None
        verify = None
        try:
            config = self._config()
            if approved is not None:
                config = dataclasses.replace(config, approved_deletes=approved)
            mappings = self._compile(config.mappings)
            space_conn_ids = {m.name: m.profile_space or config.default_space for m in mappings}
            for conn_id in sorted(set(space_conn_ids.values())):
                hooks[conn_id] = segment_hook(
                    conn_id,
                    timeout=self.request_timeout,
                    retry_policy=self.request_retry_policy,
                    pool_size=config.max_requests_in_flight,
                    resolve=not config.dry_run,
                )
            verify = verification(
                self.verify_sample,
                dry_run=config.dry_run,
                conn_id=self.profile_api_conn_id,
                policy=self.verify_policy,
                mappings=mappings,
                space_conn_ids=space_conn_ids,
                verified_space=config.default_space,
                timeout=self.request_timeout,
                log=self.log,
            )
            location = state_location(ti, self.state_path, self.state_conn_id, self.log)
            head = load_head(
                location,
                full_refresh=config.full_refresh,
                settings={
                    "sync_mode": config.sync_mode,
                    "primary_key": self.primary_key,
                    "cursor_column": self.cursor_column,
                },
                earlier_xcom_state=lambda first_run: newest_xcom_state(
                    context, self.task_id, first_run, self.log
                ),
                log=self.log,
            )
            destinations = {} if config.dry_run else {c: hook.destination_id for c, hook in hooks.items()}
            if not config.dry_run:
                log_destinations_before(self.log, hooks)
            if config.mode.resumes_from(head, config.full_refresh) is not None:
                check_destinations(head, destinations)
            if self.sync_log_table and not config.dry_run:
                sync_log = SyncLog.for_task_instance(self.warehouse_hook, self.sync_log_table, ti, self.log)
            self._run = SyncRun(
                config,
                mappings,
                warehouse=self.warehouse_hook,
                segment_hooks=hooks,
                space_conn_ids=space_conn_ids,
                destinations=destinations,
                location=location,
                head=head,
                run_id=str(ti.run_id),
                try_number=int(ti.try_number or 0),
                run_tag=f"{safe_component(context.get('run_id') or ti.run_id)}-try{ti.try_number}"
                + ("-approved" if approved is not None else ""),
                log=self.log,
                sync_log=sync_log,
                verification_sample=None if verify is None else verify.sample,
            )
            summary, state = self._run.execute()
            held = self._run.deletes_held
            self._lineage_facts = lineage_facts(mappings, space_conn_ids, hooks, summary)
        except SegmentProfilesError as err:
            raise airflow_error(err) from err
        finally:
            self._run = None
            for hook in hooks.values():
                hook.close()
            if sync_log is not None:  # also after a failed try: what it delivered did reach Segment
                sync_log.write()
        if state is not None:
            ti.xcom_push(key=STATE_XCOM_KEY, value=state.to_dict())
        summary["verification"], verify_error = verify.run() if verify else (verification_off(), None)
        self.log.info("%s", format_summary(summary))
        self.log.info("%s", destinations_report(hooks, space_conn_ids, summary))
        breach = run_breach(
            summary, self.task_id, config.dry_run, self.max_rejected_fraction, self.max_failed_fraction
        )
        if breach is None and verify_error is not None:
            breach = airflow_error(verify_error)
        if breach is not None:
            # A run that fails its thresholds still committed what was delivered; keep its summary visible.
            ti.xcom_push(key="return_value", value=summary)
            fail_or_ask(
                self, context, breach, held, approved, summary, self.mass_delete_timeout, config.dry_run
            )
        attach_summary(context, self.outlets, summary)
        return summary

    def on_kill(self) -> None:
        """
        Stop the sync: no more rows are read or messages sent, the cursor and HTTP sessions are closed, and
        nothing is committed, so the next try starts from the last committed state.
        """
        run = self._run
        if run is not None:
            run.cancel()

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """
        OpenLineage of the run: the model's input tables (parsed from its SQL with the warehouse hook's
        database info, as common-sql's operators do) and one output dataset per Profile Space with the
        messages delivered and each mapping's column lineage (``docs/lineage.md``).

        Called by the OpenLineage provider's listener after ``execute``, also when the task failed
        (https://airflow.apache.org/docs/apache-airflow-providers-openlineage/stable/guides/developer.html).

        :param task_instance: the finished task instance (unused: the run's facts are on the operator).
        :return: an ``OperatorLineage``, or ``None`` when the OpenLineage provider is not installed.
        """
        return operator_lineage(
            sql=self.sql,
            get_hook=lambda: self.warehouse_hook,
            conn_id=self.conn_id,
            facts=self._lineage_facts,
            operator_log=self.log,
        )

    # -- Airflow surface -----------------------------------------------------------------------------
    def _config(self) -> SyncConfig:
        """The rendered parameters as the run's frozen configuration."""
        return SyncConfig(
            sql=self.sql,
            primary_key=self.primary_key,
            mappings=self.mappings,
            parameters=self.parameters,
            default_space=self.segment_conn_id,
            sync_mode=self.sync_mode,
            cursor_column=self.cursor_column,
            full_refresh=as_bool("full_refresh", self.full_refresh),
            dry_run=as_bool("dry_run", self.dry_run),
            report_path=self.report_path,
            dry_run_path=self.dry_run_path,
            batch_size=self.batch_size,
            fetch_size=self.fetch_size,
            max_requests_in_flight=self.max_requests_in_flight,
            max_events_per_second=self.max_events_per_second,
            max_deleted_fraction=as_fraction("max_deleted_fraction", self.max_deleted_fraction),
            progress_interval_s=self.progress_interval_s,
            change_detection=self.change_detection,
            state_schema=self.state_schema,
        )
