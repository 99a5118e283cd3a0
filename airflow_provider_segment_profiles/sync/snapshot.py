"""The record snapshot: unique identifier -> checksum of every record a sync has delivered.

It lives in a local SQLite file while a run works (stdlib ``sqlite3``: bounded memory whatever the number of
records, exact keys, set-based joins per chunk) and is copied to and from ``state_path`` between runs.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

#: Outcome flags kept per record of the current run.
OK, FAILED = 0, 1
_NEW, _DUPLICATE = (None, False), (None, True)


class SnapshotStore:
    """
    The previous run's snapshot (read-only) and the one this run is building.

    Tables: ``prev.snapshot(pk, checksum, cursor)`` from the last committed run (absent on a first run or a
    full refresh) and ``main.current(pk, checksum, prev_checksum, cursor, failed)`` for this run.
    ``cursor`` holds the incremental cursor's sort key, ``NULL`` in other modes.

    :param workdir: local folder for the SQLite files.
    :param previous: the last committed snapshot file, or ``None``.
    """

    def __init__(self, workdir: Path, previous: Path | None) -> None:
        self.workdir = workdir
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
                pk TEXT PRIMARY KEY, checksum INTEGER, prev_checksum INTEGER, cursor, failed INTEGER DEFAULT 0,
                chunk INTEGER
            ) WITHOUT ROWID;
            CREATE TEMP TABLE chunk (pos INTEGER PRIMARY KEY, pk TEXT, checksum INTEGER, cursor);
            CREATE TEMP TABLE failed_deletes (pk TEXT PRIMARY KEY) WITHOUT ROWID;
            """
        )
        # Without a previous snapshot every record is new: classify() then skips the lookups.
        self._first_run = previous is None
        self._chunks = 0
        if previous is not None:
            self.db.execute("ATTACH DATABASE ? AS prev", (f"file:{previous}?mode=ro",))
        else:
            self.db.execute("ATTACH DATABASE ':memory:' AS prev")
            self.db.execute(
                "CREATE TABLE prev.snapshot (pk TEXT PRIMARY KEY, checksum INTEGER, cursor) WITHOUT ROWID"
            )
        self.db.execute("BEGIN")

    def previous_count(self) -> int:
        """Records in the previous snapshot."""
        return self.db.execute("SELECT count(*) FROM prev.snapshot").fetchone()[0]

    def classify(self, chunk: Sequence[tuple[str, int, object]]) -> list[tuple[int | None, bool]]:
        """
        Look up a chunk of records and add them to the current snapshot.

        :param chunk: ``(pk, checksum, cursor sort key or None)`` per record, unique within the chunk.
        :return: per record, ``(previous checksum or None, duplicate of a record earlier in this run)``.
            Duplicates are not added.
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
                "INSERT OR IGNORE INTO current (pk, checksum, cursor, chunk) "
                "SELECT pk, checksum, cursor, ? FROM chunk ORDER BY pos",
                (number,),
            ).rowcount
            if added == len(chunk):
                return [_NEW] * added
        else:
            added = db.execute(
                """
                INSERT OR IGNORE INTO current (pk, checksum, prev_checksum, cursor, chunk)
                SELECT k.pk, k.checksum, p.checksum, k.cursor, ? FROM chunk k
                LEFT JOIN prev.snapshot p ON p.pk = k.pk ORDER BY k.pos
                """,
                (number,),
            ).rowcount
            if added == len(chunk):
                return [
                    (previous, False)
                    for (previous,) in db.execute(
                        "SELECT p.checksum FROM chunk k LEFT JOIN prev.snapshot p ON p.pk = k.pk ORDER BY k.pos"
                    )
                ]
        return [
            (previous, chunk_number != number)
            for chunk_number, previous in db.execute(
                "SELECT c.chunk, c.prev_checksum FROM chunk k JOIN current c ON c.pk = k.pk ORDER BY k.pos"
            )
        ]

    def mark_failed(self, pks: Iterable[str]) -> None:
        """Record that a message of these records was not delivered; they are sent again next run."""
        self.db.executemany("UPDATE current SET failed = 1 WHERE pk = ?", ((pk,) for pk in pks))

    def mark_delete_failed(self, pks: Iterable[str]) -> None:
        """Record that a deleted record's message was not delivered; it counts as deleted again next run."""
        self.db.executemany("INSERT OR IGNORE INTO failed_deletes (pk) VALUES (?)", ((pk,) for pk in pks))

    def deleted(self, batch_size: int = 5000) -> Iterator[list[tuple[str, int]]]:
        """Yield ``(pk, previous checksum)`` of records in the previous snapshot but not in this run."""
        cursor = self.db.execute(
            "SELECT p.pk, p.checksum FROM prev.snapshot p WHERE NOT EXISTS (SELECT 1 FROM current c WHERE c.pk = p.pk)"
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

        Delivered, rejected and unchanged records keep this run's checksum; a record with an undelivered
        message keeps its previous checksum, so it is sent again. An added record whose message failed is
        kept with a NULL checksum ("unconfirmed": Segment may have accepted it before a timeout): next run
        it counts as added again if it is still in the model, and as deleted if it is gone. A deleted
        record whose message failed is kept, so it is deleted again.
        """
        return self._write(
            destination,
            """
            INSERT INTO out.snapshot (pk, checksum, cursor)
            SELECT pk, CASE WHEN failed THEN prev_checksum ELSE checksum END, NULL FROM current;
            INSERT INTO out.snapshot (pk, checksum, cursor)
            SELECT p.pk, p.checksum, NULL FROM prev.snapshot p JOIN failed_deletes f ON f.pk = p.pk;
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
            self.db.execute(
                "CREATE TABLE out.snapshot (pk TEXT PRIMARY KEY, checksum INTEGER, cursor) WITHOUT ROWID"
            )
            self.db.execute("BEGIN")
            for statement in filter(str.strip, sql.split(";")):
                self.db.execute(statement)
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
