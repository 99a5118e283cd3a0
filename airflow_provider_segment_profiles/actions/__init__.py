"""
The four Segment Profiles actions — Send Identify, Send Group, Send Track, Send Subscriptions — as
mappings from warehouse records to Segment tracking-API messages.

Typical use (the operator does this)::

    compiled = compile_mappings(mappings, sync_mode="diff", primary_key="customer_id")  # at DAG parse
    builders = [mapping.bind(result_columns) for mapping in compiled]  # once the query ran
    for row in rows:
        for mapping, builder in zip(compiled, builders):
            if mapping.selects(change):
                try:
                    built = builder.build(row, primary_key=key, checksum=checksum)  # BuiltMessage
                except RecordRejected as rejection:
                    ...  # count it, keep str(rejection) as a sample

Module map: :mod:`.mapping` (mapping validation, :class:`CompiledMapping`), :mod:`.value_forms` (value
forms), :mod:`.record_builder` (per-record hot path), :mod:`.payloads` and :mod:`.subscriptions` (message
shapes and Segment's rules), :mod:`.json_values` (warehouse value policy), :mod:`.timestamps`,
:mod:`.message_id`, :mod:`.registry` (actions, fields and their JSON Schemas).
"""

from __future__ import annotations

from airflow_provider_segment_profiles.actions.errors import (
    MappingConfigError,
    MessageSkipped,
    RecordRejected,
)
from airflow_provider_segment_profiles.actions.mapping import (
    DEFAULT_TRIGGER,
    MAX_MAPPINGS,
    SYNC_MODES,
    TRIGGERS,
    CompiledMapping,
    compile_mappings,
)
from airflow_provider_segment_profiles.actions.record_builder import (
    MAX_MESSAGE_BYTES,
    BuiltMessage,
    RecordBuilder,
)
from airflow_provider_segment_profiles.actions.registry import (
    ACTION_NAMES,
    ActionSpec,
    FieldSpec,
    actions,
    get_action,
)

__all__ = [
    "ACTION_NAMES",
    "DEFAULT_TRIGGER",
    "MAX_MAPPINGS",
    "MAX_MESSAGE_BYTES",
    "SYNC_MODES",
    "TRIGGERS",
    "ActionSpec",
    "BuiltMessage",
    "CompiledMapping",
    "FieldSpec",
    "MappingConfigError",
    "MessageSkipped",
    "RecordBuilder",
    "RecordRejected",
    "actions",
    "compile_mappings",
    "get_action",
]
