"""Change detection engines behind one interface (:mod:`.base`): :mod:`.worker` (the default)."""
