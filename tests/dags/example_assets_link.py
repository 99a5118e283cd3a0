"""
Exposes the Assets example (``example_dags/example_segment_profiles_assets.py``) in the tests' dags folder,
as ``example_dag_link.py`` does for the main example: Airflow's ``dag.test()`` runs only DAGs of
the dags folder.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

EXAMPLE_FILE = Path(__file__).resolve().parents[2] / "example_dags" / "example_segment_profiles_assets.py"
MODULE_NAME = "example_segment_profiles_assets"


def load_assets_example(*, fresh: bool = False) -> ModuleType:
    """
    Return the Assets example module, imported once per process unless ``fresh``.

    :param fresh: execute the file again, for new DAG and operator objects.
    """
    module = None if fresh else sys.modules.get(MODULE_NAME)
    if module is None:
        spec = importlib.util.spec_from_file_location(MODULE_NAME, EXAMPLE_FILE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[MODULE_NAME] = module
    return module


_module = load_assets_example()
sync_dag = _module.sync_dag
after_sync_dag = _module.after_sync_dag
