"""Errors raised while compiling mappings and while turning records into Segment messages."""

from __future__ import annotations

from airflow_provider_segment_profiles.exceptions import ConfigurationError


class MappingConfigError(ConfigurationError):
    """
    One or more mappings are invalid; raised once, listing every problem found.

    Raised by :func:`~airflow_provider_segment_profiles.actions.compile_mappings` (at DAG parse time /
    operator construction) and by :meth:`CompiledMapping.bind` when the query's result columns do not
    fit the mappings.

    :param problems: one readable line per problem, each naming the mapping and the JSON path of the
        offending part, e.g. ``mapping 'customers' at mappings[0].fields.traits.email: ...``.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        header = f"{count} problem{'s' if count != 1 else ''} in the Segment Profiles mappings:"
        super().__init__("\n".join([header, *(f"  - {problem}" for problem in self.problems)]))

    def __reduce__(self):
        return (type(self), (self.problems,))


class _RecordMappingOutcome(Exception):
    """A record that does not become a message through one mapping; ``verb`` words the outcome."""

    verb = ""

    def __init__(self, mapping: str, primary_key: str, field: str, reason: str) -> None:
        super().__init__(mapping, primary_key, field, reason)
        self.mapping = mapping
        self.primary_key = primary_key
        self.field = field
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"record with primary key {self.primary_key!r} {self.verb} by mapping {self.mapping!r} "
            f"at field {self.field!r}: {self.reason}"
        )


class RecordRejected(_RecordMappingOutcome):
    """
    One record cannot become a valid Segment call through one mapping.

    The run goes on: the caller counts the record as rejected and reports ``str(exc)``.

    :param mapping: the mapping's name.
    :param primary_key: the record's primary-key value, as text.
    :param field: the field that failed, as a path such as ``traits.score`` or ``timestamp``; several
        comma-separated fields when a rule involves more than one (``user_id, anonymous_id``).
    :param reason: what is wrong, in Segment's wording where Segment defines one.
    """

    verb = "rejected"


class MessageSkipped(_RecordMappingOutcome):
    """
    One record has nothing to send through one mapping (for Send Subscriptions: every status is NULL or
    empty, which ``docs/mappings.md`` defines as "no change"). Not bad data: the caller counts the message
    as ``skipped`` and reports ``str(exc)``; nothing is sent and the record is synced.

    :param mapping: the mapping's name.
    :param primary_key: the record's primary-key value, as text.
    :param field: the fields that had nothing to send.
    :param reason: why nothing is sent.
    """

    verb = "skipped"


class NothingToSend(Exception):
    """Internal: a record has nothing to send; becomes :class:`MessageSkipped` with the record's key."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.field = field
        self.reason = reason


class FieldRejected(Exception):
    """
    Internal: a field value fails; carries the field path and reason until the record's primary key and
    the mapping's name are attached by :class:`RecordRejected`.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.field = field
        self.reason = reason
