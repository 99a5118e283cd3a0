"""
Stage 3, message building: each change, fanned out over the mappings whose trigger selects it.

One path for every change kind: an added or updated record is built from its row (an updated one only
through the mappings its :attr:`~.records.Change.changed_mappings` names, when it names them), a deleted
one from its unique identifier alone (:meth:`RecordBuilder.build_deleted`); both get derived message ids from the
change token, both record their warnings, and both count every selected message exactly once (rejected
here, or handed to delivery, which settles it), reported to the run's :class:`~.outcomes.OutcomeSink`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from airflow_provider_segment_profiles.actions import (
    BuiltMessage,
    CompiledMapping,
    MessageSkipped,
    RecordBuilder,
    RecordRejected,
)
from airflow_provider_segment_profiles.pipeline.outcomes import BuiltOutcome
from airflow_provider_segment_profiles.pipeline.records import (
    Change,
    ChangeKind,
    MessageRef,
    Outcome,
    Rejection,
    new,
)

if TYPE_CHECKING:
    from airflow_provider_segment_profiles.delivery.dispatcher import Completion
    from airflow_provider_segment_profiles.pipeline.modes import SyncMode
    from airflow_provider_segment_profiles.pipeline.outcomes import OutcomeSink

_UNCHANGED = ChangeKind.UNCHANGED
_REJECTED, _SKIPPED = Outcome.REJECTED, Outcome.SKIPPED
#: ``add(profile space connection id, encoded message, ref) -> completions``: :meth:`Dispatcher.add`.
Add = Callable[[str, bytes, MessageRef], "list[Completion]"]
#: Settles a list of completions (:class:`~.settle.Settler`).
Settle = Callable[["list[Completion]"], None]


class MessageFanout:
    """
    Builds and validates the messages of changes, per mapping, and hands the valid ones to ``deliver``.

    :param mappings: the compiled mappings.
    :param builders: mapping name -> its :class:`RecordBuilder` bound to the result's columns.
    :param space_conn_ids: mapping name -> conn id of the Profile Space connection it sends to.
    :param mode: the sync mode (which changes each trigger selects).
    :param outcomes: receives each chunk's selected messages, the messages rejected or skipped here, and
        warnings (:mod:`.outcomes`).
    :param message_ids: refs carry each message's ``messageId`` (the run keeps a sync log,
        ``pipeline/sync_log.py``); otherwise they carry ``None``.
    """

    def __init__(
        self,
        mappings: Sequence[CompiledMapping],
        builders: dict[str, RecordBuilder],
        space_conn_ids: dict[str, str],
        mode: SyncMode,
        outcomes: OutcomeSink,
        *,
        message_ids: bool = False,
    ) -> None:
        self.outcomes = outcomes
        self.message_ids = message_ids
        self._targets: dict[ChangeKind, list[tuple[str, RecordBuilder, str]]] = {
            kind: [] for kind in ChangeKind
        }
        self._by_name: dict[str, tuple[str, RecordBuilder, str]] = {}
        for mapping in mappings:
            target = (mapping.name, builders[mapping.name], space_conn_ids[mapping.name])
            self._by_name[mapping.name] = target
            for kind in mode.changes_selected(mapping.trigger):
                self._targets[kind].append(target)
        #: Upserts a mapping rejected since :meth:`take_rejected`.
        self.rejected_keys: list[Rejection] = []
        #: The change kinds some mapping sends; changes of other kinds need no message and no journal entry.
        self.kinds_sent = frozenset(kind for kind, targets in self._targets.items() if targets)
        #: Names of the mappings that send updated records.
        self.updating = frozenset(name for name, _, _ in self._targets[ChangeKind.UPDATED])
        #: Names of the mappings that send added records.
        self.adding = frozenset(name for name, _, _ in self._targets[ChangeKind.ADDED])

    def take_rejected(self) -> list[Rejection]:
        """The upserts rejected since the last call (for state marks)."""
        keys, self.rejected_keys = self.rejected_keys, []
        return keys

    def send(self, changes: Sequence[Change], add: Add, settle: Settle) -> None:
        """
        Build every message of ``changes``; report rejections; hand the others to delivery with ``add`` and
        settle the completions it returns meanwhile. The messages each mapping selected are reported once,
        at the end.
        """
        outcomes = self.outcomes
        targets = self._targets
        message_ids = self.message_ids
        rejected = self.rejected_keys
        by_name = self._by_name
        selected = dict.fromkeys(by_name, 0)
        for change in changes:
            kind = change.kind
            chosen = targets[kind]
            changed = change.changed_mappings
            if changed is not None:
                # An updated record goes only through the mappings whose own inputs changed.
                chosen = [target for target in chosen if target[0] in changed]
            pending = change.pending
            if pending:
                # A record with messages an earlier run rejected: built again through those mappings, also
                # when its trigger no longer selects it (an added record that changed since still owes its
                # 'added' message); an unchanged one comes back for them alone.
                owed = [by_name[n] for n in pending if n in by_name]
                chosen = owed if kind is _UNCHANGED else [*chosen, *(t for t in owed if t not in chosen)]
            key, row, token, cursor_value = change.key, change.row, change.token, change.cursor_value
            for name, builder, space in chosen:
                selected[name] += 1
                try:
                    if row is None:
                        built = builder.build_deleted(key, checksum=token)
                    else:
                        built = builder.build(row, primary_key=key, checksum=token)
                except RecordRejected as rejection:
                    outcomes.message(
                        BuiltOutcome(
                            name, _REJECTED, key, kind, rejection.reason, rejection.field, name in pending
                        )
                    )
                    if row is not None:
                        rejected.append(Rejection(key, name, kind))
                    continue
                except MessageSkipped as skipped:
                    outcomes.message(BuiltOutcome(name, _SKIPPED, key, kind, skipped.reason, skipped.field))
                    continue
                if built.warnings:
                    outcomes.warn(name, key, built.warnings)
                if built.parts:
                    # Each part is one message the mapping selected, counted and settled on its own.
                    selected[name] += len(built.parts) - 1
                    self._send_parts(
                        built, space, new(MessageRef, (key, name, kind, cursor_value, None)), add, settle
                    )
                    continue
                message_id = built.message.get("messageId") if message_ids else None
                completions = add(
                    space, built.encoded, new(MessageRef, (key, name, kind, cursor_value, message_id))
                )
                if completions:  # usually empty: most messages only join a batch
                    settle(completions)
        for name, count in selected.items():
            if count:
                outcomes.selected(name, count)

    def _send_parts(self, built: BuiltMessage, space: str, ref: MessageRef, add: Add, settle: Settle) -> None:
        """
        Hand every part of a message sent as several calls to delivery (the caller counts each as selected);
        any part not delivered marks the record as not delivered, so the next run sends all of its parts
        again under the same ids and Segment drops the ones it holds.
        """
        for part in built.parts:
            message_id = part.message["messageId"] if self.message_ids else None
            completions = add(space, part.encoded, ref._replace(message_id=message_id))
            if completions:
                settle(completions)
