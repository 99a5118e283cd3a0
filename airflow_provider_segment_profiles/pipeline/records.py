"""
The typed records that travel between the stages of a sync.

``source`` yields :class:`Record` chunks; change detection turns each into a :class:`Change` (and finds
deleted records as changes without a row); message building fans a change out over the mappings, handing
each message to delivery with a :class:`MessageRef`; settling reads the ref back from the message's
completion; a message a mapping rejects for bad data comes back to change detection as a
:class:`Rejection`. They are ``NamedTuple``\\ s because millions are made per run: a named tuple costs what a
plain tuple costs, and its fields have names. Read them by name (``change.key``), never by position: a
field added later then breaks nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from airflow_provider_segment_profiles.common.changes import ChangeKind
from airflow_provider_segment_profiles.common.outcomes import Outcome

__all__ = ["Change", "ChangeKind", "MessageRef", "Outcome", "Record", "Rejection", "new"]

#: ``new(RecordType, (field, ...))`` builds a record without the Python-level ``__new__`` a ``NamedTuple``
#: generates (no defaults are filled in: give every field). The per-record stages use it; a call of the
#: generated ``__new__`` costs a Python frame per record (``docs/benchmarks.md``).
new = tuple.__new__


class Record(NamedTuple):
    """
    One row of the model that passed the source's checks.

    :param row: the row's values, in the result's column order.
    :param key: the unique identifier as text (see :func:`~.detection.checksum.record_key`).
    :param cursor_value: the incremental cursor's value as the driver returned it (``None`` in other modes).
    :param cursor_key: ``cursor_value`` as a sort key (see :func:`~..state.watermark.sort_key`), or ``None``.
    """

    row: Sequence[Any]
    key: str
    cursor_value: Any = None
    cursor_key: Any = None


class Change(NamedTuple):
    """
    One record that has something to send.

    :param kind: added, updated or deleted; ``unchanged`` for a record built again only for its pending
        mappings.
    :param key: the unique identifier as text.
    :param row: the record's values, or ``None`` for a deleted record.
    :param token: the change token that goes into derived message ids: the checksum in hex, followed in
        diff mode by ``.{version}`` (see ``docs/architecture.md``).
    :param version: the record's version after this change (diff mode; ``0`` in other modes).
    :param cursor_value: as in :class:`Record`.
    :param pending: names of the mappings whose messages for this record an earlier run rejected (see
        :meth:`~.detection.base.ChangeDetector.mark_rejected`). With ``kind`` ``unchanged`` the record is
        built again through these mappings only.
    :param changed_mappings: for an ``updated`` record, the names of the mappings whose inputs (the columns
        they read, and their definition) changed: only those of them whose trigger selects ``updated`` send.
        ``None`` means every mapping: added and deleted records, and updated ones whose per-mapping view is
        unknown (a state committed before it existed, an engine that does not compute it; see
        ``docs/change-detection.md``).
    """

    kind: ChangeKind
    key: str
    row: Sequence[Any] | None
    token: str
    version: int = 0
    cursor_value: Any = None
    pending: tuple[str, ...] = ()
    changed_mappings: tuple[str, ...] | None = None


class MessageRef(NamedTuple):
    """
    What a message was built from, handed to delivery and back in the message's completion.

    :param key: the record's unique identifier.
    :param mapping: the mapping's name.
    :param kind: the change that selected it.
    :param cursor_value: the record's cursor value (incremental mode), so a failure holds the watermark.
    :param message_id: the message's ``messageId``, carried only when the run keeps a sync log
        (``pipeline/sync_log.py``); ``None`` otherwise.
    """

    key: str
    mapping: str
    kind: ChangeKind
    cursor_value: Any = None
    message_id: str | None = None


class Rejection(NamedTuple):
    """
    A message a mapping rejected for bad data, as change detection keeps it pending (see
    :meth:`~.detection.base.ChangeDetector.mark_rejected`).

    :param key: the record's unique identifier.
    :param mapping: the mapping that rejected it.
    :param kind: the change that selected the message.
    """

    key: str
    mapping: str
    kind: ChangeKind
