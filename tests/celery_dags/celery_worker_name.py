"""``[core] hostname_callable`` of the test's Celery workers: both run on one machine, so each is named by
``SEGMENT_CELERY_WORKER`` in its environment, and the task instances say which worker ran them."""

from __future__ import annotations

import os


def hostname() -> str:
    return os.environ["SEGMENT_CELERY_WORKER"]
