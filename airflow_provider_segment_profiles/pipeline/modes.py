"""
Sync modes as strategy objects: each one answers every question on which ``diff``, ``incremental`` and
``full`` differ, so no other module branches on the mode's name.

=============  ============================================================================================
``diff``       every run reads the whole model and compares each record with the last committed state:
               added / updated / deleted / unchanged. Message ids carry the record's version.
``incremental`` only rows whose ``cursor_column`` is at or past the saved watermark; each counts as added
               (append-only models such as events).
``full``       every row, every run, to every mapping whose trigger is not ``deleted``; no state is compared.
=============  ============================================================================================

To add a mode, subclass :class:`SyncMode`, override what differs and register it in :data:`MODES`
(``docs/architecture.md``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_segment_profiles.common.changes import SYNC_MODES, TRIGGER_RULES, ChangeKind

if TYPE_CHECKING:
    from airflow_provider_segment_profiles.state.location import SyncState


class SyncMode:
    """
    What one sync mode does at each stage. The base class describes ``diff``.

    :ivar name: the ``sync_mode`` value.
    :ivar unfit_triggers: mapping triggers that can never fire in this mode, with the reason.
    :ivar compares_with_state: whether records are compared with the last committed state.
    :ivar detects_deletions: whether records missing from the model count as deleted.
    :ivar journals_sends: whether a try writes the send journal before each chunk (see
        :mod:`~airflow_provider_segment_profiles.state.journal`).
    :ivar uses_cursor: whether the mode needs ``cursor_column``.
    :ivar retries_rejected: whether a record rejected for bad data stays pending and is evaluated again by
        later runs. Full mode sends every record every run anyway; incremental mode does not read a row
        again once the watermark passed it (holding the watermark for a row that stays bad would re-read
        everything after it on every run).
    :ivar tracks_mapping_changes: whether an updated record is sent only through the mappings whose inputs
        changed (:attr:`~.records.Change.changed_mappings`); the other modes select no updated records.
    """

    name = "diff"
    unfit_triggers: Mapping[str, str] = TRIGGER_RULES["diff"].unfit
    compares_with_state = True
    detects_deletions = True
    journals_sends = True
    uses_cursor = False
    retries_rejected = True
    tracks_mapping_changes = True

    def changes_selected(self, trigger: str) -> frozenset[ChangeKind]:
        """The change kinds a mapping with ``trigger`` sends (``common/changes.py``)."""
        return TRIGGER_RULES[self.name].changes[trigger]

    def classify(self, known: bool, held: int | None, checksum: int, uncertain: bool) -> ChangeKind:
        """
        The change of one record read now.

        :param known: whether the committed state has the record.
        :param held: checksum of the values Segment holds (``None``: unknown, or an unconfirmed add).
        :param checksum: checksum of the values read now.
        :param uncertain: whether Segment may hold another value than ``held``.
        """
        if held is None:
            return ChangeKind.ADDED
        return ChangeKind.UNCHANGED if held == checksum and not uncertain else ChangeKind.UPDATED

    def change_token(self, checksum_hex: str, version: int) -> str:
        """
        The change token of derived message ids. In diff mode it includes the record's version, so a record
        that returns to an earlier value within Segment's 24 h de-duplication window is not dropped as a
        duplicate of that earlier change (https://segment.com/docs/guides/duplicate-data/).
        """
        return f"{checksum_hex}.{version}"

    def check_settings(self, cursor_column: str | None) -> list[str]:
        """Problems of the operator's settings in this mode."""
        if cursor_column:
            return [f"cursor_column is only used by sync_mode 'incremental', not {self.name!r}"]
        return []

    def resumes_from(self, head: SyncState | None, full_refresh: bool) -> SyncState | None:
        """The committed state this run compares against, or ``None`` to treat every record as new."""
        return None if full_refresh or not self.compares_with_state else head

    def model_query(
        self,
        statement: str,
        parameters: Sequence[Any] | Mapping[str, Any] | None,
        previous: SyncState | None,
        cursor_column: str | None,
        hook: Any,
    ) -> tuple[str, Sequence[Any] | Mapping[str, Any] | None]:
        """The SQL and parameters the source runs (the model itself, except in incremental mode)."""
        return statement, parameters

    def write_snapshot(self, store: Any, destination: Any, watermark_key: Any) -> int | None:
        """
        Write the snapshot the next run compares against to ``destination``.

        :return: its record count, or ``None`` when this mode commits no snapshot.
        """
        return store.write_diff_snapshot(destination)


class DiffMode(SyncMode):
    """``diff``: the whole model every run, compared with the last committed snapshot (the base class)."""


class IncrementalMode(SyncMode):
    """``incremental``: rows at or past the watermark, each an add; state is the watermark."""

    name = "incremental"
    unfit_triggers = TRIGGER_RULES["incremental"].unfit
    detects_deletions = False
    journals_sends = False
    uses_cursor = True
    retries_rejected = False
    tracks_mapping_changes = False

    def classify(self, known: bool, held: int | None, checksum: int, uncertain: bool) -> ChangeKind:
        # Keys known at the watermark were handled by the run that set it (rows equal to it are read again).
        return ChangeKind.UNCHANGED if known else ChangeKind.ADDED

    def change_token(self, checksum_hex: str, version: int) -> str:
        return checksum_hex

    def check_settings(self, cursor_column: str | None) -> list[str]:
        return [] if cursor_column else ["sync_mode 'incremental' needs cursor_column"]

    def model_query(self, statement, parameters, previous, cursor_column, hook):
        from airflow_provider_segment_profiles.pipeline.reader import with_watermark_filter
        from airflow_provider_segment_profiles.state.watermark import from_xcom

        watermark = from_xcom(previous.watermark) if previous is not None else None
        if watermark is None:
            return statement, parameters
        return with_watermark_filter(statement, cursor_column, watermark, parameters, hook)

    def write_snapshot(self, store: Any, destination: Any, watermark_key: Any) -> int | None:
        if watermark_key is None:
            return None
        return store.write_incremental_snapshot(destination, watermark_key)


class FullMode(SyncMode):
    """``full``: every row to every non-``deleted`` mapping, every run; no state is compared."""

    name = "full"
    unfit_triggers = TRIGGER_RULES["full"].unfit
    compares_with_state = False
    detects_deletions = False
    journals_sends = False
    retries_rejected = False
    tracks_mapping_changes = False

    def classify(self, known: bool, held: int | None, checksum: int, uncertain: bool) -> ChangeKind:
        return ChangeKind.ADDED

    def change_token(self, checksum_hex: str, version: int) -> str:
        return checksum_hex

    def write_snapshot(self, store: Any, destination: Any, watermark_key: Any) -> int | None:
        return None


#: Every sync mode by its ``sync_mode`` name.
MODES: dict[str, SyncMode] = {mode.name: mode for mode in (DiffMode(), IncrementalMode(), FullMode())}
if tuple(MODES) != SYNC_MODES:  # the trigger table of common/changes.py and the strategies must agree
    raise ImportError(f"sync modes {tuple(MODES)} do not match common.changes.SYNC_MODES {SYNC_MODES}")
__all__ = ["MODES", "SYNC_MODES", "SyncMode", "get_mode"]


def get_mode(name: str) -> SyncMode:
    """
    :raises KeyError: for a name that is not in :data:`SYNC_MODES` (callers check first).
    """
    return MODES[name]
