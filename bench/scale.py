"""Scale: 50 builders on 20 kwok nodes, placement and readiness only (`buildfan run --no-build`).

    python -m bench.scale [--nodes 20] [--builders 50]

The testbed has 3 nodes; this adds the missing ones through the API (the same shape as testbed.py's
node_manifest, type=kwok) for this benchmark only, and deletes them at the end. Every builder pod still
gets a real buildkitd from the testbed agent. Placement: spread over hostnames, max-skew 1,
DoNotSchedule, default scheduler, no cpu requests, so 50 pods on 20 nodes may put at most 3 on a node.

Figures: time until all builders are ready (last console "builder ready", 0.1 s resolution), the most
builders on one node, Kubernetes API requests per builder from the apiserver's audit log (lines written
during the run that concern the run's namespace, or are cluster-scoped, split by client: buildfan's own
`buildfan/<version>` client and buildx, whose client-go sends the default `Go-http-client/*`), and
buildfan's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubernetes import client

from bench import common
from testbed import testbed as tb
from testbed.handle import write_matrix

AUDIT_LOG = common.REPO / ".testbed" / "logs" / "audit.log"
PREFIX = "bench-scale-"


@contextmanager
def extra_nodes(total: int) -> Iterator[list[str]]:
    """Add kwok nodes until `total` are Ready and untainted; delete them afterwards, whatever happens."""
    api = common.api()
    core = client.CoreV1Api(api)
    have = [n for n in common.ready_nodes() if not n.startswith(PREFIX)]
    zones = max(1, len({n.metadata.labels.get("topology.kubernetes.io/zone") for n in core.list_node().items}))
    names = [f"{PREFIX}{i:02d}" for i in range(len(have), total)]
    try:
        tb.create_nodes(api, names, first_index=len(have), zones=zones, labels={"buildfan.dev/bench": "scale"})
        tb.wait_nodes_ready(api, names)
        yield names
    finally:
        for name in names:
            try:
                core.delete_node(name)
            except client.ApiException as e:
                if e.status != 404:
                    raise


def audit_requests(offset: int, ns: str) -> Counter[str]:
    """Requests logged since byte `offset` that concern namespace `ns` (or no namespace), counted by
    "client verb resource"."""
    counts: Counter[str] = Counter()
    with AUDIT_LOG.open("rb") as f:
        if f.seek(0, 2) < offset:  # rotated meanwhile: the run's lines are at the top of a new file
            offset = 0
        f.seek(offset)
        for raw in f:
            try:
                e = json.loads(raw)
            except ValueError:
                continue
            where = (e.get("objectRef") or {}).get("namespace")
            if where not in (ns, None):
                continue
            agent = e.get("userAgent", "")
            who = "buildfan" if agent.startswith("buildfan/") else None
            if agent.startswith(("Go-http-client/", "buildx/", "docker-buildx")):
                who = "buildx"
            if who:
                ref = e.get("objectRef") or {}
                what = "/".join(x for x in (ref.get("resource"), ref.get("subresource")) if x)
                counts[f"{who} {e['verb']} {what}"] += 1
    return counts


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=20)
    p.add_argument("--builders", type=int, default=50)
    args = p.parse_args(argv)
    placement = {"spread": "kubernetes.io/hostname", "max-skew": 1, "when-unsatisfiable": "DoNotSchedule"}
    images = {f"b{k:02d}": "FROM scratch\n" for k in range(args.builders)}
    print(f"scale: {args.builders} builders on {args.nodes} nodes, --no-build")
    with (
        extra_nodes(args.nodes) as added,
        common.namespace("bench-scale") as ns,
        tempfile.TemporaryDirectory(prefix="bench-") as tmp,
    ):
        nodes = common.ready_nodes()
        print(f"  {len(nodes)} Ready nodes ({len(added)} added for this benchmark)")
        matrix = write_matrix(Path(tmp), ns, images, {"placement": placement})
        offset = AUDIT_LOG.stat().st_size
        run = common.run_buildfan(matrix, Path(tmp) / "report.json", "--no-build")
        common.check(run, "scale")
        time.sleep(2)  # the last audit lines (watch ends, deletes) are written when the requests complete
        detail = audit_requests(offset, ns)
        common.wait_quiet(ns)  # the added nodes go only once their pods and daemons are gone
    per_node = Counter(i["node"] for i in run.report["images"])
    max_per_node = max(per_node.values())
    bound = -(-args.builders // len(nodes))  # ceil: what max-skew 1 allows
    requests: Counter[str] = Counter()
    for key, count in detail.items():
        requests[key.split()[0]] += count
    per_builder = {k: round(v / args.builders, 2) for k, v in requests.items()}
    total_per_builder = round(sum(requests.values()) / args.builders, 2)
    print(
        f"  ready={run.all_ready_s:.1f}s teardown={run.teardown_s}s wall={run.wall_s}s"
        f" rss={run.rss_mb}MB cpu={run.cpu_s}s buildx_cpu={run.children_cpu_s}s"
    )
    print(f"  builders per node: {dict(sorted(per_node.items()))}")
    print(f"  api requests: {dict(requests)} -> per builder {per_builder}")
    print("  by request: " + ", ".join(f"{k}={v}" for k, v in detail.most_common()))
    print(
        f"scale nodes={len(nodes)} builders={args.builders} max_per_node={max_per_node}"
        f" api_requests_per_builder={total_per_builder}"
    )
    print(
        f"scale ready={run.all_ready_s:.1f}s buildfan_requests_per_builder={per_builder.get('buildfan', 0)}"
        f" buildx_requests_per_builder={per_builder.get('buildx', 0)} peak_rss={run.rss_mb:.0f}MB"
    )
    ok = max_per_node <= bound
    print(f"scale targets: max_per_node<={bound} {'met' if ok else 'MISSED'}")
    result = {
        "nodes": len(nodes),
        "builders": args.builders,
        "ready_s": run.all_ready_s,
        "teardown_s": run.teardown_s,
        "wall_s": run.wall_s,
        "rss_mb": run.rss_mb,
        "cpu_s": run.cpu_s,
        "buildx_cpu_s": run.children_cpu_s,
        "max_per_node": max_per_node,
        "max_per_node_bound": bound,
        "per_node": dict(sorted(per_node.items())),
        "api_requests": dict(requests),
        "api_requests_detail": dict(detail.most_common()),
        "api_requests_per_builder": total_per_builder,
        "api_requests_per_builder_by_client": per_builder,
        "targets": {f"max_per_node<={bound}": ok},
    }
    common.save("scale", result)
    return result


if __name__ == "__main__":
    main()
