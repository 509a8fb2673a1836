#!/usr/bin/env python3
"""The testbed's node agent: the part of a kubelet that BuildKit pods need, for kwok's simulated nodes.

For every pod bound to a node whose first container is named `buildkitd` (what buildx's kubernetes driver
creates), it starts a real rootful buildkitd (OCI worker, overlayfs, runc) with its state on that node's own
filesystem and inside that node's cgroups, waits until `buildctl debug workers` answers (buildx's own
readiness probe), creates a kwok `Exec` so that `pods/exec` of `buildctl dial-stdio` in that pod reaches this
daemon, and only then reports the pod Running and Ready. When the pod is deleted, the daemon, its mounts,
its state directory and the Exec go.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

EXEC_GROUP, EXEC_VERSION, EXEC_PLURAL = "kwok.x-k8s.io", "v1alpha1", "execs"
PASSTHROUGH_FLAGS = ("--allow-insecure-entitlement", "--debug")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def log(msg: str) -> None:
    print(f"{dt.datetime.now(dt.UTC):%H:%M:%S.%f} agent: {msg}", flush=True)


@dataclass
class Daemon:
    uid: str
    namespace: str
    pod: str
    node: str
    root: Path
    sock: Path
    proc: subprocess.Popen[bytes]


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.api = config.new_client_from_config(str(args.kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.bin_dir: Path = args.bin_dir
        self.state: Path = args.state
        self.registry: str = args.registry
        self.cgroup: str = args.cgroup
        self.daemons: dict[str, Daemon] = {}
        self.starting: set[str] = set()
        self.doomed: set[str] = set()  # deleted while still starting
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=16)
        (self.state / "daemons").mkdir(parents=True, exist_ok=True)
        (self.state / "run").mkdir(parents=True, exist_ok=True)
        (self.state / "logs" / "daemons").mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------ watch loop

    def run(self) -> None:
        while True:
            pods = self.core.list_pod_for_all_namespaces(field_selector="spec.nodeName!=")
            live = {p.metadata.uid for p in pods.items}
            for uid in [u for u in list(self.daemons) if u not in live]:
                self.pool.submit(self.stop, uid)
            for p in pods.items:
                self.on_pod("LISTED", p)
            self.watch(pods.metadata.resource_version)

    def watch(self, rv: str) -> None:
        w = watch.Watch()
        try:
            for ev in w.stream(
                self.core.list_pod_for_all_namespaces,
                field_selector="spec.nodeName!=",
                resource_version=rv,
                timeout_seconds=300,
                allow_watch_bookmarks=True,
            ):
                if ev["type"] != "BOOKMARK":
                    self.on_pod(ev["type"], ev["object"])
        except client.ApiException as e:
            if e.status != 410:
                log(f"watch error {e.status}: {e.reason}; relisting")
                time.sleep(1)

    def on_pod(self, kind: str, pod: Any) -> None:
        if not pod.spec.containers or pod.spec.containers[0].name != "buildkitd":
            return
        uid = pod.metadata.uid
        if kind == "DELETED" or pod.metadata.deletion_timestamp:
            self.pool.submit(self.stop, uid)
            return
        with self.lock:
            if uid in self.daemons or uid in self.starting:
                return
            self.starting.add(uid)
        self.pool.submit(self.start_safely, pod)

    # ------------------------------------------------------------ start

    def start_safely(self, pod: Any, attempts: int = 3) -> None:
        """Start the pod's daemon; like a kubelet restarting a crashed container, try again a few times."""
        try:
            for attempt in range(1, attempts + 1):
                try:
                    self.start(pod)
                    return
                except Exception as e:
                    log(f"{pod.metadata.namespace}/{pod.metadata.name}: start {attempt}/{attempts} failed: {e!r}")
                    self.discard(pod.metadata.uid)
                    if pod.metadata.uid in self.doomed:
                        return
                    time.sleep(attempt)
        finally:
            with self.lock:
                self.starting.discard(pod.metadata.uid)
                doomed = pod.metadata.uid in self.doomed
            if doomed:
                self.stop(pod.metadata.uid)

    def start(self, pod: Any) -> None:
        ns, name, node, uid = pod.metadata.namespace, pod.metadata.name, pod.spec.node_name, pod.metadata.uid
        t0 = time.monotonic()
        root = self.state / "nodes" / node / "pods" / f"{ns}_{name}"
        root.mkdir(parents=True, exist_ok=True)
        sock = self.state / "run" / f"{uid[:13]}.sock"
        proc = self.spawn(node, root, sock, pod.spec.containers[0].args or [], f"{ns}_{name}")
        d = Daemon(uid, ns, name, node, root, sock, proc)
        with self.lock:
            self.daemons[uid] = d
        (self.state / "daemons" / f"{uid}.pid").write_text(f"{proc.pid} buildkitd\n")
        self.wait_workers(d)
        self.create_exec(d)
        self.report_ready(d)
        log(f"{ns}/{name}: buildkitd pid {proc.pid} on {node} ready in {time.monotonic() - t0:.2f}s")

    def spawn(self, node: str, root: Path, sock: Path, args: list[str], tag: str) -> subprocess.Popen[bytes]:
        cg = [CGROUP_ROOT / c / self.cgroup / node / "cgroup.procs" for c in ("cpu", "blkio")]
        for procs in cg:  # nodes added after `up` (benchmarks) get unlimited cgroups of their own
            procs.parent.mkdir(parents=True, exist_ok=True)
        enter = " && ".join(f"echo $$ > {p}" for p in cg)
        flags = [a for a in args if a.startswith(PASSTHROUGH_FLAGS)]
        cmd = [
            "sh",
            "-c",
            f'{enter} && exec "$@"',
            "sh",
            str(self.bin_dir / "buildkitd"),
            "--root",
            str(root),
            "--addr",
            f"unix://{sock}",
            "--config",
            str(self.node_config(node)),
            "--oci-worker=true",
            "--containerd-worker=false",
            # each pod has its own /run in a real cluster: the default /run/buildkit/otel-grpc.sock would be
            # shared, and daemons starting together race on it (`chown ...: no such file or directory`)
            "--otel-socket-path",
            str(sock.with_suffix(".otel.sock")),
            *flags,
        ]
        logf = open(self.state / "logs" / "daemons" / f"{tag}.log", "ab")  # noqa: SIM115 - owned by the child
        env = {**os.environ, "PATH": f"{self.bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
        return subprocess.Popen(
            cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env
        )

    def node_config(self, node: str) -> Path:
        path = self.state / f"buildkitd-{node}.toml"
        if not path.exists():
            path.write_text(
                f'[worker.oci]\n  enabled = true\n  snapshotter = "overlayfs"\n'
                f'  defaultCgroupParent = "/{self.cgroup}/{node}"\n'
                f"[worker.containerd]\n  enabled = false\n"
                f'[registry."{self.registry}"]\n  http = true\n  insecure = true\n'
            )
        return path

    def wait_workers(self, d: Daemon, timeout: float = 60.0) -> None:
        """Readiness as buildx's own probe defines it: `buildctl debug workers` succeeds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if d.proc.poll() is not None:
                raise RuntimeError(f"buildkitd exited with {d.proc.returncode}")
            ok = (
                subprocess.run(
                    [str(self.bin_dir / "buildctl"), "--addr", f"unix://{d.sock}", "debug", "workers"],
                    capture_output=True,
                    check=False,
                ).returncode
                == 0
            )
            if ok:
                return
            time.sleep(0.1)
        raise TimeoutError("buildkitd did not answer `buildctl debug workers` in time")

    def create_exec(self, d: Daemon) -> None:
        body = {
            "apiVersion": f"{EXEC_GROUP}/{EXEC_VERSION}",
            "kind": "Exec",
            "metadata": {"name": d.pod, "namespace": d.namespace},
            "spec": {"execs": [{"local": {"envs": [{"name": "BUILDKIT_HOST", "value": f"unix://{d.sock}"}]}}]},
        }
        try:
            self.custom.create_namespaced_custom_object(EXEC_GROUP, EXEC_VERSION, d.namespace, EXEC_PLURAL, body)
        except client.ApiException as e:
            if e.status != 409:
                raise

    def report_ready(self, d: Daemon) -> None:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        conds = [
            {"type": t, "status": "True", "lastTransitionTime": now}
            for t in ("Initialized", "ContainersReady", "Ready")
        ]
        pod = self.core.read_namespaced_pod(d.pod, d.namespace)
        statuses = [
            {
                "name": c.name,
                "image": c.image,
                "imageID": "",
                "ready": True,
                "restartCount": 0,
                "started": True,
                "state": {"running": {"startedAt": now}},
            }
            for c in pod.spec.containers
        ]
        body = {
            "status": {
                "phase": "Running",
                "conditions": conds,
                "containerStatuses": statuses,
                "startTime": now,
                "hostIP": "127.0.0.1",
                "hostIPs": [{"ip": "127.0.0.1"}],
                "podIP": "127.0.0.1",
                "podIPs": [{"ip": "127.0.0.1"}],
            }
        }
        self.core.patch_namespaced_pod_status(d.pod, d.namespace, body)

    # ------------------------------------------------------------ stop

    def stop(self, uid: str) -> None:
        with self.lock:
            if uid in self.starting:
                self.doomed.add(uid)
        self.discard(uid)

    def discard(self, uid: str) -> None:
        """Stop a daemon and remove its process, mounts, state, socket, record and Exec."""
        with self.lock:
            d = self.daemons.pop(uid, None)
        if d is None:
            return
        terminate(d.proc)
        unmount_under(d.root)
        shutil.rmtree(d.root, ignore_errors=True)
        d.sock.unlink(missing_ok=True)
        d.sock.with_suffix(".otel.sock").unlink(missing_ok=True)
        (self.state / "daemons" / f"{uid}.pid").unlink(missing_ok=True)
        try:
            self.custom.delete_namespaced_custom_object(EXEC_GROUP, EXEC_VERSION, d.namespace, EXEC_PLURAL, d.pod)
        except client.ApiException as e:
            if e.status != 404:
                log(f"{d.namespace}/{d.pod}: could not delete Exec: {e.status}")
        log(f"{d.namespace}/{d.pod}: buildkitd stopped, state removed")

    def stop_all(self) -> None:
        """Stop every daemon at once (one slow daemon must not leave the others behind)."""
        with ThreadPoolExecutor(max_workers=max(1, len(self.daemons))) as pool:
            for uid, outcome in zip(list(self.daemons), pool.map(self.stop_quietly, list(self.daemons)), strict=True):
                if outcome:
                    log(f"{uid}: {outcome}")

    def stop_quietly(self, uid: str) -> str | None:
        try:
            self.stop(uid)
        except Exception as e:
            return f"stop failed: {e!r}"
        return None

    def reap_previous(self) -> None:
        """Daemons a previous agent recorded (it was killed): stop them; their pods get fresh ones."""
        for f in (self.state / "daemons").glob("*.pid"):
            pid = int(f.read_text().split()[0])
            if _is_buildkitd(pid, self.state):
                log(f"stopping buildkitd pid {pid} left by a previous agent")
                os.kill(pid, signal.SIGKILL)
            f.unlink(missing_ok=True)
        for root in (self.state / "nodes").glob("*/pods/*"):
            unmount_under(root)
            shutil.rmtree(root, ignore_errors=True)


def _is_buildkitd(pid: int, state: Path) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return Path(argv[0].decode()).name == "buildkitd" and str(state).encode() in b" ".join(argv)


def terminate(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def unmount_under(root: Path) -> None:
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f if line.split()[1].startswith(prefix)]
    for p in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", p], check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kubeconfig", type=Path, required=True)
    ap.add_argument("--bin-dir", type=Path, required=True)
    ap.add_argument("--state", type=Path, required=True)
    ap.add_argument("--registry", required=True)
    ap.add_argument("--cgroup", required=True)
    agent = Agent(ap.parse_args())
    agent.reap_previous()

    def on_signal(signum: int, _frame: object) -> None:
        log(f"signal {signum}: stopping {len(agent.daemons)} daemon(s)")
        agent.stop_all()
        os._exit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log("watching pods")
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
