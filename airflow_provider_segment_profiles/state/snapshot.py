"""The record snapshot: what a sync knows Segment holds for every record, kept between runs.

A snapshot file is an SQLite database with four tables:

* ``snapshot(pk, checksum, cursor, version)``: every record the sync has sent, with the checksum of the
  values Segment holds (``NULL``: an add whose delivery was not confirmed), the incremental cursor's sort key
  (incremental mode only) and the record's **version**, the number of changes sent for it. A change's
  message id includes the version it moves the record to, so a record returning to an earlier value within
  Segment's 24 h de-duplication window gets a new id instead of being dropped as a duplicate.
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
from pathlib import Path

#: Tombstones are kept twice Segment's ~24 h de-duplication look-back
#: (https://segment.com/docs/guides/duplicate-data/), so a record deleted and re-added within it keeps
#: counting versions.
TOMBSTONE_RETENTION_S = 48 * 3600

_TABLES = """
CREATE TABLE IF NOT EXISTS {db}.snapshot (pk TEXT PRIMARY KEY, checksum INTEGER, cursor, version INTEGER)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {db}.uncertain (pk TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {db}.tombstone (pk TEXT PRIMARY KEY, version INTEGER, deleted_at INTEGER)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {db}.pending (pk TEXT, mapping TEXT, kind TEXT, PRIMARY KEY (pk, mapping))
    WITHOUT ROWID;
"""

#: ``(previous checksum, known, version, uncertain)`` of one record, see :meth:`SnapshotStore.add_and_look_up`;
#: the flags are SQLite's 0 and 1 (rows come back from SQLite as they are).
Lookup = tuple[int | None, int, int, int]
_NEW: Lookup = (None, 0, 1, 0)


def prepare_previous(path: Path | None, workdir: Path, unconfirmed: Iterable[tuple[str, int]]) -> Path | None:
    """
    Make a local copy of the last committed snapshot ready to compare against, and fold in the records
    that tries which did not commit may have sent.

    Snapshots written before versions and side tables existed are upgraded in place (the copy is local).

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
    refresh) and ``main.current(pk, checksum, prev_checksum, prev_version, version, cursor, failed, chunk)``
    for this run. ``cursor`` holds the incremental cursor's sort key, ``NULL`` in other modes.

    :param workdir: local folder for the SQLite files.
    :param previous: the previous snapshot file, prepared by :func:`prepare_previous`, or ``None``.
    :param now: clock for tombstone times, in seconds since the epoch.
    """

    def __init__(self, workdir: Path, previous: Path | None, now: float | None = None) -> None:
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
                version INTEGER, cursor, failed INTEGER DEFAULT 0, chunk INTEGER
            ) WITHOUT ROWID;
            CREATE TEMP TABLE chunk (pos INTEGER PRIMARY KEY, pk TEXT, checksum INTEGER, cursor);
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
            # 2 marks a record with pending messages (see pending_messages()).
            self._has_pending = True
            uncertain = (
                f"CASE WHEN {uncertain} THEN 1 "
                "WHEN EXISTS (SELECT 1 FROM prev.pending pd WHERE pd.pk = k.pk) THEN 2 ELSE 0 END"
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
        self._insert_sql = f"""
            INSERT OR IGNORE INTO current (pk, checksum, prev_checksum, prev_version, version, cursor, chunk)
            SELECT k.pk, k.checksum, p.checksum, p.version, {version}, k.cursor, ?
            FROM chunk k LEFT JOIN prev.snapshot p ON p.pk = k.pk{joins} ORDER BY k.pos
            """
        self._lookup_sql = f"""
            SELECT p.checksum, p.pk IS NOT NULL, {version}, {uncertain}
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
        :return: per record, ``None`` for a duplicate of a record earlier in this run (not added), else
            ``(previous checksum, known, version, uncertain)``: the checksum Segment holds (``None`` when
            unknown or unconfirmed), whether the previous snapshot has the record (0 or 1), the version a
            change sent now carries (the held version when nothing changed), and whether Segment may hold
            another value (0 or 1; 2 for a record an earlier run's mapping rejected, see :meth:`mark_rejected`).
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
                return db.execute(self._lookup_sql).fetchall()
        firsts = [
            chunk_number == number
            for (chunk_number,) in db.execute(
                "SELECT c.chunk FROM chunk k JOIN current c ON c.pk = k.pk ORDER BY k.pos"
            )
        ]
        if self._first_run:
            return [_NEW if first else None for first in firsts]
        return [
            lookup if first else None
            for first, lookup in zip(firsts, db.execute(self._lookup_sql), strict=True)
        ]

    def mark_failed(self, pks: Iterable[str]) -> None:
        """Record that a message of these records was not delivered; they are sent again next run."""
        self.db.executemany("UPDATE current SET failed = 1 WHERE pk = ?", ((pk,) for pk in pks))

    def mark_rejected(self, rejections: Iterable[tuple[str, str, str]]) -> None:
        """Record ``(pk, mapping, change kind)`` of messages rejected for bad data; they stay pending."""
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

    def cursor_max(self) -> object | None:
        """Largest cursor sort key read this run, or ``None``."""
        return self.db.execute("SELECT max(cursor) FROM current").fetchone()[0]

    def write_diff_snapshot(self, destination: Path) -> int:
        """
        Write the snapshot the next diff run compares against; return its record count.

        Delivered, rejected and unchanged records keep this run's checksum and version. A record with an
        undelivered message keeps what Segment held before and becomes uncertain (the message may have been
        accepted before a timeout), so it is sent again even if its value goes back; an added record whose
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
            INSERT INTO out.snapshot (pk, checksum, cursor, version)
            SELECT pk, CASE WHEN failed THEN prev_checksum ELSE checksum END, NULL,
                CASE WHEN failed AND prev_checksum IS NOT NULL THEN prev_version ELSE version END
            FROM current;
            INSERT INTO out.uncertain (pk) SELECT pk FROM current WHERE failed AND prev_checksum IS NOT NULL;
            INSERT INTO out.pending (pk, mapping, kind) SELECT pk, mapping, kind FROM rejections;
            INSERT INTO out.snapshot (pk, checksum, cursor, version)
            SELECT p.pk, p.checksum, NULL, p.version FROM prev.snapshot p JOIN failed_deletes f ON f.pk = p.pk;
            INSERT INTO out.uncertain (pk) SELECT pk FROM failed_deletes;
            INSERT INTO out.snapshot (pk, checksum, cursor, version)
            SELECT p.pk, p.checksum, NULL, p.version FROM prev.snapshot p
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
