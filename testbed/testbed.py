#!/usr/bin/env python3
"""buildfan's real local cluster: etcd, kube-apiserver, controller-manager, scheduler, kwok nodes,
a node agent that runs a real buildkitd per BuildKit pod, and a registry with offline base images.

    testbed.py up      build (cached) and start everything, reuse a running testbed, write .testbed/env
    testbed.py down    stop only the processes it recorded, unmount, remove .testbed
    testbed.py status  print what runs

Every server binds to 127.0.0.1. State lives in .testbed/ beside this repository's Makefile;
binaries and images are cached by version under $BUILDFAN_TESTBED_CACHE (~/.cache/buildfan-testbed).
Isolation per simulated node: a cpu cgroup with a CFS quota (NODE_CPU, default 0.5 CPU) and an ext4
filesystem on its own loop device, mounted -o sync, with a blkio write limit (NODE_WRITE_MBPS, default 20).
The loop devices' backing files live in RAM (a tmpfs; NODE_DISK_BACKING=disk puts them on the host disk),
so each node's disk is limited only by its own throttle and nodes do not share a physical disk underneath;
`discard` returns freed blocks to the tmpfs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STATE = Path(os.environ.get("BUILDFAN_TESTBED_DIR", REPO / ".testbed"))
CACHE = Path(os.environ.get("BUILDFAN_TESTBED_CACHE", Path.home() / ".cache" / "buildfan-testbed"))
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_NAME = "buildfan-testbed"
REGISTRY = "127.0.0.1:5000"


@dataclass(frozen=True)
class Ports:
    etcd: int = int(os.environ.get("TESTBED_ETCD_PORT", "32379"))
    etcd_peer: int = int(os.environ.get("TESTBED_ETCD_PEER_PORT", "32380"))
    apiserver: int = int(os.environ.get("TESTBED_APISERVER_PORT", "36443"))
    controller_manager: int = int(os.environ.get("TESTBED_CM_PORT", "40257"))
    scheduler: int = int(os.environ.get("TESTBED_SCHEDULER_PORT", "40259"))
    kwok: int = int(os.environ.get("TESTBED_KWOK_PORT", "40250"))
    registry: int = 5000


PORTS = Ports()
NODES = int(os.environ.get("NODES", "3"))
# Three nodes take 1.5 of the 2 cores; the rest is left to what all nodes share (control plane, kwok's exec
# streams, buildx, the loop devices' kernel writeback), so that builders on different nodes do not contend.
NODE_CPU = float(os.environ.get("NODE_CPU", "0.5"))
NODE_WRITE_MBPS = int(os.environ.get("NODE_WRITE_MBPS", "20"))
NODE_DISK_GB = int(os.environ.get("NODE_DISK_GB", "4"))
NODE_DISK_BACKING = os.environ.get("NODE_DISK_BACKING", "tmpfs")  # tmpfs | disk
# Everything the scripts install from Debian when missing: command -> package.
DEBIAN = {
    "etcd": "etcd-server",
    "runc": "runc",
    "docker-registry": "docker-registry",
    "debootstrap": "debootstrap",
    "skopeo": "skopeo",
    "umoci": "umoci",
    "openssl": "openssl",
    "mkfs.ext4": "e2fsprogs",
    "losetup": "mount",
    "curl": "curl",
}


class TestbedError(Exception):
    """One line for the user; testbed.py exits 2 with it."""


def log(msg: str) -> None:
    print(f"testbed: {msg}", file=sys.stderr, flush=True)


def run(*cmd: str | Path, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], check=True, text=True, capture_output=True, **kw)  # type: ignore[call-overload, no-any-return]


# ---------------------------------------------------------------- prerequisites and builds


def ensure_prerequisites() -> None:
    if os.geteuid() != 0:
        raise TestbedError("must run as root (buildkitd, loop mounts and cgroups need it)")
    if not (CGROUP_ROOT / "cpu").is_dir() or not (CGROUP_ROOT / "blkio").is_dir():
        raise TestbedError("cgroup v1 cpu and blkio controllers not mounted under /sys/fs/cgroup")
    missing = sorted({pkg for cmd, pkg in DEBIAN.items() if not shutil.which(cmd, path=_sbin_path())})
    if missing:
        log(f"installing Debian packages: {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        opts = ["-o", "DPkg::Lock::Timeout=600", "-q"]
        subprocess.run(["apt-get", *opts, "update"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", *opts, "install", "-y", *missing], check=True, env=env, stdout=subprocess.DEVNULL)
    if not shutil.which("go"):
        raise TestbedError("'go' not found on PATH: install Go 1.26 to build kube-apiserver, kwok, buildx, buildkit")


def _sbin_path() -> str:
    return os.environ.get("PATH", "") + ":/usr/sbin:/sbin"


def build_binaries() -> Path:
    log("building (or reusing cached) kube-apiserver, controller-manager, scheduler, kwok, buildx, buildkit")
    out = subprocess.run([HERE / "build-binaries.sh"], check=True, text=True, stdout=subprocess.PIPE)
    return Path(out.stdout.strip().splitlines()[-1])


def build_images() -> Path:
    images = CACHE / "images"
    subprocess.run([HERE / "images" / "build-images.sh", images], check=True)
    return images


# ---------------------------------------------------------------- processes


def pid_file(name: str) -> Path:
    return STATE / "pids" / f"{name}.pid"


def start(name: str, cmd: list[str | Path], env: dict[str, str] | None = None) -> int:
    """Start a long-lived server in its own session, log to .testbed/logs, record its PID."""
    (STATE / "logs").mkdir(parents=True, exist_ok=True)
    pid_file(name).parent.mkdir(parents=True, exist_ok=True)
    logf = open(STATE / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [str(c) for c in cmd],
        stdout=logf,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    pid_file(name).write_text(f"{proc.pid} {Path(str(cmd[0])).name}\n")
    _started[name] = proc
    return proc.pid


_started: dict[str, subprocess.Popen[bytes]] = {}  # this invocation's children: poll() sees exec races right


def recorded(name: str) -> tuple[int, str] | None:
    try:
        pid, exe = pid_file(name).read_text().split()
    except (FileNotFoundError, ValueError):
        return None
    return int(pid), exe


def alive(name: str) -> bool:
    if name in _started:
        return _started[name].poll() is None
    rec = recorded(name)
    return rec is not None and _is_ours(*rec)


def _is_ours(pid: int, exe: str) -> bool:
    """The PID still runs the program we started (PIDs get reused)."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return Path(argv0).name == exe


def stop(name: str, grace: float = 10.0) -> None:
    rec = recorded(name)
    if rec and _is_ours(*rec):
        _terminate(rec[0], rec[1], grace)
    pid_file(name).unlink(missing_ok=True)


def _terminate(pid: int, exe: str, grace: float) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _is_ours(pid, exe):
        time.sleep(0.1)
    if _is_ours(pid, exe):
        os.kill(pid, signal.SIGKILL)


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60.0, proc: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc and not alive(proc):
            raise TestbedError(f"{proc} exited while waiting for {what}; see {STATE / 'logs' / proc}.log")
        time.sleep(0.2)
    raise TestbedError(f"timed out after {timeout:.0f}s waiting for {what}; see {STATE / 'logs'}/")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def check_ports() -> None:
    for field, port in vars(PORTS).items():
        if not port_free(port):
            raise TestbedError(
                f"port 127.0.0.1:{port} ({field}) is busy: stop what listens there "
                f"(ss -ltnp 'sport = :{port}') or run 'make testbed-down' if it is an old testbed"
            )


# ---------------------------------------------------------------- PKI and kubeconfigs


def pki() -> Path:
    d = STATE / "pki"
    if (d / "admin.crt").exists():
        return d
    d.mkdir(parents=True, exist_ok=True)
    ossl = ["openssl"]
    run(
        *ossl,
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "30",
        "-subj",
        "/CN=buildfan-testbed-ca",
        "-keyout",
        d / "ca.key",
        "-out",
        d / "ca.crt",
    )
    _cert(d, "apiserver", "/CN=kube-apiserver", "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes")
    _cert(d, "admin", "/O=system:masters/CN=buildfan-testbed-admin")
    _cert(d, "controller-manager", "/O=system:masters/CN=system:kube-controller-manager")
    _cert(d, "scheduler", "/CN=system:kube-scheduler")
    run(*ossl, "genrsa", "-out", d / "sa.key", "2048")
    run(*ossl, "rsa", "-in", d / "sa.key", "-pubout", "-out", d / "sa.pub")
    return d


def _cert(d: Path, name: str, subj: str, ext: str | None = None) -> None:
    run(
        "openssl",
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        subj,
        "-keyout",
        d / f"{name}.key",
        "-out",
        d / f"{name}.csr",
    )
    extra: list[str | Path] = []
    if ext:
        (d / f"{name}.ext").write_text(ext + "\n")
        extra = ["-extfile", d / f"{name}.ext"]
    run(
        "openssl",
        "x509",
        "-req",
        "-in",
        d / f"{name}.csr",
        "-CA",
        d / "ca.crt",
        "-CAkey",
        d / "ca.key",
        "-CAcreateserial",
        "-days",
        "30",
        "-out",
        d / f"{name}.crt",
        *extra,
    )


def kubeconfig(d: Path, user: str, namespace: str = "default") -> Path:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "buildfan-testbed",
        "clusters": [
            {
                "name": "buildfan-testbed",
                "cluster": {
                    "server": f"https://127.0.0.1:{PORTS.apiserver}",
                    "certificate-authority": str(d / "ca.crt"),
                },
            }
        ],
        "users": [
            {"name": user, "user": {"client-certificate": str(d / f"{user}.crt"), "client-key": str(d / f"{user}.key")}}
        ],
        "contexts": [
            {
                "name": "buildfan-testbed",
                "context": {"cluster": "buildfan-testbed", "user": user, "namespace": namespace},
            }
        ],
    }
    path = STATE / f"{user}.kubeconfig"
    path.write_text(json.dumps(cfg, indent=1))
    return path


def api_get(path: str, d: Path) -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
    ctx.load_cert_chain(str(d / "admin.crt"), str(d / "admin.key"))
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{PORTS.apiserver}{path}", context=ctx, timeout=5) as r:
            return r.status, r.read().decode()
    except OSError as e:
        code = getattr(e, "code", 0)
        return int(code or 0), str(e)


# ---------------------------------------------------------------- control plane


def start_etcd(bin_dir: Path) -> None:
    data = STATE / "etcd"
    start(
        "etcd",
        [
            "etcd",
            "--name",
            "testbed",
            "--data-dir",
            data,
            "--listen-client-urls",
            f"http://127.0.0.1:{PORTS.etcd}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{PORTS.etcd}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{PORTS.etcd_peer}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{PORTS.etcd_peer}",
            "--initial-cluster",
            f"testbed=http://127.0.0.1:{PORTS.etcd_peer}",
            "--quota-backend-bytes",
            str(4 << 30),
        ],
    )
    wait_for("etcd", lambda: _http_ok(f"http://127.0.0.1:{PORTS.etcd}/health"), proc="etcd")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def start_apiserver(bin_dir: Path, d: Path) -> None:
    audit_policy = STATE / "audit-policy.yaml"
    audit_policy.write_text(
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\n"
        "rules:\n- level: None\n  users: [system:kube-controller-manager, system:kube-scheduler]\n"
        "- level: Metadata\n"
    )
    start(
        "kube-apiserver",
        [
            bin_dir / "kube-apiserver",
            f"--etcd-servers=http://127.0.0.1:{PORTS.etcd}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={PORTS.apiserver}",
            f"--tls-cert-file={d / 'apiserver.crt'}",
            f"--tls-private-key-file={d / 'apiserver.key'}",
            f"--client-ca-file={d / 'ca.crt'}",
            "--authorization-mode=RBAC",
            f"--service-account-key-file={d / 'sa.pub'}",
            f"--service-account-signing-key-file={d / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            "--service-cluster-ip-range=10.96.0.0/24",
            "--allow-privileged=true",
            "--endpoint-reconciler-type=none",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--audit-policy-file={audit_policy}",
            f"--audit-log-path={STATE / 'logs' / 'audit.log'}",
            "--audit-log-maxsize=200",
        ],
    )
    wait_for("kube-apiserver /readyz", lambda: api_get("/readyz", d)[0] == 200, 120, proc="kube-apiserver")


def start_controller_manager(bin_dir: Path, d: Path) -> None:
    cfg = kubeconfig(d, "controller-manager")
    start(
        "kube-controller-manager",
        [
            bin_dir / "kube-controller-manager",
            f"--kubeconfig={cfg}",
            f"--authentication-kubeconfig={cfg}",
            f"--authorization-kubeconfig={cfg}",
            "--controllers=deployment-controller,replicaset-controller,serviceaccount-controller,"
            "garbage-collector-controller,namespace-controller",
            "--bind-address=127.0.0.1",
            f"--secure-port={PORTS.controller_manager}",
            "--leader-elect=false",
            f"--root-ca-file={d / 'ca.crt'}",
            f"--service-account-private-key-file={d / 'sa.key'}",
        ],
    )


def start_scheduler(bin_dir: Path, d: Path) -> None:
    cfg = kubeconfig(d, "scheduler")
    conf = STATE / "scheduler.yaml"
    conf.write_text(f"""apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection: {{kubeconfig: "{cfg}"}}
leaderElection: {{leaderElect: false}}
profiles:
- schedulerName: default-scheduler
- schedulerName: binpack
  pluginConfig:
  - name: NodeResourcesFit
    args:
      scoringStrategy:
        type: MostAllocated
        resources: [{{name: cpu, weight: 1}}, {{name: memory, weight: 1}}]
""")
    start(
        "kube-scheduler",
        [
            bin_dir / "kube-scheduler",
            f"--config={conf}",
            f"--authentication-kubeconfig={cfg}",
            f"--authorization-kubeconfig={cfg}",
            "--bind-address=127.0.0.1",
            f"--secure-port={PORTS.scheduler}",
        ],
    )


# ---------------------------------------------------------------- kwok nodes


def kwok_config(bin_dir: Path) -> Path:
    """Stages: nodes go Ready; ordinary pods go Running/Ready; BuildKit pods are left to the agent,
    which reports them Ready only once their real buildkitd answers; deleted pods finish."""
    src = bin_dir / "kwok-assets"
    ready = (src / "pod-ready.yaml").read_text()
    ready = ready.replace(
        "    - key: '.status.phase'\n",
        "    - key: '.spec.containers.[0].name'\n      operator: 'NotIn'\n      values:\n      - 'buildkitd'\n"
        "    - key: '.status.phase'\n",
        1,
    )
    parts = [(src / "node-initialize.yaml").read_text(), ready, (src / "pod-delete.yaml").read_text()]
    path = STATE / "kwok-stages.yaml"
    path.write_text("\n---\n".join(parts))
    return path


def start_kwok(bin_dir: Path, admin: Path) -> None:
    start(
        "kwok",
        [
            bin_dir / "kwok",
            f"--kubeconfig={admin}",
            "--manage-all-nodes=true",
            f"--config={kwok_config(bin_dir)}",
            "--node-ip=127.0.0.1",
            "--node-name=localhost",
            f"--node-port={PORTS.kwok}",
            f"--server-address=127.0.0.1:{PORTS.kwok}",
            "--enable-crds=Exec,ClusterExec",
        ],
        env={"PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"},
    )


def node_names() -> list[str]:
    return [f"node-{chr(ord('a') + i)}" if NODES <= 26 else f"node-{i:02d}" for i in range(NODES)]


def node_manifest(
    name: str, index: int, zones: int | None = None, labels: dict[str, str] | None = None
) -> dict[str, object]:
    """A kwok node with the labels a cloud node has (hostname, zone, region, instance type)."""
    zone = f"zone-{index % (zones or int(os.environ.get('ZONES', NODES)))}"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "topology.kubernetes.io/zone": zone,
                "topology.kubernetes.io/region": "testbed",
                "node.kubernetes.io/instance-type": "kwok.4x16",
                **(labels or {}),
            },
        },
        "spec": {},
        "status": {
            "allocatable": {"cpu": "4", "memory": "16Gi", "pods": "110"},
            "capacity": {"cpu": "4", "memory": "16Gi", "pods": "110"},
        },
    }


def kube(admin: Path) -> object:
    from kubernetes import config

    return config.new_client_from_config(str(admin))


def apply_crds(api: object, kwok_dir: Path) -> None:
    import yaml
    from kubernetes import client

    ext = client.ApiextensionsV1Api(api)
    for f in ("kwok.x-k8s.io_execs.yaml", "kwok.x-k8s.io_clusterexecs.yaml"):
        body = yaml.safe_load((kwok_dir / f).read_text())
        try:
            ext.create_custom_resource_definition(body)
        except client.ApiException as e:
            if e.status != 409:
                raise


def create_nodes(api: object, names: list[str], first_index: int = 0, **manifest: Any) -> None:
    """Create kwok nodes (an existing one is reused); `manifest` goes to node_manifest (zones, labels)."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    for i, name in enumerate(names, start=first_index):
        try:
            core.create_node(node_manifest(name, i, **manifest))
        except client.ApiException as e:
            if e.status != 409:
                raise


def wait_nodes_ready(api: object, names: list[str]) -> None:
    """kwok marks nodes Ready; with node lifecycle off, clearing the not-ready taint is ours to do."""
    from kubernetes import client

    core = client.CoreV1Api(api)

    def ready() -> bool:
        nodes = [n for n in core.list_node(label_selector="type=kwok").items if n.metadata.name in names]
        ok = [n for n in nodes if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])]
        for n in ok:
            if n.spec.taints:
                core.patch_node(n.metadata.name, {"spec": {"taints": None}})
        return len(ok) == len(names) and not any(n.spec.taints for n in ok)

    wait_for(f"{len(names)} Ready nodes", ready, 60)


def wait_default_service_account(api: object) -> None:
    from kubernetes import client

    core = client.CoreV1Api(api)
    wait_for(
        "the default ServiceAccount",
        lambda: bool(core.list_namespaced_service_account("default", field_selector="metadata.name=default").items),
        60,
    )


# ---------------------------------------------------------------- per-node isolation


def disk_backing() -> None:
    """Where the nodes' disk images live: a RAM-backed tmpfs, so that nodes share no physical disk."""
    disks = STATE / "disks"
    disks.mkdir(parents=True, exist_ok=True)
    if NODE_DISK_BACKING == "tmpfs" and not os.path.ismount(disks):
        run("mount", "-t", "tmpfs", "-o", f"size={NODES * NODE_DISK_GB}G,mode=0700", "buildfan-testbed-disks", disks)


def setup_node_isolation(name: str) -> None:
    for ctrl in ("cpu", "blkio"):
        (CGROUP_ROOT / ctrl / CGROUP_NAME / name).mkdir(parents=True, exist_ok=True)
    cpu = CGROUP_ROOT / "cpu" / CGROUP_NAME / name
    (cpu / "cpu.cfs_period_us").write_text("100000")
    (cpu / "cpu.cfs_quota_us").write_text(str(int(NODE_CPU * 100000)))
    mnt = STATE / "nodes" / name
    if os.path.ismount(mnt):
        return
    mnt.mkdir(parents=True, exist_ok=True)
    img = STATE / "disks" / f"{name}.img"
    img.parent.mkdir(parents=True, exist_ok=True)
    run("truncate", "-s", f"{NODE_DISK_GB}G", img)
    run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1", img)
    loop = run("losetup", "--find", "--show", img).stdout.strip()
    run("mount", "-o", "sync,discard", loop, mnt)
    minor = os.minor(os.stat(loop).st_rdev)
    major = os.major(os.stat(loop).st_rdev)
    (CGROUP_ROOT / "blkio" / CGROUP_NAME / name / "blkio.throttle.write_bps_device").write_text(
        f"{major}:{minor} {NODE_WRITE_MBPS * 1024 * 1024}"
    )


def teardown_isolation() -> None:
    """Node filesystems, then their loop devices, then the tmpfs holding the images; then the cgroups."""
    disks = STATE / "disks"
    mounts = _mounts_under(STATE)
    for mnt in reversed(mounts):
        if mnt != str(disks.resolve()):
            subprocess.run(["umount", mnt], check=False)
    for line in run("losetup", "-a").stdout.splitlines():
        dev, _, rest = line.partition(":")
        if str(disks) in rest:
            subprocess.run(["losetup", "-d", dev], check=False)
    if str(disks.resolve()) in mounts:
        subprocess.run(["umount", disks], check=False)
    for ctrl in ("cpu", "blkio"):
        base = CGROUP_ROOT / ctrl / CGROUP_NAME
        for d in sorted(base.glob("**/"), key=lambda p: len(p.parts), reverse=True) if base.exists() else []:
            try:
                d.rmdir()
            except OSError as e:
                log(f"could not remove cgroup {d}: {e}")


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].encode().decode("unicode_escape") for line in f]
    return sorted((p for p in points if p.startswith(prefix)), key=len)


# ---------------------------------------------------------------- registry


def start_registry(images: Path) -> None:
    storage = CACHE / "registry"
    storage.mkdir(parents=True, exist_ok=True)
    conf = STATE / "registry.yml"
    conf.write_text(f"""version: 0.1
log: {{level: warn}}
storage:
  filesystem: {{rootdirectory: "{storage}"}}
  delete: {{enabled: true}}
http:
  addr: 127.0.0.1:{PORTS.registry}
""")
    start("docker-registry", ["docker-registry", "serve", conf])
    wait_for("registry", lambda: _http_ok(f"http://{REGISTRY}/v2/"), proc="docker-registry")
    subprocess.run([HERE / "images" / "push-images.sh", images, REGISTRY], check=True)


# ---------------------------------------------------------------- env file, docker config


def docker_config(bin_dir: Path) -> Path:
    cfg = STATE / "docker"
    (cfg / "cli-plugins").mkdir(parents=True, exist_ok=True)
    plugin = cfg / "cli-plugins" / "docker-buildx"
    plugin.unlink(missing_ok=True)
    plugin.symlink_to(bin_dir / "docker-buildx")
    if not (cfg / "config.json").exists():
        (cfg / "config.json").write_text("{}\n")
    return cfg


def write_env(bin_dir: Path, admin: Path, dcfg: Path) -> Path:
    env = STATE / "env"
    env.write_text(
        "# buildfan testbed: source this file (written by `make testbed-up`)\n"
        f"export KUBECONFIG={admin}\n"
        f"export DOCKER_CONFIG={dcfg}\n"
        f"export PATH={bin_dir}:$PATH\n"
        f"export BUILDFAN_TESTBED_REGISTRY={REGISTRY}\n"
        f"export BUILDFAN_TESTBED_DIR={STATE}\n"
        f"export BUILDFAN_TESTBED_NODES={NODES}\n"
    )
    return env


# ---------------------------------------------------------------- up / down / status

SERVICES = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "docker-registry", "agent"]


def running() -> bool:
    return all(alive(s) for s in SERVICES)


def up() -> None:
    t0 = time.monotonic()
    if running():
        log(f"reusing the running testbed ({STATE}/env)")
        return
    if any(alive(s) for s in SERVICES):
        log("a partial testbed is running: stopping it first")
        down()
    ensure_prerequisites()
    check_ports()
    bin_dir = build_binaries()
    images = build_images()
    STATE.mkdir(parents=True, exist_ok=True)
    d = pki()
    admin = kubeconfig(d, "admin")
    start_etcd(bin_dir)
    start_apiserver(bin_dir, d)
    start_controller_manager(bin_dir, d)
    start_scheduler(bin_dir, d)
    disk_backing()
    for name in node_names():
        setup_node_isolation(name)
    start_registry(images)
    api = kube(admin)
    apply_crds(api, bin_dir / "kwok-assets")
    create_nodes(api, node_names())
    start_kwok(bin_dir, admin)
    start(
        "agent",
        [
            sys.executable,
            HERE / "agent.py",
            "--kubeconfig",
            admin,
            "--bin-dir",
            bin_dir,
            "--state",
            STATE,
            "--registry",
            REGISTRY,
            "--cgroup",
            CGROUP_NAME,
        ],
    )
    wait_nodes_ready(api, node_names())
    wait_default_service_account(api)
    env = write_env(bin_dir, admin, docker_config(bin_dir))
    log(f"up in {time.monotonic() - t0:.1f}s: {NODES} nodes; source {env}")


def down() -> None:
    for name in reversed(SERVICES):
        stop(name, grace=15.0 if name == "agent" else 10.0)
    _stop_orphan_daemons()
    if STATE.exists():
        teardown_isolation()
        shutil.rmtree(STATE, ignore_errors=True)
    else:
        teardown_isolation()
    log("down")


def _stop_orphan_daemons() -> None:
    """buildkitd processes the agent could not stop (it was killed): ours are those whose --root is in
    this testbed's state directory."""
    prefix = str(STATE / "nodes").encode()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if Path(argv[0].decode(errors="replace")).name == "buildkitd" and any(a.startswith(prefix) for a in argv):
            log(f"stopping orphaned buildkitd pid {proc.name}")
            _terminate(int(proc.name), "buildkitd", 10.0)


def status() -> int:
    for s in SERVICES:
        rec = recorded(s)
        print(f"{s:26} {'running' if alive(s) else 'stopped'} {rec[0] if rec else ''}")
    return 0 if running() else 1


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "status"
    try:
        {"up": up, "down": down}.get(cmd, lambda: None)()
    except TestbedError as e:
        log(f"error: {e}")
        return 2
    except subprocess.CalledProcessError as e:
        tail = (e.stderr or "").strip().splitlines()[-1:] if isinstance(e.stderr, str) else []
        log(f"error: {' '.join(map(str, e.cmd))} failed with exit {e.returncode} {' '.join(tail)}")
        return 2
    return status() if cmd == "status" else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
