"""
Deterministic message ids, so Segment deduplicates a retried delivery of the same change — and only that.

Segment deduplicates on ``messageId`` alone over roughly the last 24 hours, and that de-duplication "is not
scoped to a specific source or a workspace, and applies to all events being received by Segment"; the id
must be under 100 characters (segment-docs ``src/guides/duplicate-data.md``). When a mapping does not map
``message_id`` the id is derived from what identifies one change sent through one mapping to one
destination::

    text = MESSAGE_ID_VERSION + "\\n" + scope + f"\\n{fingerprint}\\n{change}\\n{checksum}\\n{primary_key}"
    messageId = "rs-" + blake2b(text, digest_size=16).hexdigest()

* ``scope``: :func:`destination_scope` of the Profile Space connection's write key — 16 bytes of
  HMAC-SHA256 keyed by the write key over a fixed label. The same DAG syncing the same model into two
  workspaces (staging and production, a second region) sends different ids to each, so the later one is
  not dropped as a duplicate of the earlier. The scope is hashed, never sent, logged or stored, and the
  write key cannot be recovered from it (nor from the id);
* ``fingerprint``: :func:`mapping_fingerprint` of the mapping definition — editing a mapping gives new
  ids, so a corrected payload is not dropped as a duplicate of the earlier one;
* ``change``: ``upsert`` for added/updated records, ``deleted`` for deletions;
* ``checksum``: the caller's hex checksum of the record — a new change gets a new id. In diff mode the
  operator appends the record's version (``{hex}.{version}``, see ``state/snapshot.py``), so a record that
  returns to an earlier value within the window is a new change too;
* ``primary_key``: the record's unique identifier, as text (last, so it may contain any character).

The result is 35 characters: ``rs-`` and 32 hex digits (128 bits). BLAKE2b is used rather than a UUID5
(SHA-1) because it is about twice as fast in CPython and this runs once per message.

An Identify sent in several parts (:mod:`.ingestion_limits`) gives each part :func:`part_message_id` of
the message's id and the part's number.

Version 1 of the derivation had no scope. Ids are not kept in the sync state (records are compared
by checksum), so upgrading re-sends nothing; a record journaled by a try that died before the upgrade is
sent again by the first run after it under its new, scoped id (``docs/mappings.md``, "Message ids").
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

MESSAGE_ID_PREFIX = "rs-"
#: Bump to change every derived id (for instance if the payload format changes incompatibly).
MESSAGE_ID_VERSION = "segment-profiles-message-id/2"
#: What the destination scope's HMAC is computed over (the write key is the HMAC key).
SCOPE_LABEL = b"segment-profiles/message-id-scope/1"
#: Bytes of HMAC-SHA256 kept as the scope.
SCOPE_BYTES = 16


def destination_scope(write_key: str) -> bytes:
    """
    The message-id scope of one destination (Profile Space source).

    :param write_key: the source's write key.
    :return: :data:`SCOPE_BYTES` bytes of ``HMAC-SHA256(key=write_key, msg=SCOPE_LABEL)``; ``b""`` for an
        empty key (a dry run without a connection).
    """
    if not write_key:
        return b""
    key = write_key.encode("utf-8", "surrogatepass")
    return hmac.new(key, SCOPE_LABEL, hashlib.sha256).digest()[:SCOPE_BYTES]


def mapping_fingerprint(definition: dict[str, Any]) -> str:
    """
    Stable hash of a normalised mapping definition: 32 hex digits of SHA-256 over its canonical JSON
    (sorted keys, compact separators). Equal definitions give equal fingerprints in every process.
    An unpaired surrogate in a literal (which UTF-8 cannot encode) is hashed as its code unit, as
    :func:`derive_message_id` does for keys.
    """
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def message_id_prefix(fingerprint: str, change: str, scope: bytes = b"") -> bytes:
    """
    The constant leading part of the hashed text for one mapping, change kind and destination.

    :param scope: :func:`destination_scope` of the destination (fixed length, so no separator is needed
        for the text to stay unambiguous).
    """
    return f"{MESSAGE_ID_VERSION}\n".encode() + scope + f"\n{fingerprint}\n{change}\n".encode()


def derive_message_id(prefix: bytes, checksum: str, primary_key: str) -> str:
    """
    :param prefix: :func:`message_id_prefix` of the mapping, change kind and destination.
    :param checksum: the record's checksum (hex text).
    :param primary_key: the record's primary-key value as text.
    :return: ``"rs-"`` followed by 32 lowercase hex digits.
    """
    digest = hashlib.blake2b(
        prefix + f"{checksum}\n{primary_key}".encode("utf-8", "surrogatepass"), digest_size=16
    ).hexdigest()
    return MESSAGE_ID_PREFIX + digest


def part_message_id(message_id: str, part: int) -> str:
    """
    The id of part ``part`` (1-based) of a message sent in several parts: ``"rs-"`` and 32 hex digits of
    BLAKE2b over the message's id and the part number. Deterministic, so a retried part is de-duplicated;
    a user-mapped id gives part ids as unique across destinations as it is itself.
    """
    text = f"part\n{part}\n{message_id}".encode("utf-8", "surrogatepass")
    return MESSAGE_ID_PREFIX + hashlib.blake2b(text, digest_size=16).hexdigest()
