"""A handle on the running local cluster for tests: its environment, API clients and what lives on disk."""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config


@dataclass(frozen=True)
class Testbed:
    __test__ = False  # not a test class, despite the name

    env: dict[str, str]

    @classmethod
    def from_env_file(cls, path: Path) -> Testbed:
        env = dict(os.environ)
        for line in path.read_text().splitlines():
            m = re.fullmatch(r"export (\w+)=(.*)", line)
            if m:
                env[m[1]] = m[2].replace("$PATH", os.environ.get("PATH", ""))
        return cls(env)

    @property
    def state(self) -> Path:
        return Path(self.env["BUILDFAN_TESTBED_DIR"])

    @property
    def registry(self) -> str:
        return self.env["BUILDFAN_TESTBED_REGISTRY"]

    def api(self) -> client.ApiClient:
        return config.new_client_from_config(self.env["KUBECONFIG"])

    def run(self, *cmd: str, check: bool = True, timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, env=self.env, text=True, capture_output=True, check=check, timeout=timeout, **kw)

    @contextmanager
    def namespace(self, prefix: str = "bftest") -> Iterator[str]:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        core = client.CoreV1Api(self.api())
        core.create_namespace({"metadata": {"name": name, "labels": {"buildfan.dev/test": "true"}}})
        wait_until(
            lambda: bool(core.list_namespaced_service_account(name, field_selector="metadata.name=default").items),
            30,
            "default ServiceAccount",
        )
        try:
            yield name
        finally:
            core.delete_namespace(name)

    def daemon_pids(self) -> list[int]:
        """buildkitd processes the agent runs right now (its records, checked against /proc)."""
        pids = []
        for f in (self.state / "daemons").glob("*.pid"):
            pid = int(f.read_text().split()[0])
            if Path(f"/proc/{pid}").exists():
                pids.append(pid)
        return pids

    def pod_state_dirs(self) -> list[Path]:
        return list((self.state / "nodes").glob("*/pods/*"))

    def overlay_mounts(self) -> list[str]:
        prefix = str(self.state / "nodes") + "/"
        with open("/proc/self/mounts") as f:
            return [ln.split()[1] for ln in f if ln.split()[1].startswith(prefix) and "/pods/" in ln.split()[1]]


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def write_matrix(d: Path, ns: str, images: dict[str, str], builder: dict[str, Any], **top: Any) -> Path:
    """A matrix under d whose images are Dockerfiles (text), each in its own context with a file.txt."""
    entries = []
    for name, dockerfile in images.items():
        (d / name).mkdir(parents=True, exist_ok=True)
        (d / name / "Dockerfile").write_text(dockerfile)
        (d / name / "file.txt").write_text(f"{name}\n")
        entries.append({"name": name, "context": f"./{name}"})
    path = d / "matrix.yaml"
    path.write_text(yaml.safe_dump({"namespace": ns, "builder": builder, "images": entries, **top}))
    return path
