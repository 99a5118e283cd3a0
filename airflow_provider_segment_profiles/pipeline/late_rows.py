"""
Rows that arrive behind the incremental watermark: incremental mode reads only rows at or past the saved
watermark, so a row added later with an older cursor value is never read. They are counted, not lost
silently: each run counts the model's rows behind the watermark it starts from, and commits how many rows
are behind the new watermark (those it counted plus those it read below it); the next run's count beyond
that is the rows that arrived behind the watermark meanwhile (the summary's ``behind_watermark``, and a
warning in the log). Rows removed from the model meanwhile offset it (the count never goes below 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

    from airflow_provider_segment_profiles.state.location import SyncState

#: The key of the count in the committed state's ``extra``.
STATE_KEY = "rows_behind_watermark"


def count_behind(
    hook: DbApiHook,
    statement: str,
    parameters: Sequence[Any] | Mapping[str, Any] | None,
    cursor_column: str,
    watermark: Any,
    log: Any,
) -> int | None:
    """
    The model's rows whose ``cursor_column`` is below ``watermark`` (one ``count(*)`` query), or ``None``
    when the query fails (logged: the count is a diagnostic, the sync goes on).
    """
    from airflow_provider_segment_profiles.pipeline.reader import with_watermark_filter

    sql, bound = with_watermark_filter(
        statement, cursor_column, watermark, parameters, hook, comparison="<", select="count(*)"
    )
    try:
        row = hook.get_first(sql, bound)
    except Exception as err:
        log.warning(
            "Could not count the rows behind the incremental watermark (%s: %s)", type(err).__name__, err
        )
        return None
    return int(row[0]) if row else 0


def arrived_behind(previous: SyncState | None, counted: int | None) -> int | None:
    """Rows that arrived behind the watermark since ``previous`` was committed (``None``: unknown)."""
    committed = previous.extra.get(STATE_KEY) if previous is not None else None
    if committed is None or counted is None:
        return None
    return max(0, counted - int(committed))


def warn(log: Any, count: int, cursor_column: str, watermark: Any) -> None:
    """Say that rows arrived behind the watermark and were not read."""
    log.warning(
        "%s rows arrived behind the incremental watermark since the last run (%s < %r): incremental mode "
        "does not read them, so they are not sent. Make %s the time a row is added to the model (not the "
        "time its event happened), so that new rows never fall behind it.",
        f"{count:,}",
        cursor_column,
        watermark,
        cursor_column,
    )


__all__ = ["STATE_KEY", "arrived_behind", "count_behind", "warn"]
