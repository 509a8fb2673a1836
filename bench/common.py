"""What every benchmark shares: the testbed's environment, a throw-away namespace, a matrix on disk,
one `buildfan run` as a measured subprocess, and writing bench/results/<name>.json.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from testbed.handle import Testbed, wait_until

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
ENV_FILE = REPO / ".testbed" / "env"
BUILDFAN = [sys.executable, "-m", "buildfan", "--log-format", "json"]
CONSOLE_LINE = re.compile(r"\s*(\d+\.\d)s\s+(\S+)\s+(creating builder|builder ready)$")


TESTBED = Testbed.from_env_file(ENV_FILE)
ENV = TESTBED.env


def api() -> client.ApiClient:
    return TESTBED.api()


def namespace(prefix: str = "bench") -> AbstractContextManager[str]:
    return TESTBED.namespace(prefix)


def wait_quiet(ns: str) -> None:
    """The namespace's previous pods, daemons and their on-disk state are gone (removal writes to node disks)."""
    core = client.CoreV1Api(api())
    nodes = REPO / ".testbed" / "nodes"
    wait_until(lambda: not core.list_namespaced_pod(ns).items, 120, "the previous run's pods to go")
    wait_until(lambda: not list(nodes.glob(f"*/pods/{ns}_*")), 120, "the previous run's daemon state")


def ready_nodes() -> list[str]:
    nodes = client.CoreV1Api(api()).list_node(label_selector="type=kwok").items
    return sorted(
        n.metadata.name for n in nodes if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)
    )


def foreign_builders(ns: str) -> int:
    """Builder pods of other people's runs on the cluster right now (they would skew contention figures)."""
    pods = client.CoreV1Api(api()).list_pod_for_all_namespaces(label_selector="app.kubernetes.io/managed-by=buildfan")
    return sum(1 for p in pods.items if p.metadata.namespace != ns)


def host_sample() -> tuple[list[int], int]:
    """(/proc/stat cpu jiffies, sectors written to the physical disks): the host-wide load."""
    cpu = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    sectors = 0
    for line in Path("/proc/diskstats").read_text().splitlines():
        f = line.split()
        if not f[2].startswith(("loop", "ram", "dm-")) and not f[2][-1].isdigit():  # whole disks only
            sectors += int(f[9])
    return cpu, sectors


def host_load(before: tuple[list[int], int], after: tuple[list[int], int], seconds: float) -> dict[str, float]:
    """Host CPU busy and iowait fractions and physical-disk write MB/s between two samples."""
    d = [b - a for a, b in zip(before[0], after[0], strict=True)]
    total = sum(d) or 1
    return {
        "cpu_busy": round(1 - (d[3] + d[4]) / total, 2),
        "iowait": round(d[4] / total, 2),
        "disk_write_mb_s": round((after[1] - before[1]) * 512 / 1e6 / seconds, 1),
    }


@dataclass
class Run:
    """One finished `buildfan run`: its report, when each builder got ready, and what buildfan itself cost."""

    returncode: int
    report: dict[str, Any]
    creating_s: dict[str, float]  # image -> console seconds of "creating builder" (0.1 s resolution)
    ready_s: dict[str, float]  # image -> console seconds of "builder ready"
    teardown_s: float | None  # the "teardown finished" log event
    wall_s: float  # process start to exit, measured here
    rss_mb: float  # buildfan's own peak RSS (VmHWM)
    cpu_s: float  # buildfan's own user+system CPU
    children_cpu_s: float  # CPU of the buildx processes it ran
    host: dict[str, float]  # host-wide CPU busy/iowait and disk writes during the run (everyone's)
    stderr_tail: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def all_ready_s(self) -> float:
        return max(self.ready_s.values())

    @property
    def prepare_s(self) -> float:
        """Run start to the first builder creation: validation and planning, before any builder exists."""
        return min(self.creating_s.values())


def run_buildfan(matrix: Path, report: Path, *extra: str, timeout: float = 900) -> Run:
    """`buildfan --log-format json run MATRIX --report R [extra]`, polling /proc for its own RSS and CPU."""
    t0, host0 = time.monotonic(), host_sample()
    proc = subprocess.Popen(
        [*BUILDFAN, "run", str(matrix), "--report", str(report), *extra],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    out: list[str] = []
    err: list[str] = []
    readers = [
        threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True),  # type: ignore[arg-type]
        threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True),  # type: ignore[arg-type]
    ]
    for t in readers:
        t.start()
    hwm_kb, cpu_s, ticks = 0, 0.0, os.sysconf("SC_CLK_TCK")
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # rusage of buildfan and the buildx it reaped
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            break
        try:
            text = Path(f"/proc/{proc.pid}/status").read_text()
            stat = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            hwm_kb = max(hwm_kb, int(re.search(r"VmHWM:\s+(\d+)", text)[1]))  # type: ignore[index]
            cpu_s = (int(stat[11]) + int(stat[12])) / ticks  # utime + stime of buildfan itself
        except (OSError, TypeError):
            pass
        if time.monotonic() - t0 > timeout:
            proc.kill()
        time.sleep(0.05)
    wall = time.monotonic() - t0
    host = host_load(host0, host_sample(), wall)
    for t in readers:
        t.join(10)
    events = [json.loads(ln) for ln in err if ln.startswith("{")]
    console = [m for ln in out if (m := CONSOLE_LINE.match(ln.rstrip("\n")))]
    teardown = next((e.get("seconds") for e in events if e.get("event") == "teardown finished"), None)
    rep = json.loads(report.read_text()) if report.exists() else {}
    return Run(
        returncode=proc.returncode,
        report=rep,
        creating_s={m[2]: float(m[1]) for m in console if m[3] == "creating builder"},
        ready_s={m[2]: float(m[1]) for m in console if m[3] == "builder ready"},
        teardown_s=teardown,
        wall_s=round(wall, 2),
        rss_mb=round(hwm_kb / 1024, 1),
        cpu_s=round(cpu_s, 2),
        children_cpu_s=round(max(0.0, usage.ru_utime + usage.ru_stime - cpu_s), 2),
        host=host,
        stderr_tail="".join(err)[-3000:],
        events=events,
    )


def check(run: Run, what: str) -> None:
    if run.returncode != 0:
        raise RuntimeError(f"{what}: buildfan exited {run.returncode}\n{run.stderr_tail}")


def spread(values: Sequence[float]) -> dict[str, float]:
    """median, min, max (rounded) of one figure over repetitions."""
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def fmt(s: dict[str, float]) -> str:
    return f"{s['median']:.2f} (min {s['min']:.2f}, max {s['max']:.2f})"


def machine() -> dict[str, Any]:
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[1])  # type: ignore[index]
    return {
        "nproc": os.cpu_count(),
        "mem_gb": round(mem_kb / 1024**2, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        **node_limits(),
    }


def node_limits() -> dict[str, float | None]:
    """The testbed's per-node isolation as it is set now (node-a's cgroups): NODE_CPU and NODE_WRITE_MBPS."""
    cpu = Path("/sys/fs/cgroup/cpu/buildfan-testbed/node-a")
    blkio = Path("/sys/fs/cgroup/blkio/buildfan-testbed/node-a/blkio.throttle.write_bps_device")
    try:
        node_cpu = int((cpu / "cpu.cfs_quota_us").read_text()) / int((cpu / "cpu.cfs_period_us").read_text())
        mbps = int(blkio.read_text().split()[1]) / 1024**2
    except (OSError, ValueError, IndexError):
        return {"node_cpu": None, "node_write_mbps": None}
    return {"node_cpu": round(node_cpu, 2), "node_write_mbps": round(mbps, 1)}


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    stamped = {"benchmark": name, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine()}
    path.write_text(json.dumps({**stamped, **data}, indent=2) + "\n")
    print(f"{name}: results in {path.relative_to(REPO)}")
    return path
