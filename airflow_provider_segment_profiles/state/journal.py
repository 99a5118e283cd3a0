"""Write-ahead journal of the records a try is about to send, so that a try that dies loses nothing.

A try commits state only at its end. One killed before that (SIGKILL, OOM, a lost worker) may already have
delivered messages that its state does not know about: a record it added and that is then deleted, or one it
updated and that then goes back to its old value, would otherwise never be corrected. So before a chunk's
messages are handed to the dispatcher, the ``(unique identifier, version)`` of each record in it is written
to ``{state folder}/journal/``; the next try or run that starts from the same committed state folds those
records into its comparison (:func:`.snapshot.prepare_previous`) and sends their current values (or deletes),
and a run that commits removes the journals it accounted for.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator, Sequence
from typing import Any

from airflow_provider_segment_profiles.exceptions import JournalError

JOURNAL_FORMAT = 1


class SendJournal:
    """
    The journal files of one try, and the uncommitted ones of earlier tries.

    Files are named ``{base generation:08d}-{tag}-{random}-{sequence:06d}.json`` and hold
    ``{"format": 1, "records": [[pk, version], ...]}``.

    :param folder: ``ObjectStoragePath`` of the journal folder of one sync.
    :param base_generation: generation of the committed state this try started from (0 if none).
    :param tag: this try's name, a safe path component (run id and try number).
    """

    def __init__(self, folder: Any, base_generation: int, tag: str) -> None:
        self.folder = folder
        self.base = f"{base_generation:08d}-"
        self.name = f"{self.base}{tag}-{secrets.token_hex(4)}"
        self.sequence = 0
        self.written: list[Any] = []

    def uncommitted(self) -> tuple[list[Any], list[Any]]:
        """
        Find the journals of tries that started from the same committed state and never committed.

        :return: ``(every journal file present, the uncommitted ones)``. Files of other generations are
            stale (a later commit accounted for them); they are listed only for :meth:`discard`.
        """
        if not self.folder.exists():
            return [], []
        files = sorted(self.folder.iterdir(), key=lambda p: p.name)
        return files, [path for path in files if path.name.startswith(self.base)]

    @staticmethod
    def records(files: Sequence[Any]) -> Iterator[tuple[str, int]]:
        """
        ``(pk, version)`` of every record in ``files``, one file in memory at a time.

        A file that cannot be parsed was cut short by the death of its writer: the chunk it describes was
        never handed to the dispatcher, so it is skipped.
        """
        for path in files:
            try:
                entries = [(str(pk), int(version)) for pk, version in json.loads(path.read_text())["records"]]
            except (ValueError, KeyError, TypeError):
                continue
            yield from entries

    def record(self, entries: Sequence[tuple[str, int]]) -> None:
        """
        Write one file with ``(pk, version)`` of the records whose messages are about to be sent.

        :raises JournalError: when the file cannot be written; the caller must not send the chunk.
        """
        if not entries:
            return
        self.sequence += 1
        path = self.folder / f"{self.name}-{self.sequence:06d}.json"
        try:
            if self.sequence == 1:
                self.folder.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"format": JOURNAL_FORMAT, "records": list(entries)}))
        except Exception as err:
            raise JournalError(
                f"Could not write the send journal {path} ({type(err).__name__}: {err}); nothing of this "
                "chunk was sent. Check access to state_path."
            ) from err
        self.written.append(path)

    def discard(self, files: Sequence[Any]) -> None:
        """Remove journal files once a commit has accounted for them; failures only leave stale files."""
        for path in [*files, *self.written]:
            with contextlib.suppress(Exception):
                path.unlink()
