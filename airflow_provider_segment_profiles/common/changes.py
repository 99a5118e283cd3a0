"""
Change kinds, mapping triggers, and which triggers fit which sync mode.

A trigger (Reverse ETL's term: which changes of a record a mapping sends) is a mapping's setting, so the
mapping compiler (``actions/mapping.py``) checks it; which triggers can fire depends on the sync mode,
whose behaviour at every stage is a strategy object in ``pipeline/modes.py``. The facts both need are
here, as data, so the compiler does not import the pipeline:

================  ====================  ======================  ==================
trigger           ``diff``              ``incremental``         ``full``
================  ====================  ======================  ==================
``added``         added                 every row read          every row
``updated``       changed checksums     configuration error     every row
``added_or_updated``  both              every row read          every row
``deleted``       keys gone             configuration error     configuration error
================  ====================  ======================  ==================
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import NamedTuple


class ChangeKind(StrEnum):
    """What happened to a record since the last committed state (Reverse ETL's standard terms)."""

    ADDED = "added"
    UPDATED = "updated"
    DELETED = "deleted"
    UNCHANGED = "unchanged"


#: The ``trigger`` values of a mapping, and the default.
TRIGGERS = ("added", "updated", "added_or_updated", "deleted")
DEFAULT_TRIGGER = "added_or_updated"

_UPSERTS = frozenset({ChangeKind.ADDED, ChangeKind.UPDATED})
_BY_TRIGGER: Mapping[str, frozenset[ChangeKind]] = {
    "added": frozenset({ChangeKind.ADDED}),
    "updated": frozenset({ChangeKind.UPDATED}),
    "added_or_updated": _UPSERTS,
    "deleted": frozenset({ChangeKind.DELETED}),
}
_NOT_DELETED: Mapping[str, frozenset[ChangeKind]] = {
    trigger: (frozenset() if trigger == "deleted" else _UPSERTS) for trigger in TRIGGERS
}
_INCREMENTAL_UNFIT = "incremental mode reads only new rows and counts each as added"


class TriggerRules(NamedTuple):
    """
    How the triggers behave in one sync mode.

    :param changes: per trigger, the change kinds a mapping with it sends.
    :param unfit: triggers that can never fire in this mode, with the reason (a configuration error).
    """

    changes: Mapping[str, frozenset[ChangeKind]]
    unfit: Mapping[str, str]


#: Per ``sync_mode`` name. ``pipeline/modes.py`` defines one strategy object per name and checks at import
#: that it and this table name the same modes.
TRIGGER_RULES: Mapping[str, TriggerRules] = {
    "diff": TriggerRules(_BY_TRIGGER, {}),
    "incremental": TriggerRules(_BY_TRIGGER, {"updated": _INCREMENTAL_UNFIT, "deleted": _INCREMENTAL_UNFIT}),
    "full": TriggerRules(
        _NOT_DELETED, {"deleted": "full mode keeps no snapshot, so it cannot detect deleted records"}
    ),
}
#: Every ``sync_mode`` value, in the order the docs list them.
SYNC_MODES = tuple(TRIGGER_RULES)
