"""
The marker of a warehouse value the Python driver cannot hold (PostgreSQL ``infinity``, a BC date, JSON
nested deeper than Python's parser goes). ``pipeline/driver_values.py`` installs the loaders that make
one; the value policy in ``actions/`` decides per record what becomes of it (``docs/mappings.md``).
"""

from __future__ import annotations


class UnreadableValue:
    """
    A warehouse value no Python object of its type can hold, kept as the warehouse's own text.

    ``repr`` is built from the type and the text only, so the record's checksum
    (:class:`~airflow_provider_segment_profiles.pipeline.detection.checksum.Checksummer` hashes ``repr``) is the same on
    every run and with either PostgreSQL driver, and changes when the value changes. ``str`` is the text,
    so a primary key holding such a value compares as that text.

    :param type_name: the warehouse type, e.g. ``"PostgreSQL date"``.
    :param text: the value as the warehouse writes it, e.g. ``"infinity"`` or ``"0044-03-15 BC"``.
    :param reason: why no Python object holds it, worded to follow the value in a sentence.
    :param sendable_as_text: whether the value policy may send the text in its place; ``False`` for JSON,
        whose text stands for a structure (the policy rejects it as it rejects too deep a structure).
    """

    __slots__ = ("reason", "sendable_as_text", "text", "type_name")

    def __init__(self, type_name: str, text: str, reason: str, *, sendable_as_text: bool = True) -> None:
        self.type_name = type_name
        self.text = text
        self.reason = reason
        self.sendable_as_text = sendable_as_text

    def __repr__(self) -> str:
        return f"UnreadableValue({self.type_name!r}, {self.text!r})"

    def __str__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UnreadableValue):
            return NotImplemented
        return (self.type_name, self.text) == (other.type_name, other.text)

    def __hash__(self) -> int:
        return hash((self.type_name, self.text))

    def describe(self, limit: int = 60) -> str:
        """
        The value in a sentence, its text cut to ``limit`` characters: ``PostgreSQL date 'infinity' is
        PostgreSQL's infinity, which no Python date can hold``.
        """
        text = (
            self.text
            if len(self.text) <= limit
            else f"{self.text[:limit]}... ({len(self.text):,} characters)"
        )
        return f"{self.type_name} {text!r} {self.reason}"
