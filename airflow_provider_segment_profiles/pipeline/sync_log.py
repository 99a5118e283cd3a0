"""
The sync log: one row per message outcome, appended to a table in the model's own warehouse
(``sync_log_table``), so support can answer "why did customer X not update?" with one query.

What a row holds: the DAG, task, map index, run id and try; the mapping, the record's unique identifier,
the change (added, updated, deleted), the outcome (delivered, rejected, failed, or any other outcome a
stage reports through :meth:`SyncLog.record`), the reason, the failing field, the message id and the time
it was settled. Never a payload value: a rejection by the mapping's validation (whose wording may quote
the value) is logged as ``invalid value`` with its field, and the run's NDJSON report keeps the full
reason; delivery reasons are Segment's answer or the network error, already scrubbed of the write key by
the hook, and no row holds anything else of the connection.

Rows are collected while the run settles messages (spilled to a temporary file beyond
:data:`SPOOL_ROWS`, so memory stays bounded) and written once the run is over, when the model's cursor is
closed: one transaction that creates the table if absent and inserts every row with the driver's
``executemany`` in batches of :data:`BATCH_ROWS` (``psycopg2``'s ``execute_values``, since its
``executemany`` runs one statement per row). A write that fails is a warning in the task log, never a
failed sync: what was delivered stays delivered and committed.

The run hands the stages the sync log as one of its :class:`~.outcomes.OutcomeSinks`: it keeps the
message outcomes (:meth:`SyncLog.message`, :meth:`SyncLog.settled`) and ignores the others. With
``sync_log_table`` unset nothing here runs: the per-message path carries one ``None`` more.
"""

from __future__ import annotations

import contextlib
import pickle
import re
import tempfile
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

from airflow_provider_segment_profiles.common.outcomes import Outcome
from airflow_provider_segment_profiles.exceptions import ConfigurationError

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

    from airflow_provider_segment_profiles.delivery.dispatcher import Completion
    from airflow_provider_segment_profiles.pipeline.outcomes import BuiltOutcome

#: The table's columns, in order.
COLUMNS = (
    "dag_id",
    "task_id",
    "map_index",
    "run_id",
    "try_number",
    "mapping",
    "primary_key",
    "change_kind",
    "outcome",
    "reason",
    "field",
    "message_id",
    "logged_at",
)
#: Rows kept in memory before they are spilled to the temporary file.
SPOOL_ROWS = 50_000
#: Rows per ``executemany`` call.
BATCH_ROWS = 5_000
#: Longest reason kept (delivery reasons carry Segment's error body).
MAX_REASON = 1_000
#: What a rejection by the mapping's validation is logged as (the report has Segment's wording).
INVALID_VALUE = "invalid value"

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_$]*"
_TABLE_NAME = re.compile(rf"{_IDENTIFIER}(\.{_IDENTIFIER}){{0,2}}")
#: dialect name -> (text, integer, timestamp) column types; others get the first entry's.
_TYPES = {
    "default": ("TEXT", "INTEGER", "TIMESTAMP"),
    "postgresql": ("TEXT", "INTEGER", "TIMESTAMPTZ"),
    "postgres": ("TEXT", "INTEGER", "TIMESTAMPTZ"),
    "bigquery": ("STRING", "INT64", "TIMESTAMP"),
    "mssql": ("NVARCHAR(4000)", "INTEGER", "DATETIMEOFFSET"),
}


def check_table_name(name: str) -> str:
    """
    The sync log's table name as given: ``table``, ``schema.table`` or ``database.schema.table``, each part
    a plain SQL identifier (it is written into SQL unquoted, so the warehouse folds its case as usual).

    :raises ConfigurationError: any other text.
    """
    if not isinstance(name, str) or not _TABLE_NAME.fullmatch(name):
        raise ConfigurationError(
            f"sync_log_table must be table, schema.table or database.schema.table of letters, digits, "
            f"_ and $ (not starting with a digit), not {name!r}"
        )
    return name


class SyncLog:
    """
    Collects one row per message outcome of a run and writes them to ``table`` afterwards.

    :param hook: the model's warehouse hook (the table lives next to the model).
    :param table: the table (:func:`check_table_name`).
    :param dag_id: the DAG id; ``task_id``, ``map_index``, ``run_id`` and ``try_number`` likewise.
    :param log: the task's logger.
    """

    def __init__(
        self,
        hook: DbApiHook,
        table: str,
        *,
        dag_id: str,
        task_id: str,
        map_index: int,
        run_id: str,
        try_number: int,
        log: Any,
    ) -> None:
        self.hook = hook
        self.table = check_table_name(table)
        self.log = log
        self._run = (dag_id, task_id, map_index, run_id, try_number)
        self._rows: list[tuple[Any, ...]] = []
        self._spill: IO[bytes] | None = None
        self._spilled = 0
        self._sqlite = getattr(hook, "dialect_name", "") == "sqlite"

    @classmethod
    def for_task_instance(cls, hook: DbApiHook, table: str, ti: Any, log: Any) -> SyncLog:
        """The sync log of one try of a task instance ``ti`` (its ids are the rows' first columns)."""
        return cls(
            hook,
            table,
            dag_id=ti.dag_id,
            task_id=ti.task_id,
            map_index=getattr(ti, "map_index", -1),
            run_id=str(ti.run_id),
            try_number=int(ti.try_number or 0),
            log=log,
        )

    @property
    def rows(self) -> int:
        """Rows collected so far."""
        return self._spilled + len(self._rows)

    def _now(self) -> Any:
        now = datetime.now(UTC)
        # sqlite3's default datetime adapter is deprecated (Python 3.12): SQLite keeps ISO-8601 text.
        return now.isoformat(sep=" ") if self._sqlite else now

    def settled(self, completions: Sequence[Completion]) -> None:
        """Log every completion the settling stage settles (delivered, failed, rejected by delivery)."""
        now = self._now()
        rows = self._rows
        for done in completions:
            ref = done.ref
            message_id = getattr(ref, "message_id", None)  # by name: a ref without the field logs none
            reason = done.reason[:MAX_REASON] if done.reason else None
            rows.append(
                (ref.mapping, ref.key, str(ref.kind), str(done.outcome), reason, None, message_id, now)
            )
        if len(rows) >= SPOOL_ROWS:
            self._spill_rows()

    def message(self, ended: BuiltOutcome) -> None:
        """
        Log a message that ended while it was built (:meth:`.OutcomeSink.message`): a rejection as
        :meth:`rejected` (its reason may quote the value), any other outcome with its reason.
        """
        if ended.outcome == Outcome.REJECTED:
            self.rejected(ended.mapping, ended.primary_key, ended.kind, ended.field)
        else:
            self.record(
                ended.mapping, ended.outcome, ended.primary_key, ended.kind, ended.reason, field=ended.field
            )

    def _not_logged(self, *_args: Any, **_kwargs: Any) -> None:
        """Rows read, records classified or rejected, selected messages and warnings: no message outcome."""

    read = classified = reject_record = selected = warn = _not_logged

    def rejected(self, mapping: str, primary_key: str, change: str, field: str | None) -> None:
        """Log a message the mapping's validation rejected (no message was built, so no message id)."""
        self.record(mapping, "rejected", primary_key, change, INVALID_VALUE, field=field)

    def record(
        self,
        mapping: str,
        outcome: str,
        primary_key: str,
        change: str,
        reason: str | None = None,
        *,
        field: str | None = None,
        message_id: str | None = None,
    ) -> None:
        """
        Log one outcome reported outside the settling stage (a rejection while building, or another
        outcome such as a skipped message). ``reason`` must not quote a payload value.
        """
        self._rows.append(
            (
                mapping,
                primary_key,
                str(change),
                str(outcome),
                reason[:MAX_REASON] if reason else None,
                field,
                message_id,
                self._now(),
            )
        )
        if len(self._rows) >= SPOOL_ROWS:
            self._spill_rows()

    def _spill_rows(self) -> None:
        if self._spill is None:
            self._spill = tempfile.TemporaryFile(prefix="segment_profiles_sync_log_")  # noqa: SIM115 - closed by close()
        pickle.dump(self._rows, self._spill, protocol=pickle.HIGHEST_PROTOCOL)
        self._spilled += len(self._rows)
        self._rows = []

    def _batches(self) -> Iterator[list[tuple[Any, ...]]]:
        prefix = self._run
        if self._spill is not None:
            self._spill.seek(0)
            while True:
                try:
                    chunk = pickle.load(self._spill)
                except EOFError:
                    break
                for start in range(0, len(chunk), BATCH_ROWS):
                    yield [prefix + row for row in chunk[start : start + BATCH_ROWS]]
        for start in range(0, len(self._rows), BATCH_ROWS):
            yield [prefix + row for row in self._rows[start : start + BATCH_ROWS]]

    def create_sql(self) -> str:
        """``CREATE TABLE IF NOT EXISTS`` of the table, in the warehouse's column types."""
        text, integer, timestamp = _TYPES.get(getattr(self.hook, "dialect_name", ""), _TYPES["default"])
        types = {"map_index": integer, "try_number": integer, "logged_at": timestamp}
        columns = ", ".join(f"{name} {types.get(name, text)}" for name in COLUMNS)
        return f"CREATE TABLE IF NOT EXISTS {self.table} ({columns})"

    def write(self) -> int:
        """
        Create the table if absent and append every collected row, in one transaction.

        Never raises: a failure is logged as a warning (the sync it describes already happened) and the
        rows are dropped; the run's report file keeps every rejected and failed message.

        :return: rows written (0 when the write failed).
        """
        total = self.rows
        try:
            if total:
                self._write()
                self.log.info("Sync log: appended %d rows to %s", total, self.table)
            return total
        except Exception as err:
            self.log.warning(
                "Sync log: could not append %d rows to %s (%s: %s); the sync itself is unaffected, and the "
                "run's report file lists every rejected and failed message",
                total,
                self.table,
                type(err).__name__,
                err,
            )
            return 0
        finally:
            self.close()

    def _write(self) -> None:
        placeholder = getattr(self.hook, "placeholder", "%s") or "%s"
        insert = (
            f"INSERT INTO {self.table} ({', '.join(COLUMNS)}) "
            f"VALUES ({', '.join([placeholder] * len(COLUMNS))})"
        )
        conn = self.hook.get_conn()
        try:
            execute_values = _psycopg2_execute_values(conn)
            cursor = conn.cursor()
            try:
                cursor.execute(self.create_sql())
                for batch in self._batches():
                    if execute_values is not None:
                        execute_values(
                            cursor,
                            f"INSERT INTO {self.table} ({', '.join(COLUMNS)}) VALUES %s",
                            batch,
                            page_size=BATCH_ROWS,
                        )
                    else:
                        cursor.executemany(insert, batch)
                conn.commit()
            except BaseException:
                with contextlib.suppress(Exception):
                    conn.rollback()
                raise
            finally:
                with contextlib.suppress(Exception):
                    cursor.close()
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        """Drop the collected rows and the temporary file."""
        self._rows = []
        if self._spill is not None:
            self._spill.close()
            self._spill = None
        self._spilled = 0


def _psycopg2_execute_values(conn: Any) -> Any:
    """``psycopg2.extras.execute_values`` for a psycopg2 connection, else ``None``."""
    if not type(conn).__module__.startswith("psycopg2"):
        return None
    try:
        from psycopg2.extras import execute_values
    except ImportError:
        return None
    return execute_values
