"""
The Segment emulator as a separate benchmark process, so it does not compete for the GIL with the sync.

It is :class:`~airflow_provider_segment_profiles.testing.SegmentEmulator` with every check it makes on a
request (auth, JSON parse, per-event size, drop reasons), except that accepted messages are counted instead
of kept: a million recorded message dicts would cost gigabytes in this process and measure nothing. Per
request it keeps ``(arrival time, events, accepted)`` for the rate-limit measurement.

Control is line-based on stdin; each command answers one JSON line on stdout::

    stats            {"messages": ..., "requests": ..., "dropped": ..., "events": ..., "statuses": {...}}
    arrivals         {"arrivals": [[received_at, events], ...]} of successful requests
    reset            {"ok": true}, forgets the counts and arrivals
    latency SECONDS  {"ok": true}, the delay added to every request
    quit             {"ok": true}, then the process exits

Run by ``benchmarks/run.py``; by hand: ``python benchmarks/bench_emulator.py --write-key K``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections import Counter
from typing import Any

from airflow_provider_segment_profiles.testing.emulator import SegmentEmulator


class CountingEmulator(SegmentEmulator):
    """A :class:`SegmentEmulator` that counts what it accepts instead of recording it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counted_messages = 0
        self.counted_dropped = 0
        self.counted_requests = 0
        self.counted_events = 0
        self.statuses: Counter[int | None] = Counter()
        self.arrivals: list[tuple[float, int]] = []

    def _record(self, request: Any, outcome: Any) -> None:  # called from handler threads
        with self._lock:
            self.counted_requests += 1
            self.counted_events += request.events
            self.statuses[request.status] += 1
            if outcome.accepted:
                self.counted_messages += len(outcome.accepted)
            if outcome.dropped:
                self.counted_dropped += len(outcome.dropped)
            if request.status == 200:
                self.arrivals.append((request.received_at, request.events))

    def reset_counts(self) -> None:
        with self._lock:
            self.counted_messages = self.counted_dropped = self.counted_requests = self.counted_events = 0
            self.statuses.clear()
            self.arrivals = []

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "messages": self.counted_messages,
                "dropped": self.counted_dropped,
                "requests": self.counted_requests,
                "events": self.counted_events,
                "statuses": {str(k): v for k, v in self.statuses.items()},
            }


def main() -> int:
    parser = argparse.ArgumentParser(description="Counting Segment emulator for benchmarks")
    parser.add_argument("--write-key", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    emulator = CountingEmulator(write_key=args.write_key, port=args.port, latency=args.latency)
    emulator.start()
    print(json.dumps({"url": emulator.url}), flush=True)
    lock = threading.Lock()

    def answer(payload: dict[str, Any]) -> None:
        with lock:
            sys.stdout.write(json.dumps(payload) + "\n")
            sys.stdout.flush()

    try:
        for line in sys.stdin:
            command, _, argument = line.strip().partition(" ")
            if command == "stats":
                answer(emulator.stats())
            elif command == "arrivals":
                with emulator._lock:
                    arrivals = list(emulator.arrivals)
                answer({"arrivals": arrivals})
            elif command == "reset":
                emulator.reset_counts()
                answer({"ok": True})
            elif command == "latency":
                emulator.latency = float(argument)
                answer({"ok": True})
            elif command == "quit":
                answer({"ok": True})
                break
            elif command:
                answer({"error": f"unknown command {command!r}"})
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
