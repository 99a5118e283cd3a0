"""
Deterministic message ids, so Segment deduplicates a retried delivery of the same change.

Segment deduplicates on ``messageId`` alone over roughly the last 24 hours; the id must be under 100
characters (segment-docs ``src/guides/duplicate-data.md``). When a mapping does not map ``message_id``
the id is derived from what identifies one change sent through one mapping::

    text = f"{MESSAGE_ID_VERSION}\\n{fingerprint}\\n{change}\\n{checksum}\\n{primary_key}"
    messageId = "rs-" + blake2b(text.encode(), digest_size=16).hexdigest()

* ``fingerprint``: :func:`mapping_fingerprint` of the mapping definition — editing a mapping gives new
  ids, so a corrected payload is not dropped as a duplicate of the earlier one;
* ``change``: ``upsert`` for added/updated records, ``deleted`` for deletions;
* ``checksum``: the caller's hex checksum of the record — a new change gets a new id. In diff mode the
  operator appends the record's version (``{hex}.{version}``, see ``state/snapshot.py``), so a record that
  returns to an earlier value within the window is a new change too;
* ``primary_key``: the record's unique identifier, as text (last, so it may contain any character).

The result is 35 characters: ``rs-`` and 32 hex digits (128 bits). BLAKE2b is used rather than a UUID5
(SHA-1) because it is about twice as fast in CPython and this runs once per message.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

MESSAGE_ID_PREFIX = "rs-"
#: Bump to change every derived id (for instance if the payload format changes incompatibly).
MESSAGE_ID_VERSION = "segment-profiles-message-id/1"


def mapping_fingerprint(definition: dict[str, Any]) -> str:
    """
    Stable hash of a normalised mapping definition: 32 hex digits of SHA-256 over its canonical JSON
    (sorted keys, compact separators). Equal definitions give equal fingerprints in every process.
    An unpaired surrogate in a literal (which UTF-8 cannot encode) is hashed as its code unit, as
    :func:`derive_message_id` does for keys.
    """
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def message_id_prefix(fingerprint: str, change: str) -> bytes:
    """The constant leading part of the hashed text for one mapping and change kind."""
    return f"{MESSAGE_ID_VERSION}\n{fingerprint}\n{change}\n".encode()


def derive_message_id(prefix: bytes, checksum: str, primary_key: str) -> str:
    """
    :param prefix: :func:`message_id_prefix` of the mapping and change kind.
    :param checksum: the record's checksum (hex text).
    :param primary_key: the record's primary-key value as text.
    :return: ``"rs-"`` followed by 32 lowercase hex digits.
    """
    digest = hashlib.blake2b(
        prefix + f"{checksum}\n{primary_key}".encode("utf-8", "surrogatepass"), digest_size=16
    ).hexdigest()
    return MESSAGE_ID_PREFIX + digest
