"""The local cluster itself: scheduling profiles, real BuildKit through the kubernetes driver, clean removal."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from kubernetes import client

from testbed.handle import Testbed, wait_until

pytestmark = pytest.mark.testbed


def _deployment(name: str, scheduler: str, spread: bool) -> dict[str, object]:
    labels = {"app": name, "group": "trio"}
    spec: dict[str, object] = {
        "schedulerName": scheduler,
        "containers": [
            {
                "name": "pause",
                "image": "registry.k8s.io/pause:3.10",
                "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
            }
        ],
    }
    if spread:
        spec["topologySpreadConstraints"] = [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"group": "trio"}},
            }
        ]
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": spec},
        },
    }


def _nodes_of_three(tb: Testbed, spread: bool) -> list[str]:
    apps, core = client.AppsV1Api(tb.api()), client.CoreV1Api(tb.api())
    with tb.namespace() as ns:
        for i in range(3):
            apps.create_namespaced_deployment(ns, _deployment(f"d{i}", "binpack", spread))

        def placed() -> list[str]:
            pods = core.list_namespaced_pod(ns).items
            return [p.spec.node_name for p in pods if p.spec.node_name and p.status.phase == "Running"]

        wait_until(lambda: len(placed()) == 3, 60, "three Running pods")
        return sorted(placed())


def test_binpack_packs_three_deployments_onto_one_node(testbed: Testbed) -> None:
    nodes = _nodes_of_three(testbed, spread=False)
    assert len(set(nodes)) == 1, nodes


def test_topology_spread_puts_them_on_three_nodes(testbed: Testbed) -> None:
    nodes = _nodes_of_three(testbed, spread=True)
    assert len(set(nodes)) == 3, nodes


def test_buildx_kubernetes_driver_builds_for_real_and_rm_leaves_nothing(testbed: Testbed, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "hello.txt").write_text("hello\n")
    (ctx / "Dockerfile").write_text(
        f"FROM {testbed.registry}/base:1\n"
        "RUN echo built > /built.txt && cat /etc/os-release\n"
        "COPY hello.txt /hello.txt\n"
    )
    builder = f"tb-{uuid.uuid4().hex[:6]}"
    apps, core = client.AppsV1Api(testbed.api()), client.CoreV1Api(testbed.api())
    daemons_before = set(testbed.daemon_pids())
    with testbed.namespace() as ns:
        testbed.run(
            "docker",
            "buildx",
            "create",
            "--name",
            builder,
            "--driver",
            "kubernetes",
            "--driver-opt",
            f"namespace={ns}",
            "--bootstrap",
            timeout=180,
        )
        try:
            pod = core.list_namespaced_pod(ns).items[0]
            assert pod.spec.node_name.startswith("node-")
            assert len(set(testbed.daemon_pids()) - daemons_before) == 1
            build = testbed.run(
                "docker",
                "buildx",
                "build",
                "--builder",
                builder,
                "--progress=rawjson",
                "--metadata-file",
                str(tmp_path / "meta.json"),
                str(ctx),
                timeout=600,
            )
            statuses = [
                s["id"]
                for line in build.stderr.splitlines()
                if line.startswith("{")
                for s in json.loads(line).get("statuses", [])
            ]
            assert any(i.startswith("extracting sha256:") for i in statuses), build.stderr[-2000:]
            assert "buildx.build.ref" in json.loads((tmp_path / "meta.json").read_text())
        finally:
            testbed.run("docker", "buildx", "rm", builder, timeout=120)
        assert apps.list_namespaced_deployment(ns).items == []
        wait_until(lambda: core.list_namespaced_pod(ns).items == [], 60, "builder pod gone")
        wait_until(lambda: set(testbed.daemon_pids()) <= daemons_before, 30, "buildkitd gone")
        wait_until(lambda: not [d for d in testbed.pod_state_dirs() if ns in d.name], 30, "state dir gone")
        assert not [m for m in testbed.overlay_mounts() if ns in m]
