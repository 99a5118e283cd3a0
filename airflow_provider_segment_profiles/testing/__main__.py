"""
Serve a :class:`~airflow_provider_segment_profiles.testing.SegmentEmulator` from the command line.

Usage::

    python -m airflow_provider_segment_profiles.testing --port 8765 --write-key KEY [--strict] [--latency 0.05]
        [--messages-file received.ndjson] [--space-id SPACE_ID --access-token TOKEN]

It prints one line with the base URL once it listens and one with where to see what it accepts
(``GET /messages``, and the ``--messages-file`` it appends to as NDJSON), with ``--space-id`` one with the
Profile API's traits route, serves until SIGINT or SIGTERM, then prints one line with the counts and exits
0. Write keys and access tokens are never printed.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from airflow_provider_segment_profiles.testing.emulator import SegmentEmulator
from airflow_provider_segment_profiles.testing.inspection import MESSAGES_PATH
from airflow_provider_segment_profiles.testing.profile_api import ProfileSpace

_PROG = "python -m airflow_provider_segment_profiles.testing"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Serve a local emulator of Segment's HTTP Tracking API on 127.0.0.1.",
        allow_abbrev=False,
    )
    parser.add_argument("--host", default="127.0.0.1", help="127.0.0.1 or localhost (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one (default 0)")
    parser.add_argument(
        "--write-key",
        dest="write_keys",
        action="append",
        required=True,
        metavar="KEY",
        help="write key to accept; repeat for several Profile Spaces",
    )
    parser.add_argument(
        "--strict", action="store_true", help="answer 401 to unknown write keys instead of 200 + drop"
    )
    parser.add_argument(
        "--latency", type=float, default=0.0, metavar="SECONDS", help="seconds added to every request"
    )
    parser.add_argument(
        "--messages-file",
        metavar="PATH",
        help="append every accepted message to this file as NDJSON, as it arrives",
    )
    parser.add_argument(
        "--space-id",
        metavar="SPACE_ID",
        help="serve the Profile API for a Profile Space with this id, built from every write key's messages",
    )
    parser.add_argument("--access-token", metavar="TOKEN", help="the Space's access token (with --space-id)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the emulator until SIGINT or SIGTERM.

    :param argv: arguments without the program name; ``None`` reads ``sys.argv``.
    :return: the exit status: 0 after a clean stop, 1 if the port cannot be bound or the messages file
        cannot be opened.
    """
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # argparse would echo the values, which could be a mistyped write key.
        options = [arg for arg in unknown if arg.startswith("-")]
        parser.error(f"unrecognized arguments: {' '.join(options) or f'{len(unknown)} value(s)'}")
    if bool(args.space_id) != bool(args.access_token):
        parser.error("--space-id and --access-token go together")
    try:
        spaces = (
            [ProfileSpace(args.space_id, tuple(args.write_keys), (args.access_token,))]
            if args.space_id
            else []
        )
        emulator = SegmentEmulator(
            write_keys=args.write_keys,
            host=args.host,
            port=args.port,
            strict=args.strict,
            latency=args.latency,
            messages_file=args.messages_file,
            profile_spaces=spaces,
        )
    except ValueError as exc:
        parser.error(str(exc))

    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        emulator.start()
    except OSError as exc:
        print(f"Segment emulator could not start on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(f"Segment emulator listening on {emulator.url} (Ctrl+C to stop)", flush=True)
    listing = f"http://127.0.0.1:{emulator.port}{MESSAGES_PATH}"
    also = f"; appending them to {args.messages_file} as NDJSON" if args.messages_file else ""
    print(f"Accepted messages: GET {listing} (filters: ?userId=...&type=...){also}", flush=True)
    if args.space_id:
        route = f"{emulator.url}/spaces/{args.space_id}/collections/users/profiles/<id_type:value>/traits"
        print(f"Profile API: GET {route}", flush=True)
    try:
        while not stop.wait(0.2):
            pass
    finally:
        emulator.stop()
    print(
        f"Segment emulator stopped: {emulator.message_count} messages accepted, "
        f"{len(emulator.dropped)} dropped, {len(emulator.requests)} requests",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
