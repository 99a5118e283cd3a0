"""
Stage 2, change detection: the interface every engine implements.

An engine decides, for each record of the model, whether it was added, updated, deleted or is unchanged
since the last committed state, remembers what delivery settled, and writes the state the next run
compares against. The rest of the pipeline (message building, delivery, settling, commit) is shared by
every engine. Engines: :mod:`.worker` (``change_detection="worker"``: the worker reads every row and
compares it with a snapshot kept under ``state_path``) and :mod:`.warehouse` (``change_detection=
"warehouse"``: the comparison runs in the warehouse and only changed rows are read).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from airflow_provider_segment_profiles.pipeline.records import Change, Record, Rejection


class ChangeDetector(Protocol):
    """
    One run's change detection. Called in this order: :meth:`query`, :meth:`bind`, :meth:`detect` per
    chunk, :meth:`write_ahead` before each chunk's messages are sent, :meth:`deletions`, the ``mark_*``
    methods as delivery settles, then :meth:`snapshot_to_commit` and :meth:`close`.
    """

    def query(
        self, statement: str, parameters: Sequence[Any] | Mapping[str, Any] | None
    ) -> tuple[str, Sequence[Any] | Mapping[str, Any] | None]:
        """The SQL the source runs for the model ``statement`` (and its parameters)."""

    def source_connection(self) -> Any:
        """An open warehouse connection the source must read through (``None``: the source opens its own)."""

    @property
    def rows_fetched(self) -> int | None:
        """
        Rows that crossed the network from the warehouse (the summary's ``rows_fetched``); ``None`` when
        that is every row the source read (the run then reports the source's count).
        """

    def bind(self, columns: Sequence[str], used_columns: Sequence[int], seed: str) -> None:
        """
        Learn the result's columns once the query ran.

        :param columns: the result's column names.
        :param used_columns: positions of the columns the mappings read (what a checksum covers).
        :param seed: the mappings' fingerprints; a changed mapping changes every checksum.
        """

    def detect(self, records: Sequence[Record]) -> list[Change]:
        """
        Classify one chunk of records. Each is reported to the run's :class:`~..outcomes.OutcomeSink` as
        added, updated, unchanged, or rejected (a unique identifier an earlier chunk had).

        :return: the added and updated records, in order (unchanged ones need no message).
        """

    def write_ahead(self, changes: Sequence[Change]) -> None:
        """
        Make a record of ``changes`` durable before their messages are sent, so that a try killed after
        sending loses nothing.

        :raises JournalError: the record could not be written; the chunk must not be sent.
        """

    def deletion_counts(self) -> tuple[int, int]:
        """
        Called once every chunk was detected, before :meth:`deletions`, for the mass-delete guard.

        :return: ``(records the committed state holds, those of them this run did not read)``.
        """

    def hold_deletions(self) -> None:
        """
        The delete guard tripped: send no delete this run; the records this run did not read stay in state
        as they were (they count as deleted again next run). :meth:`deletions` then yields nothing.
        """

    def deletions(self) -> Iterator[list[Change]]:
        """Chunks of the records the committed state has and this run did not read, as deleted changes."""

    def deleted_keys(self) -> Iterator[str]:
        """
        The unique identifiers :meth:`deletions` would yield, without counting them (the delete guard names
        a sample of them and fingerprints the set). Called after every chunk was detected.
        """

    def mark_failed(self, keys: Iterable[str]) -> None:
        """A message of these added or updated records was not delivered: they are sent again next run."""

    def mark_delete_failed(self, keys: Iterable[str]) -> None:
        """A deleted record's message was not delivered: it counts as deleted again next run."""

    def mark_rejected(self, rejections: Iterable[Rejection]) -> None:
        """
        Messages a mapping rejected for bad data (unique identifier, mapping, change kind). They stay
        pending: the next run builds and validates the record again through those mappings even when its
        values did not change (then it detects it as an ``unchanged`` change whose
        :attr:`~..records.Change.pending` names the mappings), until they are delivered or the record leaves
        the model. The record's other mappings are synced as usual.
        """

    def watermark(self, failed_cursor_values: Sequence[Any]) -> Any:
        """The incremental watermark to commit (``None`` outside incremental mode, or when nothing was read)."""

    def snapshot_to_commit(self, workdir: Path, watermark: Any) -> tuple[Path | None, int]:
        """Write the state the next run compares against; return ``(file or None, record count)``."""

    def after_commit(self) -> None:
        """Clean up what the commit made obsolete (journals of earlier tries)."""

    def close(self) -> None:
        """Release what the engine holds (files, connections); safe to call twice."""
