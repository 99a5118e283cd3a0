"""Reading a record's values out of a result row by position."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any


def values_getter(indexes: Sequence[int]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """``row -> tuple(row[i] for i in indexes)``, at C speed (``itemgetter``) for two or more indexes."""
    if len(indexes) >= 2:
        return itemgetter(*indexes)
    if len(indexes) == 1:
        (index,) = indexes
        return lambda row: (row[index],)
    return lambda row: ()
