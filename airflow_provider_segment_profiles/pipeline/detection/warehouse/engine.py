"""
The warehouse engine of change detection (``change_detection="warehouse"``, diff mode only): the model is
checksummed and compared with the committed state inside the warehouse, so only added and updated rows
cross the network; unchanged rows are counted in SQL.

Per run, on one connection of the model's hook (temporary tables live in its session):

1. ``sp_model``: the model, materialised once, with each row's unique identifier as text, its checksum
   (:mod:`.dialects`) and its position. Rows with a NULL or repeated identifier are rejected here, per
   record, as the source would (the first row of a repeated identifier is kept).
2. ``sp_cur``: the kept records; ``sp_diff``: those that are added or updated against the committed state
   (the classification and versions of :mod:`~airflow_provider_segment_profiles.state.snapshot`, in SQL).
3. The source reads ``sp_model`` joined with ``sp_diff`` (the model's columns only); :meth:`detect` reads
   the classification of the same rows, in the same order, from a second cursor.
4. Deletions are the committed records that are not in ``sp_cur``.
5. Settling writes its marks (failed, rejected, delete failed) to ``sp_marks`` in batches; the commit then
   applies this run's changes to the state table in one transaction that first moves the sync's generation
   in the metadata table from what this run started from, so a concurrent run of the same sync fails there.

State (``{state_schema}.sp_*`` on PostgreSQL, ``{state_schema}__sp_*`` tables on SQLite) keeps per record
the checksum Segment holds (``NULL``: an add not confirmed), the version, the uncertain and pending flags
and, for tombstones, ``deleted_at``. The send journal under ``state_path`` is shared with the worker
engine: a try killed after sending folds its journaled records in as uncertain (or unconfirmed adds).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_segment_profiles.exceptions import ConfigurationError, ModelQueryError, StateError
from airflow_provider_segment_profiles.pipeline import db_errors
from airflow_provider_segment_profiles.pipeline.detection import carry_over
from airflow_provider_segment_profiles.pipeline.detection.checksum import (
    MappingChecksums,
    changed_among,
    followed_mappings,
    mapping_checksums_for,
)
from airflow_provider_segment_profiles.pipeline.detection.warehouse import statements as sql
from airflow_provider_segment_profiles.pipeline.detection.warehouse.dialects import (
    CHECKSUM_DEFINITION,
    Dialect,
    dialect_for,
    hook_dialect_name,
)
from airflow_provider_segment_profiles.pipeline.records import Change, ChangeKind, Record, new
from airflow_provider_segment_profiles.pipeline.source import duplicate_reason
from airflow_provider_segment_profiles.state.guards import state_error
from airflow_provider_segment_profiles.state.journal import SendJournal
from airflow_provider_segment_profiles.state.snapshot import TOMBSTONE_RETENTION_S

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

    from airflow_provider_segment_profiles.actions import CompiledMapping
    from airflow_provider_segment_profiles.pipeline.modes import SyncMode
    from airflow_provider_segment_profiles.pipeline.outcomes import OutcomeSink
    from airflow_provider_segment_profiles.state.location import StateLocation, SyncState

_ADDED, _UPDATED = ChangeKind.ADDED, ChangeKind.UPDATED
_KINDS = {"added": _ADDED, "updated": _UPDATED}
_FAILED, _REJECTED, _DELETE_FAILED = sql.FAILED, sql.REJECTED, sql.DELETE_FAILED
_MARK_BATCH = 5000


def state_table_name(location: StateLocation) -> tuple[str, str]:
    """
    ``(sync id, table name)`` of one sync's state: the DAG, task and map index of ``location`` (the last
    three parts of its folder), as a readable, length-limited identifier with a hash suffix.
    """
    root = location.root
    sync_id = f"{root.parent.parent.name}/{root.parent.name}/{root.name}"
    digest = hashlib.sha256(sync_id.encode()).hexdigest()[:12]
    slug = re.sub(r"[^a-z0-9]+", "_", f"{root.parent.name}_{root.name}".lower()).strip("_")[:32]
    return sync_id, f"sp_{slug}_{digest}"


class WarehouseChangeDetector:
    """
    :class:`~..base.ChangeDetector` whose state lives in the warehouse (see the module docstring).

    :param mode: the sync mode (``diff``; checked by the operator).
    :param hook: the model's common-sql hook; the engine opens one connection of its own.
    :param location: where the sync's journal lives; also names the sync's state table.
    :param previous: the committed state this run compares against (``None``: first run or full refresh).
    :param head: the committed ``HEAD.json`` (the generation the warehouse state must be at).
    :param outcomes: where the engine reports what it decided (:class:`~...outcomes.OutcomeSink`): rows
        read, records classified (the unchanged ones counted in SQL included) and rejected.
    :param primary_key: the unique identifier column.
    :param mappings: the compiled mappings (which columns the checksum covers).
    :param state_schema: schema (PostgreSQL) or table-name prefix (SQLite) of the state tables.
    :param full_refresh: rebuild the state (``previous`` is then ``None``).
    :param dry_run: read only: no table of the warehouse is created or changed (temporary ones are).
    :param journal_tag: this try's name; ``None`` writes no journal (dry runs).
    :param log: the task's logger.
    :param refresh_from: on a full refresh, the committed state of this engine whose records are still
        deleted when the model no longer has them (:mod:`..carry_over`).
    :param carried: on a full refresh from the worker engine's state, its live ``(unique identifier,
        version)`` pairs, folded in as unconfirmed adds.
    :raises ConfigurationError: the warehouse has no dialect here.
    """

    def __init__(
        self,
        *,
        mode: SyncMode,
        hook: DbApiHook,
        location: StateLocation,
        previous: SyncState | None,
        head: SyncState | None,
        outcomes: OutcomeSink,
        primary_key: str,
        mappings: Sequence[CompiledMapping],
        state_schema: str,
        full_refresh: bool,
        dry_run: bool,
        journal_tag: str | None,
        log: Any,
        refresh_from: SyncState | None = None,
        carried: Iterable[tuple[str, int]] | None = None,
    ) -> None:
        self.mode = mode
        self.outcomes = outcomes
        self.primary_key = primary_key
        self.mappings = list(mappings)
        self.schema = state_schema
        self.full_refresh = full_refresh
        self.dry_run = dry_run
        self.log = log
        self.head_generation = head.generation if head is not None else 0
        self.previous = previous
        self._refresh_from, self._carried = refresh_from, carried
        self.sync_id, self.table_name = state_table_name(location)
        self.rows_fetched = 0
        self._deletions_held = False
        self._used: list[str] | None = None
        self._seed: str | None = None
        self._side: Any = None
        self._prev: str = ""
        self._prev_is_copy = False
        self._state_existed = True
        self._start_generation = 0
        self._now = int(time.time())
        self._closed = False
        self.journal: SendJournal | None = None
        self._journal_folder = location.journal
        self._journal_tag = journal_tag
        self._journal_files: list[Any] = []
        self._uncommitted: list[Any] = []
        #: The mappings whose changes are told apart (see :func:`~..checksum.followed_mappings`).
        self._followed = followed_mappings(mode, self.mappings)
        self._mapping_checksums: MappingChecksums | None = None
        self._has_mapping_checksums = True
        self.conn_id = db_errors.conn_id_of(hook)
        self.conn = hook.get_conn()
        try:
            self.dialect: Dialect = dialect_for(self.conn, hook_dialect_name(hook))
            self.dialect.prepare_connection(self.conn)
            self.conn = self.dialect.session(self.conn)
        except BaseException:
            with contextlib.suppress(Exception):
                self.conn.close()
            raise
        self.state = self.dialect.table(self.schema, self.table_name)
        self.meta = self.dialect.table(self.schema, "syncs")
        self._tag = uuid.uuid4().hex[:8]

    # -- helpers ---------------------------------------------------------------------------------------
    def _t(self, name: str) -> str:
        return self.dialect.temp_table(f"sp_{name}")

    def _cursor(self, named: bool = False) -> Any:
        if named and self.dialect.uses_named_cursors:
            return self.conn.cursor(name=f"sp_{self._tag}_{uuid.uuid4().hex[:8]}")
        return self.conn.cursor()

    def _execute(self, sql: str, parameters: Any = None) -> Any:
        cursor = self.conn.cursor()
        if parameters is None:
            cursor.execute(sql)
        else:
            cursor.execute(sql, parameters)
        return cursor

    def _maybe(self, sql: str | None) -> None:
        """Run a statement the dialect may not need (``None``: skip it)."""
        if sql is not None:
            self._execute(sql).close()

    def _scalar(self, sql: str, parameters: Any = None) -> Any:
        cursor = self._execute(sql, parameters)
        row = cursor.fetchone()
        cursor.close()
        return None if row is None else row[0]

    def source_connection(self) -> Any:
        """The connection the source reads through: the temporary tables of this run live in its session."""
        return self.conn

    # -- set-up --------------------------------------------------------------------------------------------
    def _ensure_state_tables(self) -> bool:
        """
        Create the state schema and tables when absent (not in a dry run) and commit that at once.

        :return: whether the state table exists (``_state_existed``: whether it did before this run).
        :raises ConfigurationError: the warehouse refused to create them, naming the grant needed.
        """
        dialect = self.dialect
        cursor = self.conn.cursor()
        if self.dry_run:
            exists = dialect.table_exists(cursor, self.schema, self.table_name) and dialect.table_exists(
                cursor, self.schema, "syncs"
            )
            if exists:  # a dry run does not upgrade the state; it reads an old one through a copy
                self._has_mapping_checksums = self._state_has_mapping_checksums(cursor)
            cursor.close()
            return exists
        step = "schema"
        try:
            self._state_existed = dialect.table_exists(cursor, self.schema, self.table_name)
            dialect.ensure_schema(cursor, self.schema)
            step = "table"
            cursor.execute(dialect.meta_ddl(self.meta))
            cursor.execute(dialect.state_ddl(self.state))
            if self._state_existed and not self._state_has_mapping_checksums(cursor):
                self.log.info("Upgrading the warehouse state %s: per-mapping checksums", self.state)
                cursor.execute(sql.add_mapping_checksums(dialect, self.state))
            tombstone_index = dialect.tombstone_index_ddl(self.schema, self.table_name)
            if tombstone_index is not None:
                cursor.execute(tombstone_index)
            cursor.execute(*dialect.insert_ignore_meta(self.meta, self.sync_id, self.table_name))
            cursor.close()
            if dialect.name != "sqlite":
                dialect.commit(self.conn)
        except Exception as err:
            dialect.rollback(self.conn)
            if db_errors.classify(err)[0] is db_errors.ErrorKind.TRANSIENT:
                raise  # a lost connection is no missing grant: Airflow retries it
            raise ConfigurationError(
                f"change_detection='warehouse' keeps its state in the warehouse, but creating the state "
                f"{step} {self.schema if step == 'schema' else self.state} was refused "
                f"({type(err).__name__}: {err}). "
                + dialect.grant_advice(self.schema, step)
                + "; or use change_detection='worker'."
            ) from err
        return True

    def _state_has_mapping_checksums(self, cursor: Any) -> bool:
        """Whether the state table has the ``mapping_checksums`` column (an earlier release's has not)."""
        cursor.execute(f"SELECT * FROM {self.state} WHERE 1 = 0")
        columns = {str(d[0]).lower() for d in cursor.description or ()}
        cursor.fetchall()
        return "mapping_checksums" in columns

    def _check_meta(self, exists: bool) -> None:
        """
        Check the state's generation, dialect and checksum definition against this run.

        :raises StateError: the state does not fit (first line: the recovery).
        """
        if not exists or not self._state_existed:
            if self.full_refresh and self._refresh_from is not None:
                place = f"the warehouse state table {self.state}"
                carry_over.warn_unreadable(self.log, self._refresh_from, place, "it does not exist")
                self._refresh_from = None
            if self.previous is not None:
                raise state_error(
                    f"HEAD.json says generation {self.head_generation} was committed with "
                    f"change_detection='warehouse', but the state table {self.state} does not exist "
                    "(dropped, or another warehouse or state_schema)."
                )
        if not exists:
            return
        cursor = self._execute(
            f"SELECT generation, dialect, definition, used_columns FROM {self.meta} WHERE sync_id = "
            f"{self.dialect.ph}",
            (self.sync_id,),
        )
        row = cursor.fetchone()
        cursor.close()
        generation, dialect, definition, columns = row if row is not None else (0, None, None, None)
        self._start_generation = int(generation)
        if self.full_refresh:
            problem = carry_over.warehouse_state_fits(self._refresh_from, exists, self._start_generation)
            if problem is not None:
                carry_over.warn_unreadable(self.log, self._refresh_from, str(self.state), problem)
                self._refresh_from = None
            return
        if dialect is not None and (dialect != self.dialect.name or definition != CHECKSUM_DEFINITION):
            raise state_error(
                f"The warehouse state {self.state} was built by dialect {dialect!r} with checksum definition "
                f"{definition}; this run uses {self.dialect.name!r} with definition {CHECKSUM_DEFINITION}, so "
                "its checksums cannot be compared."
            )
        expected = self.head_generation if self.previous is not None else 0
        if self._start_generation == expected + 1 and self.previous is not None:
            # A try committed the warehouse state, then failed to write HEAD.json: its sends are in the
            # state; journals of tries after it are named by this generation (see _open_journal).
            self.log.warning(
                "The warehouse state %s is one generation ahead of HEAD.json (%d, %d): an earlier try "
                "committed it but not HEAD.json; continuing from the warehouse state",
                self.state,
                self._start_generation,
                expected,
            )
        elif self._start_generation != expected:
            raise state_error(
                f"The warehouse state {self.state} is at generation {self._start_generation}, but HEAD.json "
                f"under state_path is at {expected}: they were written by different runs (state_path or "
                "the state table was moved, restored or shared)."
            )
        if columns is not None and self._used is not None and columns != ",".join(self._used):
            self.log.info(
                "The checksum covers other columns than the state's (%s, now %s): changed records are sent",
                columns,
                ",".join(self._used),
            )

    def _open_journal(self) -> None:
        """
        Find the journals of tries that started from the warehouse state's generation and never committed
        it, and open this try's. Journals are named by the warehouse generation, not ``HEAD.json``'s: a try
        that committed the warehouse but not ``HEAD.json`` has its sends in the state already.
        """
        if not self.mode.journals_sends:
            return
        journal = SendJournal(self._journal_folder, self._start_generation, self._journal_tag or "dry-run")
        self._journal_files, self._uncommitted = journal.uncommitted()
        if self._uncommitted:
            self.log.warning(
                "Tries that did not commit left %d journal files of records they may have sent; "
                "those records' current values (or deletes) are sent again",
                len(self._uncommitted),
            )
        self.journal = journal if self._journal_tag is not None else None

    def _used_columns(self, columns: Sequence[str]) -> list[str]:
        if any(m.uses_all_columns for m in self.mappings):
            return list(columns)
        wanted = {c for m in self.mappings for c in m.columns}
        return [c for c in columns if c in wanted]

    # -- the ChangeDetector protocol -----------------------------------------------------------------------
    def query(
        self, statement: str, parameters: Sequence[Any] | Mapping[str, Any] | None
    ) -> tuple[str, Sequence[Any] | Mapping[str, Any] | None]:
        """
        Diff the model against the state inside the warehouse and return the query of the changed rows.

        Also counts the unchanged records and rejects those with a NULL or repeated unique identifier.

        :raises ConfigurationError: a state table cannot be created (the grant is named).
        :raises StateError: the state does not fit this run.
        :raises ModelQueryError: the database refused the model.
        """
        exists = self._ensure_state_tables()
        dialect = self.dialect
        for setting in dialect.session_settings():
            self._execute(setting).close()
        model = sql.wrap_model(statement)
        label = db_errors.model_label(statement, self.conn_id)
        try:
            cursor = self._execute(sql.probe_model(model), parameters)
        except Exception as err:
            # As the source does (pipeline/db_errors.py): by SQLSTATE class where the driver gives one.
            db_errors.raise_model_error(err, label)
        description = list(cursor.description or ())
        cursor.close()
        columns = [str(d[0]) for d in description]
        if self.primary_key not in columns or any(m.check_columns(columns) for m in self.mappings):
            # The source reports the missing columns when it binds, from the description alone: the
            # model is neither materialised nor diffed for a misspelt column.
            return sql.probe_model(model), parameters
        self._used = self._used_columns(columns)
        self._seed = "|".join(m.fingerprint for m in self.mappings)
        self._check_meta(exists)
        self._open_journal()
        types = {str(d[0]): d[1] for d in description}
        materialise = sql.materialise_model(
            dialect, model, self.primary_key, self._seed, self._used, [types[c] for c in self._used]
        )
        try:
            self._execute(materialise, parameters).close()
        except Exception as err:
            if db_errors.is_insufficient_privilege(err):
                raise ConfigurationError(
                    f"change_detection='warehouse' needs temporary tables, but the warehouse refused one "
                    f"({err}). {dialect.grant_advice(self.schema, 'temp')}; or use change_detection='worker'."
                ) from err
            db_errors.raise_model_error(err, label)
        self._reject_null_keys()
        self._current_records()
        self._prepare_previous(exists)
        self._diff()
        kept = self._scalar(f"SELECT count(*) FROM {self._t('cur')}")
        changed = int(self._scalar(f"SELECT count(*) FROM {self._t('diff')} WHERE kind <> 'deleted'"))
        unchanged = int(kept) - changed
        self.outcomes.classified(ChangeKind.UNCHANGED, unchanged)
        self.outcomes.read(unchanged)
        read = self._read_changed(model, parameters, types, label, changed)
        self.log.info(
            "Warehouse change detection (state %s): %d records, %d changed (fetched), %d unchanged (counted "
            "in SQL)",
            self.state,
            kept,
            read,
            unchanged,
        )
        if read < changed:
            self.log.warning(
                "%d changed records were gone or changed again when the model was read a second time for "
                "their columns: they are not sent or committed by this run; the next run sees them",
                changed - read,
            )
        return sql.changed_rows(dialect, columns), None

    def _read_changed(
        self, model: str, parameters: Any, types: Mapping[str, Any], label: str, changed: int
    ) -> int:
        """
        ``sp_rows``: read the model a second time for the columns of the ``changed`` records only (not read
        at all when nothing changed), keep one row per identifier, and return how many records it holds.

        :raises ModelQueryError: the database refused the model this time.
        """
        dialect, used = self.dialect, self._used or []
        statement = sql.materialise_changed(
            dialect,
            model,
            self.primary_key,
            self._seed or "",
            used,
            [types[c] for c in used],
            empty=not changed,
        )
        try:
            self._execute(statement, parameters).close()
        except Exception as err:
            db_errors.raise_model_error(err, label)
        if changed:  # also when the first reading had no repeat: a row may have been added between them
            for statement in sql.keep_first_of_repeats(dialect):
                self._execute(statement).close()
        self._maybe(dialect.temp_index("sp_rows", "__sp_key", unique=True))
        self._analyze("sp_rows")
        return int(self._scalar(f"SELECT count(*) FROM {self._t('rows')}")) if changed else 0

    def _reject_null_keys(self) -> None:
        """Reject the rows whose unique identifier is NULL, as the source would."""
        cursor = self._execute(sql.null_keys(self.dialect))
        nulls = [row[0] for row in cursor.fetchall()]
        cursor.close()
        for position in nulls:
            self.outcomes.read(1)
            self.outcomes.reject_record(
                None,
                f"the unique identifier {self.primary_key!r} is NULL (row {position} of the result)",
                self.primary_key,
            )

    def _analyze(self, table: str) -> None:
        """Gather a temporary table's statistics where the dialect needs it (autovacuum never sees them)."""
        statement = self.dialect.analyze(table)
        if statement:
            self._execute(statement).close()

    def _current_records(self) -> None:
        """
        ``sp_cur``: one row per unique identifier. Where the warehouse has unique indexes, a repeated
        identifier makes the index fail (inside a savepoint), and only then are the repeats looked for;
        elsewhere (Snowflake) they are looked for with a query. Repeats are rejected and left out.
        """
        outcomes = self.outcomes
        if self.dialect.unique_indexes and self._unique_current_records(
            sql.current_records(self.dialect, without_repeats=False)
        ):
            return
        cursor = self._execute(sql.repeated_keys(self.dialect))
        duplicates = cursor.fetchall()
        cursor.close()
        for key, extra in duplicates:
            for _ in range(int(extra)):
                outcomes.read(1)
                outcomes.reject_record(key, duplicate_reason(self.primary_key, key), self.primary_key)
        self._execute(sql.current_records(self.dialect, without_repeats=bool(duplicates))).close()
        self._maybe(self.dialect.temp_index("sp_cur", "pk", unique=True))
        self._analyze("sp_cur")

    def _unique_current_records(self, create: str) -> bool:
        """Create ``sp_cur`` with its unique index; ``False`` (nothing created) when an identifier repeats."""
        self._execute("SAVEPOINT sp_unique").close()
        try:
            self._execute(create).close()
            self._maybe(self.dialect.temp_index("sp_cur", "pk", unique=True))
        except Exception as err:
            if not db_errors.is_unique_violation(err):
                raise
            self._execute("ROLLBACK TO SAVEPOINT sp_unique").close()
            self._execute("RELEASE SAVEPOINT sp_unique").close()
            return False
        self._execute("RELEASE SAVEPOINT sp_unique").close()
        self._analyze("sp_cur")  # plans the diff's join with the state
        return True

    def _prepare_previous(self, exists: bool) -> None:
        """
        Decide what this run compares against: the state table itself, or (after a killed try, or on a full
        refresh) a temporary copy with the journaled records folded in, as ``prepare_previous`` does.
        """
        records = list(SendJournal.records(self._uncommitted))
        if self._carried is not None:
            records.extend(self._carried)
        if exists and not self.full_refresh and not records and self._has_mapping_checksums:
            self._prev = self.state
            return
        prev = self._t("prev")
        self._prev, self._prev_is_copy = prev, True
        refresh = self.full_refresh and self._refresh_from is not None
        source = self.state if exists and (not self.full_refresh or refresh) else None
        if source is not None:
            copy = sql.copy_previous(self.dialect, source, has_mapping_checksums=self._has_mapping_checksums)
            self._execute(copy).close()
            if refresh:  # every record is sent again: the old ones count as unconfirmed adds (carry_over)
                unconfirmed = (
                    f"UPDATE {prev} SET checksum = NULL, pending = 0, mapping_checksums = NULL "
                    "WHERE deleted_at IS NULL"
                )
                self._execute(unconfirmed).close()
        else:
            self._execute(sql.empty_previous(self.dialect)).close()
        if records:
            self._execute(sql.journal_table(self.dialect)).close()
            self._insert(f"INSERT INTO {self._t('journal')} (pk, version)", records, 2)
            for statement in sql.fold_journal(self.dialect):
                self._execute(statement).close()
        self._maybe(self.dialect.temp_index("sp_prev", "pk", unique=True))

    def _diff(self) -> None:
        """
        ``sp_diff``, from one full outer join of this run's records with the state: the added and updated
        records (their versions and what Segment held before) and the deleted ones (no position).
        """
        statements = sql.diff(self.dialect, self._prev)  # several where the warehouse has no FULL OUTER JOIN
        for statement in [statements] if isinstance(statements, str) else statements:
            self._execute(statement).close()
        self._maybe(self.dialect.temp_index("sp_diff", "pos"))
        self._maybe(self.dialect.temp_index("sp_diff", "pk", unique=True))
        self._execute(sql.marks_table(self.dialect)).close()
        self._execute(sql.mapping_checksums_table(self.dialect)).close()
        self._analyze("sp_diff")  # plans the source's join and the commit's

    def bind(self, columns: Sequence[str], used_columns: Sequence[int], seed: str) -> None:
        """
        Check that the run's checksum columns and seed are those the warehouse checksum was computed with.

        :raises ConfigurationError: they differ (a bug: the engine and the run disagree on what is mapped).
        """
        used = [columns[i] for i in used_columns]
        if used != self._used or seed != self._seed:
            raise ConfigurationError(
                f"Warehouse change detection checksummed {self._used} but the mappings use {used}"
            )
        if self._followed:
            self._mapping_checksums = mapping_checksums_for(self._followed, columns)

    def detect(self, records: Sequence[Record]) -> list[Change]:
        """
        Attach each fetched record's classification, read in the same order from ``sp_diff``, and decide
        which mappings' inputs changed (as the worker engine does, from the values fetched and the per-mapping
        checksums the state holds): an updated record none of whose followed mappings changed is unchanged
        after all (only a column another mapping reads, or a removed mapping, moved its checksum).
        """
        if not records:
            return []
        if self._side is None:
            self._side = self._cursor(named=True)
            self._side.execute(sql.classifications(self.dialect))
        side = self._side.fetchmany(len(records))
        if len(side) != len(records):
            raise StateError(
                f"Warehouse change detection read {len(records)} rows but {len(side)} classifications"
            )
        token = self.mode.change_token
        mapping_checksums = self._mapping_checksums
        changes: list[Change] = []
        digests_rows: list[tuple[str, str, str | None, int]] = []
        added = unchanged = 0
        # Pending is kept per record here: a pending record goes through every mapping its change selects,
        # and names them all as pending, so a rejection there counts as carried over.
        selecting = {
            kind: tuple(m.name for m in self.mappings if kind in self.mode.changes_selected(m.trigger))
            for kind in (_ADDED, ChangeKind.UPDATED)
        }
        for record, (pk, checksum, version, kind, pending, uncertain, held_mappings) in zip(
            records, side, strict=True
        ):
            if record.key != pk:
                raise ModelQueryError(
                    f"The unique identifier {self.primary_key!r} renders as {pk!r} in the warehouse but as "
                    f"{record.key!r} in the worker; cast it to text in the model (change_detection="
                    "'warehouse' compares identifiers as the warehouse renders them)."
                )
            change_kind = _KINDS[kind]
            changed_mappings: tuple[str, ...] | None = None
            if mapping_checksums is not None:
                digests = mapping_checksums(record.row)
                kept: bytes | None = None
                if change_kind is _UPDATED and held_mappings is not None:
                    changed_mappings, kept = changed_among(
                        mapping_checksums.names, digests, bytes.fromhex(held_mappings)
                    )
                nothing_changed = changed_mappings == () and not int(uncertain) and not pending
                digests_rows.append(
                    (pk, b"".join(digests).hex(), None if kept is None else kept.hex(), int(nothing_changed))
                )
                if nothing_changed:
                    unchanged += 1
                    continue
                if changed_mappings == ():  # Segment may hold another value: every mapping sends
                    changed_mappings = None
            added += change_kind is _ADDED
            version = int(version)
            changes.append(
                new(
                    Change,
                    (
                        change_kind,
                        pk,
                        record.row,
                        token(checksum, version),
                        version,
                        None,
                        selecting[change_kind] if pending else (),
                        changed_mappings,
                    ),
                )
            )
        if digests_rows:
            self._insert(f"INSERT INTO {self._t('mapsums')} (pk, current, kept, unchanged)", digests_rows, 4)
        self.rows_fetched += len(records)
        outcomes = self.outcomes
        outcomes.classified(_ADDED, added)
        outcomes.classified(_UPDATED, len(changes) - added)
        outcomes.classified(ChangeKind.UNCHANGED, unchanged)
        return changes

    def write_ahead(self, changes: Sequence[Change]) -> None:
        """Journal ``(unique identifier, version)`` of each change under ``state_path`` (not in dry runs)."""
        if self.journal is not None and changes:
            self.journal.record([(change.key, change.version) for change in changes])

    def deletion_counts(self) -> tuple[int, int]:
        """``(live records in the committed state, those this run did not read)``."""
        total = self._scalar(f"SELECT count(*) FROM {self._prev} p WHERE p.deleted_at IS NULL")
        gone = self._scalar(f"SELECT count(*) FROM {self._t('diff')} WHERE kind = 'deleted'")
        return int(total or 0), int(gone or 0)

    def hold_deletions(self) -> None:
        """Send no delete this run; the records not read stay in state as they were."""
        self._deletions_held = True

    def deletions(self) -> Iterator[list[Change]]:
        """Committed records this run did not read, as deleted changes, in chunks."""
        if not self.mode.detects_deletions or self._deletions_held:
            return
        cursor = self._cursor(named=True)
        cursor.execute(sql.deleted_rows(self.dialect))
        deleted = ChangeKind.DELETED
        try:
            while rows := cursor.fetchmany(5000):
                self.outcomes.classified(deleted, len(rows))
                yield [
                    Change(deleted, pk, None, f"{'unconfirmed' if held is None else held}.{int(v)}", int(v))
                    for pk, held, v in rows
                ]
        finally:
            cursor.close()

    def deleted_keys(self) -> Iterator[str]:
        """Keys of the committed records this run did not read, uncounted."""
        if not self.mode.detects_deletions:
            return
        cursor = self._cursor(named=True)
        cursor.execute(sql.deleted_rows(self.dialect))
        try:
            while rows := cursor.fetchmany(5000):
                for pk, _held, _version in rows:
                    yield pk
        finally:
            cursor.close()

    def _insert(self, prefix: str, rows: Sequence[Sequence[Any]], width: int) -> None:
        """Insert ``rows`` into a temporary table of this run with ``prefix``, in batches."""
        cursor = self.conn.cursor()
        for start in range(0, len(rows), _MARK_BATCH):
            self.dialect.insert_many(cursor, prefix, rows[start : start + _MARK_BATCH], width)
        cursor.close()

    def _mark(self, keys: Iterable[str], mark: int) -> None:
        rows = [(key, mark) for key in keys]
        if rows:
            self._insert(f"INSERT INTO {self._t('marks')} (pk, mark)", rows, 2)

    def mark_failed(self, keys: Iterable[str]) -> None:
        """These records keep what Segment held before and become uncertain (added ones: unconfirmed)."""
        self._mark(keys, _FAILED)

    def mark_delete_failed(self, keys: Iterable[str]) -> None:
        """These deleted records stay in state, uncertain, and count as deleted again next run."""
        self._mark(keys, _DELETE_FAILED)

    def mark_rejected(self, rejections: Iterable[tuple[str, str, str]]) -> None:
        """
        The records of these ``(unique identifier, mapping, kind)`` keep what Segment held before and become
        pending. Unlike the worker engine, this engine keeps pending per record, not per mapping: the next
        run sends a pending record again through every mapping its change selects, the ones that delivered
        it included.
        """
        if self.mode.retries_rejected:
            self._mark((key for key, _mapping, _kind in rejections), _REJECTED)

    def watermark(self, failed_cursor_values: Sequence[Any]) -> Any:
        """Diff mode has no watermark."""
        return None

    def snapshot_to_commit(self, workdir: Path, watermark: Any) -> tuple[Path | None, int]:
        """
        Apply this run's changes to the warehouse state in one generation-checked transaction (the same
        rules as :meth:`~airflow_provider_segment_profiles.state.snapshot.SnapshotStore.write_diff_snapshot`).

        :return: ``(None, live records)``: nothing to upload, the state is in the warehouse.
        :raises StateError: another run of this sync committed since this run started.
        """
        if self._side is not None:
            self._side.close()
            self._side = None
        d, state = self.dialect, self.state
        # One row per marked key, so the statements below join it instead of probing the marks per record.
        self._execute(sql.flags(d)).close()
        self._maybe(d.temp_index("sp_flags", "pk", unique=True))
        self._maybe(d.temp_index("sp_mapsums", "pk", unique=True))
        statements = sql.commit_statements(
            d,
            state,
            self._prev,
            previous_is_copy=self._prev_is_copy,
            deletions=self.mode.detects_deletions and not self._deletions_held,
            now=self._now,
            tombstones_expire=self._now - TOMBSTONE_RETENTION_S,
        )
        conn = self.conn
        try:
            d.begin_commit(conn)
            cursor = conn.cursor()
            cursor.execute(
                sql.move_generation(d, self.meta),
                (
                    self.head_generation + 1,
                    d.name,
                    CHECKSUM_DEFINITION,
                    ",".join(self._used or ()),
                    self._now,
                    self.sync_id,
                    self._start_generation,
                ),
            )
            if cursor.rowcount != 1:
                raise state_error(
                    f"Another run of this sync committed the warehouse state {state} while this run (which "
                    f"started from generation {self._start_generation}) was running; this run's state was not "
                    "committed. Do not run the same sync concurrently.",
                    advice="Retry the task: it starts from the state the other run committed.",
                )
            for statement, parameters in statements:
                if parameters is None:
                    cursor.execute(statement)
                else:
                    cursor.execute(statement, parameters)
            cursor.execute(sql.live_count(state))
            count = int(cursor.fetchone()[0])
            cursor.close()
            d.commit(conn)
        except BaseException:
            d.rollback(conn)
            raise
        return None, count

    def after_commit(self) -> None:
        """Remove the journals the commit accounted for."""
        if self.journal is not None:
            self.journal.discard(self._journal_files)

    def close(self) -> None:
        """Roll back what was not committed and close the connection (its temporary tables go with it)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._side is not None:
                with contextlib.suppress(Exception):
                    self._side.close()
            self.dialect.rollback(self.conn)
        finally:
            with contextlib.suppress(Exception):
                self.conn.close()


__all__ = ["WarehouseChangeDetector", "state_table_name"]
