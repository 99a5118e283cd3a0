"""
The sync as stages that follow the data (``docs/architecture.md``)::

    source -> detection -> fanout -> delivery -> settle -> commit

:mod:`.run` drives them; :mod:`.config` and :mod:`.modes` say what to do; :mod:`.records` holds the typed
records that cross from one stage to the next.
"""
