"""
Warehouse values to JSON: one policy, applied to every value that ends up in a Segment message.

=====================================  ==============================================================
Python value (as DB-API drivers give)  JSON sent
=====================================  ==============================================================
``None``, ``str``, ``bool``            as is. NUL characters are kept (JSON escapes them as ``\\u0000``).
                                       Unpaired UTF-16 surrogates cannot be UTF-8 encoded: each is
                                       replaced by U+FFFD and the record gets a warning.
``int``                                a number when ``|n| <= 2**53 - 1`` (JavaScript's safe range, as
                                       Segment's pipeline parses JSON in JavaScript); beyond it the exact
                                       decimal digits as a string. ID fields are always strings.
``float``                              as is; NaN and ±Infinity are not JSON: null plus a warning.
``Decimal``                            integral: as ``int`` above. Otherwise a number when the shortest
                                       float repr equals the decimal exactly (``12.10`` -> ``12.1``),
                                       else the exact decimal as a string (``"0.1234567890123456789"``)
                                       so that no precision is lost silently. NaN/±Infinity: null +
                                       warning.
``datetime``                           UTC ISO-8601 ending in ``Z``; naive values are taken as UTC
                                       (:func:`~.timestamps.format_datetime`).
``date``                               midnight UTC, ``"1990-05-17T00:00:00.000Z"``.
``time``                               ``"09:30:00Z"`` (naive = UTC) or with its own offset.
``timedelta``                          its total seconds as a number.
``UUID``, IP addresses                 their canonical text.
``bytes``/``bytearray``/``memoryview`` standard base64 text with padding.
``dict`` (JSON/JSONB, DuckDB STRUCT)   converted recursively; non-text keys become their JSON text. A
                                       key named ``__proto__`` is dropped with a warning, as Segment's
                                       pipeline drops it.
``list``/``tuple``/``set``             arrays, converted recursively; sets are sorted when sortable.
``Enum``                               its ``value``, converted.
``UnreadableValue``                    a value the driver cannot hold (PostgreSQL ``infinity``, BC dates,
                                       years after 9999, ``24:00:00``;
                                       :mod:`~airflow_provider_segment_profiles.pipeline.driver_values`): the
                                       warehouse's own text plus a warning. JSON nested deeper than
                                       Python parses rejects the record.
anything else                          ``str(value)`` plus a warning.
=====================================  ==============================================================

JSON *text* in a column stays text unless the mapping asks for ``"parse_json": true``.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from itertools import islice
from typing import Any
from uuid import UUID

from airflow_provider_segment_profiles.actions.errors import FieldRejected
from airflow_provider_segment_profiles.actions.timestamps import format_date, format_datetime, format_time
from airflow_provider_segment_profiles.common.unreadable import UnreadableValue

#: Largest integer JavaScript represents exactly (``Number.MAX_SAFE_INTEGER``).
MAX_SAFE_INTEGER = 2**53 - 1

#: Objects and arrays nested deeper than this reject the record rather than risk a RecursionError.
MAX_NESTING_DEPTH = 64

#: Decimals whose exponent is this far from zero are written in scientific notation, so a value like
#: ``Decimal("1E+999999999")`` cannot expand into a billion digits.
_DECIMAL_PLAIN_EXPONENT_LIMIT = 1000


class _Missing:
    """Marks a field that is absent after Segment's empty-value removal (``""`` and ``null``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()


def _not_json_number_warning(path: str, value: object) -> str:
    return f"{path}: {value!r} is not a JSON number; sent as null"


def to_json_value(value: object, path: str, warnings: list[str], depth: int = 0) -> Any:
    """
    Convert one warehouse value to a JSON-compatible value following this module's policy.

    :param value: any value a DB-API driver returns.
    :param path: where the value goes, e.g. ``traits.score``; used in warnings and rejections.
    :param warnings: per-record warning list, appended to when a value is replaced.
    :param depth: current nesting depth (callers leave the default).
    :return: ``None``, ``str``, ``bool``, ``int`` within the safe range, finite ``float``, or ``dict``
        / ``list`` of such values.
    :raises FieldRejected: objects nested deeper than :data:`MAX_NESTING_DEPTH`, or a value whose text
        form cannot be obtained.
    """
    value_type = type(value)
    if value is None or value_type is str or value_type is bool:
        return value
    if value_type is int:
        return value if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else str(value)
    if value_type is float:
        if value - value == 0.0:
            return value
        warnings.append(_not_json_number_warning(path, value))
        return None
    if value_type is dict:
        return json_object(value, path, warnings, depth)
    if value_type is list or value_type is tuple:
        return json_array(value, path, warnings, depth)
    converter = _CONVERTERS_BY_EXACT_TYPE.get(value_type)
    if converter is not None:
        return converter(value, path, warnings)
    return _convert_other(value, path, warnings, depth)


def _convert_other(value: Any, path: str, warnings: list[str], depth: int) -> Any:
    if isinstance(value, Enum):
        return to_json_value(value.value, path, warnings, depth)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return to_json_value(int(value), path, warnings, depth)
    if isinstance(value, float):
        return to_json_value(float(value), path, warnings, depth)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Decimal):
        return decimal_to_json(value, path, warnings)
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, date):
        return format_date(value)
    if isinstance(value, time):
        return format_time(value)
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        return int(seconds) if seconds.is_integer() else seconds
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Mapping):
        return json_object(value, path, warnings, depth)
    if isinstance(value, list | tuple):
        return json_array(value, path, warnings, depth)
    if isinstance(value, set | frozenset):
        try:
            items = sorted(value)
        except TypeError:
            items = list(value)
        return json_array(items, path, warnings, depth)
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address | ipaddress.IPv4Network):
        return str(value)
    if isinstance(value, ipaddress.IPv6Network | ipaddress.IPv4Interface | ipaddress.IPv6Interface):
        return str(value)
    try:
        text = str(value)
    except Exception as exc:
        raise FieldRejected(path, f"a {type(value).__name__} value has no text form: {exc}") from None
    warnings.append(f"{path}: {type(value).__name__} value has no JSON form; sent as its text")
    return text


def decimal_to_json(value: Decimal, path: str, warnings: list[str]) -> Any:
    """
    Convert a ``Decimal`` without silent loss of precision (see the module table).

    :return: ``int`` (safe range), ``float`` (exact round trip), ``str`` (exact digits) or ``None``
        (NaN/Infinity, with a warning).
    """
    if not value.is_finite():
        warnings.append(_not_json_number_warning(path, value))
        return None
    if abs(value.adjusted()) > _DECIMAL_PLAIN_EXPONENT_LIMIT:
        return str(value)
    if value == value.to_integral_value():
        number = int(value)
        return number if -MAX_SAFE_INTEGER <= number <= MAX_SAFE_INTEGER else str(number)
    adjusted = value.adjusted()
    if -300 < adjusted < 300 and len(str(value)) <= 15:
        # At most 15 significant digits (the text is no longer), far from the double range's ends: a
        # double holds such a decimal exactly enough to round-trip (DBL_DIG is 15), so the check below
        # would pass. It costs five times the conversion, and money columns always take this path.
        return float(value)
    as_float = float(value)
    if Decimal(repr(as_float)) == value:
        return as_float
    return format(value, "f")


def _unreadable_to_json(value: UnreadableValue, path: str, warnings: list[str]) -> str:
    if not value.sendable_as_text:  # JSON too deep for Python: rejected, as a structure over the limit is
        raise FieldRejected(path, value.describe())
    warnings.append(f"{path}: {value.describe()}; sent as the warehouse's text")
    return value.text


#: Exact types DB-API drivers commonly return, converted without walking ``_convert_other``'s checks.
_CONVERTERS_BY_EXACT_TYPE: dict[type, Any] = {
    Decimal: decimal_to_json,
    datetime: lambda value, path, warnings: format_datetime(value),
    date: lambda value, path, warnings: format_date(value),
    time: lambda value, path, warnings: format_time(value),
    UUID: lambda value, path, warnings: str(value),
    bytes: lambda value, path, warnings: base64.b64encode(value).decode("ascii"),
    UnreadableValue: _unreadable_to_json,
}


def _key_text(key: object) -> str:
    if isinstance(key, str):
        return str(key)
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, float):
        return js_number_to_string(key)
    converted = to_json_value(key, "key", [])
    return converted if isinstance(converted, str) else json.dumps(converted)


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def join_path(base: str, key: str) -> str:
    """``traits`` + ``email`` -> ``traits.email``; keys that are not identifiers use ``["first name"]``."""
    if _PLAIN_KEY.fullmatch(key):
        return f"{base}.{key}" if base else key
    quoted = json.dumps(key, ensure_ascii=False)
    if not quoted.isascii():
        try:
            quoted.encode("utf-8")
        except UnicodeEncodeError:  # keep paths printable: escape lone surrogates
            quoted = json.dumps(key)
    return f"{base}[{quoted}]"


def json_object(value: Mapping, path: str, warnings: list[str], depth: int = 0) -> dict[str, Any]:
    """
    Convert a mapping (JSON column, DuckDB STRUCT) recursively. Returns the same ``dict`` object when
    nothing in it needed converting, so JSON columns are not copied on the fast path.
    """
    if depth >= MAX_NESTING_DEPTH:
        raise FieldRejected(path, f"nested deeper than {MAX_NESTING_DEPTH} levels")
    if "__proto__" in value:
        value = _without_proto_key(value, path, warnings)
    copy: dict[str, Any] | None = None if type(value) is dict else {}
    for index, (key, item) in enumerate(value.items()):
        item_type = type(item)
        if type(key) is str and (
            item is None
            or item_type is str
            or item_type is bool
            or (item_type is int and -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER)
            or (item_type is float and item - item == 0.0)
        ):
            if copy is not None:
                copy[key] = item
            continue
        text_key = key if type(key) is str else _key_text(key)
        converted = to_json_value(item, join_path(path, text_key), warnings, depth + 1)
        if copy is None:
            if converted is item and text_key is key:
                continue
            copy = dict(islice(value.items(), index))
        copy[text_key] = converted
    return value if copy is None else copy  # type: ignore[return-value]


#: Segment's actions-core copies every resolved object with ``Object.assign`` (``remove-undefined.ts``),
#: whose assignment to ``__proto__`` sets the prototype instead of a key, so Segment never sends one.
PROTO_KEY_DROPPED = "dropped: Segment's pipeline cannot carry a key named __proto__"


def _without_proto_key(value: Mapping, path: str, warnings: list[str]) -> dict[str, Any]:
    warnings.append(f"{join_path(path, '__proto__')}: {PROTO_KEY_DROPPED}")
    return {key: item for key, item in value.items() if key != "__proto__"}


def json_array(value: list | tuple, path: str, warnings: list[str], depth: int = 0) -> list[Any]:
    """Convert a sequence recursively; returns the same ``list`` object when nothing needed converting."""
    if depth >= MAX_NESTING_DEPTH:
        raise FieldRejected(path, f"nested deeper than {MAX_NESTING_DEPTH} levels")
    result: list[Any] | None = None
    for index, item in enumerate(value):
        item_type = type(item)
        if (
            item is None
            or item_type is str
            or item_type is bool
            or (item_type is int and -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER)
            or (item_type is float and item - item == 0.0)
        ):
            if result is not None:
                result.append(item)
            continue
        converted = to_json_value(item, f"{path}[{index}]", warnings, depth + 1)
        if result is None:
            if converted is item and type(value) is list:
                continue
            result = list(value[:index])
        result.append(converted)
    if result is None:
        return value if type(value) is list else list(value)
    return result


def js_number_to_string(number: float) -> str:
    """
    ``String(number)`` as JavaScript writes it (ECMA-262 ``Number::toString``), used where Segment's
    schema validation coerces a number into a string field (Ajv ``coerceTypes``): ``12345.0`` ->
    ``"12345"``, ``1e-7`` -> ``"1e-7"``, ``1e21`` -> ``"1e+21"``.
    """
    if number != number:
        return "NaN"
    if number in (float("inf"), float("-inf")):
        return "Infinity" if number > 0 else "-Infinity"
    if number == 0:
        return "0"
    sign = "-" if number < 0 else ""
    digits_tuple = Decimal(repr(abs(number))).normalize().as_tuple()
    digits = "".join(map(str, digits_tuple.digits))
    k = len(digits)
    n = digits_tuple.exponent + k  # the decimal point sits after n digits
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + digits
    exponent = n - 1
    exponent_text = f"e+{exponent}" if exponent >= 0 else f"e-{-exponent}"
    mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
    return sign + mantissa + exponent_text


def js_string(value: object) -> str:
    """
    ``String(value)`` for a JSON value as JavaScript writes it; Segment uses it on subscription-group
    statuses (``getStatus(String(v))``): ``None`` -> ``"null"``, ``True`` -> ``"true"``, arrays join
    their items with commas, objects become ``"[object Object]"``.
    """
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return js_number_to_string(value)
    if isinstance(value, list):
        return ",".join("" if item is None else js_string(item) for item in value)
    return "[object Object]"


def coerce_to_string(value: object, path: str, warnings: list[str]) -> Any:
    """
    A string field's value as Segment's core leaves it: empty text and null removed, scalars coerced.

    Mirrors actions-core: ``remove-empty-values.ts`` deletes top-level ``""`` and ``null``, then Ajv's
    ``coerceTypes: 'array'`` turns ``true`` into ``"true"``, ``123`` into ``"123"`` and a one-item array
    into its item (actions-core ``packages/core/src/schema-validation.ts``). Warehouse types are first
    converted by :func:`to_json_value`; integers of any size and integral decimals give their exact
    digits.

    :return: a non-empty ``str``; :data:`MISSING` when the field is to be dropped; or the value
        unchanged when it cannot be coerced (an object, a longer array) so the JSON Schema rejects it.
    """
    value_type = type(value)
    if value_type is str:
        return value if value else MISSING
    if value is None:
        return MISSING
    if value_type is bool:
        return "true" if value else "false"
    if value_type is int:
        return str(value)
    if value_type is float:
        if value - value == 0.0:
            return js_number_to_string(value)
        warnings.append(_not_json_number_warning(path, value))
        return MISSING
    if (
        isinstance(value, Decimal)
        and value.is_finite()
        and abs(value.adjusted()) <= _DECIMAL_PLAIN_EXPONENT_LIMIT
        and value == value.to_integral_value()
    ):
        return str(int(value))
    if value_type is list and len(value) == 1 and not isinstance(value[0], list | dict | tuple):
        return coerce_to_string(value[0], path, warnings)
    if value_type is dict or value_type is list:
        return value
    converted = to_json_value(value, path, warnings)
    if converted is None:
        return MISSING
    return coerce_to_string(converted, path, warnings)


def coerce_to_nullable_string(value: object, path: str, warnings: list[str]) -> Any:
    """
    Like :func:`coerce_to_string` for fields that allow null (the subscription statuses): Segment's
    core keeps their ``null`` (``remove-empty-values.ts``), so ``None`` is returned as ``None``.
    """
    if value is None:
        return None
    return coerce_to_string(value, path, warnings)


def _reject_unserialisable(value: object) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _make_encoders():
    """
    Compact, strict JSON encoding identical to ``json.dumps(value, separators=(",", ":"),
    ensure_ascii=False, allow_nan=False)``: ``(encode any value, encode a dict or list)``.

    The C encoder is built once and reused: ``json.dumps`` with non-default arguments builds a new
    ``JSONEncoder`` and C encoder per call, which costs more than encoding a small message.
    """
    from json import encoder as json_encoder

    c_make_encoder = getattr(json_encoder, "c_make_encoder", None)
    c_encode_basestring = getattr(json_encoder, "c_encode_basestring", None)
    if c_make_encoder is None or c_encode_basestring is None:  # pragma: no cover - pure-Python json
        slow = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return slow.encode, slow.encode
    c_encoder = c_make_encoder(
        None, _reject_unserialisable, c_encode_basestring, None, ":", ",", False, False, False
    )

    def encode(value: Any) -> str:
        if isinstance(value, str):
            return c_encode_basestring(value)
        return "".join(c_encoder(value, 0))

    def encode_container(value: dict | list) -> str:
        return "".join(c_encoder(value, 0))

    return encode, encode_container


#: ``encode_json(value) -> str`` and ``encode_json_container(dict_or_list) -> str``: see
#: :func:`_make_encoders`. They raise ``ValueError`` for NaN/Infinity and ``TypeError`` for non-JSON
#: types; callers convert values with :func:`to_json_value` first.
encode_json, encode_json_container = _make_encoders()

try:  # msgspec is a dependency of Airflow's core and task SDK; the stdlib encoder stands in without it
    from msgspec.json import Encoder as _MsgspecEncoder

    _msgspec_encode: Any = _MsgspecEncoder().encode
except ImportError:  # pragma: no cover
    _msgspec_encode = None

#: A number written with an exponent (``1e16``, ``-2.5e-300``) or below 1e-4 (``0.00001``): where
#: msgspec's float text differs from Python's ``repr`` (``1e+16``, ``1e-05``). Every number in compact
#: JSON follows ``:``, ``,`` or ``[``; a string that happens to hold such text only costs the slow path.
_FLOAT_TEXT_DIFFERS = re.compile(rb"[:,\[]-?(?:[0-9]+(?:\.[0-9]+)?e|0\.0000)")


def encode_json_bytes(value: dict | list, *, floats_checked: bool = False) -> bytes:
    """
    ``value`` as compact, strict UTF-8 JSON, byte for byte ``json.dumps(value, separators=(",", ":"),
    ensure_ascii=False, allow_nan=False).encode("utf-8")``, about five times faster.

    msgspec encodes; its output is identical to the stdlib's for every string (all of Unicode), integer,
    ``true``/``false``/``null`` and every float Python writes without an exponent. Anything else takes the
    stdlib encoder: floats msgspec writes differently (see :data:`_FLOAT_TEXT_DIFFERS`) and anything
    msgspec refuses (``str`` subclasses, unpaired surrogates, ...), which then raises what the stdlib
    raises: ``TypeError`` for non-JSON types, ``ValueError`` for NaN/Infinity, ``UnicodeEncodeError`` for
    unpaired surrogates. Callers convert values with :func:`to_json_value` first, so the types msgspec
    accepts and the stdlib does not (``datetime``, ``Decimal``, ``UUID``, sets, NaN as ``null``) never get
    here.

    :param floats_checked: the caller knows ``value`` holds no float of magnitude outside [1e-4, 1e16),
        so the search of the output for float text that differs is skipped (it costs most of the gain).
    """
    if _msgspec_encode is not None:
        try:
            encoded = _msgspec_encode(value)
        except (TypeError, ValueError, OverflowError):
            pass
        else:
            if floats_checked or _FLOAT_TEXT_DIFFERS.search(encoded) is None:
                return encoded
    return encode_json_container(value).encode("utf-8")


def replace_unpaired_surrogates(value: Any, path: str, warnings: list[str]) -> Any:
    """
    Return ``value`` with every unpaired UTF-16 surrogate in its strings (keys included) replaced by
    U+FFFD, adding one warning per string changed. Such strings come from drivers that decode UTF-16 by
    code unit; UTF-8 cannot encode them, so they could not be sent at all.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # Pairs are joined into the character they encode; lone surrogates become U+FFFD.
            warnings.append(
                f"{path or 'message'}: UTF-16 surrogates in text repaired (unpaired ones -> U+FFFD)"
            )
            return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return value
    if isinstance(value, dict):
        repaired: dict[str, Any] = {}
        for key, item in value.items():
            new_key = replace_unpaired_surrogates(key, join_path(path, "<key>"), warnings)
            repaired[new_key] = replace_unpaired_surrogates(item, join_path(path, new_key), warnings)
        return repaired
    if isinstance(value, list):
        return [
            replace_unpaired_surrogates(item, f"{path}[{index}]", warnings)
            for index, item in enumerate(value)
        ]
    return value
