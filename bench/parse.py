"""Progress parsing: throughput of buildfan's rawjson parser (ProgressTracker.feed) against json.loads.

    python -m bench.parse [--lines 100000] [--rounds 5]

The stream is the real captures in tests/fixtures/progress/ (BuildKit rawjson lines, and buildx's stderr
with its plain-text lines), concatenated and repeated to --lines lines, fed to one tracker as one long
stream. vs_json_loads = feed time / the time json.loads takes on the JSON lines of the same stream
(so 1.0 would mean the parser costs nothing beyond decoding). Best of --rounds, on one core. headroom =
parser lines/s over the line rate of a real build (lines of a capture over the time span its timestamps
cover): how many such builds one core could follow at once.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from datetime import datetime
from typing import Any

from bench import common
from buildfan.progress import ProgressTracker

FIXTURES = common.REPO / "tests" / "fixtures" / "progress"
STAMP = re.compile(r'"(?:timestamp|started|completed)":"([^"]+)"')


def captures() -> dict[str, list[str]]:
    return {f.name: f.read_text().splitlines(keepends=True) for f in sorted(FIXTURES.iterdir()) if f.is_file()}


def real_rate(lines: list[str]) -> float | None:
    """Lines per second of a real build: lines / the time its timestamps span."""
    stamps = [datetime.fromisoformat(s) for ln in lines for s in STAMP.findall(ln)]
    span = (max(stamps) - min(stamps)).total_seconds() if stamps else 0
    return len(lines) / span if span > 0 else None


def best_of(rounds: int, fn: Any) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    caps = captures()
    one = [ln for lines in caps.values() for ln in lines]
    stream = (one * (args.lines // len(one) + 1))[: args.lines]
    json_lines = [ln for ln in stream if ln.lstrip().startswith("{")]
    mb = sum(len(ln.encode()) for ln in stream) / 1e6

    def feed() -> None:
        tracker = ProgressTracker()
        for ln in stream:
            tracker.feed(ln)
        tracker.layers()

    def loads() -> None:
        for ln in json_lines:
            json.loads(ln)

    feed_s, loads_s = best_of(args.rounds, feed), best_of(args.rounds, loads)
    lines_per_s, ratio = len(stream) / feed_s, feed_s / loads_s
    rates = {name: r for name, lines in caps.items() if (r := real_rate(lines))}
    peak_rate = max(rates.values())
    headroom = lines_per_s / peak_rate
    print(
        f"parse: {len(stream)} lines ({mb:.1f} MB, {len(json_lines)} JSON) from {len(caps)} captures,"
        f" best of {args.rounds}: feed {feed_s:.3f}s, json.loads {loads_s:.3f}s"
    )
    print(f"  real builds' line rates (lines/s): { {k: round(v, 1) for k, v in rates.items()} }")
    print(f"parse lines_per_s={lines_per_s:.0f} vs_json_loads={ratio:.2f}")
    loads_rate = len(json_lines) / loads_s
    print(f"parse mb_per_s={mb / feed_s:.1f} json_loads_lines_per_s={loads_rate:.0f} headroom={headroom:.0f}x")
    result = {
        "lines": len(stream),
        "json_lines": len(json_lines),
        "mb": round(mb, 2),
        "rounds": args.rounds,
        "feed_s": round(feed_s, 4),
        "json_loads_s": round(loads_s, 4),
        "lines_per_s": round(lines_per_s),
        "mb_per_s": round(mb / feed_s, 2),
        "vs_json_loads": round(ratio, 2),
        "real_build_lines_per_s": {k: round(v, 2) for k, v in rates.items()},
        "headroom": round(headroom),
    }
    common.save("parse", result)
    return result


if __name__ == "__main__":
    main()
