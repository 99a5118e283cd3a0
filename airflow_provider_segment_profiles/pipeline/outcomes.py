"""
Where the stages report outcomes: one narrow protocol, :class:`OutcomeSink`.

Each stage reports what became of the records and messages it handled to the sink it is handed, and keeps
its own working counts to itself: the source reports the rows it read and the records it rejected, change
detection how it classified each record, message building the messages each mapping selected and those
that ended while they were built (rejected for bad data, skipped), settling every completion delivery
returned. Nothing else is shared between them.

The run hands every stage the same sink: :class:`~.accounting.SyncAccounting` (the counts, the report, the
summary) alone, or :class:`OutcomeSinks` of it and the sync log (:class:`~.sync_log.SyncLog`), which keeps
the message outcomes and ignores the rest. A new outcome is a method here that every sink implements; a new
consumer of outcomes is one more sink in the run's :class:`OutcomeSinks`.

The per-record stages call the sink once per chunk or per list of completions, not once per record (the
exceptions are rare: a rejected record or message, a warning), so a sink costs the per-record path nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

from airflow_provider_segment_profiles.common.changes import ChangeKind
from airflow_provider_segment_profiles.common.outcomes import Outcome

if TYPE_CHECKING:
    from airflow_provider_segment_profiles.delivery.dispatcher import Completion

__all__ = ["BuiltOutcome", "OutcomeSink", "OutcomeSinks"]


class BuiltOutcome(NamedTuple):
    """
    A message that ended while it was built, before delivery saw it (:meth:`OutcomeSink.message`).

    :param mapping: the mapping's name.
    :param outcome: ``rejected`` (the mapping's validation refused the payload) or ``skipped``.
    :param primary_key: the record's unique identifier.
    :param kind: the change that selected the message.
    :param reason: why; a rejection's reason is the validation's wording and may quote a payload value,
        so a sink that keeps rows outside the run's report must not store it.
    :param field: the payload field at fault, if one is.
    :param carried_over: a rejection of a record an earlier run had rejected through this mapping too.
    """

    mapping: str
    outcome: Outcome
    primary_key: str
    kind: ChangeKind
    reason: str = ""
    field: str | None = None
    carried_over: bool = False


class OutcomeSink(Protocol):
    """
    What the stages of a run report. Every row read ends in exactly one record outcome (:meth:`classified`
    as added, updated or unchanged, or :meth:`reject_record`), and every message a mapping selects
    (:meth:`selected`) in exactly one message outcome (:meth:`message` while it is built, else
    :meth:`settled`); deleted records are classified apart (they are not rows of this run).
    """

    def read(self, rows: int) -> None:
        """
        The source read ``rows`` more rows of the model.

        :param rows: rows in the chunk, rejected ones included.
        """

    def classified(self, kind: ChangeKind, records: int) -> None:
        """
        Change detection found ``records`` more records ``kind``.

        :param kind: added, updated, unchanged or deleted.
        :param records: how many, possibly 0.
        """

    def reject_record(self, primary_key: str | None, reason: str, field_: str | None = None) -> None:
        """
        A row that cannot be synced at all.

        :param primary_key: its unique identifier as text, ``None`` when that is NULL.
        :param reason: why (a NULL or repeated unique identifier, a cursor value that cannot be ordered).
        :param field_: the column at fault.
        """

    def selected(self, mapping: str, messages: int) -> None:
        """
        ``mapping`` selected ``messages`` more messages (each part of a message sent as several calls
        counts).

        :param mapping: the mapping's name.
        :param messages: how many, at least 1.
        """

    def message(self, ended: BuiltOutcome) -> None:
        """A message that ended while it was built: rejected for bad data, or skipped."""

    def settled(self, completions: Sequence[Completion]) -> None:
        """
        Messages delivery is done with: delivered, rejected by delivery (too large once encoded) or failed.

        :param completions: one list the dispatcher returned; each ``ref`` is a :class:`~.records.MessageRef`.
        """

    def warn(self, mapping: str, primary_key: str, warnings: Sequence[str]) -> None:
        """
        What a mapping changed in a record's message to make it sendable; the message itself ends as usual.

        :param mapping: the mapping's name.
        :param primary_key: the record's unique identifier.
        :param warnings: one text per change.
        """


class OutcomeSinks:
    """
    An :class:`OutcomeSink` that hands each outcome to every one of ``sinks``, in their order.

    :param sinks: the sinks, e.g. the run's accounting and its sync log.
    """

    __slots__ = ("sinks",)

    def __init__(self, sinks: Iterable[OutcomeSink]) -> None:
        self.sinks = tuple(sinks)

    def read(self, rows: int) -> None:
        """See :meth:`OutcomeSink.read`."""
        for sink in self.sinks:
            sink.read(rows)

    def classified(self, kind: ChangeKind, records: int) -> None:
        """See :meth:`OutcomeSink.classified`."""
        for sink in self.sinks:
            sink.classified(kind, records)

    def reject_record(self, primary_key: str | None, reason: str, field_: str | None = None) -> None:
        """See :meth:`OutcomeSink.reject_record`."""
        for sink in self.sinks:
            sink.reject_record(primary_key, reason, field_)

    def selected(self, mapping: str, messages: int) -> None:
        """See :meth:`OutcomeSink.selected`."""
        for sink in self.sinks:
            sink.selected(mapping, messages)

    def message(self, ended: BuiltOutcome) -> None:
        """See :meth:`OutcomeSink.message`."""
        for sink in self.sinks:
            sink.message(ended)

    def settled(self, completions: Sequence[Completion]) -> None:
        """See :meth:`OutcomeSink.settled`."""
        for sink in self.sinks:
            sink.settled(completions)

    def warn(self, mapping: str, primary_key: str, warnings: Sequence[str]) -> None:
        """See :meth:`OutcomeSink.warn`."""
        for sink in self.sinks:
            sink.warn(mapping, primary_key, warnings)
