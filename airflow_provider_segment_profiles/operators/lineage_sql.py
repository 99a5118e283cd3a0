"""
The model's SQL parsed for lineage, working around ``openlineage_sql`` losing tables read in CTEs.

``openlineage_sql.parse`` (1.54.0, the parser the OpenLineage provider's ``SQLParser`` calls) given a
``default_schema`` drops from ``in_tables`` every table that only a CTE reads, while its column lineage
still cites them (run with openlineage_sql 1.54.0, any dialect)::

    >>> parse(["WITH s AS (SELECT a FROM t2) SELECT a FROM s"], dialect="sqlite", default_schema="main")
    in_tables []             column_lineage a <- main.t2.a
    >>> parse(["WITH s AS (SELECT a FROM t2) SELECT a FROM s"], dialect="sqlite")
    in_tables ['t2']         column_lineage a <- t2.a

and with or without it, a result column computed in a CTE without a source column
(``COUNT(*) AS n`` then ``SELECT s.n``) has the CTE as its origin, as if it were a table. So this module
parses without it and qualifies the names itself: a table parsed with no schema gets the default schema
(what the parser would have done), and a column origin that is not one of the parsed input tables (a CTE's
name, ``order_stats`` in ``example_dags/sql/customers.sql``) is dropped, so column lineage only ever cites
an input. ``tests/test_lineage.py`` pins both the workaround and the parser's behaviour it works around.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple


class ColumnOrigin(NamedTuple):
    """A source column of one result column; ``origin`` is the input table (``DbTableMeta``) or ``None``."""

    origin: Any
    name: str


class ResultColumnLineage(NamedTuple):
    """One result column (``descendant.name``) and the input columns it comes from."""

    descendant: Any
    lineage: list[ColumnOrigin]


class ParsedSql(NamedTuple):
    """The parts of ``openlineage_sql.SqlMeta`` the OpenLineage provider reads, names qualified."""

    in_tables: list[Any]
    out_tables: list[Any]
    column_lineage: list[ResultColumnLineage]
    errors: list[Any]


def _key(table: Any) -> tuple[str | None, str | None, str]:
    return (table.database, table.schema, table.name)


def _qualified(table: Any, default_schema: str | None) -> Any:
    """``table`` with ``default_schema`` when it was parsed with no schema (and no database)."""
    from openlineage_sql import DbTableMeta

    if table.schema or table.database or not default_schema:
        return table
    return DbTableMeta(f"{default_schema}.{table.name}")


def parse_sql(statements: list[str], dialect: str | None, default_schema: str | None) -> ParsedSql | None:
    """
    ``openlineage_sql.parse`` of ``statements`` without a default schema, then qualified with it.

    :param statements: the SQL split into statements.
    :param dialect: the parser's dialect name (``sqlite``, ``postgres``...), or ``None`` for its generic one.
    :param default_schema: the schema of unqualified names, or ``None`` to leave them unqualified.
    :return: the parse with every CTE-read table among ``in_tables`` and column lineage citing only those,
        or ``None`` when the parser returns nothing.
    """
    from openlineage_sql import parse

    parsed = parse(sql=statements, dialect=dialect)
    if parsed is None:
        return None
    tables = {_key(table): _qualified(table, default_schema) for table in parsed.in_tables}
    column_lineage = [
        ResultColumnLineage(
            column.descendant,
            [
                ColumnOrigin(None if origin.origin is None else tables[_key(origin.origin)], origin.name)
                for origin in column.lineage
                if origin.origin is None or _key(origin.origin) in tables
            ],
        )
        for column in parsed.column_lineage
    ]
    return ParsedSql(
        in_tables=list(tables.values()),
        out_tables=[_qualified(table, default_schema) for table in parsed.out_tables],
        column_lineage=column_lineage,
        errors=list(parsed.errors),
    )


@functools.cache
def _parser_class() -> type:
    from airflow.providers.openlineage.sqlparser import SQLParser

    class CteSafeSQLParser(SQLParser):
        """The OpenLineage provider's ``SQLParser`` with :func:`parse_sql` as its parse."""

        def parse(self, sql: list[str] | str) -> Any:
            return parse_sql([sql] if isinstance(sql, str) else list(sql), self.dialect, self.default_schema)

    return CteSafeSQLParser


def sql_parser(dialect: str | None = None, default_schema: str | None = None) -> Any:
    """
    A ``SQLParser`` (``airflow.providers.openlineage.sqlparser``) whose every parse is :func:`parse_sql`;
    its ``generate_openlineage_metadata_from_sql`` (information schema, datasets, job facets) is the
    provider's own. Imports the OpenLineage provider: call only when it is installed.
    """
    return _parser_class()(dialect=dialect, default_schema=default_schema)
