"""
Mapping configuration: validate every mapping at once, then compile each into a :class:`CompiledMapping`.

A mapping (``docs/mappings.md``) is a JSON-serialisable dict::

    {
        "name": "customers_identify",  # optional; default f"{action}_{index}", e.g. "send_identify_0"
        "action": "send_identify",  # send_identify | send_group | send_track | send_subscriptions
        "trigger": "added_or_updated",  # added | updated | added_or_updated (default) | deleted
        "profile_space": "segment_profiles_eu",  # optional conn id; None = the operator's default
        "fields": {"user_id": {"column": "customer_id"}, "traits": {"email": {"column": "email"}}},
    }

:func:`compile_mappings` raises one :class:`MappingConfigError` listing every problem of every mapping,
each with the mapping's name (``#index`` when unnamed) and a JSON path such as
``mappings[2].fields.traits.email``.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from airflow_provider_segment_profiles.actions.errors import FieldRejected, MappingConfigError
from airflow_provider_segment_profiles.actions.json_values import MISSING
from airflow_provider_segment_profiles.actions.message_id import mapping_fingerprint
from airflow_provider_segment_profiles.actions.record_builder import RecordBuilder, literal_field_value
from airflow_provider_segment_profiles.actions.registry import ACTION_NAMES, ActionSpec, FieldSpec, get_action
from airflow_provider_segment_profiles.actions.subscriptions import (
    ACCEPTED_STATUS_TEXT,
    CHANNELS,
    INVALID,
    KEY_FIELDS,
    STATUS_FIELDS,
    parse_status,
)
from airflow_provider_segment_profiles.actions.value_forms import (
    ColumnForm,
    ColumnsForm,
    Form,
    LiteralForm,
    ObjectForm,
    iter_columns,
    iter_star_forms,
    join_path,
    parse_field_form,
)
from airflow_provider_segment_profiles.common.changes import (
    DEFAULT_TRIGGER,
    SYNC_MODES,
    TRIGGER_RULES,
    TRIGGERS,
)

CHANGES = ("added", "updated", "deleted")
#: "Actions-based destinations have a limit of 50 individual mappings" (segment-docs
#: ``src/connections/destinations/actions.md``).
MAX_MAPPINGS = 50

_MAPPING_KEYS = ("name", "action", "trigger", "profile_space", "fields")


def _suggest(word: Any, choices: Sequence[str]) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class CompiledMapping:
    """
    One validated mapping, ready to be bound to a query's result columns.

    :ivar name: the mapping's name (default ``f"{action}_{index}"``).
    :ivar action: the action key.
    :ivar trigger: ``added`` | ``updated`` | ``added_or_updated`` | ``deleted``.
    :ivar profile_space: conn id of the ``segment_profiles`` connection, or ``None`` for the operator's.
    :ivar columns: the result columns the mapping reads by name (``columns: "*"`` adds every column at
        bind time; see :attr:`uses_all_columns`).
    :ivar uses_all_columns: the mapping contains ``{"columns": "*"}``.
    :ivar fingerprint: 32 hex digits identifying the mapping definition; changes when it changes.
    """

    __slots__ = (
        "_changes",
        "_column_refs",
        "_definition",
        "_forms",
        "_spec",
        "_star_forms",
        "action",
        "columns",
        "fingerprint",
        "index",
        "name",
        "primary_key",
        "profile_space",
        "sync_mode",
        "trigger",
        "uses_all_columns",
    )

    def __init__(
        self,
        *,
        index: int,
        name: str,
        spec: ActionSpec,
        trigger: str,
        profile_space: str | None,
        forms: tuple[tuple[str, Form], ...],
        column_refs: tuple[tuple[str, str], ...],
        star_forms: tuple[tuple[ColumnsForm, str], ...],
        definition: dict[str, Any],
        sync_mode: str,
        primary_key: str,
    ) -> None:
        self.index = index
        self.name = name
        self.action = spec.name
        self.trigger = trigger
        self.profile_space = profile_space
        self.sync_mode = sync_mode
        self.primary_key = primary_key
        self.columns = frozenset(column for column, _ in column_refs)
        self.uses_all_columns = bool(star_forms)
        self.fingerprint = mapping_fingerprint(definition)
        self._spec = spec
        self._forms = forms
        self._column_refs = column_refs
        self._star_forms = star_forms
        self._definition = definition
        # An unknown sync_mode is reported by compile_mappings; the mapping is still checked for its own problems.
        rules = TRIGGER_RULES.get(sync_mode)
        self._changes = rules.changes[trigger] if rules is not None else frozenset()

    def __repr__(self) -> str:
        return f"CompiledMapping(name={self.name!r}, action={self.action!r}, trigger={self.trigger!r})"

    @property
    def definition(self) -> dict[str, Any]:
        """The normalised definition (defaults filled in) that :attr:`fingerprint` hashes."""
        return self._definition

    def selects(self, change: str) -> bool:
        """
        Whether a record with this change goes through this mapping.

        In ``full`` mode every record goes to every mapping whose trigger is not ``deleted``, whatever
        its change; otherwise ``added_or_updated`` takes added and updated records, and ``added`` /
        ``updated`` / ``deleted`` take only their own.

        :param change: ``added`` | ``updated`` | ``deleted``.
        :raises ValueError: an unknown change.
        """
        if change not in CHANGES:
            raise ValueError(f"change must be one of {CHANGES}, not {change!r}")
        return change in self._changes

    def field_lineage(self) -> list[tuple[str, str]]:
        """
        Where each result column the mapping reads by name goes in the message (lineage reporting).

        :return: ``(result column, field path)`` pairs in mapping order, the path as the mapping names the
            field (``traits.email``, ``properties.plan``, ``user_id``); a ``columns`` list contributes one
            pair per column, under its own name. ``columns: "*"`` is left out: which columns it takes is
            known only from a result.
        """
        found: list[tuple[str, str]] = []
        for key, form in self._forms:
            _field_columns(form, key, found)
        return found

    def star_fields(self) -> list[tuple[str, tuple[str, ...]]]:
        """
        Every ``{"columns": "*"}`` of the mapping as ``(field path, excluded columns)``: the field gets each
        result column but those, under the column's name (lineage reporting, with a result's columns).
        """
        return [(star.path, star.exclude) for star, _config_path in self._star_forms]

    def _label(self) -> str:
        return f"mapping {self.name!r}"

    def check_columns(self, result_columns: Sequence[str]) -> list[str]:
        """
        Check the mapping's column references against the query's result columns.

        :param result_columns: the result's column names, in order.
        :return: one problem per missing or ambiguous column (with a case-insensitive suggestion), per
            ``exclude`` name not in the result, and for duplicate names taken by ``columns: "*"``.
        """
        counts = Counter(result_columns)
        by_lower = {column.lower(): column for column in result_columns}
        problems = []
        for column, path in self._column_refs:
            if counts[column] == 0:
                hint = _column_hint(column, by_lower)
                problems.append(
                    f"{self._label()} at {path}: column {column!r} is not in the query result{hint} "
                    f"(result columns: {_preview(result_columns)})"
                )
            elif counts[column] > 1:
                problems.append(
                    f"{self._label()} at {path}: the query result has {counts[column]} columns named "
                    f"{column!r}; alias them apart"
                )
        for star, path in self._star_forms:
            for column in star.exclude:
                if counts[column] == 0:
                    problems.append(
                        f"{self._label()} at {path}.exclude: column {column!r} is not in the query result"
                        + _column_hint(column, by_lower)
                    )
            if counts["__proto__"] and "__proto__" not in star.exclude:
                problems.append(
                    f'{self._label()} at {path}: "columns": "*" would take the column named \'__proto__\', '
                    "which never reaches Segment (its pipeline drops that key); exclude or alias it"
                )
            duplicates = sorted(
                column for column, n in counts.items() if n > 1 and column not in star.exclude
            )
            if duplicates:
                problems.append(
                    f'{self._label()} at {path}: "columns": "*" would take duplicate column names '
                    f"{duplicates}; alias them apart or exclude them"
                )
        return problems

    def bind(self, result_columns: Sequence[str], scope: bytes = b"") -> RecordBuilder:
        """
        Resolve every column reference to its position in the result.

        :param result_columns: the result's column names, in the order of each row's values.
        :param scope: the destination's message-id scope
            (:func:`~airflow_provider_segment_profiles.actions.message_id.destination_scope`); ``b""`` derives
            unscoped ids.
        :return: a :class:`RecordBuilder` for rows of that result.
        :raises MappingConfigError: :meth:`check_columns` found problems.
        """
        problems = self.check_columns(result_columns)
        if problems:
            raise MappingConfigError(problems)
        return RecordBuilder(
            mapping_name=self.name,
            spec=self._spec,
            fingerprint=self.fingerprint,
            forms=self._forms,
            result_columns=list(result_columns),
            primary_key=self.primary_key,
            scope=scope,
        )


def _field_columns(form: Any, path: str, found: list[tuple[str, str]]) -> None:
    if isinstance(form, ColumnForm):
        found.append((form.column, path))
    elif isinstance(form, ColumnsForm):
        found.extend((name, join_path(path, name)) for name in form.columns or ())
    elif isinstance(form, ObjectForm):
        for key, child in form.entries:
            _field_columns(child, join_path(path, key), found)


def _column_hint(column: str, by_lower: Mapping[str, str]) -> str:
    """
    ``"; did you mean 'X'?"`` for a result column spelt like ``column``: the same name in another case,
    else the closest name ignoring case (``difflib``, as for action and field names); ``""`` when none is
    close.
    """
    near = by_lower.get(column.lower())
    if near is not None:
        return f"; did you mean {near!r}? (names are case-sensitive)"
    close = difflib.get_close_matches(column.lower(), list(by_lower), n=1, cutoff=0.6)
    return f"; did you mean {by_lower[close[0]]!r}?" if close else ""


def column_hint(column: str, result_columns: Sequence[str]) -> str:
    """:func:`_column_hint` over a result's column names (for ``primary_key`` and ``cursor_column``)."""
    return _column_hint(column, {name.lower(): name for name in result_columns})


def _preview(columns: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(repr(column) for column in columns[:limit])
    return shown + (f", ... ({len(columns)} in all)" if len(columns) > limit else "")


class _MappingCompiler:
    """Validates one mapping, collecting its problems instead of stopping at the first."""

    def __init__(
        self, raw: Any, index: int, *, sync_mode: str, primary_key: str, problems: list[str]
    ) -> None:
        self.raw = raw
        self.index = index
        self.path = f"mappings[{index}]"
        self.sync_mode = sync_mode
        self.primary_key = primary_key
        self._problems = problems
        name = raw.get("name") if isinstance(raw, dict) else None
        self.label = f"mapping {name!r}" if isinstance(name, str) and name else f"mapping #{index}"

    def report(self, path: str, problem: str) -> None:
        self._problems.append(f"{self.label} at {path}: {problem}")

    def compile(self) -> CompiledMapping | None:
        raw = self.raw
        if not isinstance(raw, dict):
            self.report(self.path, f"a mapping must be an object (dict), not {type(raw).__name__}")
            return None
        before = len(self._problems)
        unknown = [key for key in raw if key not in _MAPPING_KEYS]
        for key in unknown:
            self.report(
                join_path(self.path, str(key)),
                f"unknown mapping key{_suggest(key, _MAPPING_KEYS)} (allowed: {', '.join(_MAPPING_KEYS)})",
            )
        spec = self._action()
        name = self._name(spec)
        trigger = self._trigger()
        profile_space = self._profile_space()
        forms = self._fields(spec, trigger) if spec is not None else ()
        if len(self._problems) > before or spec is None or trigger is None:
            return None
        column_refs: list[tuple[str, str]] = []
        star_forms: list[tuple[ColumnsForm, str]] = []
        for key, form in forms:
            field_path = join_path(f"{self.path}.fields", key)
            column_refs.extend(iter_columns(form, field_path))
            star_forms.extend(iter_star_forms(form, field_path))
        definition = {
            "name": name,
            "action": spec.name,
            "trigger": trigger,
            "profile_space": profile_space,
            "fields": json.loads(json.dumps(raw["fields"])),  # a private copy; validated as plain JSON
        }
        return CompiledMapping(
            index=self.index,
            name=name,
            spec=spec,
            trigger=trigger,
            profile_space=profile_space,
            forms=tuple(forms),
            column_refs=tuple(column_refs),
            star_forms=tuple(star_forms),
            definition=definition,
            sync_mode=self.sync_mode,
            primary_key=self.primary_key,
        )

    def _action(self) -> ActionSpec | None:
        action = self.raw.get("action")
        if action is None:
            self.report(f"{self.path}.action", f"missing; one of {', '.join(ACTION_NAMES)}")
            return None
        if action not in ACTION_NAMES:
            self.report(
                f"{self.path}.action",
                f"unknown action {action!r}{_suggest(action, ACTION_NAMES)} "
                f"(one of {', '.join(ACTION_NAMES)})",
            )
            return None
        return get_action(action)

    def _name(self, spec: ActionSpec | None) -> str:
        name = self.raw.get("name")
        if name is None:
            return f"{spec.name if spec else self.raw.get('action')}_{self.index}"
        if not isinstance(name, str) or not name.strip():
            self.report(f"{self.path}.name", f"must be a non-empty string, not {name!r}")
            return f"#{self.index}"
        return name

    def _trigger(self) -> str | None:
        trigger = self.raw.get("trigger", DEFAULT_TRIGGER)
        if trigger not in TRIGGERS:
            self.report(
                f"{self.path}.trigger",
                f"unknown trigger {trigger!r}{_suggest(trigger, TRIGGERS)} (one of {', '.join(TRIGGERS)})",
            )
            return None
        rules = TRIGGER_RULES.get(self.sync_mode)
        unfit = rules.unfit if rules is not None else {}
        if trigger in unfit:
            why = unfit[trigger]
            self.report(
                f"{self.path}.trigger",
                f"trigger {trigger!r} does not fit sync_mode {self.sync_mode!r}: {why}",
            )
        return trigger

    def _profile_space(self) -> str | None:
        profile_space = self.raw.get("profile_space")
        if profile_space is not None and (not isinstance(profile_space, str) or not profile_space.strip()):
            self.report(
                f"{self.path}.profile_space",
                "must be the conn id (a non-empty string) of a segment_profiles connection, "
                f"not {profile_space!r}",
            )
            return None
        return profile_space

    def _fields(self, spec: ActionSpec, trigger: str | None) -> list[tuple[str, Form]]:
        fields_path = f"{self.path}.fields"
        fields = self.raw.get("fields")
        if not isinstance(fields, dict):
            self.report(fields_path, f"must be an object of field key to value form, not {fields!r}")
            return []
        forms: list[tuple[str, Form]] = []
        broken: set[str] = set()
        for key, raw_form in fields.items():
            field_path = join_path(fields_path, str(key))
            field_spec = spec.fields.get(key)
            if field_spec is None:
                self.report(
                    field_path,
                    f"unknown field for {spec.name}{_suggest(key, tuple(spec.fields))} "
                    f"(fields: {', '.join(spec.fields)})",
                )
                continue
            if _report_proto_keys(raw_form, field_path, self.report):
                broken.add(key)
                continue
            form = parse_field_form(raw_form, field_path, key, self.report, is_object=field_spec.is_object)
            if form is None or (
                isinstance(form, LiteralForm)
                and not self._literal_fits(spec, field_spec, form.value, field_path)
            ):
                broken.add(key)
                continue
            forms.append((key, form))
        # Order the fields as the action's schema lists them, for a stable resolution order.
        order = {key: position for position, key in enumerate(spec.fields)}
        forms.sort(key=lambda item: order[item[0]])
        mapped = {key for key, form in forms if not _is_empty_literal(form)} | broken
        self._check_mapped_fields(spec, mapped, fields_path)
        if trigger == "deleted":
            self._check_deleted_fields(forms, fields_path)
        return forms

    def _literal_fits(self, spec: ActionSpec, field_spec: FieldSpec, value: Any, field_path: str) -> bool:
        warnings: list[str] = []
        try:
            coerced = literal_field_value(field_spec, value, warnings)
        except FieldRejected as exc:
            self.report(field_path, exc.reason)
            return False
        if field_spec.key == "message_id" and coerced is not MISSING:
            self.report(
                field_path,
                "a literal message_id would give every record the same id, and Segment would drop all "
                "but the first as duplicates; map a column, or leave message_id out to derive one per record",
            )
            return False
        if coerced is MISSING:
            return True
        if not field_spec.fast_check()(coerced):
            errors = [
                str(error.message) for error in spec.field_validators[field_spec.key].iter_errors(coerced)
            ]
            hint = (
                '; an object field takes an object of value forms, {"column": ...}, {"columns": ...} '
                'or {"literal": {...}}'
                if field_spec.is_object
                else ""
            )
            self.report(
                field_path, f"literal {value!r} does not fit {field_spec.label}: {'; '.join(errors)}{hint}"
            )
            return False
        if field_spec.key in STATUS_FIELDS and parse_status(coerced) == INVALID:
            self.report(field_path, f"literal status {value!r} is not valid: expected {ACCEPTED_STATUS_TEXT}")
            return False
        return True

    def _check_mapped_fields(self, spec: ActionSpec, mapped: set[str], fields_path: str) -> None:
        """Fields whose absence would reject every record; ``mapped`` excludes null/empty literals."""
        for key in spec.required_fields:
            if key not in mapped:
                self.report(fields_path, f"required field {key!r} ({spec.fields[key].label}) is not mapped")
        if "user_id" not in mapped and "anonymous_id" not in mapped:
            self.report(
                fields_path,
                "map user_id or anonymous_id: Segment's tracking API drops calls that have neither",
            )
        if spec.name != "send_subscriptions":
            return
        if not mapped & set(KEY_FIELDS):
            self.report(fields_path, "map at least one of email, phone, android_push_token, ios_push_token")
        if not mapped & set(STATUS_FIELDS):
            self.report(fields_path, f"map at least one subscription status ({', '.join(STATUS_FIELDS)})")
        for key_field, _external, statuses in CHANNELS:
            for status_field, _channel, _label in statuses:
                if status_field in mapped and key_field not in mapped:
                    self.report(
                        join_path(fields_path, status_field),
                        f"{status_field} is mapped but {key_field} is not: every record with a status "
                        "would be rejected",
                    )
        if "subscription_groups" in mapped and "email_subscription_status" not in mapped:
            self.report(
                join_path(fields_path, "subscription_groups"),
                "subscription groups need email_subscription_status to be mapped too",
            )

    def _check_deleted_fields(self, forms: list[tuple[str, Form]], fields_path: str) -> None:
        for key, form in forms:
            field_path = join_path(fields_path, key)
            for column, path in iter_columns(form, field_path):
                if column != self.primary_key:
                    self.report(
                        path,
                        "a 'deleted' mapping can only read the primary key column "
                        f"{self.primary_key!r}: a deleted record has no other values (column {column!r})",
                    )
            for _star, path in iter_star_forms(form, field_path):
                self.report(
                    path, 'a \'deleted\' mapping cannot use "columns": "*": a deleted record has no values'
                )


_PROTO_KEY_PROBLEM = (
    "a key named '__proto__' never reaches Segment: its pipeline copies objects with JavaScript's "
    "Object.assign, which turns that key into the object's prototype; rename it"
)


def _report_proto_keys(raw: Any, path: str, report: Callable[[str, str], None]) -> bool:
    """Report every ``__proto__`` key a field's form would send (object keys, ``columns`` names)."""
    found = False
    if isinstance(raw, dict):
        for key, value in raw.items():
            if key == "__proto__":
                report(join_path(path, key), _PROTO_KEY_PROBLEM)
                found = True
            elif key == "columns" and isinstance(value, list | tuple) and "__proto__" in value:
                report(join_path(path, key), f"{_PROTO_KEY_PROBLEM} (alias the column)")
                found = True
            else:
                found = _report_proto_keys(value, join_path(path, str(key)), report) or found
    elif isinstance(raw, list | tuple):
        for index, item in enumerate(raw):
            found = _report_proto_keys(item, f"{path}[{index}]", report) or found
    return found


def _is_empty_literal(form: Form) -> bool:
    return isinstance(form, LiteralForm) and form.value in (None, "")


def compile_mappings(
    mappings: list[dict[str, Any]], *, sync_mode: str, primary_key: str
) -> list[CompiledMapping]:
    """
    Validate and compile the operator's mappings.

    :param mappings: the mapping dicts (see the module docstring and ``docs/mappings.md``).
    :param sync_mode: ``diff`` | ``incremental`` | ``full``; decides which triggers fit.
    :param primary_key: the model's unique identifier column; the only column a ``deleted`` mapping may
        read.
    :return: one :class:`CompiledMapping` per mapping, in order.
    :raises MappingConfigError: listing every problem found (unknown action, field or mapping key, wrong
        value form, unmapped required field, duplicate names, more than 50 mappings, a trigger that does
        not fit ``sync_mode``, a ``deleted`` mapping reading other columns, a bad ``profile_space``, ...).
    """
    problems: list[str] = []
    if sync_mode not in SYNC_MODES:
        problems.append(f"sync_mode must be one of {', '.join(SYNC_MODES)}, not {sync_mode!r}")
    if not isinstance(primary_key, str) or not primary_key:
        problems.append(f"primary_key must be a non-empty column name, not {primary_key!r}")
    if isinstance(mappings, dict) or not isinstance(mappings, list | tuple):
        problems.append(f"mappings must be a list of mapping objects, not {type(mappings).__name__}")
        raise MappingConfigError(problems)
    if not mappings:
        problems.append("no mappings given: add at least one")
    if len(mappings) > MAX_MAPPINGS:
        problems.append(
            f"{len(mappings)} mappings given; Segment allows at most {MAX_MAPPINGS} per destination"
        )
    compiled = []
    for index, raw in enumerate(mappings):
        compiler = _MappingCompiler(
            raw, index, sync_mode=sync_mode, primary_key=primary_key, problems=problems
        )
        result = compiler.compile()
        if result is not None:
            compiled.append(result)
    names = Counter(_declared_or_default_name(raw, index) for index, raw in enumerate(mappings))
    for name, count in names.items():
        if name is not None and count > 1:
            indexes = [
                f"mappings[{index}]"
                for index, raw in enumerate(mappings)
                if _declared_or_default_name(raw, index) == name
            ]
            problems.append(
                f"mapping name {name!r} is used {count} times ({', '.join(indexes)}); names must be unique"
            )
    if problems:
        raise MappingConfigError(problems)
    return compiled


def _declared_or_default_name(raw: Any, index: int) -> str | None:
    if not isinstance(raw, dict):
        return None
    name = raw.get("name")
    if name is None:
        return f"{raw.get('action')}_{index}"
    return name if isinstance(name, str) else None
