"""
The four Segment Profiles actions and their fields, read from the JSON Schemas shipped in ``schemas/``.

Each schema (draft 2020-12) describes one action's *resolved field values* for one record: its
``properties`` are the field keys with ``title`` (Segment's label), ``description`` and ``type``;
``required`` lists the fields Segment marks required; ``x-hidden`` marks the fields Segment hides
(``message_id``, ``consent``). Field keys, labels, types and required flags follow Segment's destination
(segmentio/action-destinations ``packages/destination-actions/src/destinations/segment-profiles/
segment-properties.ts`` and ``sendSubscription/subscription-properties.ts``).

The schemas are used twice: to validate mappings (known fields, required fields, literal values) and to
validate each record's values. Per record, a check derived from the schema (:meth:`ActionSpec.fast_check`)
decides; the compiled ``jsonschema`` validator only runs when that check fails, to word the rejection.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

#: The action keys, in Segment's catalogue order.
ACTION_NAMES: tuple[str, ...] = ("send_identify", "send_group", "send_track", "send_subscriptions")

#: Schema keywords a field may use. The per-record fast check mirrors exactly these, so a schema using
#: anything else is refused at import instead of silently diverging from jsonschema.
_SUPPORTED_FIELD_KEYWORDS = frozenset(
    {"title", "description", "type", "format", "additionalProperties", "maxLength"}
)
_TYPE_WORDS = {"string": "a string", "object": "an object", "number": "a number", "null": "null"}

FastCheck = Callable[[Any], bool]


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """
    One field of an action.

    :param key: the field key used in mappings (``user_id``).
    :param label: Segment's label (``User ID``).
    :param description: what the field is for.
    :param types: JSON Schema types accepted, e.g. ``("string",)`` or ``("string", "null")``.
    :param required: Segment marks the field required for this action.
    :param hidden: Segment hides the field in its UI (``message_id``, ``consent``).
    :param max_length: maximum text length in characters, when the schema sets one.
    :param is_timestamp: the field is a date-time (``format: date-time``).
    """

    key: str
    label: str
    description: str
    types: tuple[str, ...]
    required: bool
    hidden: bool
    max_length: int | None
    is_timestamp: bool

    @property
    def is_object(self) -> bool:
        return self.types == ("object",)

    @property
    def allows_null(self) -> bool:
        """Segment's core keeps ``null`` for this field instead of removing it (the statuses)."""
        return "null" in self.types

    @property
    def is_text(self) -> bool:
        """A string field (possibly nullable) that Segment coerces scalars into."""
        return not self.is_timestamp and self.types[0] == "string"

    def fast_check(self) -> FastCheck:
        """
        A predicate equal to ``jsonschema``'s verdict for this field's subschema on values that are
        already JSON-converted (``dict``/``list``/``str``/``int``/``float``/``bool``/``None``).
        """
        accepted: set[type] = set()
        for type_name in self.types:
            accepted.update({"string": {str}, "object": {dict}, "number": {int, float}}.get(type_name, ()))
        allows_null = self.allows_null
        max_length = self.max_length
        accepted_types = frozenset(accepted)

        def check(value: Any) -> bool:
            if value is None:
                return allows_null
            if type(value) not in accepted_types:
                return False
            return max_length is None or type(value) is not str or len(value) <= max_length

        return check


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """
    One action: its schema, fields and the Segment message type it sends.

    :param name: the action key used in mappings (``send_identify``).
    :param title: Segment's title (``Send Identify``).
    :param message_type: the tracking-API ``type`` of the messages it builds.
    :param schema: the parsed JSON Schema.
    :param fields: the fields in Segment's order, keyed by field key.
    """

    name: str
    title: str
    message_type: str
    schema: dict[str, Any]
    fields: Mapping[str, FieldSpec]
    validator: Draft202012Validator = field(repr=False)
    field_validators: Mapping[str, Draft202012Validator] = field(repr=False)

    @property
    def required_fields(self) -> tuple[str, ...]:
        return tuple(key for key, spec in self.fields.items() if spec.required)

    def schema_errors(self, values: Mapping[str, Any]) -> list[tuple[str, str]]:
        """
        Validate one record's resolved values with the compiled ``jsonschema`` validator.

        :return: ``(field, message)`` pairs in Segment's wording (actions-core turns Ajv errors into
            ``The root value is missing the required field 'group_id'.``); empty when valid.
        """
        problems = []
        errors = sorted(self.validator.iter_errors(values), key=_error_order)
        for error in errors:
            problems.append(_describe_error(error))
        return problems


def _error_order(error: ValidationError) -> tuple[int, str]:
    return (0 if error.validator == "required" else 1, "/".join(map(str, error.absolute_path)))


def _describe_error(error: ValidationError) -> tuple[str, str]:
    if error.validator == "required":
        # jsonschema reports one error per missing property; find which one this is.
        instance = error.instance if isinstance(error.instance, dict) else {}
        missing_keys = [key for key in error.validator_value if key not in instance]
        missing = next((key for key in missing_keys if repr(key) in error.message), missing_keys[0])
        return missing, f"The root value is missing the required field '{missing}'."
    path = "/".join(map(str, error.absolute_path))
    field_path = ".".join(map(str, error.absolute_path)) or "record"
    if error.validator == "type":
        expected = error.validator_value
        words = [
            _TYPE_WORDS.get(name, name) for name in ([expected] if isinstance(expected, str) else expected)
        ]
        return field_path, f"The value at /{path} must be {' or '.join(words)}, not {_shown(error.instance)}."
    if error.validator == "maxLength":
        return field_path, (
            f"The value at /{path} must be at most {error.validator_value} characters long, not "
            f"{len(error.instance)}: {_shown(error.instance)}."
        )
    if error.validator == "additionalProperties":
        return field_path, f"The root value has an unexpected property: {error.message}"
    return field_path, f"The value at /{path} is invalid: {error.message}"


def _shown(value: Any, limit: int = 60) -> str:
    """The rejected value as ``repr`` shows it, cut to ``limit`` characters (values can be 32 KB)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _field_spec(key: str, subschema: dict[str, Any], required: bool) -> FieldSpec:
    unknown = {word for word in subschema if not word.startswith("x-")} - _SUPPORTED_FIELD_KEYWORDS
    if unknown:
        raise RuntimeError(
            f"field {key!r} uses schema keywords the fast check does not mirror: {sorted(unknown)}"
        )
    types = subschema["type"]
    return FieldSpec(
        key=key,
        label=subschema["title"],
        description=subschema.get("description", ""),
        types=(types,) if isinstance(types, str) else tuple(types),
        required=required,
        hidden=bool(subschema.get("x-hidden", False)),
        max_length=subschema.get("maxLength"),
        is_timestamp=subschema.get("format") == "date-time",
    )


def load_schema(action: str) -> dict[str, Any]:
    """Read ``schemas/<action>.json`` from the installed package."""
    text = resources.files(__package__).joinpath("schemas", f"{action}.json").read_text(encoding="utf-8")
    return json.loads(text)


def _load_action(name: str) -> ActionSpec:
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    required = set(schema.get("required", ()))
    fields = {
        key: _field_spec(key, subschema, key in required) for key, subschema in schema["properties"].items()
    }
    return ActionSpec(
        name=name,
        title=schema["title"],
        message_type=schema["x-message-type"],
        schema=schema,
        fields=fields,
        validator=Draft202012Validator(schema),
        field_validators={key: Draft202012Validator(sub) for key, sub in schema["properties"].items()},
    )


@cache
def actions() -> dict[str, ActionSpec]:
    """All actions, keyed by action key; loaded and compiled once per process."""
    return {name: _load_action(name) for name in ACTION_NAMES}


def get_action(name: str) -> ActionSpec:
    """
    :raises KeyError: ``name`` is not one of :data:`ACTION_NAMES`.
    """
    return actions()[name]
