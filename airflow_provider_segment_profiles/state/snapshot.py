"""The record snapshot: what a sync knows Segment holds for every record, kept between runs.

A snapshot file is an SQLite database with these tables:

* ``snapshot(pk, checksum, cursor, version, mapping_checksums)``: every record the sync has sent, with the
  checksum of the values Segment holds (``NULL``: an add whose delivery was not confirmed), the incremental
  cursor's sort key (incremental mode only) and the record's **version**, the number of changes sent for
  it. A change's message id includes the version it moves the record to, so a record returning to an
  earlier value within Segment's 24 h de-duplication window gets a new id instead of being dropped as a
  duplicate. ``mapping_checksums`` packs one 8-byte checksum per mapping, over the columns that mapping
  reads (:class:`~..pipeline.detection.checksum.MappingChecksums`), for the mappings whose held value is
  known: an updated record is sent only through the mappings whose checksum is not among them. ``NULL``
  (a snapshot from before per-mapping changes, or an unconfirmed add): every mapping.
* ``uncertain(pk)``: records for which Segment may hold another value than ``checksum``, because a message
  for them may or may not have been accepted (a timeout, or a try that died before committing; see
  :mod:`.journal`). The next run sends them even when their value equals ``checksum``.
* ``tombstone(pk, version, deleted_at)``: records deleted in the last :data:`TOMBSTONE_RETENTION_S`
  seconds, so one that comes back continues its version instead of reusing its first message id.
* ``pending(pk, mapping, kind)``: messages a mapping rejected for bad data, with the change kind that
  selected them. The next run builds and validates them again through those mappings even when the record
  did not change, until they are delivered or the record leaves the model.

It lives in a local SQLite file while a run works (stdlib ``sqlite3``: bounded memory whatever the number of
records, exact keys, set-based joins per chunk) and is copied to and from ``state_path`` between runs.
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from enum import IntEnum
from pathlib import Path
from typing import NamedTuple

#: Tombstones are kept twice Segment's ~24 h de-duplication look-back
#: (https://segment.com/docs/guides/duplicate-data/), so a record deleted and re-added within it keeps
#: counting versions.
TOMBSTONE_RETENTION_S = 48 * 3600

_TABLES = """
CREATE TABLE IF NOT EXISTS {db}.snapshot (
    pk TEXT PRIMARY KEY, checksum INTEGER, cursor, version INTEGER, mapping_checksums BLOB
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {db}.uncertain (pk TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {db}.tombstone (pk TEXT PRIMARY KEY, version INTEGER, deleted_at INTEGER)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {db}.pending (pk TEXT, mapping TEXT, kind TEXT, PRIMARY KEY (pk, mapping))
    WITHOUT ROWID;
"""


class Certainty(IntEnum):
    """
    How sure the snapshot is of what Segment holds for a record: a lookup's ``uncertain`` (SQLite returns
    the plain integers, which compare equal to these; anything but :attr:`CERTAIN` is true).
    """

    #: Segment holds the snapshot's checksum.
    CERTAIN = 0
    #: A message for the record may or may not have been accepted (a timeout, or a try that died before
    #: committing): Segment may hold another value, so the record is sent even when its value did not change.
    UNCERTAIN = 1
    #: Segment holds the snapshot's checksum, but a mapping of an earlier run rejected a message of the record
    #: for bad data: it is built again through that mapping (:meth:`SnapshotStore.pending_messages`).
    PENDING = 2


#: A lookup's ``held_mappings`` for an unchanged record whose mapping checksums the snapshot has (the usual
#: case: they are not read back, see :meth:`SnapshotStore.look_up`).
MAPPINGS_UNCHANGED = 0


class Lookup(NamedTuple):
    """
    What the previous snapshot says of one record (:meth:`SnapshotStore.add_and_look_up`).

    :param held: the checksum Segment holds; ``None`` when unknown or an unconfirmed add.
    :param known: whether the previous snapshot has the record (SQLite's 0 or 1).
    :param version: the version a change sent now carries (the held version when nothing changed).
    :param uncertain: a :class:`Certainty`.
    """

    held: int | None
    known: int
    version: int
    uncertain: int


class MappingLookup(NamedTuple):
    """
    A :class:`Lookup` with the mapping checksums Segment holds (:meth:`SnapshotStore.look_up` of a store made
    with ``per_mapping``).

    :param held_mappings: the packed mapping checksums Segment holds for a record whose checksum changed
        (``None`` when unknown), :data:`MAPPINGS_UNCHANGED` for an unchanged record that has them, ``None``
        for an unchanged record without them (a snapshot written before they existed).
    """

    held: int | None
    known: int
    version: int
    uncertain: int
    held_mappings: bytes | int | None


_NEW = Lookup(None, 0, 1, Certainty.CERTAIN)
_NEW_MAPPED = MappingLookup(None, 0, 1, Certainty.CERTAIN, None)


def _named(lookup_type: type[Lookup] | type[MappingLookup], rows: Iterable[tuple]) -> list:
    """SQLite's rows as ``lookup_type``: ``tuple.__new__`` called from ``map``, no Python frame per row."""
    return list(map(tuple.__new__, itertools.repeat(lookup_type), rows))


def prepare_previous(path: Path | None, workdir: Path, unconfirmed: Iterable[tuple[str, int]]) -> Path | None:
    """
    Make a local copy of the last committed snapshot ready to compare against, and fold in the records
    that tries which did not commit may have sent.

    Snapshots written before versions, side tables and per-mapping checksums existed are upgraded in place
    (the copy is local; their records get ``NULL`` mapping checksums, which the next run fills in for the
    records it finds unchanged and treats as "every mapping" for the ones it finds updated).

    :param path: local copy of the committed snapshot, or ``None`` when there is none.
    :param workdir: folder for a new file when ``path`` is ``None`` but there is something to fold in.
    :param unconfirmed: ``(pk, version sent)`` of every record an uncommitted try was about to send. A record
        the snapshot knows becomes uncertain; one it does not know is added as an unconfirmed add (``NULL``
        checksum), so it is added again if it is still in the model and deleted if it is gone.
    :return: the file to compare against, or ``None`` when there is nothing to compare against.
    """
    pending = iter(unconfirmed)
    first = next(pending, None)
    if path is None and first is None:
        return None
    if path is None:
        path = workdir / "previous.sqlite"
        path.unlink(missing_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN")
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'snapshot'").fetchone():
            columns = {row[1] for row in db.execute("PRAGMA table_info(snapshot)")}
            if "version" not in columns:
                db.execute("ALTER TABLE snapshot ADD COLUMN version INTEGER")
            if "mapping_checksums" not in columns:
                db.execute("ALTER TABLE snapshot ADD COLUMN mapping_checksums BLOB")
        for statement in filter(str.strip, _TABLES.format(db="main").split(";")):
            db.execute(statement)
        if first is not None:
            # Streamed through a temporary table: a killed try may have journaled millions of records.
            db.execute("CREATE TEMP TABLE journaled (pk TEXT, version INTEGER)")
            db.executemany("INSERT INTO journaled VALUES (?, ?)", itertools.chain([first], pending))
            db.execute(
                "INSERT OR IGNORE INTO snapshot (pk, checksum, cursor, version) "
                "SELECT pk, NULL, NULL, min(version) FROM journaled GROUP BY pk"
            )
            db.execute("INSERT OR IGNORE INTO uncertain (pk) SELECT DISTINCT pk FROM journaled")
        db.execute("COMMIT")
    finally:
        db.close()
    return path


class SnapshotStore:
    """
    The previous run's snapshot (read-only) and the one this run is building.

    Tables: ``prev.*`` from the last committed run (see the module docstring; empty on a first run or a full
    refresh) and ``main.current(pk, checksum, prev_checksum, prev_version, version, cursor, failed, chunk,
    mapping_checksums, kept_checksums)`` for this run. ``cursor`` holds the incremental cursor's sort key,
    ``NULL`` in other modes; ``kept_checksums`` the mapping checksums of a changed record that did not
    change (what Segment holds for certain if the record's message fails).

    :param workdir: local folder for the SQLite files.
    :param previous: the previous snapshot file, prepared by :func:`prepare_previous`, or ``None``.
    :param now: clock for tombstone times, in seconds since the epoch.
    :param per_mapping: :meth:`look_up` returns the held mapping checksums too (see there).
    """

    def __init__(
        self, workdir: Path, previous: Path | None, now: float | None = None, per_mapping: bool = False
    ) -> None:
        self.workdir = workdir
        self.now = int(time.time() if now is None else now)
        self.path = workdir / "current.sqlite"
        self.path.unlink(missing_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.executescript(
            """
            PRAGMA journal_mode = OFF;
            PRAGMA synchronous = OFF;
            PRAGMA temp_store = FILE;
            PRAGMA cache_size = -16384;
            CREATE TABLE current (
                pk TEXT PRIMARY KEY, checksum INTEGER, prev_checksum INTEGER, prev_version INTEGER,
                version INTEGER, cursor, failed INTEGER DEFAULT 0, chunk INTEGER, mapping_checksums BLOB,
                kept_checksums BLOB
            ) WITHOUT ROWID;
            CREATE TEMP TABLE chunk (
                pos INTEGER PRIMARY KEY, pk TEXT, checksum INTEGER, cursor, mapping_checksums BLOB,
                kept_checksums BLOB
            );
            CREATE TEMP TABLE failed_deletes (pk TEXT PRIMARY KEY) WITHOUT ROWID;
            CREATE TEMP TABLE rejections (pk TEXT, mapping TEXT, kind TEXT, PRIMARY KEY (pk, mapping)) WITHOUT ROWID;
            """
        )
        # Without a previous snapshot every record is new: add_and_look_up() then skips the lookups.
        self._first_run = previous is None
        self.deletions_held = False
        self._has_pending = False
        self._chunks = 0
        if previous is not None:
            self.db.execute("ATTACH DATABASE ? AS prev", (f"file:{previous}?mode=ro",))
        else:
            self.db.execute("ATTACH DATABASE ':memory:' AS prev")
            self.db.executescript(_TABLES.format(db="prev"))
        # Uncertain records and tombstones are few: join them only when there are any (docs/benchmarks.md).
        joins, uncertain = "", "0"
        if self.db.execute("SELECT 1 FROM prev.uncertain LIMIT 1").fetchone():
            joins += " LEFT JOIN prev.uncertain u ON u.pk = k.pk"
            uncertain = "u.pk IS NOT NULL"
        if self.db.execute("SELECT 1 FROM prev.pending LIMIT 1").fetchone():
            # A record with pending messages (see pending_messages()).
            self._has_pending = True
            uncertain = (
                f"CASE WHEN {uncertain} THEN {Certainty.UNCERTAIN:d} "
                f"WHEN EXISTS (SELECT 1 FROM prev.pending pd WHERE pd.pk = k.pk) THEN {Certainty.PENDING:d} "
                f"ELSE {Certainty.CERTAIN:d} END"
            )
        tombstone_version = "0"
        if self.db.execute("SELECT 1 FROM prev.tombstone LIMIT 1").fetchone():
            joins += " LEFT JOIN prev.tombstone t ON t.pk = k.pk"
            tombstone_version = "coalesce(t.version, 0)"
        # The version of the change this run sends: the next one after what Segment holds, except for an
        # unconfirmed add, which is sent again under the version it was first sent with.
        version = f"""CASE WHEN p.pk IS NULL THEN {tombstone_version} + 1
            WHEN p.checksum IS NULL THEN max(coalesce(p.version, 1), 1)
            WHEN p.checksum = k.checksum AND NOT ({uncertain}) THEN coalesce(p.version, 0)
            ELSE coalesce(p.version, 0) + 1 END"""
        # An unchanged record keeps the mapping checksums it had; a changed one gets this run's (set by
        # set_mapping_checksums() before the chunk is added).
        self._insert_sql = f"""
            INSERT OR IGNORE INTO current (pk, checksum, prev_checksum, prev_version, version, cursor, chunk,
                mapping_checksums, kept_checksums)
            SELECT k.pk, k.checksum, p.checksum, p.version, {version}, k.cursor, ?,
                coalesce(k.mapping_checksums, p.mapping_checksums), k.kept_checksums
            FROM chunk k LEFT JOIN prev.snapshot p ON p.pk = k.pk{joins} ORDER BY k.pos
            """
        # The held mapping checksums matter only for a record whose checksum changed; for an unchanged one
        # the lookup says only whether they are there (0) or must be filled in (NULL, an upgraded snapshot).
        held_mappings = (
            f", CASE WHEN p.checksum = k.checksum AND p.mapping_checksums IS NOT NULL THEN {MAPPINGS_UNCHANGED} "
            "ELSE p.mapping_checksums END"
            if per_mapping
            else ""
        )
        self._per_mapping = per_mapping
        self._lookup_type = MappingLookup if per_mapping else Lookup
        self._looked_up = 0
        self._lookup_sql = f"""
            SELECT p.checksum, p.pk IS NOT NULL, {version}, {uncertain}{held_mappings}
            FROM chunk k LEFT JOIN prev.snapshot p ON p.pk = k.pk{joins} ORDER BY k.pos
            """
        self.db.execute("BEGIN")

    def previous_count(self) -> int:
        """Records in the previous snapshot."""
        return self.db.execute("SELECT count(*) FROM prev.snapshot").fetchone()[0]

    def add_and_look_up(self, chunk: Sequence[tuple[str, int, object]]) -> list[Lookup | None]:
        """
        Look up a chunk of records and add them to the current snapshot.

        :param chunk: ``(pk, checksum, cursor sort key or None)`` per record, unique within the chunk.
        :return: per record, ``None`` for a duplicate of a record earlier in this run (not added), else its
            :class:`Lookup` (a :class:`MappingLookup` with ``per_mapping``).
        """
        db = self.db
        self._chunks += 1
        number = self._chunks
        db.execute("DELETE FROM chunk")
        # Emptied, the table numbers the new rows 1, 2, ... in order: ``pos`` needs no Python-side loop.
        db.executemany("INSERT INTO chunk (pk, checksum, cursor) VALUES (?, ?, ?)", chunk)
        # Add the chunk to the current snapshot first, each record tagged with the chunk's number; one
        # already there (a duplicate of a record of an earlier chunk) is ignored. Only when the count of
        # rows added shows such a duplicate is the chunk looked up again to find it, so the usual case
        # costs one lookup per record in each snapshot instead of three (docs/benchmarks.md).
        if self._first_run:
            added = db.execute(
                "INSERT OR IGNORE INTO current (pk, checksum, version, cursor, chunk) "
                "SELECT pk, checksum, 1, cursor, ? FROM chunk ORDER BY pos",
                (number,),
            ).rowcount
            if added == len(chunk):
                return [_NEW] * added
        else:
            added = db.execute(self._insert_sql, (number,)).rowcount
            if added == len(chunk):
                return _named(self._lookup_type, db.execute(self._lookup_sql))
        firsts = [
            chunk_number == number
            for (chunk_number,) in db.execute(
                "SELECT c.chunk FROM chunk k JOIN current c ON c.pk = k.pk ORDER BY k.pos"
            )
        ]
        if self._first_run:
            return [_NEW if first else None for first in firsts]
        lookups = _named(self._lookup_type, db.execute(self._lookup_sql))
        return [lookup if first else None for first, lookup in zip(firsts, lookups, strict=True)]

    def look_up(self, chunk: Sequence[tuple[str, int, object]]) -> list[Lookup] | list[MappingLookup]:
        """
        Load a chunk and look it up in the previous snapshot, without adding it to the current one yet:
        :meth:`set_mapping_checksums` may follow, then :meth:`add` must.

        :param chunk: as for :meth:`add_and_look_up`.
        :return: per record, its :class:`Lookup`, or with ``per_mapping`` its :class:`MappingLookup` (a
            duplicate is found only by :meth:`add`).
        """
        db = self.db
        db.execute("DELETE FROM chunk")
        # Emptied, the table numbers the new rows 1, 2, ... in order: ``pos`` needs no Python-side loop.
        db.executemany("INSERT INTO chunk (pk, checksum, cursor) VALUES (?, ?, ?)", chunk)
        self._looked_up = len(chunk)
        if self._first_run:
            return [_NEW_MAPPED if self._per_mapping else _NEW] * len(chunk)
        return _named(self._lookup_type, db.execute(self._lookup_sql))

    def set_mapping_checksums(self, rows: Iterable[tuple[bytes, bytes | None, int]]) -> None:
        """
        ``(packed mapping checksums, the packed ones that did not change or None, position in the chunk
        from 1)`` of the looked-up chunk's records that changed (only those: an unchanged record keeps its).
        """
        self.db.executemany("UPDATE chunk SET mapping_checksums = ?, kept_checksums = ? WHERE pos = ?", rows)

    def add(self) -> list[bool] | None:
        """
        Add the looked-up chunk to the current snapshot.

        :return: ``None`` when no record of the chunk was already in this run (the usual case), else per
            record whether it is the first of its unique identifier (the others are not added).
        """
        db = self.db
        self._chunks += 1
        number = self._chunks
        if self._first_run:
            sql = (
                "INSERT OR IGNORE INTO current (pk, checksum, version, cursor, chunk, mapping_checksums) "
                "SELECT pk, checksum, 1, cursor, ?, mapping_checksums FROM chunk ORDER BY pos"
            )
        else:
            sql = self._insert_sql
        added = db.execute(sql, (number,)).rowcount
        if added == self._looked_up:
            return None
        return [
            chunk_number == number
            for (chunk_number,) in db.execute(
                "SELECT c.chunk FROM chunk k JOIN current c ON c.pk = k.pk ORDER BY k.pos"
            )
        ]

    def mark_failed(self, pks: Iterable[str]) -> None:
        """Record that a message of these records was not delivered; they are sent again next run."""
        self.db.executemany("UPDATE current SET failed = 1 WHERE pk = ?", ((pk,) for pk in pks))

    def mark_rejected(self, rejections: Iterable[tuple[str, str, str]]) -> None:
        """
        Record ``(pk, mapping, change kind)`` of messages rejected for bad data (the pipeline's
        :class:`~..pipeline.records.Rejection`); they stay pending.
        """
        self.db.executemany(
            "INSERT OR IGNORE INTO rejections (pk, mapping, kind) VALUES (?, ?, ?)", rejections
        )

    def pending_messages(self, pks: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
        """``pk -> [(mapping, change kind), ...]`` of the messages earlier runs rejected, for these records."""
        found: dict[str, list[tuple[str, str]]] = {}
        if not self._has_pending:
            return found
        for start in range(0, len(pks), 500):
            part = pks[start : start + 500]
            rows = self.db.execute(
                f"SELECT pk, mapping, kind FROM prev.pending WHERE pk IN ({', '.join('?' * len(part))})", part
            )
            for pk, mapping, kind in rows:
                found.setdefault(pk, []).append((mapping, kind))
        return found

    def deleted_count(self) -> int:
        """Records in the previous snapshot but not (yet) in this run."""
        return self.db.execute(
            "SELECT count(*) FROM prev.snapshot p WHERE NOT EXISTS (SELECT 1 FROM current c WHERE c.pk = p.pk)"
        ).fetchone()[0]

    def hold_deletions(self) -> None:
        """Send no delete this run: the records this run did not read are kept in the next snapshot as they were."""
        self.deletions_held = True

    def mark_delete_failed(self, pks: Iterable[str]) -> None:
        """Record that a deleted record's message was not delivered; it counts as deleted again next run."""
        self.db.executemany("INSERT OR IGNORE INTO failed_deletes (pk) VALUES (?)", ((pk,) for pk in pks))

    def deleted(self, batch_size: int = 5000) -> Iterator[list[tuple[str, int | None, int]]]:
        """
        Yield ``(pk, previous checksum, version of the delete)`` of records in the previous snapshot but not
        in this run; the checksum is ``None`` for an add that was never confirmed.
        """
        cursor = self.db.execute(
            "SELECT p.pk, p.checksum, coalesce(p.version, 0) + 1 FROM prev.snapshot p "
            "WHERE NOT EXISTS (SELECT 1 FROM current c WHERE c.pk = p.pk)"
        )
        while rows := cursor.fetchmany(batch_size):
            yield rows

    def failed_cursor_min(self) -> object | None:
        """Smallest cursor sort key among records with an undelivered message, or ``None``."""
        return self.db.execute("SELECT min(cursor) FROM current WHERE failed = 1").fetchone()[0]

    def count_before(self, cursor_key: object) -> int:
        """Records read this run whose cursor sort key is below ``cursor_key``."""
        return self.db.execute("SELECT count(*) FROM current WHERE cursor < ?", (cursor_key,)).fetchone()[0]

    def cursor_max(self) -> object | None:
        """Largest cursor sort key read this run, or ``None``."""
        return self.db.execute("SELECT max(cursor) FROM current").fetchone()[0]

    def write_diff_snapshot(self, destination: Path) -> int:
        """
        Write the snapshot the next diff run compares against; return its record count.

        Delivered, rejected and unchanged records keep this run's checksum and version. A record with an
        undelivered message keeps what Segment held before and becomes uncertain (the message may have been
        accepted before a timeout), so it is sent again even if its value goes back; of its mapping
        checksums it keeps only those of the mappings that did not change (a mapping that sent may now hold
        either value, so it is sent again next run); an added record whose
        message failed is kept with a ``NULL`` checksum, so it is added again if still in the model and
        deleted if gone. A deleted record whose message failed is kept, uncertain, so it is deleted again.
        Records deleted now become tombstones; tombstones older than :data:`TOMBSTONE_RETENTION_S` go.
        A message a mapping rejected becomes pending (the record itself is synced for its other mappings).
        When deletions are held (:meth:`hold_deletions`), the records this run did not read are kept as they
        were, pending messages included, instead.
        """
        held = "1" if self.deletions_held else "0"
        return self._write(
            destination,
            f"""
            INSERT INTO out.snapshot (pk, checksum, cursor, version, mapping_checksums)
            SELECT pk, CASE WHEN failed THEN prev_checksum ELSE checksum END, NULL,
                CASE WHEN failed AND prev_checksum IS NOT NULL THEN prev_version ELSE version END,
                CASE WHEN NOT failed THEN mapping_checksums WHEN prev_checksum IS NULL THEN NULL
                    WHEN kept_checksums IS NOT NULL THEN kept_checksums
                    WHEN prev_checksum = checksum THEN mapping_checksums END
            FROM current;
            INSERT INTO out.uncertain (pk) SELECT pk FROM current WHERE failed AND prev_checksum IS NOT NULL;
            INSERT INTO out.pending (pk, mapping, kind) SELECT pk, mapping, kind FROM rejections;
            INSERT INTO out.snapshot (pk, checksum, cursor, version, mapping_checksums)
            SELECT p.pk, p.checksum, NULL, p.version, p.mapping_checksums
            FROM prev.snapshot p JOIN failed_deletes f ON f.pk = p.pk;
            INSERT INTO out.uncertain (pk) SELECT pk FROM failed_deletes;
            INSERT INTO out.snapshot (pk, checksum, cursor, version, mapping_checksums)
            SELECT p.pk, p.checksum, NULL, p.version, p.mapping_checksums FROM prev.snapshot p
            WHERE {held} AND NOT EXISTS (SELECT 1 FROM current c WHERE c.pk = p.pk);
            INSERT INTO out.uncertain (pk) SELECT u.pk FROM prev.uncertain u
            WHERE {held} AND NOT EXISTS (SELECT 1 FROM current c WHERE c.pk = u.pk);
            INSERT OR IGNORE INTO out.pending (pk, mapping, kind) SELECT d.pk, d.mapping, d.kind
            FROM prev.pending d WHERE {held} AND NOT EXISTS (SELECT 1 FROM current c WHERE c.pk = d.pk);
            INSERT INTO out.tombstone (pk, version, deleted_at)
            SELECT p.pk, coalesce(p.version, 0) + 1, :now FROM prev.snapshot p
            WHERE NOT {held} AND NOT EXISTS (SELECT 1 FROM current c WHERE c.pk = p.pk)
                AND NOT EXISTS (SELECT 1 FROM failed_deletes f WHERE f.pk = p.pk);
            INSERT OR IGNORE INTO out.tombstone (pk, version, deleted_at)
            SELECT t.pk, t.version, t.deleted_at FROM prev.tombstone t
            WHERE t.deleted_at > :now - :retention AND NOT EXISTS (SELECT 1 FROM current c WHERE c.pk = t.pk);
            """,
        )

    def write_incremental_snapshot(self, destination: Path, watermark_key: object) -> int:
        """
        Write the keys already handled at or past the new watermark; return their count.

        The next run reads rows at or past the watermark again and skips these keys, so rows sharing the
        watermark value are neither lost nor re-sent.
        """
        self.db.execute("DROP TABLE IF EXISTS temp.wm")
        self.db.execute("CREATE TEMP TABLE wm AS SELECT ? AS v", (watermark_key,))
        return self._write(
            destination,
            """
            INSERT INTO out.snapshot (pk, checksum, cursor)
            SELECT pk, checksum, cursor FROM current WHERE failed = 0 AND cursor >= (SELECT v FROM temp.wm);
            """,
        )

    def _write(self, destination: Path, sql: str) -> int:
        destination.unlink(missing_ok=True)
        self.db.execute("COMMIT")
        self.db.execute("ATTACH DATABASE ? AS out", (str(destination),))
        try:
            self.db.executescript(_TABLES.format(db="out"))
            self.db.execute("BEGIN")
            parameters = {"now": self.now, "retention": TOMBSTONE_RETENTION_S}
            for statement in filter(str.strip, sql.split(";")):
                named = {k: v for k, v in parameters.items() if f":{k}" in statement}
                self.db.execute(statement, named)
            count = self.db.execute("SELECT count(*) FROM out.snapshot").fetchone()[0]
            self.db.execute("COMMIT")
        finally:
            self.db.execute("DETACH DATABASE out")
        self.db.execute("BEGIN")
        return count

    def close(self) -> None:
        """Close the database and remove this run's working file."""
        try:
            self.db.close()
        finally:
            self.path.unlink(missing_ok=True)
