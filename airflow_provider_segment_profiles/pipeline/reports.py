"""The run's files for people: the NDJSON report of problems and the dry run's payloads."""

from __future__ import annotations

import shutil
from typing import IO, Any


def upload(local: IO[bytes], explicit: str | None, default: Any, count: int) -> str | None:
    """
    Copy a local NDJSON file to its place under ``state_path`` (or the path the user gave).

    :param local: the open local file (rewound here).
    :param explicit: a user-given ``ObjectStoragePath`` URI, or ``None``.
    :param default: the ``ObjectStoragePath`` to use otherwise.
    :param count: lines written; an empty file is only uploaded to an explicit path.
    :return: the URI written, or ``None`` when nothing was uploaded.
    """
    if count == 0 and explicit is None:
        return None
    from airflow.sdk import ObjectStoragePath

    target = ObjectStoragePath(explicit) if explicit else default
    local.flush()
    local.seek(0)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as out:
        shutil.copyfileobj(local, out, 1 << 20)
    return str(target)
