"""Orchestration overhead: how long `buildfan run --no-build` takes to get N builders ready, and to tear
them down, for N = 1, 5, 10; and what buildfan itself costs (peak RSS, CPU seconds).

    python -m bench.overhead [--repetitions 3] [--sizes 1,5,10]

ready(N) is the console time of the last "builder ready" line (buildfan prints it when `buildx create
--bootstrap` returns; 0.1 s resolution, measured from the start of the run after the matrix is loaded).
The report's max(ready_at) - started_at is kept too, but pod conditions have 1 s resolution. Builders
are created concurrently, so ready(10)/ready(1) should stay close to 1 (target <= 1.5). teardown(N) is
the "teardown finished" log event. Images are `FROM scratch` with the default placement (spread over
hostnames, max-skew 1) and the default scheduler.
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import common
from testbed.handle import write_matrix


def report_ready_s(report: dict[str, Any]) -> float:
    start = datetime.fromisoformat(report["started_at"].replace("Z", "+00:00"))
    ready = max(datetime.fromisoformat(i["ready_at"].replace("Z", "+00:00")) for i in report["images"])
    return round((ready - start).total_seconds(), 3)


def measure(d: Path, ns: str, n: int) -> dict[str, Any]:
    common.wait_quiet(ns)
    images = {f"b{k:02d}": "FROM scratch\n" for k in range(n)}
    run = common.run_buildfan(write_matrix(d, ns, images, {}), d / "report.json", "--no-build")
    common.check(run, f"N={n}")
    if len(run.ready_s) != n:
        raise RuntimeError(f"N={n}: {len(run.ready_s)} 'builder ready' lines, expected {n}")
    return {
        "ready_s": run.all_ready_s,
        "prepare_s": run.prepare_s,
        "create_s": round(run.all_ready_s - run.prepare_s, 1),
        "ready_s_report": report_ready_s(run.report),
        "teardown_s": run.teardown_s,
        "wall_s": run.wall_s,
        "rss_mb": run.rss_mb,
        "cpu_s": run.cpu_s,
        "buildx_cpu_s": run.children_cpu_s,
        "nodes": sorted({i["node"] for i in run.report["images"]}),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repetitions", type=int, default=3)
    p.add_argument("--sizes", default="1,5,10", help="builder counts; the first is the baseline")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    base, top = sizes[0], sizes[-1]
    print(f"overhead: N={sizes}, {args.repetitions} repetition(s), --no-build")
    reps: list[dict[int, dict[str, Any]]] = []
    with common.namespace("bench-overhead") as ns, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for i in range(args.repetitions):
            rep = {}
            for n in sizes:
                rep[n] = m = measure(Path(tmp) / f"{i}-{n}", ns, n)
                print(
                    f"  rep {i + 1} N={n:<3} ready={m['ready_s']:.1f}s (prepare {m['prepare_s']:.1f}s"
                    f" + create {m['create_s']:.1f}s; report {m['ready_s_report']:.1f}s)"
                    f" teardown={m['teardown_s']}s rss={m['rss_mb']}MB cpu={m['cpu_s']}s"
                    f" buildx_cpu={m['buildx_cpu_s']}s nodes={len(m['nodes'])}"
                )
            reps.append(rep)
    summary: dict[str, Any] = {
        str(n): {
            k: common.spread([r[n][k] for r in reps])
            for k in ("ready_s", "prepare_s", "create_s", "teardown_s", "rss_mb", "cpu_s")
        }
        for n in sizes
    }
    ratio = common.spread([r[top]["ready_s"] / r[base]["ready_s"] for r in reps])
    summary[f"ready(N={top})/ready(N={base})"] = ratio
    for n in sizes:
        s = summary[str(n)]
        print(
            f"overhead N={n}: ready={common.fmt(s['ready_s'])}s teardown={common.fmt(s['teardown_s'])}s"
            f" peak_rss={s['rss_mb']['max']:.0f}MB cpu={common.fmt(s['cpu_s'])}s"
        )
    teardown = summary[str(top)]["teardown_s"]["median"]
    print(f"overhead ready(N={top})/ready(N={base})={ratio['median']:.2f} teardown(N={top})={teardown:.2f}s")
    targets = {f"ready(N={top})/ready(N={base})<=1.5": ratio["median"] <= 1.5, f"teardown(N={top})<5s": teardown < 5}
    print("overhead targets: " + ", ".join(f"{t} {'met' if ok else 'MISSED'}" for t, ok in targets.items()))
    result = {
        "sizes": sizes,
        "repetitions": args.repetitions,
        "ready_metric": "console 'builder ready' seconds (0.1 s resolution)",
        "summary": summary,
        "targets": targets,
        "runs": [{str(n): m for n, m in r.items()} for r in reps],
    }
    common.save("overhead", result)
    return result


if __name__ == "__main__":
    main()
