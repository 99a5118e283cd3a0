"""
The SQL of the warehouse engine (:mod:`.engine`), built without a connection: the engine executes these
statements, and :func:`render_statements` lists them for one dialect, model and set of mappings (the golden
files under ``tests/golden/warehouse_sql`` and the dialects that are generated only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow_provider_segment_profiles.pipeline.detection.warehouse.dialects import (
    CHECKSUM_DEFINITION,
    Dialect,
)

FAILED, REJECTED, DELETE_FAILED = 1, 2, 3

#: Columns of the state table and of its temporary copy, with the engine's types.
STATE_COLUMNS = (
    ("pk", "TEXT"),
    ("checksum", "TEXT"),
    ("version", "BIGINT"),
    ("uncertain", "SMALLINT"),
    ("pending", "SMALLINT"),
    ("deleted_at", "BIGINT"),
    ("mapping_checksums", "LONG_TEXT"),
)
_STATE_LIST = "pk, checksum, version, uncertain, pending, deleted_at, mapping_checksums"
#: The state's columns before per-mapping checksums (a state committed by an earlier release has these).
_STATE_LIST_V1 = "pk, checksum, version, uncertain, pending, deleted_at"


def wrap_model(statement: str) -> str:
    """
    The model as a derived table named ``sp_m``.

    :param statement: the model's SQL.
    """
    return f"(\n{statement}\n) sp_m"


def probe_model(model: str) -> str:
    """
    The query that describes the model's columns without reading a row.

    :param model: the model from :func:`wrap_model`.
    """
    return f"SELECT * FROM {model} WHERE 1 = 0"


def materialise_model(
    dialect: Dialect, model: str, primary_key: str, seed: str, used: Sequence[str], types: Sequence[Any]
) -> str:
    """
    ``sp_model``: the model as its rows' identifiers (as text), checksums and positions only, no column of
    its own: the diff needs no more, and a model whose rows did not change is never written out whole.

    :param dialect: the warehouse's dialect.
    :param model: the model from :func:`wrap_model`.
    :param primary_key: the unique identifier column.
    :param seed: the mappings' fingerprints, ``|``-joined.
    :param used: the columns the checksum covers.
    :param types: the result types of ``used`` (as the cursor's description gives them).
    """
    key = dialect.key_sql(f"sp_m.{dialect.quote(primary_key)}")
    checksum = dialect.checksum_sql(seed, used, types)
    return dialect.create_temp_as(
        "sp_model",
        f"SELECT {key} AS __sp_key, {checksum} AS __sp_checksum, {dialect.position_sql()} AS __sp_pos "
        f"FROM {model}",
    )


def materialise_changed(
    dialect: Dialect,
    model: str,
    primary_key: str,
    seed: str,
    used: Sequence[str],
    types: Sequence[Any],
    *,
    empty: bool = False,
) -> str:
    """
    ``sp_rows``: the model read again, only the rows of the added and updated records, with every column,
    the identifier and the checksum recomputed from this reading. The rows sent and the checksums committed
    both come from this table, so a row that changed between the two readings is sent and committed as
    read here; a record the second reading no longer has is neither sent nor committed (the next run sees
    it). ``__sp_row`` tells the rows of a repeated identifier apart (:func:`keep_first_of_repeats`).

    :param dialect: the warehouse's dialect.
    :param model: the model from :func:`wrap_model`.
    :param primary_key: the unique identifier column.
    :param seed: the mappings' fingerprints, ``|``-joined.
    :param used: the columns the checksum covers.
    :param types: the result types of ``used``.
    :param empty: nothing changed: the table is created with no row, without reading the model.
    """
    key = dialect.key_sql(f"sp_m.{dialect.quote(primary_key)}")
    checksum = dialect.checksum_sql(seed, used, types)
    diff_table = dialect.temp_table("sp_diff")
    return dialect.create_temp_as(
        "sp_rows",
        f"SELECT sp_m.*, {key} AS __sp_key, {checksum} AS __sp_checksum, {dialect.position_sql()} AS __sp_row "
        f"FROM {model} JOIN {diff_table} d ON d.pk = {key} AND d.kind <> 'deleted'"
        + (" WHERE 1 = 0" if empty else ""),
    )


def keep_first_of_repeats(dialect: Dialect) -> list[str]:
    """
    Where an identifier repeats in ``sp_rows``, keep the one row whose checksum is the one the diff kept (the
    identifier's first row in the first reading; the others are rejected as repeats there), once; an
    identifier none of whose rows has it is left out (not sent, not committed: the next run sees it). An
    identifier read once is kept as read. Reads ``sp_rows`` only, so it costs what changed.

    :param dialect: the warehouse's dialect.
    """
    return dialect.keep_one_row_per_key(dialect.temp_table("sp_rows"), dialect.temp_table("sp_cur"))


def null_keys(dialect: Dialect) -> str:
    """
    The positions of the rows whose identifier is NULL.

    :param dialect: the warehouse's dialect.
    """
    return f"SELECT __sp_pos FROM {dialect.temp_table('sp_model')} WHERE __sp_key IS NULL ORDER BY __sp_pos"


def current_records(dialect: Dialect, without_repeats: bool) -> str:
    """
    ``sp_cur``: the records of the model, one per identifier.

    :param dialect: the warehouse's dialect.
    :param without_repeats: keep only the first row of a repeated identifier (needed when one repeats).
    """
    model = dialect.temp_table("sp_model")
    select = f"SELECT __sp_key AS pk, __sp_checksum AS checksum, __sp_pos AS pos FROM {model} WHERE __sp_key IS NOT NULL"
    if without_repeats:
        select = dialect.first_per_key(select, model)
    return dialect.create_temp_as("sp_cur", select)


def repeated_keys(dialect: Dialect) -> str:
    """
    The repeated identifiers and how many extra rows each has, in the order they first appear.

    :param dialect: the warehouse's dialect.
    """
    return (
        f"SELECT __sp_key, count(*) - 1 FROM {dialect.temp_table('sp_model')} WHERE __sp_key IS NOT NULL "
        "GROUP BY __sp_key HAVING count(*) > 1 ORDER BY min(__sp_pos)"
    )


def empty_previous(dialect: Dialect) -> str:
    """
    ``sp_prev`` with no records (first run or full refresh).

    :param dialect: the warehouse's dialect.
    """
    return dialect.create_temp("sp_prev", STATE_COLUMNS)


def copy_previous(dialect: Dialect, state: str, *, has_mapping_checksums: bool = True) -> str:
    """
    ``sp_prev`` as a copy of the state table.

    :param dialect: the warehouse's dialect.
    :param state: the state table's qualified name.
    :param has_mapping_checksums: the state has the ``mapping_checksums`` column (``False``: a state an
        earlier release committed, read by a dry run, which does not upgrade it; the copy has NULL there).
    """
    if has_mapping_checksums:
        return dialect.create_temp_as("sp_prev", f"SELECT {_STATE_LIST} FROM {state}")
    empty = f"CAST(NULL AS {dialect.sql_type('LONG_TEXT')})"
    return dialect.create_temp_as(
        "sp_prev", f"SELECT {_STATE_LIST_V1}, {empty} AS mapping_checksums FROM {state}"
    )


def add_mapping_checksums(dialect: Dialect, state: str) -> str:
    """
    Upgrade a state an earlier release committed: add its ``mapping_checksums`` column (NULL: the
    per-mapping view of those records is unknown until they next change; see ``docs/change-detection.md``).

    :param dialect: the warehouse's dialect.
    :param state: the state table's qualified name.
    """
    return f"ALTER TABLE {state} ADD COLUMN mapping_checksums {dialect.sql_type('LONG_TEXT')}"


def journal_table(dialect: Dialect) -> str:
    """
    ``sp_journal``: the records journaled by tries that did not commit.

    :param dialect: the warehouse's dialect.
    """
    return dialect.create_temp("sp_journal", (("pk", "TEXT"), ("version", "BIGINT")))


def fold_journal(dialect: Dialect) -> list[str]:
    """
    Fold the journaled records into ``sp_prev``: uncertain when live, unconfirmed adds otherwise.

    :param dialect: the warehouse's dialect.
    """
    prev, journal = dialect.temp_table("sp_prev"), dialect.temp_table("sp_journal")
    return [
        f"UPDATE {prev} SET uncertain = 1 WHERE deleted_at IS NULL AND pk IN (SELECT pk FROM {journal})",
        f"DELETE FROM {prev} WHERE deleted_at IS NOT NULL AND pk IN (SELECT pk FROM {journal})",
        *dialect.insert_unconfirmed_adds(prev, journal, _STATE_LIST),
    ]


def diff(dialect: Dialect, previous: str) -> str | list[str]:
    """
    ``sp_diff``, from one full outer join of this run's records with the state: the added and updated
    records (their versions and what Segment held before) and the deleted ones (no position).

    :param dialect: the warehouse's dialect.
    :param previous: what this run compares against (the state table, or ``sp_prev``).
    """
    live = "p.pk IS NOT NULL AND p.deleted_at IS NULL"
    unchanged = (
        f"{live} AND p.checksum IS NOT NULL AND p.checksum = c.checksum AND p.uncertain = 0 AND p.pending = 0"
    )
    # The version of the change this run sends: the next one after what Segment holds (after a
    # tombstone's), except for an unconfirmed add, sent again under the version it was first sent with.
    version = (
        "CASE WHEN c.pk IS NULL THEN coalesce(p.version, 0) + 1 "
        "WHEN p.pk IS NULL THEN 1 WHEN p.deleted_at IS NOT NULL THEN coalesce(p.version, 0) + 1 "
        f"WHEN p.checksum IS NULL THEN {dialect.greatest('coalesce(p.version, 1)', '1')} "
        "ELSE coalesce(p.version, 0) + 1 END"
    )
    return dialect.full_outer_join_as(
        "sp_diff",
        "SELECT c.pos AS pos, coalesce(c.pk, p.pk) AS pk, c.checksum AS checksum, "
        f"CASE WHEN {live} THEN p.checksum END AS prev_checksum, "
        f"CASE WHEN {live} THEN p.version END AS prev_version, {version} AS version, "
        "CASE WHEN c.pk IS NULL THEN 'deleted' "
        f"WHEN {live} AND p.checksum IS NOT NULL THEN 'updated' ELSE 'added' END AS kind, "
        f"CASE WHEN {live} AND p.pending = 1 AND p.uncertain = 0 THEN 1 ELSE 0 END AS pending, "
        f"CASE WHEN {live} THEN p.uncertain ELSE 0 END AS uncertain, "
        f"CASE WHEN {live} THEN p.mapping_checksums END AS prev_mapping_checksums",
        dialect.temp_table("sp_cur"),
        previous,
        f"c.pk IS NOT NULL AND NOT ({unchanged})",
        "c.pk IS NULL AND p.deleted_at IS NULL",
    )


def marks_table(dialect: Dialect) -> str:
    """
    ``sp_marks``: settling's marks (failed, rejected, delete failed) per identifier.

    :param dialect: the warehouse's dialect.
    """
    return dialect.create_temp("sp_marks", (("pk", "TEXT"), ("mark", "INTEGER")))


def mapping_checksums_table(dialect: Dialect) -> str:
    """
    ``sp_mapsums``: per fetched record, the packed per-mapping checksums the worker computed from its
    values (:class:`~..checksum.MappingChecksums`, in hex): ``current`` (of the values read now), ``kept``
    (the held ones that are still current: what Segment holds if this run's sends are held back) and
    ``unchanged`` (1: no followed mapping's inputs changed, nothing was sent for it).

    :param dialect: the warehouse's dialect.
    """
    return dialect.create_temp(
        "sp_mapsums",
        (("pk", "TEXT"), ("current", "LONG_TEXT"), ("kept", "LONG_TEXT"), ("unchanged", "SMALLINT")),
    )


def changed_rows(dialect: Dialect, columns: Sequence[str]) -> str:
    """
    The query the source reads: the model's columns of the added and updated rows, in the model's order.

    :param dialect: the warehouse's dialect.
    :param columns: the model's columns.
    """
    selected = ", ".join(f"m.{dialect.quote(c)}" for c in columns)
    return f"SELECT {selected} FROM {_rows_with_diff(dialect)} ORDER BY d.pos"


def _rows_with_diff(dialect: Dialect) -> str:
    """The join both :func:`changed_rows` and :func:`classifications` read, so their rows line up."""
    return f"{dialect.temp_table('sp_rows')} m JOIN {dialect.temp_table('sp_diff')} d ON d.pk = m.__sp_key"


def classifications(dialect: Dialect) -> str:
    """
    The classification of the rows :func:`changed_rows` returns, in the same order.

    :param dialect: the warehouse's dialect.
    """
    return (
        "SELECT d.pk, m.__sp_checksum, d.version, d.kind, d.pending, d.uncertain, d.prev_mapping_checksums "
        f"FROM {_rows_with_diff(dialect)} ORDER BY d.pos"
    )


def deleted_rows(dialect: Dialect) -> str:
    """
    The committed records this run did not read.

    :param dialect: the warehouse's dialect.
    """
    return (
        f"SELECT pk, prev_checksum, version FROM {dialect.temp_table('sp_diff')} WHERE kind = 'deleted' "
        "ORDER BY pk"
    )


def flags(dialect: Dialect) -> str:
    """
    ``sp_flags``: one row per marked identifier, so the commit joins it instead of probing the marks.

    :param dialect: the warehouse's dialect.
    """
    return dialect.create_temp_as(
        "sp_flags",
        "SELECT pk, "
        f"max(CASE WHEN mark = {FAILED} THEN 1 ELSE 0 END) AS failed, "
        f"max(CASE WHEN mark = {REJECTED} THEN 1 ELSE 0 END) AS rejected, "
        f"max(CASE WHEN mark = {DELETE_FAILED} THEN 1 ELSE 0 END) AS delete_failed "
        f"FROM {dialect.temp_table('sp_marks')} GROUP BY pk",
    )


def move_generation(dialect: Dialect, meta: str) -> str:
    """
    The commit's first statement: move the sync's generation from the one this run started from.
    Parameters: new generation, dialect, checksum definition, used columns, now, sync id, start generation.

    :param dialect: the warehouse's dialect.
    :param meta: the metadata table's qualified name.
    """
    ph = dialect.ph
    return (
        f"UPDATE {meta} SET generation = {ph}, dialect = {ph}, definition = {ph}, used_columns = {ph}, "
        f"updated_at = {ph} WHERE sync_id = {ph} AND generation = {ph}"
    )


def commit_statements(
    dialect: Dialect,
    state: str,
    previous: str,
    *,
    previous_is_copy: bool,
    deletions: bool,
    now: int,
    tombstones_expire: int,
) -> list[tuple[str, tuple[Any, ...] | None]]:
    """
    The statements (and their parameters) that apply this run's changes to the state, after
    :func:`move_generation`, in the commit's transaction.

    :param dialect: the warehouse's dialect.
    :param state: the state table's qualified name.
    :param previous: what this run compared against.
    :param previous_is_copy: ``previous`` is ``sp_prev``: the state is rewritten from it first.
    :param deletions: this run's deletions are applied (the mode detects them and they were not held).
    :param now: the run's time (seconds), the tombstones' ``deleted_at``.
    :param tombstones_expire: tombstones deleted at or before this time are removed.
    """
    ph, diff_table, flags_table = dialect.ph, dialect.temp_table("sp_diff"), dialect.temp_table("sp_flags")
    mapsums = dialect.temp_table("sp_mapsums")
    failed = "coalesce(f.failed, 0) = 1"
    unchanged = "coalesce(s.unchanged, 0) = 1"
    held_back = "(coalesce(f.failed, 0) = 1 OR coalesce(f.rejected, 0) = 1)"
    statements: list[tuple[str, tuple[Any, ...] | None]] = []
    if previous_is_copy:
        statements += [
            (dialect.delete_all(state), None),
            (f"INSERT INTO {state} ({_STATE_LIST}) SELECT {_STATE_LIST} FROM {previous}", None),
        ]
    # Only the records the run read again (sp_rows): one the second reading no longer had keeps its state.
    rows = dialect.temp_table("sp_rows")
    statements += [
        (f"DELETE FROM {state} WHERE pk IN (SELECT __sp_key FROM {rows})", None),
        (
            f"INSERT INTO {state} ({_STATE_LIST}) "
            f"SELECT d.pk, CASE WHEN {held_back} THEN d.prev_checksum ELSE r.__sp_checksum END, "
            f"CASE WHEN {unchanged} OR ({held_back} AND d.prev_checksum IS NOT NULL) THEN d.prev_version "
            "ELSE d.version END, "
            f"CASE WHEN {failed} AND d.prev_checksum IS NOT NULL THEN 1 ELSE 0 END, "
            f"coalesce(f.rejected, 0), NULL, CASE WHEN {held_back} THEN s.kept ELSE s.current END "
            f"FROM {rows} r JOIN {diff_table} d ON d.pk = r.__sp_key LEFT JOIN {flags_table} f ON f.pk = d.pk "
            f"LEFT JOIN {mapsums} s ON s.pk = d.pk",
            None,
        ),
    ]
    if deletions:
        failed_deletes = f"SELECT pk FROM {flags_table} WHERE delete_failed = 1"
        statements += [
            (f"UPDATE {state} SET uncertain = 1, pending = 0 WHERE pk IN ({failed_deletes})", None),
            (
                f"UPDATE {state} SET checksum = NULL, version = coalesce(version, 0) + 1, uncertain = 0, "
                f"pending = 0, deleted_at = {ph}, mapping_checksums = NULL WHERE pk IN (SELECT pk FROM {diff_table} WHERE kind = 'deleted') "
                f"AND pk NOT IN ({failed_deletes})",
                (now,),
            ),
        ]
    statements.append(
        (f"DELETE FROM {state} WHERE deleted_at IS NOT NULL AND deleted_at <= {ph}", (tombstones_expire,))
    )
    return statements


def live_count(state: str) -> str:
    """
    The number of live records in the state, after the commit.

    :param state: the state table's qualified name.
    """
    return f"SELECT count(*) FROM {state} WHERE deleted_at IS NULL"


def _numbered(step: str, statements: str | list[str]) -> list[tuple[str, str]]:
    """One step's statement, or its statements as ``step_0``, ``step_1``, ... where a dialect needs several."""
    if isinstance(statements, str):
        return [(step, statements)]
    if len(statements) == 1:
        return [(step, statements[0])]
    return [(f"{step}_{i}", statement) for i, statement in enumerate(statements)]


def render_statements(
    dialect: Dialect,
    model_sql: str,
    columns: Sequence[str],
    types: Sequence[Any],
    *,
    primary_key: str,
    fingerprints: Sequence[str],
    used_columns: Sequence[str] | None = None,
    state_schema: str = "segment_profiles",
    state_table: str = "sp_sync",
    sync_id: str = "dag/task/-1",
    full_refresh: bool = False,
    journal: bool = False,
    deletions: bool = True,
    now: int = 0,
    tombstone_retention_s: int = 0,
) -> list[tuple[str, str]]:
    """
    The statements the engine runs for one model, as ``(step, SQL)`` pairs in the order it runs them, built
    by the functions the engine executes (bind parameters stay placeholders). Rendered is the path where an
    identifier repeats (where the warehouse has unique indexes, the engine first tries ``sp_cur`` without
    the de-duplication, inside a savepoint). A run on a state that exists compares against the state table;
    a first run or ``full_refresh`` against an empty ``sp_prev``, and a run after a killed try against a
    copy of the state with the journal folded in; both then rewrite the state from ``sp_prev``.

    :param dialect: the warehouse's dialect (a generated-only one included).
    :param model_sql: the model's SQL.
    :param columns: the model's columns, in order.
    :param types: the result type of each column (a name, e.g. ``"TEXT"``; it goes into the checksum header).
    :param primary_key: the unique identifier column.
    :param fingerprints: the mappings' fingerprints.
    :param used_columns: the columns the checksum covers (``None``: all of them).
    :param state_schema: the state schema (table-name prefix on SQLite).
    :param state_table: the state table's name.
    :param sync_id: the sync's id in the metadata table.
    :param full_refresh: render a first run or full refresh instead.
    :param journal: render a run that folds in the journal of a try that did not commit.
    :param deletions: render the statements that apply deletions.
    :param now: the run's time.
    :param tombstone_retention_s: how long tombstones are kept.
    """
    used = list(columns) if used_columns is None else list(used_columns)
    by_name = dict(zip(columns, types, strict=True))
    state, meta = dialect.table(state_schema, state_table), dialect.table(state_schema, "syncs")
    model = wrap_model(model_sql)
    steps: list[tuple[str, str | None]] = [
        (f"session_{i}", s) for i, s in enumerate(dialect.session_settings())
    ]
    steps += [
        ("meta_ddl", dialect.meta_ddl(meta)),
        ("state_ddl", dialect.state_ddl(state)),
        ("tombstone_index", dialect.tombstone_index_ddl(state_schema, state_table)),
        ("insert_meta", dialect.insert_ignore_meta(meta, sync_id, state_table)[0]),
        ("probe_model", probe_model(model)),
        (
            "materialise_model",
            materialise_model(
                dialect, model, primary_key, "|".join(fingerprints), used, [by_name[c] for c in used]
            ),
        ),
        ("null_keys", null_keys(dialect)),
        ("repeated_keys", repeated_keys(dialect)),
        ("current_records", current_records(dialect, without_repeats=True)),
        ("current_index", dialect.temp_index("sp_cur", "pk", unique=True)),
        ("analyze_current", dialect.analyze("sp_cur")),
    ]
    previous = state
    if full_refresh or journal:
        previous = dialect.temp_table("sp_prev")
        steps.append(
            ("empty_previous", empty_previous(dialect))
            if full_refresh
            else ("copy_previous", copy_previous(dialect, state))
        )
        if journal:
            steps.append(("journal", journal_table(dialect)))
            steps += [(f"fold_journal_{i}", statement) for i, statement in enumerate(fold_journal(dialect))]
        steps.append(("previous_index", dialect.temp_index("sp_prev", "pk", unique=True)))
    steps += [
        *_numbered("diff", diff(dialect, previous)),
        ("diff_index", dialect.temp_index("sp_diff", "pos")),
        ("diff_key_index", dialect.temp_index("sp_diff", "pk", unique=True)),
        ("marks", marks_table(dialect)),
        ("mapping_checksums", mapping_checksums_table(dialect)),
        ("analyze_diff", dialect.analyze("sp_diff")),
        (
            "materialise_changed",
            materialise_changed(
                dialect, model, primary_key, "|".join(fingerprints), used, [by_name[c] for c in used]
            ),
        ),
        *_numbered("keep_first_of_repeats", keep_first_of_repeats(dialect)),
        ("rows_index", dialect.temp_index("sp_rows", "__sp_key", unique=True)),
        ("analyze_rows", dialect.analyze("sp_rows")),
        ("changed_rows", changed_rows(dialect, columns)),
        ("classifications", classifications(dialect)),
        ("deleted_rows", deleted_rows(dialect)),
        ("flags", flags(dialect)),
        ("flags_index", dialect.temp_index("sp_flags", "pk", unique=True)),
        ("mapping_checksums_index", dialect.temp_index("sp_mapsums", "pk", unique=True)),
        ("move_generation", move_generation(dialect, meta)),
    ]
    commit = commit_statements(
        dialect,
        state,
        previous,
        previous_is_copy=full_refresh or journal,
        deletions=deletions,
        now=now,
        tombstones_expire=now - tombstone_retention_s,
    )
    steps += [(f"commit_{i}", sql) for i, (sql, _parameters) in enumerate(commit)]
    steps.append(("live_count", live_count(state)))
    return [(step, sql) for step, sql in steps if sql is not None]


__all__ = ["CHECKSUM_DEFINITION", "render_statements"]
