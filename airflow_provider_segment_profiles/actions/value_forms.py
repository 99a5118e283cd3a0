"""
Value forms: how a mapping says where each field's value comes from (``docs/mappings.md``, "Value forms").

===========================================  ========================================================
form                                         meaning
===========================================  ========================================================
``{"column": "NAME"}``                       the record's value of result column ``NAME``. Options:
                                             ``"skip_null": true`` omits the key when the value is null;
                                             ``"parse_json": true`` (object fields and values inside
                                             them) parses JSON text in the column.
``"text"``, ``12``, ``true``, ``null``,      a JSON literal, sent as it is; lists are taken literally
``[...]``                                    (objects inside a list are not value forms).
``{"literal": VALUE}``                       ``VALUE`` as it is, e.g. a literal object.
``{"key": FORM, ...}``                       (object fields and inside them) an object whose values are
                                             forms, nested to any depth.
``{"columns": ["a", "b"]}``                  (object fields and inside them) an object keyed by column
``{"columns": "*", "exclude": ["id"]}``      name; ``"*"`` means every result column but ``exclude``.
                                             ``"skip_null": true`` leaves out null columns.
===========================================  ========================================================

A dict containing ``column``, ``literal`` or ``columns`` is always read as that form; a trait literally
named ``column`` must therefore be written inside ``{"literal": {...}}``.

Forms are parsed and validated once per mapping (:func:`parse_field_form`) and bound to the query's
column positions once per run (:func:`bind_object`, :func:`bind_column_value`), so the per-record work is
indexing a row and converting the few values whose type needs it.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from airflow_provider_segment_profiles.actions.errors import FieldRejected
from airflow_provider_segment_profiles.actions.json_values import MAX_SAFE_INTEGER, join_path, to_json_value

Report = Callable[[str, str], None]
ValueGetter = Callable[[Sequence[Any], list[str]], Any]
ObjectBuilder = Callable[[Sequence[Any], list[str]], dict[str, Any]]

_COLUMN_KEYS = frozenset({"column", "skip_null", "parse_json"})
_COLUMNS_KEYS = frozenset({"columns", "exclude", "skip_null"})
_FORM_KEYWORDS = ("column", "columns", "literal")

#: Objects in mappings may nest this deep (a guard against self-referencing templated structures).
MAX_FORM_DEPTH = 32


@dataclass(frozen=True, slots=True)
class ColumnForm:
    """``{"column": ...}``; ``path`` is where the value lands in the record (``traits.email``)."""

    column: str
    skip_null: bool
    parse_json: bool
    path: str


@dataclass(frozen=True, slots=True)
class LiteralForm:
    """A literal, already converted by the warehouse-to-JSON policy."""

    value: Any


@dataclass(frozen=True, slots=True)
class ObjectForm:
    """An object of forms, in the mapping's key order."""

    entries: tuple[tuple[str, Form], ...]
    path: str


@dataclass(frozen=True, slots=True)
class ColumnsForm:
    """``{"columns": [...]}``; ``columns`` is ``None`` for ``"*"``."""

    columns: tuple[str, ...] | None
    exclude: tuple[str, ...]
    skip_null: bool
    path: str


Form = ColumnForm | LiteralForm | ObjectForm | ColumnsForm


def _non_json_type(value: Any, depth: int = 0) -> str | None:
    """Name of the first value inside ``value`` that JSON cannot represent, else ``None``."""
    if value is None or isinstance(value, str | bool | int):
        return None
    if isinstance(value, float):
        return None if value - value == 0.0 else repr(value)
    if depth > MAX_FORM_DEPTH:
        return f"structure nested deeper than {MAX_FORM_DEPTH} levels"
    if isinstance(value, list | tuple):
        for item in value:
            found = _non_json_type(item, depth + 1)
            if found:
                return found
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"non-text key {key!r}"
            found = _non_json_type(item, depth + 1)
            if found:
                return found
        return None
    return type(value).__name__


def _literal(value: Any, config_path: str, record_path: str, report: Report) -> LiteralForm | None:
    bad = _non_json_type(value)
    if bad:
        report(config_path, f"literal is not JSON-serialisable ({bad}); mappings must be plain JSON")
        return None
    warnings: list[str] = []
    converted = to_json_value(value, record_path, warnings)
    return LiteralForm(converted)


def _check_option(raw: Mapping[str, Any], option: str, config_path: str, report: Report) -> bool:
    value = raw.get(option, False)
    if not isinstance(value, bool):
        report(join_path(config_path, option), f"must be true or false, not {value!r}")
        return False
    return value


def _column_name(value: Any, config_path: str, report: Report) -> str | None:
    if not isinstance(value, str) or not value:
        report(config_path, f"a column name must be a non-empty string, not {value!r}")
        return None
    return value


def _parse_column(
    raw: Mapping[str, Any], config_path: str, record_path: str, report: Report, *, allow_parse_json: bool
) -> ColumnForm | None:
    unknown = sorted(set(raw) - _COLUMN_KEYS)
    if unknown:
        report(
            config_path,
            f"unknown key(s) {unknown} in a column reference; allowed: column, skip_null, parse_json",
        )
    column = _column_name(raw["column"], join_path(config_path, "column"), report)
    skip_null = _check_option(raw, "skip_null", config_path, report)
    parse_json = _check_option(raw, "parse_json", config_path, report)
    if parse_json and not allow_parse_json:
        report(
            join_path(config_path, "parse_json"),
            "parse_json only applies to object fields and values inside them",
        )
    if column is None or unknown:
        return None
    return ColumnForm(column, skip_null, parse_json, record_path)


def _parse_columns(
    raw: Mapping[str, Any], config_path: str, record_path: str, report: Report
) -> ColumnsForm | None:
    ok = True
    unknown = sorted(set(raw) - _COLUMNS_KEYS)
    if unknown:
        report(
            config_path, f"unknown key(s) {unknown} in a columns form; allowed: columns, exclude, skip_null"
        )
        ok = False
    selection = raw["columns"]
    columns: tuple[str, ...] | None = None
    if selection == "*":
        columns = None
    elif isinstance(selection, list | tuple) and selection:
        names = [
            _column_name(name, f"{join_path(config_path, 'columns')}[{i}]", report)
            for i, name in enumerate(selection)
        ]
        if any(name is None for name in names):
            ok = False
        else:
            duplicates = sorted({name for name in names if names.count(name) > 1})
            if duplicates:
                report(join_path(config_path, "columns"), f"lists column(s) {duplicates} more than once")
                ok = False
            columns = tuple(names)  # type: ignore[arg-type]
    else:
        report(
            join_path(config_path, "columns"),
            f'must be "*" or a non-empty list of column names, not {selection!r}',
        )
        ok = False
    exclude_raw = raw.get("exclude", [])
    exclude: tuple[str, ...] = ()
    if "exclude" in raw and selection != "*":
        report(join_path(config_path, "exclude"), 'only applies to {"columns": "*"}')
        ok = False
    elif not isinstance(exclude_raw, list | tuple):
        report(join_path(config_path, "exclude"), f"must be a list of column names, not {exclude_raw!r}")
        ok = False
    else:
        names = [
            _column_name(n, f"{join_path(config_path, 'exclude')}[{i}]", report)
            for i, n in enumerate(exclude_raw)
        ]
        ok = ok and all(name is not None for name in names)
        exclude = tuple(name for name in names if name is not None)
    skip_null = _check_option(raw, "skip_null", config_path, report)
    return ColumnsForm(columns, exclude, skip_null, record_path) if ok else None


def _looks_like_misspelt_form(raw: Mapping[str, Any]) -> str | None:
    if len(raw) != 1:
        return None
    (key,) = raw
    if key in _FORM_KEYWORDS or not isinstance(raw[key], str):
        return None
    close = difflib.get_close_matches(key, _FORM_KEYWORDS, n=1, cutoff=0.75)
    return close[0] if close else None


def parse_value_form(
    raw: Any, config_path: str, record_path: str, report: Report, depth: int = 0
) -> Form | None:
    """
    Parse a form that sits inside an object field (any form is allowed there).

    :param raw: the mapping's value.
    :param config_path: JSON path in the operator's ``mappings`` (``mappings[0].fields.traits.email``).
    :param record_path: path in the record's fields (``traits.email``), used in rejections and warnings.
    :param report: called with ``(config_path, problem)`` for each problem.
    :return: the parsed form, or ``None`` when it has problems.
    """
    if isinstance(raw, dict):
        return _parse_dict_form(raw, config_path, record_path, report, depth, allow_object=True)
    return _literal(raw, config_path, record_path, report)


def _parse_dict_form(
    raw: dict[str, Any], config_path: str, record_path: str, report: Report, depth: int, *, allow_object: bool
) -> Form | None:
    keywords = [word for word in _FORM_KEYWORDS if word in raw]
    if len(keywords) > 1:
        report(config_path, f"mixes {keywords}; a form uses exactly one of column, columns, literal")
        return None
    if keywords == ["column"]:
        return _parse_column(raw, config_path, record_path, report, allow_parse_json=allow_object)
    if keywords == ["literal"]:
        if len(raw) > 1:
            report(
                config_path,
                f"a literal form has only the key 'literal', not also {sorted(set(raw) - {'literal'})}",
            )
            return None
        return _literal(raw["literal"], join_path(config_path, "literal"), record_path, report)
    if not allow_object:
        what = "a columns form" if keywords else "an object of value forms"
        report(
            config_path, f'this field takes a single value: use {{"column": ...}} or a literal, not {what}'
        )
        return None
    if keywords == ["columns"]:
        return _parse_columns(raw, config_path, record_path, report)
    return parse_object_form(raw, config_path, record_path, report, depth)


def parse_object_form(
    raw: dict[str, Any], config_path: str, record_path: str, report: Report, depth: int = 0
) -> ObjectForm | None:
    """Parse ``{"key": FORM, ...}``."""
    if depth >= MAX_FORM_DEPTH:
        report(config_path, f"objects nest deeper than {MAX_FORM_DEPTH} levels")
        return None
    suggestion = _looks_like_misspelt_form(raw)
    if suggestion:
        (key,) = raw
        report(
            join_path(config_path, key),
            f"did you mean {suggestion!r}? (write {{'literal': {{...}}}} for a literal object)",
        )
        return None
    entries = []
    ok = True
    for key, value in raw.items():
        if not isinstance(key, str):
            report(config_path, f"object keys must be strings, not {key!r}")
            ok = False
            continue
        form = parse_value_form(
            value, join_path(config_path, key), join_path(record_path, key), report, depth + 1
        )
        if form is None:
            ok = False
        else:
            entries.append((key, form))
    return ObjectForm(tuple(entries), record_path) if ok else None


def parse_field_form(
    raw: Any, config_path: str, field_key: str, report: Report, *, is_object: bool
) -> Form | None:
    """
    Parse a top-level field's form.

    :param is_object: the field is an object field (``traits``, ``properties``, ``subscription_groups``,
        ``consent``); other fields take a column reference or a literal only.
    """
    if isinstance(raw, dict):
        return _parse_dict_form(raw, config_path, field_key, report, 0, allow_object=is_object)
    return _literal(raw, config_path, field_key, report)


def iter_columns(form: Form, config_path: str) -> list[tuple[str, str]]:
    """Every ``(column, config_path)`` a form reads; ``columns: "*"`` contributes nothing here."""
    if isinstance(form, ColumnForm):
        return [(form.column, config_path)]
    if isinstance(form, ColumnsForm):
        return [(name, config_path) for name in form.columns or ()]
    if isinstance(form, ObjectForm):
        found = []
        for key, child in form.entries:
            found.extend(iter_columns(child, join_path(config_path, key)))
        return found
    return []


def iter_star_forms(form: Form, config_path: str) -> list[tuple[ColumnsForm, str]]:
    """Every ``{"columns": "*"}`` inside a form, with its config path."""
    if isinstance(form, ColumnsForm) and form.columns is None:
        return [(form, config_path)]
    if isinstance(form, ObjectForm):
        found = []
        for key, child in form.entries:
            found.extend(iter_star_forms(child, join_path(config_path, key)))
        return found
    return []


# --- binding: forms -> closures over column positions -------------------------------------------------

_COLUMN, _CONSTANT, _CALL = 0, 1, 2


def parse_json_text(value: Any, path: str) -> Any:
    """
    Parse JSON text found in a column whose mapping says ``"parse_json": true``; other values (already
    parsed JSON from ``json``/``jsonb`` columns, numbers, null) are returned unchanged. Empty text is null.

    :raises FieldRejected: the text is not valid JSON.
    """
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FieldRejected(path, f"parse_json: the bytes are not UTF-8 text: {exc}") from None
    if not isinstance(value, str):
        return value
    if not value.strip():
        return None
    try:
        return json.loads(value)
    except (ValueError, RecursionError) as exc:
        raise FieldRejected(path, f"parse_json: the column does not hold valid JSON text: {exc}") from None


def bind_column_value(form: ColumnForm, index: int) -> ValueGetter:
    """A getter for one column value, converted to JSON (and parsed when the form says ``parse_json``)."""
    path = form.path
    if form.parse_json:

        def get_parsed(row: Sequence[Any], warnings: list[str]) -> Any:
            return to_json_value(parse_json_text(row[index], path), path, warnings)

        return get_parsed

    def get(row: Sequence[Any], warnings: list[str]) -> Any:
        return to_json_value(row[index], path, warnings)

    return get


def _bind_entries(
    form: ObjectForm | ColumnsForm, index_of: Mapping[str, int], result_columns: Sequence[str]
) -> list:
    if isinstance(form, ColumnsForm):
        if form.columns is None:
            excluded = set(form.exclude)
            names = [name for name in dict.fromkeys(result_columns) if name not in excluded]
        else:
            names = list(form.columns)
        return [(name, index_of[name], form.skip_null, join_path(form.path, name), _COLUMN) for name in names]
    entries = []
    for key, child in form.entries:
        if isinstance(child, LiteralForm):
            entries.append((key, child.value, False, "", _CONSTANT))
        elif isinstance(child, ColumnForm) and not child.parse_json:
            entries.append((key, index_of[child.column], child.skip_null, child.path, _COLUMN))
        elif isinstance(child, ColumnForm):
            entries.append(
                (key, bind_column_value(child, index_of[child.column]), child.skip_null, child.path, _CALL)
            )
        else:
            entries.append((key, bind_object(child, index_of, result_columns), False, child.path, _CALL))
    return entries


def bind_object(
    form: ObjectForm | ColumnsForm, index_of: Mapping[str, int], result_columns: Sequence[str]
) -> ObjectBuilder:
    """
    Bind an object form to column positions.

    :param index_of: column name -> position in each result row.
    :param result_columns: the result's column names, in order (for ``columns: "*"``).
    :return: ``build(row, warnings) -> dict`` producing the object for one record.
    """
    entries = tuple(_bind_entries(form, index_of, result_columns))
    max_safe = MAX_SAFE_INTEGER
    if all(kind == _COLUMN for *_, kind in entries):
        column_entries = tuple(entry[:4] for entry in entries)

        def build_from_columns(row: Sequence[Any], warnings: list[str]) -> dict[str, Any]:
            result = {}
            for key, index, skip_null, path in column_entries:
                value = row[index]
                value_type = type(value)
                if value is None:
                    if skip_null:
                        continue
                elif not (
                    value_type is str
                    or value_type is bool
                    or (value_type is int and -max_safe <= value <= max_safe)
                    or (value_type is float and value - value == 0.0)
                ):
                    value = to_json_value(value, path, warnings)
                    if value is None and skip_null:
                        continue
                result[key] = value
            return result

        return build_from_columns

    def build(row: Sequence[Any], warnings: list[str]) -> dict[str, Any]:
        result = {}
        for key, source, skip_null, path, kind in entries:
            if kind == _COLUMN:
                value = row[source]
                value_type = type(value)
                if value is None:
                    if skip_null:
                        continue
                elif not (
                    value_type is str
                    or value_type is bool
                    or (value_type is int and -max_safe <= value <= max_safe)
                    or (value_type is float and value - value == 0.0)
                ):
                    value = to_json_value(value, path, warnings)
                    if value is None and skip_null:
                        continue
            elif kind == _CONSTANT:
                value = source
            else:
                value = source(row, warnings)
                if value is None and skip_null:
                    continue
            result[key] = value
        return result

    return build
