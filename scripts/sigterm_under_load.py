"""SIGTERM under load, repeated: the drain promise of docs/reliability.md ("Shutdown").

Each round starts `bertserve serve` on a tiny checkpoint with 2 replicas (the real torch backend by
default), loads it with closed-loop clients (16 unary clients sending short and long FillMask
texts without retries, and 2 bidirectional streams), sends SIGTERM and records how every call
ended (tests/support/drain_load.py). The script exits 1 when any round broke a promise: a call
started before the signal that did not end OK, one started after it that did not end
UNAVAILABLE, any CANCELLED or other status, a stream answer that was an error, or an exit code
other than 0.

    .venv/bin/python scripts/sigterm_under_load.py --rounds 20
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.drain_load import sigterm_round
from tests.support.probes import server_args
from tests.support.server import start_server


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--unary-clients", type=int, default=16)
    parser.add_argument("--stream-clients", type=int, default=2)
    parser.add_argument("--load-s", type=float, default=1.5, help="seconds of load before each SIGTERM")
    parser.add_argument("--backend", choices=("torch", "fake"), default="torch")
    parser.add_argument("--grace-period-s", type=float, default=10.0)
    args = parser.parse_args()

    from bertserve.workers.tiny_bert import build_tiny_bert

    checkpoint = build_tiny_bert(Path(tempfile.mkdtemp(prefix="sigterm-load-")) / "tiny", seed=0)
    flags = server_args(
        checkpoint, "--grace-period-s", str(args.grace_period_s), "--log-format", "json", replicas=2
    )
    if args.backend == "fake":
        flags += ["--backend", "fake", "--fake-delay-ms", "20"]
    totals: collections.Counter[str] = collections.Counter()
    broken = 0
    for number in range(1, args.rounds + 1):
        server = start_server(flags)
        result = sigterm_round(
            server, unary_clients=args.unary_clients, stream_clients=args.stream_clients, load_s=args.load_s
        )
        unary = {f"{when}:{code}": n for (when, code), n in sorted(result.unary.items())}
        totals.update(unary)
        totals.update({f"stream:{status}": n for status, n in result.stream_statuses.items()})
        totals["stream_answers_ok"] += result.stream_answers_ok
        totals[f"exit:{result.exit_code}"] += 1
        problems = result.problems()
        broken += bool(problems)
        line = {"round": number, "unary": unary, "streams": dict(result.stream_statuses)}
        line |= {"exit_code": result.exit_code, "exit_after_s": round(result.exit_after_s, 2)}
        print(json.dumps(line | {"problems": problems}), flush=True)
    summary = {"rounds": args.rounds, "rounds_with_problems": broken, "totals": dict(sorted(totals.items()))}
    print(json.dumps(summary))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
