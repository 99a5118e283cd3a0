"""
The worker engine of change detection (``change_detection="worker"``, the default): the worker reads every
row of the model, checksums the values the mappings use, and compares each record with the snapshot the
last run committed under ``state_path`` (:mod:`~airflow_provider_segment_profiles.state.snapshot`). Needs
only read access to the warehouse.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_segment_profiles.exceptions import StateError
from airflow_provider_segment_profiles.pipeline.detection import carry_over
from airflow_provider_segment_profiles.pipeline.detection.checksum import (
    Checksummer,
    MappingChecksums,
    changed_among,
    checksum_hex,
    followed_mappings,
    mapping_checksums_for,
)
from airflow_provider_segment_profiles.pipeline.records import Change, ChangeKind, Record, Rejection, new
from airflow_provider_segment_profiles.pipeline.source import duplicate_reason
from airflow_provider_segment_profiles.state.journal import SendJournal
from airflow_provider_segment_profiles.state.snapshot import (
    MAPPINGS_UNCHANGED,
    Certainty,
    MappingLookup,
    SnapshotStore,
    prepare_previous,
)
from airflow_provider_segment_profiles.state.watermark import sort_key

if TYPE_CHECKING:
    from airflow_provider_segment_profiles.actions import CompiledMapping
    from airflow_provider_segment_profiles.pipeline.modes import SyncMode
    from airflow_provider_segment_profiles.pipeline.outcomes import OutcomeSink
    from airflow_provider_segment_profiles.state.location import StateLocation, SyncState

_ADDED, _UPDATED, _UNCHANGED = ChangeKind.ADDED, ChangeKind.UPDATED, ChangeKind.UNCHANGED
#: Plain ints: SQLite's values compare with them on the fast path.
_CERTAIN, _PENDING = int(Certainty.CERTAIN), int(Certainty.PENDING)


def deleted_token(held_checksum: int | None, version: int) -> str:
    """The change token of a delete: what Segment held (``unconfirmed`` for an unconfirmed add) and the
    version the delete moves the record to."""
    held = "unconfirmed" if held_checksum is None else checksum_hex(held_checksum)
    return f"{held}.{version}"


class WorkerChangeDetector:
    """
    :class:`~.base.ChangeDetector` over a local SQLite snapshot.

    In diff mode an updated record names the mappings whose inputs changed
    (:attr:`~..records.Change.changed_mappings`): each mapping that sends updates has its own checksum over
    the columns it reads, computed only for the records whose whole checksum changed (and added ones) and
    kept in the snapshot (``mapping_checksums``).

    :param mode: the sync mode.
    :param location: where the sync's state lives.
    :param previous: the committed state this run compares against (``None``: every record is new).
    :param workdir: local folder for the snapshot files of this run.
    :param outcomes: receives every chunk's classifications and the records rejected as repeated.
    :param primary_key: the unique identifier column (for rejection reasons).
    :param journal_tag: this try's name, a safe path component; ``None`` writes no journal (dry runs).
    :param log: the task's logger.
    :param refresh_from: on a full refresh, the committed state whose records are compared only to find
        deletions (every record read counts as added); ``None`` otherwise.
    :param mappings: the compiled mappings; those whose trigger selects updated records get a checksum of
        their own (none given: every updated record goes to every mapping).
    :param carried: on a full refresh from the warehouse engine's state, its live ``(unique identifier,
        version)`` pairs (:mod:`.carry_over`): taken as unconfirmed adds, so those the model no longer has are
        deleted.
    :raises StateError: the committed snapshot cannot be read.
    """

    def __init__(
        self,
        *,
        mode: SyncMode,
        location: StateLocation,
        previous: SyncState | None,
        head: SyncState | None,
        workdir: Path,
        outcomes: OutcomeSink,
        primary_key: str,
        journal_tag: str | None,
        log: Any,
        refresh_from: SyncState | None = None,
        mappings: Sequence[CompiledMapping] = (),
        carried: Iterable[tuple[str, int]] | None = None,
    ) -> None:
        self.mode = mode
        self.outcomes = outcomes
        self.primary_key = primary_key
        self._max_cursor: Any = None
        self._max_cursor_key: Any = None
        self.refresh = refresh_from is not None or carried is not None
        snapshot = location.download_snapshot(previous, workdir) if previous is not None else None
        if refresh_from is not None:
            # A full refresh sends every record as added, but records the old state holds and the model no
            # longer has must still be deleted: a refresh is the recovery for state errors, and deletes
            # pending then would otherwise be forgotten for good.
            try:
                snapshot = location.download_snapshot(refresh_from, workdir)
            except StateError as err:
                place = carry_over.old_state_place(refresh_from, location)
                carry_over.warn_unreadable(log, refresh_from, place, str(err).splitlines()[0])
        if carried is not None:
            snapshot = prepare_previous(None, workdir, carried)
        self.journal: SendJournal | None = None
        self._journal_files: list[Any] = []
        uncommitted: list[Any] = []
        if mode.journals_sends:
            journal = SendJournal(location.journal, head.generation if head else 0, journal_tag or "dry-run")
            self._journal_files, uncommitted = journal.uncommitted()
            if uncommitted:
                log.warning(
                    "Tries that did not commit left %d journal files of records they may have sent; "
                    "those records' current values (or deletes) are sent again",
                    len(uncommitted),
                )
            self.journal = journal if journal_tag is not None else None
        self.store = SnapshotStore(
            workdir, prepare_previous(snapshot, workdir, SendJournal.records(uncommitted)), per_mapping=True
        )
        self._checksummer: Checksummer | None = None
        #: The mappings whose changes are told apart (those that send updates, in a mode that has them).
        self._followed = followed_mappings(mode, mappings)
        self._mapping_checksums: MappingChecksums | None = None
        if previous is not None and mode.uses_cursor:
            from airflow_provider_segment_profiles.state.watermark import from_xcom

            self._max_cursor = from_xcom(previous.watermark)
            if self._max_cursor is not None:
                self._max_cursor_key = sort_key(self._max_cursor)

    def query(
        self, statement: str, parameters: Sequence[Any] | Mapping[str, Any] | None
    ) -> tuple[str, Sequence[Any] | Mapping[str, Any] | None]:
        """The model as it is (the mode may add the incremental watermark filter, see :mod:`..modes`)."""
        return statement, parameters

    def source_connection(self) -> Any:
        """The source opens its own connection."""
        return None

    @property
    def rows_fetched(self) -> None:
        """Every row the source read crossed the network (``None``: the source's count)."""
        return None

    def bind(self, columns: Sequence[str], used_columns: Sequence[int], seed: str) -> None:
        """Set up the checksum over the used columns, and one per followed mapping over its own columns."""
        self._checksummer = Checksummer(seed, used_columns)
        if self._followed:
            self._mapping_checksums = mapping_checksums_for(self._followed, columns)

    def detect(self, records: Sequence[Record]) -> list[Change]:
        """Classify a chunk against the snapshot (see :meth:`SnapshotStore.look_up`)."""
        checksummer = self._checksummer
        assert checksummer is not None, "bind() first"
        checksums = [checksummer(record.row) for record in records]
        store = self.store
        lookups: list[MappingLookup | None] = store.look_up(  # type: ignore[assignment]  # per_mapping
            [
                (record.key, checksum, record.cursor_key)
                for record, checksum in zip(records, checksums, strict=True)
            ]
        )
        by_mapping = self._changed_mappings(records, lookups) if self._mapping_checksums else {}
        firsts = store.add()
        if firsts is not None:  # a unique identifier an earlier record of this run had
            lookups = [lookup if first else None for first, lookup in zip(firsts, lookups, strict=True)]
        classify = self.mode.classify
        token = self.mode.change_token
        changes: list[Change] = []
        unchanged = added = retried = 0
        pending: dict[str, list[tuple[str, str]]] = {}
        if self.mode.retries_rejected:
            pending = self.store.pending_messages(
                [
                    record.key
                    for record, lookup in zip(records, lookups, strict=True)
                    if lookup and lookup.uncertain == _PENDING
                ]
            )
        max_key = self._max_cursor_key
        for position, (record, checksum, lookup) in enumerate(zip(records, checksums, lookups, strict=True)):
            if lookup is None:
                self.outcomes.reject_record(
                    record.key, duplicate_reason(self.primary_key, record.key), self.primary_key
                )
                continue
            uncertain = lookup.uncertain
            retry: tuple[str, ...] = ()
            if uncertain == _PENDING:  # messages an earlier run rejected: see SnapshotStore.pending_messages
                retry = tuple(mapping for mapping, _kind in pending.get(record.key, ()))
                uncertain = _CERTAIN
            kind = _ADDED if self.refresh else classify(lookup.known, lookup.held, checksum, uncertain)
            changed_mappings = None
            if kind is _UPDATED and by_mapping:
                changed_mappings = by_mapping.get(position)
                if changed_mappings == ():
                    if uncertain:  # Segment may hold another value: every mapping sends
                        changed_mappings = None
                    else:  # its checksum changed (a mapping was removed), no mapping's inputs did
                        kind = _UNCHANGED
            cursor_key = record.cursor_key
            if cursor_key is not None and (max_key is None or cursor_key > max_key):
                max_key = cursor_key
                self._max_cursor = record.cursor_value
            if kind is _UNCHANGED:
                unchanged += 1
                if not retry:
                    continue
                retried += 1  # unchanged, but built again through the mappings that rejected it
            else:
                added += kind is _ADDED
            version = lookup.version
            changes.append(
                new(
                    Change,
                    (
                        kind,
                        record.key,
                        record.row,
                        token(checksum_hex(checksum), version),
                        version,
                        record.cursor_value,
                        retry,
                        changed_mappings,
                    ),
                )
            )
        self._max_cursor_key = max_key
        outcomes = self.outcomes
        outcomes.classified(_UNCHANGED, unchanged)
        outcomes.classified(_ADDED, added)
        outcomes.classified(_UPDATED, len(changes) - added - retried)
        return changes

    def _changed_mappings(
        self, records: Sequence[Record], lookups: Sequence[MappingLookup]
    ) -> dict[int, tuple[str, ...]]:
        """
        Compute the mapping checksums of the looked-up records that need them (those whose checksum changed,
        added ones, and unchanged ones an upgraded snapshot has none for), hand them to the store, and return
        ``position in the chunk -> names of the changed mappings`` for the records whose held mapping
        checksums are known (any other updated record goes to every mapping).
        """
        mapping_checksums = self._mapping_checksums
        assert mapping_checksums is not None
        names = mapping_checksums.names
        changed: dict[int, tuple[str, ...]] = {}
        rows: list[tuple[bytes, bytes | None, int]] = []
        # Unchanged records with their mapping checksums (the usual case) need none; see SnapshotStore.look_up.
        for position in [p for p, lookup in enumerate(lookups) if lookup.held_mappings != MAPPINGS_UNCHANGED]:
            lookup = lookups[position]
            held_mappings = lookup.held_mappings
            digests = mapping_checksums(records[position].row)
            kept = None
            if lookup.held is not None and held_mappings is not None:
                changed[position], kept = changed_among(names, digests, held_mappings)
            rows.append((b"".join(digests), kept, position + 1))
        if rows:
            self.store.set_mapping_checksums(rows)
        return changed

    def write_ahead(self, changes: Sequence[Change]) -> None:
        """Journal ``(unique identifier, version)`` of each change (diff mode; not in dry runs)."""
        if self.journal is not None and changes:
            self.journal.record([(change.key, change.version) for change in changes])

    def deletion_counts(self) -> tuple[int, int]:
        """``(records in the committed snapshot, those this run did not read)``; ``(n, 0)`` outside diff mode."""
        if not self.mode.detects_deletions:
            return self.store.previous_count(), 0
        return self.store.previous_count(), self.store.deleted_count()

    def hold_deletions(self) -> None:
        """See :meth:`SnapshotStore.hold_deletions`."""
        self.store.hold_deletions()

    def deletions(self) -> Iterator[list[Change]]:
        """Records of the snapshot this run did not read (diff mode only; none once deletions are held)."""
        if not self.mode.detects_deletions or self.store.deletions_held:
            return
        deleted = ChangeKind.DELETED
        for chunk in self.store.deleted():
            self.outcomes.classified(deleted, len(chunk))
            yield [
                Change(deleted, key, None, deleted_token(held, version), version)
                for key, held, version in chunk
            ]

    def deleted_keys(self) -> Iterator[str]:
        """Keys of the snapshot this run did not read (diff mode only), uncounted."""
        if not self.mode.detects_deletions:
            return
        for chunk in self.store.deleted():
            for key, _held, _version in chunk:
                yield key

    def mark_failed(self, keys: Iterable[str]) -> None:
        """See :meth:`SnapshotStore.mark_failed`."""
        self.store.mark_failed(keys)

    def mark_delete_failed(self, keys: Iterable[str]) -> None:
        """See :meth:`SnapshotStore.mark_delete_failed`."""
        self.store.mark_delete_failed(keys)

    def mark_rejected(self, rejections: Iterable[Rejection]) -> None:
        """See :meth:`SnapshotStore.mark_rejected` (diff mode; other modes keep no per-record values)."""
        if self.mode.retries_rejected:
            self.store.mark_rejected(rejections)

    def watermark(self, failed_cursor_values: Sequence[Any]) -> Any:
        """The smallest cursor value of an undelivered record, else the largest read (incremental mode)."""
        if failed_cursor_values:
            return min(failed_cursor_values, key=sort_key)
        return self._max_cursor

    def rows_read_before(self, watermark: Any) -> int:
        """Records this run read whose cursor value is below ``watermark`` (incremental mode)."""
        return 0 if watermark is None else self.store.count_before(sort_key(watermark))

    def snapshot_to_commit(self, workdir: Path, watermark: Any) -> tuple[Path | None, int]:
        """Write the mode's snapshot for the next run to ``workdir/next.sqlite``."""
        destination = workdir / "next.sqlite"
        count = self.mode.write_snapshot(
            self.store, destination, sort_key(watermark) if watermark is not None else None
        )
        return (None, 0) if count is None else (destination, count)

    def after_commit(self) -> None:
        """Remove the journals the commit accounted for."""
        if self.journal is not None:
            self.journal.discard(self._journal_files)

    def close(self) -> None:
        """Close and remove this run's working snapshot."""
        self.store.close()
