"""
OpenLineage for :class:`~..segment_profiles.SegmentProfilesSyncOperator`: what a sync read and where it wrote.

Inputs are the model's tables, parsed from its SQL the way common-sql's operators do
(``SQLExecuteQueryOperator.get_openlineage_facets_on_start`` in ``airflow/providers/common/sql/operators/sql.py``:
the warehouse hook's ``get_openlineage_database_info``, dialect and default schema, then
``SQLParser.generate_openlineage_metadata_from_sql``). Outputs are one dataset per Profile Space
connection, named ``segment://{region's API host}`` / ``{destination id}``: the destination id is the
hook's keyed hash of region and write key (:attr:`SegmentProfilesHook.destination_id`), stable and never
the key itself. The OpenLineage naming spec (https://openlineage.io/docs/spec/naming) lists no SaaS APIs,
so this namespace is the provider's own convention.

Everything here imports the OpenLineage provider lazily: without it, :func:`operator_lineage` returns
``None`` and nothing else changes (the OpenLineage provider's developer guide,
https://airflow.apache.org/docs/apache-airflow-providers-openlineage/stable/guides/developer.html, asks for
exactly that).

The operator keeps only :func:`lineage_facts`' plain data between ``execute`` and the listener's call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow_provider_segment_profiles.actions.json_values import join_path
from airflow_provider_segment_profiles.hooks.regions import base_url_for_region

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

    from airflow_provider_segment_profiles.actions import CompiledMapping
    from airflow_provider_segment_profiles.hooks.segment_profiles import SegmentProfilesHook


#: The namespace scheme of Profile Space datasets.
SEGMENT_SCHEME = "segment"


def lineage_facts(
    mappings: Sequence[CompiledMapping],
    space_conn_ids: Mapping[str, str],
    hooks: Mapping[str, SegmentProfilesHook],
    summary: Mapping[str, Any],
) -> dict[str, Any]:
    """
    The plain data lineage needs from one run: per Profile Space, its dataset name, the messages
    delivered to it (summed from the summary's per-mapping counts) and each mapping's column lineage.

    A dry run delivers nothing to Segment, so it has no Profile Space outputs.

    :param mappings: the run's compiled mappings.
    :param space_conn_ids: mapping name -> Profile Space conn id.
    :param hooks: Profile Space conn id -> its hook (resolved, unless a dry run).
    :param summary: the run summary (``mappings`` holds each mapping's ``delivered``).
    :return: ``{"spaces": [{"conn_id", "region", "namespace", "name", "delivered", "mappings": [...]}]}``,
        JSON-able;
        each mapping has ``fields`` (``[column, field path]``) and ``stars`` (``[field path, excluded]``).
    """
    if summary.get("dry_run"):
        return {"spaces": []}
    per_mapping = summary.get("mappings") or {}
    spaces: dict[str, dict[str, Any]] = {}
    for mapping in mappings:
        conn_id = space_conn_ids[mapping.name]
        space = spaces.get(conn_id)
        if space is None:
            hook = hooks[conn_id]
            space = spaces[conn_id] = {
                "conn_id": conn_id,
                "region": hook.region,
                "namespace": space_namespace(hook.region),
                "name": hook.destination_id,
                "delivered": 0,
                "mappings": [],
            }
        space["delivered"] += int((per_mapping.get(mapping.name) or {}).get("delivered", 0))
        space["mappings"].append(
            {
                "name": mapping.name,
                "action": mapping.action,
                "fields": [list(pair) for pair in mapping.field_lineage()],
                "stars": [[path, list(exclude)] for path, exclude in mapping.star_fields()],
            }
        )
    return {"spaces": [spaces[conn_id] for conn_id in sorted(spaces)]}


def space_namespace(region: str) -> str:
    """
    ``segment://{host}`` of a region's tracking API (``segment://api.segment.io`` for North America).

    The region's public host, not the connection's Host: a proxy or emulator in front of the same region
    writes to the same Profile Space, as :attr:`SegmentProfilesHook.destination_id` also holds.

    :raises UnknownRegionError: an unknown region.
    """
    return f"{SEGMENT_SCHEME}://{urlsplit(base_url_for_region(region)).netloc}"


#: The output dataset facet naming the Profile Space's Airflow connection. Custom facets' keys carry a
#: prefix of their producer's, as Airflow's ``airflow_runArgs``
#: (https://openlineage.io/docs/spec/facets/custom-facets).
PROFILE_SPACE_FACET = "segmentProfiles_profileSpace"


@functools.cache
def _profile_space_facet_class() -> type:
    """
    The ``DatasetFacet`` of :data:`PROFILE_SPACE_FACET`: ``connId`` (the Airflow connection id) and
    ``region``, so that a catalog user can tell Profile Spaces apart by the connection that writes to them
    (the dataset's name is the destination id, a hash). Never the write key, nor the connection's host.
    Defined on first use: the OpenLineage client is imported lazily.
    """
    from attrs import define
    from openlineage.client.facet_v2 import DatasetFacet

    @define
    class SegmentProfileSpaceDatasetFacet(DatasetFacet):
        connId: str  # OpenLineage facets name their fields in camelCase
        region: str

    return SegmentProfileSpaceDatasetFacet


def operator_lineage(
    *,
    sql: Any,
    get_hook: Callable[[], DbApiHook],
    conn_id: str,
    facts: Mapping[str, Any] | None,
    operator_log: Any,
) -> Any:
    """
    The ``OperatorLineage`` of one sync: the model's input datasets (with the ``sql`` job facet) and one
    output dataset per Profile Space with ``outputStatistics`` (``rowCount`` = messages delivered) and
    ``columnLineage`` (message field <- input table columns, through the model's result columns).

    :param sql: the rendered model SQL.
    :param get_hook: returns the warehouse's common-sql hook (called only with the OpenLineage provider).
    :param conn_id: the warehouse connection id.
    :param facts: :func:`lineage_facts` of the run, or ``None`` when the run did not get that far.
    :param operator_log: the task's logger (debug lines when lineage is incomplete).
    :return: an ``OperatorLineage``, or ``None`` without the OpenLineage provider.
    """
    try:
        from airflow.providers.openlineage.extractors import OperatorLineage
    except ImportError:
        operator_log.debug("The OpenLineage provider is not installed; no lineage for this sync")
        return None
    lineage = OperatorLineage()
    column_sources: dict[str, list[tuple[str, str, str]]] = {}
    if isinstance(sql, str) and sql.strip():
        try:
            lineage, column_sources = _inputs(sql, get_hook(), conn_id, operator_log)
        except Exception as err:  # lineage must never fail a sync that ran
            operator_log.warning("OpenLineage: could not parse the model's SQL for its inputs: %s", err)
    if facts:
        lineage.outputs.extend(_outputs(facts, column_sources))
    return lineage


def _database_info(hook: DbApiHook, connection: Any) -> tuple[Any, bool]:
    """
    The hook's ``DatabaseInfo``, or ``(scheme = connection type, authority = host[:port])`` for hooks that
    have none (SQLite's); the second value says whether the hook's own info was found (only then is the
    information schema worth querying).
    """
    from airflow.providers.openlineage.sqlparser import DatabaseInfo

    try:
        info = hook.get_openlineage_database_info(connection)
    except AttributeError:
        info = None
    if info is not None:
        return info, True
    host = connection.host or ""
    authority = f"{host}:{connection.port}" if connection.port else host
    return DatabaseInfo(scheme=connection.conn_type or hook.dialect_name, authority=authority), False


def _inputs(
    sql: str, hook: DbApiHook, conn_id: str, operator_log: Any
) -> tuple[Any, dict[str, list[tuple[str, str, str]]]]:
    """
    The model's input datasets as common-sql reports them, and result column -> its input columns.

    Parsed through :mod:`.lineage_sql` (tables read only in a CTE are inputs too, a CTE is never one).
    Every parsed table is an input, also one the information schema query did not return, and column
    lineage cites only inputs.
    """
    from airflow.providers.openlineage.sqlparser import SQLParser, from_table_meta

    from airflow_provider_segment_profiles.operators.lineage_sql import sql_parser

    connection = hook.get_connection(conn_id)
    database_info, own_info = _database_info(hook, connection)
    try:
        from airflow.providers.openlineage.utils.utils import should_use_external_connection

        use_connection = own_info and should_use_external_connection(hook)
    except ImportError:  # OpenLineage provider < 1.8
        use_connection = own_info
    try:
        dialect = hook.get_openlineage_database_dialect(connection)
        # A hook without database info (SQLite's) falls back to DbApiHook's "public"; SQLite calls the
        # connection's own database "main".
        default_schema = (
            hook.get_openlineage_default_schema() if own_info or hook.dialect_name != "sqlite" else "main"
        )
        parser = sql_parser(dialect=dialect, default_schema=default_schema)
    except AttributeError:
        parser = sql_parser()
    engine = None
    if use_connection:
        try:
            engine = hook.get_sqlalchemy_engine()
        except Exception as err:
            operator_log.debug("OpenLineage: no SQLAlchemy engine for %s: %s", conn_id, err)
    lineage = parser.generate_openlineage_metadata_from_sql(
        sql=sql,
        hook=hook,
        database_info=database_info,
        sqlalchemy_engine=engine,
        use_connection=use_connection,
    )
    namespace = SQLParser.create_namespace(database_info)

    def dataset_of(table: Any) -> Any:
        return from_table_meta(table, database_info.database, namespace, database_info.is_uppercase_names)

    parsed = parser.parse(parser.split_sql_string(sql))
    # Input name as the datasets spell it, by its case-folded form: the information schema spells a
    # PostgreSQL table the way the database folded it, the parser the way the SQL wrote it.
    named = {d.name.casefold(): d.name for d in lineage.inputs}
    for table in getattr(parsed, "in_tables", None) or ():
        # The information schema query answers only for tables it finds (not for a view or another
        # database's table): the parsed name still is an input.
        dataset = dataset_of(table)
        if dataset.name.casefold() not in named:
            named[dataset.name.casefold()] = dataset.name
            lineage.inputs.append(dataset)
    column_sources: dict[str, list[tuple[str, str, str]]] = {}
    for column in getattr(parsed, "column_lineage", None) or ():
        sources = column_sources.setdefault(column.descendant.name, [])
        for origin in column.lineage:
            if origin.origin is None:
                continue
            name = named.get(dataset_of(origin.origin).name.casefold())
            if name is not None:
                sources.append((namespace, name, origin.name))
    return lineage, column_sources


def _outputs(facts: Mapping[str, Any], column_sources: Mapping[str, list[tuple[str, str, str]]]) -> list[Any]:
    """One ``OutputDataset`` per Profile Space of :func:`lineage_facts`."""
    from openlineage.client.event_v2 import OutputDataset
    from openlineage.client.facet_v2 import column_lineage_dataset, output_statistics_output_dataset

    outputs = []
    for space in facts.get("spaces", ()):
        fields: dict[str, dict[str, Any]] = {}
        for mapping in space["mappings"]:
            # {"columns": "*"} takes every result column but its excluded ones: the parsed result's columns.
            stars = [
                (column, join_path(path, column))
                for path, exclude in mapping.get("stars", ())
                for column in column_sources
                if column not in exclude
            ]
            for column, path in [*mapping["fields"], *stars]:
                entry = fields.setdefault(path, {"inputs": {}, "mappings": []})
                entry["mappings"].append(mapping["name"])
                for namespace, name, source_column in column_sources.get(column, ()):
                    entry["inputs"][(namespace, name, source_column)] = None
        column_lineage = {
            path: column_lineage_dataset.Fields(
                inputFields=[
                    column_lineage_dataset.InputField(
                        namespace=namespace,
                        name=name,
                        field=source_column,
                        transformations=[
                            column_lineage_dataset.Transformation(type="DIRECT", subtype="IDENTITY")
                        ],
                    )
                    for namespace, name, source_column in entry["inputs"]
                ],
                transformationType="IDENTITY",
                transformationDescription="sent by mapping " + ", ".join(entry["mappings"]),
            )
            for path, entry in fields.items()
        }
        facets: dict[str, Any] = {
            PROFILE_SPACE_FACET: _profile_space_facet_class()(
                connId=space["conn_id"], region=space.get("region", "")
            )
        }
        if column_lineage:
            facets["columnLineage"] = column_lineage_dataset.ColumnLineageDatasetFacet(fields=column_lineage)
        outputs.append(
            OutputDataset(
                namespace=space["namespace"],
                name=space["name"],
                facets=facets,
                outputFacets={
                    "outputStatistics": output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                        rowCount=space["delivered"]
                    )
                },
            )
        )
    return outputs
