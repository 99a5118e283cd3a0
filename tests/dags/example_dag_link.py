"""
Exposes the example DAG (``example_dags/example_segment_profiles_sync.py``) in the tests' dags folder.

``dag.test()`` on Airflow >= 3.2 syncs the DAG bundles first and only runs DAGs it found in the
configured dags folder, which the tests point at ``tests/dags``. This file loads the example module under
its own name, so the test that imports it and Airflow's parsing of this file share one DAG object.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

EXAMPLE_DAG_FILE = Path(__file__).resolve().parents[2] / "example_dags" / "example_segment_profiles_sync.py"
EXAMPLE_MODULE_NAME = "example_segment_profiles_sync"


def load_example_module(*, fresh: bool = False) -> ModuleType:
    """
    Return the example DAG module, imported once per process unless ``fresh``.

    :param fresh: execute the file again, for new DAG and operator objects, as an Airflow worker has for
        every task it runs.
    """
    module = None if fresh else sys.modules.get(EXAMPLE_MODULE_NAME)
    if module is None:
        spec = importlib.util.spec_from_file_location(EXAMPLE_MODULE_NAME, EXAMPLE_DAG_FILE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[EXAMPLE_MODULE_NAME] = module
    return module


dag = load_example_module().dag
