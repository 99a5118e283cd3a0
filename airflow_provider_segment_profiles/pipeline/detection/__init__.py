"""Change detection engines behind one interface (:mod:`.base`): :mod:`.worker` (the default) and
:mod:`.warehouse`; :mod:`.factory` picks one per run (``change_detection``)."""
