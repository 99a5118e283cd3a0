"""
Before/after figures for the hot-path optimisations: the per-record components of this checkout against
the same components at a git revision, measured in one process with the two interleaved round by round,
so load from other processes on the machine hits both alike.

Run: ``.venv/bin/python benchmarks/bench_ab.py --baseline REV [--now REV] [--records N] [--rounds R]``.
The packages are taken with ``git archive REV`` (the work tree is not touched) and imported under other
names; without ``--now`` the checkout's own package is measured. Prints CPU microseconds per record
(``time.process_time``, the best round of each). The optimisations of issue 6 are commit 85465cd:
``--baseline 85465cd~1 --now 85465cd``.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PACKAGE = "airflow_provider_segment_profiles"
sys.path.insert(0, str(HERE))

from bench_components import make_rows, postgres_rows  # noqa: E402 - the helper next to this script
from bench_data import COLUMNS, MAPPINGS  # noqa: E402


def load_package(revision: str, folder: Path, name: str) -> str:
    """
    Extract the package at ``revision`` (a git revision, or a folder holding a copy of the package) into
    ``folder`` as ``name``; return the name.
    """
    folder.mkdir(parents=True)
    if Path(revision, PACKAGE).is_dir():
        shutil.copytree(
            Path(revision, PACKAGE), folder / PACKAGE, ignore=shutil.ignore_patterns("__pycache__")
        )
    else:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", revision, PACKAGE],
            check=True,
            capture_output=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(folder, filter="data")
    (folder / PACKAGE).rename(folder / name)
    pattern = re.compile(rf"\b{PACKAGE}\b")
    for path in (folder / name).rglob("*.py"):
        path.write_text(pattern.sub(name, path.read_text()))
    sys.path.insert(0, str(folder))
    return name


def _first_module(package: str, *paths: str):
    """The first of ``paths`` that exists in ``package`` (module paths moved between versions)."""
    for path in paths:
        try:
            return importlib.import_module(f"{package}.{path}")
        except ModuleNotFoundError:
            continue
    raise ModuleNotFoundError(f"none of {paths} in {package}")


def modules(package: str) -> SimpleNamespace:
    return SimpleNamespace(
        actions=importlib.import_module(f"{package}.actions"),
        checksum=_first_module(package, "pipeline.detection.checksum", "sync.checksum"),
        snapshot=_first_module(package, "state.snapshot", "sync.snapshot"),
        dispatcher=importlib.import_module(f"{package}.delivery.dispatcher"),
        outcome=importlib.import_module(f"{package}.delivery.outcome"),
        hook=importlib.import_module(f"{package}.hooks.segment_profiles"),
    )


def _add_and_look_up(store):
    # Named classify before the pipeline refactor.
    return getattr(store, "add_and_look_up", None) or store.classify


class _Done:
    """A hook that delivers at once, for the dispatcher's own cost."""

    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome

    def send_encoded(self, items, *, rate_limiter=None):
        return self.outcome.DeliveryResult(delivered=list(range(len(items))), requests=1)


def cases(m: SimpleNamespace, rows: list[tuple], pg_rows: list[tuple], workdir: Path) -> dict[str, Any]:
    """name -> (setup or None, run) for one implementation."""
    (mapping,) = m.actions.compile_mappings(MAPPINGS, sync_mode="full", primary_key="customer_id")
    build = mapping.bind(list(COLUMNS)).build
    keys = [str(row[0]) for row in rows]
    checksummer = m.checksum.Checksummer("fingerprint", list(range(len(COLUMNS))))
    sums = [checksummer(row) for row in rows]
    chunks = [
        [(key, value, None) for key, value in zip(keys[i : i + 5000], sums[i : i + 5000], strict=True)]
        for i in range(0, len(keys), 5000)
    ]
    state: dict[str, Any] = {}
    tag = m.actions.__name__.split(".")[0]
    previous = workdir / f"{tag}-previous.sqlite"

    def build_rows(data: list[tuple]) -> Callable[[], None]:
        def run() -> None:
            for row, key in zip(data, keys, strict=True):
                build(row, primary_key=key, checksum="0123456789abcdef")

        return run

    def new_store(prev: Path | None) -> Callable[[], None]:
        def setup() -> None:
            if "store" in state:
                state.pop("store").close()
            folder = workdir / f"{tag}-{'second' if prev else 'first'}"
            folder.mkdir(exist_ok=True)
            state["store"] = m.snapshot.SnapshotStore(folder, prev)

        return setup

    def classify() -> None:
        store = state["store"]
        for chunk in chunks:
            _add_and_look_up(store)(chunk)

    store = m.snapshot.SnapshotStore(workdir, None)
    for chunk in chunks:
        _add_and_look_up(store)(chunk)
    store.write_diff_snapshot(previous)
    store.close()

    def dispatch() -> None:
        dispatcher = m.dispatcher.Dispatcher({"s": _Done(m.outcome)}, batch_size=500, max_in_flight=4)
        got = 0
        payload = b"x" * 300
        for number in range(len(rows)):
            got += len(dispatcher.add("s", payload, number))
        got += len(dispatcher.flush())
        dispatcher.close()
        assert got == len(rows)

    record_key, checksum_hex = m.checksum.record_key, m.checksum.checksum_hex
    hook = m.hook.SegmentProfilesHook("bench_ab_segment")
    payloads = [
        json.dumps(
            {
                "userId": str(row[0]),
                "messageId": f"rs-{row[0]:032x}",
                "traits": dict(zip(COLUMNS[1:9], row[1:9], strict=True)),
                "timestamp": row[9],
                "integrations": {"All": False},
                "type": "identify",
                "context": {"consent": {}},
            },
            separators=(",", ":"),
        ).encode()
        for row in rows[:500]
    ]
    requests_per_round = max(1, len(rows) // 500)

    def send() -> None:
        for _ in range(requests_per_round):
            assert len(hook.send_encoded(payloads).delivered) == len(payloads)

    return {
        "RecordBuilder.build, SQLite row": (None, build_rows(rows)),
        "RecordBuilder.build, PostgreSQL row": (None, build_rows(pg_rows)),
        "Checksummer(row)": (None, lambda: [checksummer(row) for row in rows]),
        "record_key(int)": (None, lambda: [record_key(row[0]) for row in rows]),
        "checksum_hex": (None, lambda: [checksum_hex(value) for value in sums]),
        "SnapshotStore.classify, first run": (new_store(None), classify),
        "SnapshotStore.classify, 0% changed": (new_store(previous), classify),
        "Dispatcher.add + completions": (None, dispatch),
        "SegmentProfilesHook.send_encoded": (None, send),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument(
        "--baseline",
        required=True,
        help="git revision to compare with (e.g. HEAD), or a folder holding a copy of the package",
    )
    parser.add_argument(
        "--now", help="git revision (or package folder) to measure instead of this checkout's package"
    )
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--only", help="only the components whose name contains this text")
    args = parser.parse_args()
    rows = make_rows(args.records)
    pg_rows = postgres_rows(rows)
    # The hook sends to the benchmark's emulator, in its own process so its CPU is not counted here.
    emulator = subprocess.Popen(
        [sys.executable, str(HERE / "bench_emulator.py"), "--write-key", "ab-key"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    url = json.loads(emulator.stdout.readline())["url"]
    os.environ["AIRFLOW_CONN_BENCH_AB_SEGMENT"] = json.dumps(
        {"conn_type": "segment_profiles", "password": "ab-key", "host": url}
    )
    try:
        run_rounds(args, rows, pg_rows)
    finally:
        emulator.stdin.close()
        emulator.wait(timeout=10)


def run_rounds(args: argparse.Namespace, rows: list[tuple], pg_rows: list[tuple]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        baseline = modules(load_package(args.baseline, workdir / "baseline", "baseline_sp"))
        current = modules(load_package(args.now, workdir / "now", "now_sp") if args.now else PACKAGE)
        both = {
            "baseline": cases(baseline, rows, pg_rows, workdir),
            "now": cases(current, rows, pg_rows, workdir),
        }
        best: dict[str, dict[str, float]] = {
            name: {} for name in both["now"] if not args.only or args.only.lower() in name.lower()
        }
        for _ in range(args.rounds):
            for name in best:
                for which in ("baseline", "now"):
                    setup, run = both[which][name]
                    if setup is not None:
                        setup()
                    started = time.process_time()
                    run()
                    elapsed = time.process_time() - started
                    best[name][which] = min(best[name].get(which, elapsed), elapsed)
    print(f"{args.records:,} records, CPU us per record, best of {args.rounds} interleaved rounds")
    print(f"  baseline: {args.baseline}; now: {args.now or 'this checkout'}")
    print(f"  {'component':<38} {'baseline':>12} {'now':>8} {'speed-up':>9}")
    for name, figures in best.items():
        before = figures["baseline"] / args.records * 1e6
        after = figures["now"] / args.records * 1e6
        print(f"  {name:<38} {before:12.2f} {after:8.2f} {before / after:8.2f}x")


if __name__ == "__main__":
    main()
