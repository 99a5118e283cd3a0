#!/usr/bin/env bash
# The release and the supported floor, proven (run by .ci/run after `make test`, which tests the newest
# Airflow 3.x the test extra resolves to):
#   1. build the wheel and sdist (python -m build) and `twine check --strict` them, with the test venv;
#   2. a virtual environment of its own, .venv-floor (no system site-packages, no editable install), with
#      Apache Airflow 3.1.8, the floor pyproject.toml allows, and the versions constraints/airflow-3.1.8.txt
#      pins; rebuilt only when that file or pyproject.toml changes;
#   3. the freshly built wheel installed into it, then the release tests, the connection form (provider
#      info and the browser check) and the end-to-end subset run there against the installed wheel.
#
# PYTHONSAFEPATH keeps the checkout's own package off sys.path (`python -m` would put the working
# directory first), so what runs is the wheel. Usage: scripts/ci-floor.sh [pytest args].
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TEST_VENV=${VENV:-.venv}
FLOOR=${FLOOR_VENV:-.venv-floor}
CONSTRAINTS=constraints/airflow-3.1.8.txt

start=$(date +%s)
rm -rf dist
"$TEST_VENV/bin/python" -m build --outdir dist . >/dev/null
"$TEST_VENV/bin/python" -m twine check --strict dist/*
wheel=$(ls dist/*.whl)

stamp="$FLOOR/.installed-$(cat "$CONSTRAINTS" pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  rm -rf "$FLOOR"
  "$PYTHON" -m venv "$FLOOR"
  "$FLOOR/bin/python" -m pip install --quiet --upgrade pip
  # The wheel's own dependencies and the test extra, at the floor's pinned versions.
  "$FLOOR/bin/python" -m pip install --quiet -c "$CONSTRAINTS" "apache-airflow==3.1.8" "$wheel[test]"
  touch "$stamp"
fi
"$FLOOR/bin/python" -m pip install --quiet --force-reinstall --no-deps "$wheel"
"$FLOOR/bin/python" -m pip check
"$FLOOR/bin/python" -c 'import airflow; assert airflow.__version__ == "3.1.8", airflow.__version__'
echo "floor venv ready after $(($(date +%s) - start)) s"

PYTHONSAFEPATH=1 "$FLOOR/bin/python" -m pytest -p no:cacheprovider \
  tests/test_release.py tests/test_provider.py tests/test_connection_form.py tests/test_ui_connection_form.py \
  tests/test_sync_e2e.py --deselect tests/test_release.py::test_wheel_and_sdist_build_and_pass_twine_check "$@"
echo "floor check took $(($(date +%s) - start)) s"
