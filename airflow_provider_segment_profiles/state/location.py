"""Where a sync's state lives between runs, and the commit protocol that keeps it consistent.

Small state (generation, snapshot reference, watermark, fingerprint, counts) is pushed to the task's XCom
under :data:`STATE_XCOM_KEY` and written, with the bulk snapshot, under ``state_path`` through Airflow's
``ObjectStoragePath``: ``{state_path}/{dag_id}/{task_id}/{map_index}/HEAD.json`` and ``snapshots/``; next to
them, ``journal/`` holds what tries that have not committed were about to send (:mod:`.journal`) and
``reports/`` the NDJSON reports.

``HEAD.json`` is the source of truth for "the last committed state", because no XCom lookup finds it for
every kind of run: a pull with ``include_prior_dates`` orders by logical date, misses manual runs triggered
later, and does not filter failed runs. The XCom copy is the audit trail and the tripwire: when the newest
XCom state an earlier run committed is ahead of ``HEAD.json`` (state deleted, moved or rolled back), the run
fails loudly instead of silently re-sending everything.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow_provider_segment_profiles.exceptions import StateError

STATE_XCOM_KEY = "segment_profiles_state"
STATE_FORMAT = 1
_SAFE_COMPONENT = re.compile(r"[^A-Za-z0-9_.=-]")
_KEEP_SNAPSHOTS = 2


@dataclass
class SyncState:
    """
    One committed state of a sync.

    :param generation: 1 for the first commit, +1 per commit.
    :param snapshot: file name under ``snapshots/`` of the committed snapshot, or ``None``.
    :param sync_mode: mode that wrote it.
    :param watermark: typed watermark (see :mod:`.watermark`), incremental mode only.
    :param fingerprint: hash of the model's columns, primary key, mode and mappings.
    :param records: records in the snapshot.
    :param committed_at: ISO-8601 UTC time of the commit.
    :param run_id: DAG run that committed it; ``try_number`` its try.
    """

    generation: int
    snapshot: str | None
    sync_mode: str
    watermark: dict[str, Any] | None = None
    fingerprint: str = ""
    records: int = 0
    committed_at: str = ""
    run_id: str = ""
    try_number: int = 0
    format: int = STATE_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict, as pushed to XCom."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SyncState:
        """Rebuild from :meth:`to_dict` output; unknown keys are ignored."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def safe_component(value: object) -> str:
    """
    A path component that cannot climb out of its folder, whatever a templated value holds.

    ``/``, ``..`` and other characters outside ``[A-Za-z0-9_.=-]`` are replaced by ``_``; a component made
    only of dots becomes ``_``.
    """
    text = _SAFE_COMPONENT.sub("_", str(value))
    return "_" if not text.strip(".") else text


def default_state_path() -> str:
    """``file://{AIRFLOW_HOME}/segment_profiles_state``: fine for one machine, not for distributed workers."""
    home = os.path.expanduser(os.environ.get("AIRFLOW_HOME", "~/airflow"))
    return f"file://{os.path.abspath(home)}/segment_profiles_state"


class StateLocation:
    """
    The folder of one sync's state: one task (and map index) of one DAG.

    :param base: ``state_path`` URI (``file://``, ``s3://``, ``gs://``... any ``ObjectStoragePath``).
    :param dag_id: DAG id; ``task_id`` and ``map_index`` complete the folder name.
    :param conn_id: Airflow connection id for the object store, if it needs one.
    """

    def __init__(
        self, base: str, dag_id: str, task_id: str, map_index: int, conn_id: str | None = None
    ) -> None:
        from airflow.sdk import ObjectStoragePath

        root = ObjectStoragePath(base, conn_id=conn_id) if conn_id else ObjectStoragePath(base)
        part = "task" if map_index is None or map_index < 0 else f"map_{int(map_index)}"
        self.root = root / safe_component(dag_id) / safe_component(task_id) / part
        self.head = self.root / "HEAD.json"
        self.snapshots = self.root / "snapshots"
        self.reports = self.root / "reports"
        self.journal = self.root / "journal"

    def read_head(self) -> SyncState | None:
        """
        The last committed state, or ``None`` when this sync never committed.

        :raises StateError: when ``HEAD.json`` exists but cannot be read or parsed.
        """
        try:
            if not self.head.exists():
                return None
            return SyncState.from_dict(json.loads(self.head.read_text()))
        except StateError:
            raise
        except Exception as err:
            raise StateError(
                f"The sync state at {self.head} cannot be read ({type(err).__name__}: {err}). Fix access to "
                "state_path, or run once with full_refresh=True to rebuild state (every record is sent again)."
            ) from err

    def download_snapshot(self, state: SyncState, workdir: Path) -> Path | None:
        """
        Copy the committed snapshot to a local file and return its path (``None`` if the state has none).

        :raises StateError: when the snapshot named by ``HEAD.json`` is missing or unreadable.
        """
        if not state.snapshot:
            return None
        source = self.snapshots / state.snapshot
        local = workdir / "previous.sqlite"
        try:
            with source.open("rb") as src, open(local, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except Exception as err:
            raise StateError(
                f"The snapshot {source} named by {self.head} cannot be read ({type(err).__name__}). Restore it, "
                "or run once with full_refresh=True to rebuild state (every record is sent again)."
            ) from err
        return local

    def commit(self, expected: SyncState | None, new: SyncState, snapshot_file: Path | None) -> SyncState:
        """
        Upload the snapshot and move ``HEAD.json`` to ``new``, unless another run committed meanwhile.

        :param expected: the state this run started from (``None`` for a first run).
        :param new: the state to commit; its ``generation`` and ``snapshot`` are filled in here.
        :param snapshot_file: local snapshot to upload, or ``None``.
        :raises StateError: when ``HEAD.json`` moved since this run read it (two runs of one sync at once).
        """
        new.generation = (expected.generation if expected else 0) + 1
        new.committed_at = datetime.now(UTC).isoformat(timespec="seconds")
        if snapshot_file is not None:
            name = f"{new.generation:08d}-{secrets.token_hex(4)}.sqlite"
            self.snapshots.mkdir(parents=True, exist_ok=True)
            with open(snapshot_file, "rb") as src, (self.snapshots / name).open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            new.snapshot = name
        current = self.read_head()
        if (current.generation if current else 0) != (expected.generation if expected else 0):
            raise StateError(
                f"Another run of this sync committed state generation {current.generation if current else 0} "
                f"while this run (which started from generation {expected.generation if expected else 0}) was "
                "running. This run's messages were sent, but its state is not committed; the next run compares "
                "against the newer state. Do not run the same sync concurrently (max_active_runs=1)."
            )
        self.root.mkdir(parents=True, exist_ok=True)
        self.head.write_text(json.dumps(new.to_dict(), indent=2, sort_keys=True))
        self._prune(keep=new.snapshot)
        return new

    def _prune(self, keep: str | None) -> None:
        """Remove old snapshots, keeping the newest few for forensics."""
        try:
            if not self.snapshots.exists():
                return
            names = sorted(p.name for p in self.snapshots.iterdir() if p.name.endswith(".sqlite"))
        except Exception:
            return
        for name in names[:-_KEEP_SNAPSHOTS]:
            # Pruning is housekeeping: a failure must not fail a committed run.
            if name != keep:
                with contextlib.suppress(Exception):
                    (self.snapshots / name).unlink()
