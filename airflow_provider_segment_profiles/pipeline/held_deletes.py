"""
The records a delete guard held, as a question can name them and an answer can approve them.

A mass delete can hold millions of records, so neither the question nor the approval carries the whole
set: the question names the count and a sample, and the approval carries a fingerprint of the set. A later
run sends the deletes only when the records it finds missing have the same fingerprint, that is, exactly
the records the question was about (``docs/operator.md``, "A mass delete that asks").
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any, NamedTuple

#: Unique identifiers a question names.
SAMPLE_SIZE = 10
_MODULUS = 1 << 128


class KeySetFingerprint(NamedTuple):
    """
    :param count: how many identifiers the set holds.
    :param digest: 32 hex digits; equal for equal sets whatever their order, different (but for a chance of
        about 2**-128) for different ones.
    :param sample: the smallest :data:`SAMPLE_SIZE` identifiers (stable across runs of the same set).
    """

    count: int
    digest: str
    sample: tuple[str, ...]


def fingerprint(keys: Iterable[str]) -> KeySetFingerprint:
    """
    The order-independent fingerprint of a set of unique identifiers: the sum, modulo 2**128, of each
    identifier's 128-bit BLAKE2b hash (so it streams, in constant memory, over keys in any order).

    :param keys: distinct identifiers, in any order.
    """
    total = count = 0
    sample: list[str] = []
    for key in keys:
        count += 1
        digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        total = (total + int.from_bytes(digest, "big")) % _MODULUS
        if len(sample) < SAMPLE_SIZE or key < sample[-1]:
            sample.append(key)
            sample.sort()
            del sample[SAMPLE_SIZE:]
    return KeySetFingerprint(count, f"{total:032x}", tuple(sample))


class ApprovedDeletes(NamedTuple):
    """
    Deletes a human approved: the held set's count and digest (:class:`KeySetFingerprint`).

    :param approved_by: the name of who approved, for the log (``None``: not known).
    """

    count: int
    digest: str
    approved_by: str | None = None

    def matches(self, found: KeySetFingerprint) -> bool:
        """Whether ``found`` is the set that was approved."""
        return (found.count, found.digest) == (self.count, self.digest)

    @classmethod
    def from_dict(cls, data: dict[str, Any], approved_by: str | None = None) -> ApprovedDeletes:
        """From the ``held`` dict the question carried (``count``, ``digest``)."""
        return cls(int(data["count"]), str(data["digest"]), approved_by)
