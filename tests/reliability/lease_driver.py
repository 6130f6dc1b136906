"""A driver that only takes a run root's lease, for tests of two drivers on one run root (test_lease_race.py).

    python -m tests.reliability.lease_driver ROOT [--wait-s S] [--poll-s S] [--break-lease]

It reaches gs:// through ``STORAGE_EMULATOR_HOST`` of its environment. It prints one JSON line per event on
stdout: ``{"event": "held", "pid": ..., "token": ...}`` once it holds the lease, then holds it until a line
(or the end) arrives on stdin and prints ``{"event": "released"}``; or ``{"event": "refused", "holder": ...,
"message": ...}`` when another driver holds it (:class:`~inpars_ray.errors.LeaseHeldError`). Any other error
ends it with a traceback on stderr and exit status 1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from inpars_ray.errors import LeaseHeldError
from inpars_ray.io import lease


def _say(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "pid": os.getpid(), **fields}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lease_driver")
    parser.add_argument("root")
    parser.add_argument("--wait-s", type=float, default=0.0)
    parser.add_argument("--poll-s", type=float, default=lease.POLL_S)
    parser.add_argument("--break-lease", action="store_true")
    args = parser.parse_args(argv)
    lease.POLL_S = args.poll_s
    try:
        with lease.run_lease(args.root, purpose="lease_driver", wait_s=args.wait_s,
                             break_lease=args.break_lease) as held:
            _say("held", token=held["token"])
            sys.stdin.readline()  # the test says when to let go
    except LeaseHeldError as exc:
        _say("refused", holder=exc.holder, message=str(exc))
        return 0
    _say("released")
    return 0


if __name__ == "__main__":
    sys.exit(main())
