"""
The per-record hot path: one result row -> one encoded tracking-API message, or a rejection.

Everything that does not depend on the row is decided in :meth:`RecordBuilder.__init__`: column
positions, literal values, one resolver per field with the schema's type check inlined, the message
builder. :meth:`RecordBuilder.build` then indexes the row, converts only the values whose type needs it,
builds the message and encodes it once; ``jsonschema`` only runs to word a rejection.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow_provider_segment_profiles.actions.errors import (
    FieldRejected,
    MessageSkipped,
    NothingToSend,
    RecordRejected,
)
from airflow_provider_segment_profiles.actions.ingestion_limits import (
    MAX_IDENTIFY_TRAITS,
    ingestion_problem,
    needs_split,
    split_identify,
)
from airflow_provider_segment_profiles.actions.json_values import (
    MISSING,
    coerce_to_nullable_string,
    coerce_to_string,
    encode_json,
    encode_json_bytes,
    replace_unpaired_surrogates,
    to_json_value,
)
from airflow_provider_segment_profiles.actions.message_id import derive_message_id, message_id_prefix
from airflow_provider_segment_profiles.actions.payloads import MESSAGE_BUILDERS
from airflow_provider_segment_profiles.actions.rows import values_getter
from airflow_provider_segment_profiles.actions.subscriptions import ACCEPTED_STATUS_TEXT
from airflow_provider_segment_profiles.actions.timestamps import format_datetime, normalize_timestamp
from airflow_provider_segment_profiles.actions.value_forms import (
    ColumnForm,
    ColumnsForm,
    Form,
    LiteralForm,
    ObjectForm,
    bind_object,
    iter_columns,
    iter_star_forms,
    parse_json_text,
)
from airflow_provider_segment_profiles.common.segment_limits import MAX_MESSAGE_BYTES

if TYPE_CHECKING:
    from airflow_provider_segment_profiles.actions.registry import ActionSpec, FieldSpec


_UNEXPECTED_DATA_ERRORS = (TypeError, ValueError, OverflowError, RecursionError, UnicodeError, AttributeError)

Resolver = Callable[[Sequence[Any], list[str]], Any]


@dataclass(slots=True)
class BuiltMessage:
    """
    One message ready to send.

    :param message: the tracking-API message (with ``type`` and ``messageId``); treat as read-only, parts
        of it may be shared with the row or the mapping's literals.
    :param encoded: ``message`` as compact UTF-8 JSON, identical to ``json.dumps(message,
        separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()``; at most
        :data:`MAX_MESSAGE_BYTES` long.
    :param warnings: what was changed to make the record sendable, e.g.
        ``"traits.score: nan is not a JSON number; sent as null"``.
    :param parts: when the message had to be sent as several calls (an Identify over Engage's trait
        limit, :mod:`.ingestion_limits`), the calls to send instead of it, in order; ``message`` is then the
        whole message and ``encoded`` is empty. Empty otherwise.
    """

    message: dict[str, Any]
    encoded: bytes
    warnings: list[str] = field(default_factory=list)
    parts: tuple[BuiltMessage, ...] = ()


class SchemaMismatch(Exception):
    """
    Internal: a column-sourced field value fails the check derived from the action's schema. Raised by
    a resolver (so valid records pay no separate check); the record is then validated with the compiled
    ``jsonschema`` validator, which words the rejection.
    """

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value


# Each resolver returns the field's value, MISSING when Segment's empty-value removal drops it, or raises
# SchemaMismatch with the value when it fails FieldSpec.fast_check (the same predicate, inlined).


def _text_resolver(index: int, spec: FieldSpec) -> Resolver:
    path = spec.key
    max_length = spec.max_length
    check = spec.fast_check()
    if spec.allows_null:

        def resolve_nullable(row: Sequence[Any], warnings: list[str]) -> Any:
            value = row[index]
            if type(value) is str:
                return value if value else MISSING
            if value is None:
                return None
            if isinstance(value, list | tuple):
                raise FieldRejected(path, _status_list_reason(value))
            value = coerce_to_nullable_string(value, path, warnings)
            if value is MISSING or check(value):
                return value
            raise SchemaMismatch(value)

        return resolve_nullable

    def resolve(row: Sequence[Any], warnings: list[str]) -> Any:
        value = row[index]
        if type(value) is str:
            if not value:
                return MISSING
            if max_length is None or len(value) <= max_length:
                return value
            raise SchemaMismatch(value)
        value = coerce_to_string(value, path, warnings)
        if value is MISSING or check(value):
            return value
        raise SchemaMismatch(value)

    return resolve


def _timestamp_resolver(index: int, spec: FieldSpec) -> Resolver:
    path = spec.key
    check = spec.fast_check()
    from_iso = datetime.fromisoformat

    def resolve(row: Sequence[Any], warnings: list[str]) -> Any:
        value = row[index]
        if type(value) is datetime:
            text = format_datetime(value)
            if text < "1970":
                return normalize_timestamp(value, warnings, path)  # adds the pre-1970 warning
            return text
        if type(value) is str and value[4:5] == "-":
            # ISO text, as warehouses without a timestamp type (SQLite) hold it: parse it straight away.
            # Numeric text never parses as ISO, and anything that does not parse takes the full path.
            try:
                parsed = from_iso(value)
            except ValueError:
                pass
            else:
                text = format_datetime(parsed)
                if text >= "1970":
                    return text
        value = normalize_timestamp(value, warnings, path)
        if value is None:
            return MISSING
        if check(value):
            return value
        raise SchemaMismatch(value)

    return resolve


def _object_column_resolver(form: ColumnForm, index: int) -> Resolver:
    path = form.path
    parse = form.parse_json

    def resolve(row: Sequence[Any], warnings: list[str]) -> Any:
        value = row[index]
        if parse:
            value = parse_json_text(value, path)
        if value is None or (isinstance(value, str) and not value):
            return MISSING
        value = to_json_value(value, path, warnings)
        if type(value) is dict:
            return value
        raise SchemaMismatch(value)

    return resolve


def _status_list_reason(value: Any) -> str:
    # Segment's validator (Ajv, coerceTypes "array", type ["string", "null"]) takes some one-item lists
    # ([true] subscribes) and rejects others (["true"]); a list is one text value in no reading.
    return (
        f"a list ({value!r}) is not a subscription status: expected {ACCEPTED_STATUS_TEXT} as text, "
        "or null/empty for no change"
    )


def literal_field_value(spec: FieldSpec, value: Any, warnings: list[str]) -> Any:
    """
    A literal top-level value as the record pipeline would leave it (coerced, normalised), or
    :data:`MISSING` when Segment's empty-value removal drops it.

    :raises FieldRejected: a literal timestamp that cannot be read.
    """
    if spec.is_timestamp:
        normalised = normalize_timestamp(value, warnings, spec.key)
        return MISSING if normalised is None else normalised
    if spec.is_text:
        if spec.allows_null and isinstance(value, list | tuple):
            raise FieldRejected(spec.key, _status_list_reason(value))
        coerce = coerce_to_nullable_string if spec.allows_null else coerce_to_string
        return coerce(value, spec.key, warnings)
    if value is None or (isinstance(value, str) and not value):
        return MISSING
    return value


def bind_field(
    spec: FieldSpec, form: Form, index_of: Mapping[str, int], result_columns: Sequence[str]
) -> Resolver:
    """Turn one top-level field's form into a resolver ``(row, warnings) -> value | MISSING``."""
    if isinstance(form, ColumnForm):
        index = index_of[form.column]
        if spec.is_timestamp:
            return _timestamp_resolver(index, spec)
        if spec.is_text:
            return _text_resolver(index, spec)
        return _object_column_resolver(form, index)
    if isinstance(form, ObjectForm | ColumnsForm):
        return bind_object(form, index_of, result_columns)  # always builds an object
    raise TypeError(f"unexpected form for a resolver: {form!r}")  # literals are bound as constants


class RecordBuilder:
    """
    Builds the messages of one mapping for rows of one query result. Create with
    :meth:`CompiledMapping.bind <airflow_provider_segment_profiles.actions.CompiledMapping.bind>`.

    :ivar mapping_name: the mapping's name.
    :ivar columns: every result column the bound mapping reads, ``columns: "*"`` expanded.
    """

    __slots__ = (
        "_base_values",
        "_build_message",
        "_check_floats",
        "_deleted_prefix",
        "_maps_message_id",
        "_primary_key_index",
        "_read_values",
        "_required",
        "_resolvers",
        "_spec",
        "_splits_identify",
        "_upsert_prefix",
        "_width",
        "columns",
        "mapping_name",
    )

    def __init__(
        self,
        *,
        mapping_name: str,
        spec: ActionSpec,
        fingerprint: str,
        forms: Sequence[tuple[str, Form]],
        result_columns: Sequence[str],
        primary_key: str,
        scope: bytes = b"",
    ) -> None:
        index_of: dict[str, int] = {}
        for position, column in enumerate(result_columns):
            index_of.setdefault(column, position)
        self.mapping_name = mapping_name
        self._spec = spec
        self._width = len(result_columns)
        self._primary_key_index = index_of.get(primary_key)
        self._build_message = MESSAGE_BUILDERS[spec.name]
        self._splits_identify = spec.name == "send_identify"
        self._upsert_prefix = message_id_prefix(fingerprint, "upsert", scope)
        self._deleted_prefix = message_id_prefix(fingerprint, "deleted", scope)
        self._required = spec.required_fields
        base_values: dict[str, Any] = {}
        resolvers = []
        for key, form in forms:
            field_spec = spec.fields[key]
            if isinstance(form, LiteralForm):  # checked against the schema when the mapping compiled
                value = literal_field_value(field_spec, form.value, [])
                if value is not MISSING:
                    base_values[key] = value
                continue
            resolvers.append((key, bind_field(field_spec, form, index_of, result_columns)))
        self._base_values = base_values
        self._resolvers = tuple(resolvers)
        self._maps_message_id = any(key == "message_id" for key, _ in forms)
        read: set[str] = set()
        for _key, form in forms:
            read.update(column for column, _path in iter_columns(form, ""))
            for star, _path in iter_star_forms(form, ""):
                read.update(column for column in result_columns if column not in star.exclude)
        self.columns = frozenset(read)
        # Whether a float can reach a message other than straight from a row value (a literal, parsed
        # JSON text): then every message takes encode_json_bytes' own check of its float text.
        self._check_floats = any(_may_add_floats(form) for _key, form in forms)
        self._read_values = values_getter(sorted({index_of[column] for column in read}))

    def build(self, row: Sequence[Any], *, primary_key: str, checksum: str) -> BuiltMessage:
        """
        Build the message of one record.

        :param row: the record's values, in the result's column order.
        :param primary_key: the record's primary-key value as text (for the message id and rejections).
        :param checksum: the record's checksum as hex text (for the message id).
        :return: the message, its encoding and any warnings.
        :raises RecordRejected: the record cannot become a valid call (schema, E0, subscription rules,
            unparseable timestamp, invalid JSON text, message over :data:`MAX_MESSAGE_BYTES`, ...).
        :raises MessageSkipped: the record has nothing to send through this mapping (Send Subscriptions with
            every status NULL or empty).
        """
        return self._build(row, primary_key, checksum, self._upsert_prefix)

    def build_deleted(self, primary_key_value: str, *, checksum: str) -> BuiltMessage:
        """
        Build the message of a deleted record for a ``deleted``-trigger mapping: the row holds the primary
        key and ``None`` for every other column.

        :raises RecordRejected: as :meth:`build`.
        """
        row: list[Any] = [None] * self._width
        if self._primary_key_index is not None:
            row[self._primary_key_index] = primary_key_value
        return self._build(row, primary_key_value, checksum, self._deleted_prefix)

    def _build(self, row: Sequence[Any], primary_key: Any, checksum: str, prefix: bytes) -> BuiltMessage:
        warnings: list[str] = []
        try:
            values = self._base_values.copy()
            mismatched = False
            for key, resolve in self._resolvers:
                try:
                    value = resolve(row, warnings)
                except SchemaMismatch as mismatch:
                    value = mismatch.value
                    mismatched = True
                if value is not MISSING:
                    values[key] = value
            if mismatched:
                self._reject_on_schema(values)
            for key in self._required:
                if key not in values:
                    self._reject_on_schema(values)
            message_id = values.get("message_id") if self._maps_message_id else None
            if message_id is None:
                key_text = primary_key if type(primary_key) is str else str(primary_key)
                message_id = derive_message_id(prefix, checksum, key_text)
            message = self._build_message(values, message_id)
            problem = ingestion_problem(message, self._splits_identify)
            if problem is not None:
                raise FieldRejected(*problem)
            if self._splits_identify and needs_split(message):
                return self._split(message, warnings)
            floats_checked = not self._check_floats and _floats_written_alike(self._read_values(row))
            message, encoded = _encode(message, floats_checked, warnings)
        except FieldRejected as exc:
            raise RecordRejected(self.mapping_name, str(primary_key), exc.field, exc.reason) from None
        except NothingToSend as exc:
            raise MessageSkipped(self.mapping_name, str(primary_key), exc.field, exc.reason) from None
        except _UNEXPECTED_DATA_ERRORS as exc:
            raise RecordRejected(
                self.mapping_name, str(primary_key), "record", f"a value could not be converted: {exc!r}"
            ) from exc
        return BuiltMessage(message, encoded, warnings)

    def _split(self, message: dict[str, Any], warnings: list[str]) -> BuiltMessage:
        """An Identify over Engage's trait limit, as several Identify calls (:func:`.split_identify`)."""
        parts = []
        for part in split_identify(message):
            part, encoded = _encode(part, False, warnings)
            parts.append(BuiltMessage(part, encoded, warnings))
        warnings.append(
            f"traits: {len(message['traits']):,} traits, and Engage rejects an Identify with 300 or more; sent "
            f"as {len(parts)} Identify calls of at most {MAX_IDENTIFY_TRAITS} traits each"
        )
        return BuiltMessage(message, b"", warnings, tuple(parts))

    def _reject_on_schema(self, values: dict[str, Any]) -> None:
        errors = self._spec.schema_errors(values)
        if not errors:
            raise FieldRejected("record", "internal error: the fast field check and the JSON Schema disagree")
        field_path = errors[0][0]
        reason = " ".join(message for _, message in errors)
        field_spec = self._spec.fields.get(field_path)
        if field_spec is not None and field_spec.is_object and isinstance(values.get(field_path), str):
            reason += (
                ' The column holds text; add "parse_json": true to its column reference to read it as JSON.'
            )
        raise FieldRejected(field_path, reason)


_PLAIN_TYPES = frozenset({str, int, bool, type(None), datetime, date})


def _encode(
    message: dict[str, Any], floats_checked: bool, warnings: list[str]
) -> tuple[dict[str, Any], bytes]:
    """
    ``(message, its compact UTF-8 JSON)``; the message is replaced by a copy when a value had to change to
    be encoded (an unpaired surrogate).

    :raises FieldRejected: the encoding is over :data:`MAX_MESSAGE_BYTES`.
    """
    try:
        encoded = encode_json_bytes(message, floats_checked=floats_checked)
    except UnicodeEncodeError:
        message = replace_unpaired_surrogates(message, "", warnings)
        encoded = encode_json(message).encode("utf-8")
    except (TypeError, ValueError):  # not expected: every value went through to_json_value
        message = to_json_value(message, "", warnings)
        try:
            encoded = encode_json(message).encode("utf-8")
        except UnicodeEncodeError:
            message = replace_unpaired_surrogates(message, "", warnings)
            encoded = encode_json(message).encode("utf-8")
    if len(encoded) > MAX_MESSAGE_BYTES:
        _reject_oversize(message, len(encoded))
    return message, encoded


def _floats_written_alike(values: Sequence[Any]) -> bool:
    """
    Whether every number these row values can turn into is written by msgspec exactly as by Python's
    ``repr``: no float or ``Decimal`` of magnitude outside [1e-4, 1e16) (``repr`` writes those with an
    exponent), and no container, ``timedelta`` or other type whose conversion could hold one.
    """
    for value in values:
        value_type = type(value)
        if value_type is float:
            if value and not 1e-4 <= abs(value) < 1e16:  # NaN fails the range test too
                return False
        elif value_type is Decimal:
            if value and not (value.is_finite() and 1e-4 <= abs(value) < 1e16):
                return False
        elif value_type not in _PLAIN_TYPES:
            return False
    return True


def _may_add_floats(form: Form) -> bool:
    """Whether ``form`` can put a float into a message that is not a row value: literals, parsed JSON."""
    if isinstance(form, LiteralForm):
        return _holds_float(form.value)
    if isinstance(form, ColumnForm):
        return form.parse_json
    if isinstance(form, ObjectForm):
        return any(_may_add_floats(child) for _key, child in form.entries)
    return False  # ColumnsForm: row values only


def _holds_float(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_holds_float(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_float(item) for item in value)
    return isinstance(value, float)


def _reject_oversize(message: dict[str, Any], size: int) -> None:
    sizes = {
        key: len(encode_json(value).encode("utf-8", "replace"))
        for key, value in message.items()
        if key != "type"
    }
    largest = max(sizes, key=sizes.__getitem__)
    raise FieldRejected(
        largest,
        f"the message is {size:,} bytes as JSON, over Segment's limit of {MAX_MESSAGE_BYTES:,} bytes "
        "per event; "
        f"its largest part is {largest} ({sizes[largest]:,} bytes)",
    )
