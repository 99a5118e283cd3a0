"""Per-record checksums and unique identifier strings used by change detection."""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import blake2b
from typing import TYPE_CHECKING, Any

from airflow_provider_segment_profiles.actions.rows import values_getter
from airflow_provider_segment_profiles.pipeline.records import ChangeKind

if TYPE_CHECKING:
    from airflow_provider_segment_profiles.actions import CompiledMapping
    from airflow_provider_segment_profiles.pipeline.modes import SyncMode


def record_key(value: Any) -> str | None:
    """
    The unique identifier as compared across runs: a string, or ``None`` when the value is NULL.

    Keys compare as strings, so ``1`` and ``'1'`` are the same record, ``'00123'`` and ``123`` are not, and
    case matters (``'ABC'`` and ``'abc'`` differ). Floats that hold integers (``1.0``) become ``'1'``.
    """
    value_type = type(value)
    if value_type is int or value_type is str:  # the usual identifier types: skip the checks below
        return str(value)
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class Checksummer:
    """
    64-bit checksum of the values a record's mappings use.

    ``repr`` of the selected values is hashed with BLAKE2b, seeded with the mappings' fingerprint, so
    changing a mapping changes every checksum and re-sends the affected records. ``repr`` is exact for the
    types DB-API drivers return (``Decimal``, ``datetime``, ``str``...), so any change of value or type is
    seen; a driver upgrade that changes a value's type re-sends the records once.

    :param seed: fingerprint of the mappings (any string).
    :param column_indexes: positions of the used columns in each row.
    """

    def __init__(self, seed: str, column_indexes: Sequence[int]) -> None:
        self._seed = blake2b(seed.encode(), digest_size=16).digest()
        self._indexes = tuple(column_indexes)
        # Keying BLAKE2b hashes the key as a whole first block; hashing it once and copying the keyed
        # state per record gives the same digests at about half the cost (docs/benchmarks.md).
        self._keyed = blake2b(digest_size=8, key=self._seed)
        self._values = values_getter(self._indexes)

    def __call__(self, row: Sequence[Any]) -> int:
        """Checksum of ``row`` as a signed 64-bit integer (fits an SQLite INTEGER)."""
        # Not through digest(): this runs once per record read, and a call costs a Python frame.
        hasher = self._keyed.copy()
        hasher.update(repr(self._values(row)).encode("utf-8", "surrogatepass"))
        return int.from_bytes(hasher.digest(), "big", signed=True)

    def digest(self, row: Sequence[Any]) -> bytes:
        """The checksum of ``row`` as its 8 bytes."""
        hasher = self._keyed.copy()
        hasher.update(repr(self._values(row)).encode("utf-8", "surrogatepass"))
        return hasher.digest()


class MappingChecksums:
    """
    One :class:`Checksummer` per mapping, each over the columns that mapping reads and seeded with that
    mapping's fingerprint (so a changed definition, a literal included, changes its checksum alone).

    :meth:`__call__` packs a row's checksums into one value: their 8-byte digests concatenated. The packed
    value is compared as a *set* of digests (:func:`changed_among`), never by position: each digest is keyed
    by its mapping's fingerprint, which names the mapping (two mappings of a sync never share one), so
    adding, removing or reordering mappings leaves the other mappings' digests comparable.

    :param mappings: ``(mapping name, fingerprint, column positions)`` of every mapping to follow.
    """

    def __init__(self, mappings: Sequence[tuple[str, str, Sequence[int]]]) -> None:
        self.names = tuple(name for name, _, _ in mappings)
        self._digests = tuple(
            Checksummer(fingerprint, columns).digest for _, fingerprint, columns in mappings
        )

    def __call__(self, row: Sequence[Any]) -> tuple[bytes, ...]:
        """Each mapping's digest of ``row``, in the order of :attr:`names`."""
        return tuple(digest(row) for digest in self._digests)


def followed_mappings(mode: SyncMode, mappings: Sequence[CompiledMapping]) -> list[CompiledMapping]:
    """
    The mappings whose changes both engines tell apart: those whose trigger selects updated records, in a
    mode that tracks changes per mapping (``diff``); none in the other modes.
    """
    if not mode.tracks_mapping_changes:
        return []
    return [m for m in mappings if ChangeKind.UPDATED in mode.changes_selected(m.trigger)]


def mapping_input_columns(mapping: CompiledMapping, columns: Sequence[str]) -> list[int]:
    """
    Positions of the result columns ``mapping`` reads: by name, and each ``columns: "*"`` but its
    ``exclude`` (a change in an excluded column is no change for the mapping).
    """
    read = {columns.index(column) for column in mapping.columns}
    for _path, excluded in mapping.star_fields():
        read.update(position for position, column in enumerate(columns) if column not in excluded)
    return sorted(read)


def mapping_checksums_for(followed: Sequence[CompiledMapping], columns: Sequence[str]) -> MappingChecksums:
    """The :class:`MappingChecksums` of the ``followed`` mappings over a result with ``columns``."""
    return MappingChecksums([(m.name, m.fingerprint, mapping_input_columns(m, columns)) for m in followed])


def changed_among(
    names: Sequence[str], digests: Sequence[bytes], held: bytes
) -> tuple[tuple[str, ...], bytes]:
    """
    The mappings whose digest is not among the ``held`` ones, and the held digests that are still current.

    :param names: mapping names, in the order of ``digests``.
    :param digests: this run's digests (:meth:`MappingChecksums.__call__`).
    :param held: the packed digests of the values Segment holds (8 bytes each).
    :return: ``(names of the changed mappings, the packed digests of the unchanged ones)``.
    """
    if len(digests) == 1:  # one followed mapping, the usual case: no set to build (runs per changed record)
        (digest,) = digests
        same = (
            digest == held if len(held) == 8 else digest in {held[s : s + 8] for s in range(0, len(held), 8)}
        )
        return ((), digest) if same else (tuple(names), b"")
    known = {held[start : start + 8] for start in range(0, len(held), 8)}
    changed = tuple(name for name, digest in zip(names, digests, strict=True) if digest not in known)
    return changed, b"".join(digest for digest in digests if digest in known)


def checksum_hex(checksum: int) -> str:
    """Checksum as 16 hex digits, for message ids and reports."""
    return checksum.to_bytes(8, "big", signed=True).hex()
