"""Every benchmark, in order: contention, overhead, scale, parse (`make bench`).

    python -m bench.all [--repetitions 3] [--only contention,parse]

Each writes bench/results/<name>.json. A failing benchmark does not stop the others; the exit code is
then 1. The headline lines are printed again at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

from bench import contention, overhead, parse, scale

ORDER = ("contention", "overhead", "scale", "parse")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repetitions", type=int, default=3, help="for contention and overhead")
    p.add_argument("--only", default=",".join(ORDER))
    args = p.parse_args()
    reps = ["--repetitions", str(args.repetitions)]
    runs = {"contention": lambda: contention.main(reps), "overhead": lambda: overhead.main(reps)}
    runs |= {"scale": lambda: scale.main([]), "parse": lambda: parse.main([])}
    results, failed = {}, []
    for name in ORDER:
        if name not in args.only.split(","):
            continue
        print(f"\n=== {name}", flush=True)
        t0 = time.monotonic()
        try:
            results[name] = runs[name]()
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"=== {name} took {time.monotonic() - t0:.0f}s", flush=True)
    print("\n=== summary")
    if r := results.get("contention"):
        s = r["summary"]
        print(
            f"contention spread/alone={s['spread/alone']['extract']['median']:.2f}"
            f" packed/alone={s['packed/alone']['extract']['median']:.2f}"
        )
    if r := results.get("overhead"):
        top, base = r["sizes"][-1], r["sizes"][0]
        ratio = r["summary"][f"ready(N={top})/ready(N={base})"]["median"]
        teardown = r["summary"][str(top)]["teardown_s"]["median"]
        print(f"overhead ready(N={top})/ready(N={base})={ratio:.2f} teardown(N={top})={teardown:.2f}s")
    if r := results.get("scale"):
        print(
            f"scale nodes={r['nodes']} builders={r['builders']} max_per_node={r['max_per_node']}"
            f" api_requests_per_builder={r['api_requests_per_builder']}"
        )
    if r := results.get("parse"):
        print(f"parse lines_per_s={r['lines_per_s']} vs_json_loads={r['vs_json_loads']:.2f}")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
