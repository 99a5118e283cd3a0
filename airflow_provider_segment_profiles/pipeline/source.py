"""
Stage 1, the source: the model's rows as :class:`~.records.Record` chunks.

Runs the model's query through :class:`~.reader.ModelReader` and checks what every later stage relies on:
the unique identifier is not NULL and not repeated within a chunk (repeats across chunks are found by
change detection), and in incremental mode the cursor value can be ordered with the column's others. A
row that fails is rejected as a record, with the column named, and the run goes on.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_segment_profiles.exceptions import WatermarkError
from airflow_provider_segment_profiles.pipeline.config import DEFAULT_FETCH_SIZE
from airflow_provider_segment_profiles.pipeline.detection.checksum import record_key
from airflow_provider_segment_profiles.pipeline.reader import ModelReader
from airflow_provider_segment_profiles.pipeline.records import Record, new
from airflow_provider_segment_profiles.state.watermark import sort_key

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

    from airflow_provider_segment_profiles.pipeline.outcomes import OutcomeSink


def duplicate_reason(column: str, key: str) -> str:
    """The rejection reason of a row whose unique identifier an earlier row of the run already had."""
    return (
        f"duplicate unique identifier: {column} {key!r} appears more than once in the model; the first row "
        "was synced and this one rejected"
    )


def _cursor_kind(key: object) -> str:
    # Numbers and texts (dates and times are compared as ISO-8601 text) have no order between them.
    return "a number" if isinstance(key, int | float) else "text or a date"


class RecordSource:
    """
    The model's rows, checked, in chunks of at most ``fetch_size``.

    :param hook: the warehouse's common-sql hook.
    :param sql: the query to run (the model, or the model wrapped by the mode or the change detector).
    :param parameters: its bind parameters.
    :param primary_key: the unique identifier column.
    :param cursor_column: the incremental cursor column, or ``None``.
    :param outcomes: receives every chunk's count of rows read and every rejected record.
    :param fetch_size: rows per ``fetchmany``.
    :param cursor_start: sort key of the watermark the query starts from, so a first value of another
        kind (a number after texts) is rejected as the others would be.
    :param connection: an open connection to read through instead of a new one (see :class:`ModelReader`).
    """

    def __init__(
        self,
        hook: DbApiHook,
        sql: str,
        parameters: Sequence[Any] | Mapping[str, Any] | None,
        *,
        primary_key: str,
        cursor_column: str | None,
        outcomes: OutcomeSink,
        fetch_size: int = DEFAULT_FETCH_SIZE,
        cursor_start: object = None,
        connection: Any = None,
    ) -> None:
        self.reader = ModelReader(hook, sql, parameters, fetch_size, connection)
        self.primary_key = primary_key
        self.cursor_column = cursor_column
        self.outcomes = outcomes
        #: Rows read so far, rejected ones included.
        self.rows_read = 0
        self.columns: list[str] = []
        self._cursor_kind = _cursor_kind(cursor_start) if cursor_start is not None else None

    def open(self) -> list[str]:
        """
        Run the query and return the result's column names.

        :raises ModelQueryError: the database refused the query, or it returns no result set.
        """
        self.columns = self.reader.open()
        return self.columns

    def column_problems(self) -> list[str]:
        """Problems with the result's columns that the source itself depends on."""
        from airflow_provider_segment_profiles.actions.mapping import column_hint

        problems = []
        for setting, column in (("primary_key", self.primary_key), ("cursor_column", self.cursor_column)):
            if column is not None and column not in self.columns:
                problems.append(
                    f"{setting} {column!r} is not a column of the model's result{column_hint(column, self.columns)}"
                )
        return problems

    def chunks(self) -> Iterator[list[Record]]:
        """
        Yield the checked records of each chunk read; rejected rows go to ``outcomes``.

        :raises ModelReaderClosed: the reader was closed meanwhile (the task is being killed).
        """
        pk_index = self.columns.index(self.primary_key)
        cursor_index = self.columns.index(self.cursor_column) if self.cursor_column is not None else None
        outcomes = self.outcomes
        for rows in self.reader.chunks():
            outcomes.read(len(rows))
            first_row_number = self.rows_read + 1
            self.rows_read += len(rows)
            records: list[Record] = []
            seen: set[str] = set()
            for position, row in enumerate(rows):
                key = record_key(row[pk_index])
                if key is None:
                    outcomes.reject_record(
                        None,
                        f"the unique identifier {self.primary_key!r} is NULL "
                        f"(row {first_row_number + position} of the result)",
                        self.primary_key,
                    )
                elif key in seen:
                    outcomes.reject_record(key, duplicate_reason(self.primary_key, key), self.primary_key)
                elif cursor_index is None:
                    seen.add(key)
                    records.append(new(Record, (row, key, None, None)))
                else:
                    record = self._with_cursor(row, key, row[cursor_index])
                    if record is not None:
                        seen.add(key)
                        records.append(record)
            yield records

    def _with_cursor(self, row: Sequence[Any], key: str, value: Any) -> Record | None:
        try:
            cursor_key = sort_key(value)
        except WatermarkError as err:
            self.outcomes.reject_record(
                key, f"cursor column {self.cursor_column!r}: {err}", self.cursor_column
            )
            return None
        kind = _cursor_kind(cursor_key)
        if self._cursor_kind is None:
            self._cursor_kind = kind
        elif kind != self._cursor_kind:
            self.outcomes.reject_record(
                key,
                f"cursor column {self.cursor_column!r}: {value!r} is {kind} but the column's other values "
                f"are {self._cursor_kind}; they cannot be ordered together",
                self.cursor_column,
            )
            return None
        return Record(row, key, value, cursor_key)

    def close(self) -> None:
        """Close the cursor and connection; safe to call twice and from another thread (``on_kill``)."""
        self.reader.close()
