"""The long fuzz campaign: ``python -m tests.fuzz --examples 100000`` (from the repository root).

Runs the properties of tests/fuzz/targets.py (the ones CI runs a few dozen examples of)
for ``--examples`` examples per target, against one relay per target: by default a relay
*process*, so its RSS is its own and its log is what an operator would see. Progress
goes to stderr; the figures go to stdout as one JSON object (and to ``--out``): examples
run and failures per target and property, the first examples behind each failure as
sent, relay RSS at start, after warm-up and at the end. Exit status 1 when any property
was violated, 0 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.fuzz.campaign import TargetResult, run_target
from tests.fuzz.profiles import CAMPAIGN
from tests.fuzz.targets import PROPERTIES, TARGETS


def _targets(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown target(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(TARGETS)}"
        )
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n")[0])
    p.add_argument("--examples", type=int, default=10_000, help="examples per target (10000)")
    p.add_argument("--targets", type=_targets, default=list(TARGETS), help="comma-separated subset")
    p.add_argument(
        "--relay",
        choices=("process", "in-process"),
        default="process",
        help="relay as a child process (own RSS and log, default) or in this process (faster)",
    )
    p.add_argument("--seed", type=int, help="hypothesis seed (default: random)")
    p.add_argument("--out", type=Path, help="also write the JSON to this file")
    args = p.parse_args(argv)
    if args.examples < 1:
        p.error("--examples must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    report: dict[str, Any] = {
        "campaign": "hybridrelay fuzz (issue 11)",
        "command": " ".join(["python -m tests.fuzz", *(argv or sys.argv[1:])]),
        "started_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "examples_per_target": args.examples,
        "relay": args.relay,
        "seed": args.seed,
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "properties": PROPERTIES,
        "targets": [],
    }
    results: list[TargetResult] = []
    for name in args.targets:
        sys.stderr.write(f"== {name}: {TARGETS[name].description}\n")
        result = run_target(
            name, examples=args.examples, relay=args.relay, base=CAMPAIGN, seed=args.seed
        )
        results.append(result)
        report["targets"].append(result.to_json())
        rss = result.to_json()["relay_rss_kib"]
        sys.stderr.write(
            f"   {result.examples} examples in {result.duration_s:.0f} s, "
            f"{sum(result.violations.values())} failures {result.violations or ''}; "
            f"RSS {rss['start']} -> {rss['after_warmup']} -> {rss['end']} KiB\n"
        )
    report["duration_s"] = round(time.monotonic() - started, 1)
    report["totals"] = {
        "examples": sum(r.examples for r in results),
        "failures": sum(sum(r.violations.values()) for r in results),
    }
    text = json.dumps(report, indent=2)
    sys.stdout.write(text + "\n")
    if args.out is not None:
        args.out.write_text(text + "\n", "utf-8")
    return 1 if report["totals"]["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
