"""Contention: the same N builds (N = nodes, distinct bases, cold caches) run alone, packed on one node,
and spread over N nodes, on the testbed's per-node CPU quota and disk throttle.

    python -m bench.contention [--repetitions 3]

Per repetition, in this order: each image alone (one `buildfan run` per image, one after the other); all
at once with placement `none` under the `binpack` scheduler (packed on one node); all at once with
placement `spread` (one per node). Every builder is a fresh buildkitd with empty state, so every build
pulls and extracts its two base layers. Figures: extraction seconds (sum of the layers' extract_s) and
whole-build seconds (report duration_s: build start to end, builder creation excluded), as ratios
packed/alone and spread/alone of the sums over the N images, median (min, max) over repetitions.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from bench import common
from testbed.handle import write_matrix

PACKED = {"driver-opts": {"schedulername": "binpack", "requests.cpu": "500m"}, "placement": {"spread": "none"}}
SPREAD = {
    "driver-opts": {"schedulername": "binpack", "requests.cpu": "500m"},
    "placement": {"spread": "kubernetes.io/hostname", "max-skew": 1},
}
BASES = 3  # the testbed registry serves base:1..3


def dockerfiles(n: int) -> dict[str, str]:
    reg = common.ENV["BUILDFAN_TESTBED_REGISTRY"]
    return {f"img{k}": f"FROM {reg}/base:{k}\nRUN echo {k} > /built\n" for k in range(1, n + 1)}


def one_run(d: Path, ns: str, images: dict[str, str], builder: dict[str, Any], what: str) -> dict[str, Any]:
    common.wait_quiet(ns)
    foreign = common.foreign_builders(ns)
    run = common.run_buildfan(write_matrix(d, ns, images, builder), d / "report.json")
    common.check(run, what)
    out: dict[str, Any] = {"foreign_builders": foreign, "host": run.host, "images": {}}
    for img in run.report["images"]:
        layers = img["extraction"]["layers"]
        if img["base_cached"] or len(layers) < 2:
            raise RuntimeError(f"{what}: {img['name']} did not pull its base cold: {layers}")
        out["images"][img["name"]] = {
            "node": img["node"],
            "build_s": img["duration_s"],
            "extract_s": [layer["extract_s"] for layer in layers],
        }
    if foreign:
        print(f"  warning: {foreign} builder pod(s) of other runs were on the cluster during {what}")
    return out


def repetition(root: Path, ns: str, n: int) -> dict[str, Any]:
    images = dockerfiles(n)
    alone: dict[str, Any] = {"foreign_builders": 0, "images": {}}
    for name, dockerfile in images.items():
        r = one_run(root / f"alone-{name}", ns, {name: dockerfile}, SPREAD, f"{name} alone")
        alone["images"].update(r["images"])
        alone["foreign_builders"] = max(alone["foreign_builders"], r["foreign_builders"])
        alone.setdefault("host", {})[name] = r["host"]
    rep: dict[str, Any] = {
        "alone": alone,
        "packed": one_run(root / "packed", ns, images, PACKED, "packed"),
        "spread": one_run(root / "spread", ns, images, SPREAD, "spread"),
    }
    packed_nodes = {i["node"] for i in rep["packed"]["images"].values()}
    spread_nodes = {i["node"] for i in rep["spread"]["images"].values()}
    rep["placement_ok"] = len(packed_nodes) == 1 and len(spread_nodes) == n
    for mode in ("alone", "packed", "spread"):
        imgs = rep[mode]["images"]
        rep[mode]["extract_total_s"] = round(sum(sum(i["extract_s"]) for i in imgs.values()), 3)
        rep[mode]["build_total_s"] = round(sum(i["build_s"] for i in imgs.values()), 3)
        print(
            f"  {mode:<6}  extract_s " + "  ".join(f"{k}@{i['node']}={i['extract_s']}" for k, i in imgs.items()),
            "  build_s " + " ".join(f"{i['build_s']:.1f}" for i in imgs.values()),
        )
        hosts = rep[mode]["host"].values() if mode == "alone" else [rep[mode]["host"]]
        print("          host " + "; ".join(" ".join(f"{k}={v}" for k, v in h.items()) for h in hosts))
    for mode in ("packed", "spread"):
        rep[f"{mode}/alone"] = {
            key: round(rep[mode][f"{key}_total_s"] / rep["alone"][f"{key}_total_s"], 3) for key in ("extract", "build")
        }
    if not rep["placement_ok"]:
        print(f"  warning: placement not as intended: packed on {packed_nodes}, spread on {spread_nodes}")
    return rep


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repetitions", type=int, default=3)
    args = p.parse_args(argv)
    nodes = common.ready_nodes()
    n = min(len(nodes), BASES)
    print(f"contention: N={n} builds on nodes {nodes}, {args.repetitions} repetition(s)")
    reps = []
    with common.namespace("bench-contention") as ns, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for i in range(args.repetitions):
            print(f" repetition {i + 1}/{args.repetitions}")
            reps.append(repetition(Path(tmp) / str(i), ns, n))
            print(f"  packed/alone={reps[-1]['packed/alone']} spread/alone={reps[-1]['spread/alone']}")
    valid = [r for r in reps if r["placement_ok"]] or reps
    summary = {
        f"{mode}/alone": {key: common.spread([r[f"{mode}/alone"][key] for r in valid]) for key in ("extract", "build")}
        for mode in ("packed", "spread")
    }
    for key in ("extract", "build"):
        print(
            f"contention {key}: packed/alone={common.fmt(summary['packed/alone'][key])}"
            f"  spread/alone={common.fmt(summary['spread/alone'][key])}"
        )
    sp, pk = summary["spread/alone"]["extract"]["median"], summary["packed/alone"]["extract"]["median"]
    print(f"contention spread/alone={sp:.2f} packed/alone={pk:.2f}")
    targets = {"spread/alone<=1.15": sp <= 1.15, "packed/alone>=2": pk >= 2}
    print("contention targets: " + ", ".join(f"{t} {'met' if ok else 'MISSED'}" for t, ok in targets.items()))
    result = {
        "n": n,
        "nodes": nodes,
        "repetitions": args.repetitions,
        "valid_repetitions": len(valid),
        "headline_metric": "extract",
        "summary": summary,
        "targets": targets,
        "runs": reps,
    }
    common.save("contention", result)
    return result


if __name__ == "__main__":
    main()
