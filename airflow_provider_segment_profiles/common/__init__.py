"""
What every layer shares and no layer owns: the words of a sync (change kinds, triggers, which trigger fits
which sync mode) and the values a warehouse driver cannot hold. ``actions/`` (what one mapping sends) and
``pipeline/`` (how a run moves records) both import from here; this package imports neither.
"""
