"""The package's layers point one way: ``common`` below ``actions`` below ``pipeline`` and the rest."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "airflow_provider_segment_profiles"
TOP = "airflow_provider_segment_profiles"
#: What each lower layer may import from the package, besides itself.
ALLOWED = {
    "common": set(),
    "actions": {"common", "exceptions"},
}


def _package_imports(path: Path) -> set[str]:
    """The first-level subpackages of this package that ``path`` imports (at any depth of the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == TOP and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_lower_layers_import_nothing_above_them(layer):
    offenders = {}
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        above = _package_imports(path) - ALLOWED[layer] - {layer}
        if above:
            offenders[str(path.relative_to(PACKAGE))] = sorted(above)
    assert offenders == {}, f"{layer}/ imports layers above it: {offenders}"
