"""`buildfan run|gc` end to end on the real testbed: placement, real builds, reports, teardown, bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from testbed.handle import Testbed, wait_until, write_matrix

pytestmark = pytest.mark.testbed
BUILDFAN = [sys.executable, "-m", "buildfan"]


def buildfan(tb: Testbed, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return tb.run(*BUILDFAN, "--log-format", "plain", *args, check=False, timeout=timeout)


def report_of(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def assert_nothing_left(tb: Testbed, ns: str, run_id: str) -> None:
    sel = f"buildfan.dev/run={run_id}"
    apps, core = client.AppsV1Api(tb.api()), client.CoreV1Api(tb.api())
    assert apps.list_namespaced_deployment(ns, label_selector=sel).items == []
    assert core.list_namespaced_config_map(ns, label_selector=sel).items == []
    assert core.list_namespaced_pod_template(ns, label_selector=sel).items == []
    builders = tb.run("docker", "buildx", "ls", "--format", "{{.Name}}").stdout.split()
    assert not [b for b in builders if run_id in b], builders
    wait_until(lambda: core.list_namespaced_pod(ns, label_selector=sel).items == [], 90, "the run's pods to go")
    wait_until(lambda: not [d for d in tb.pod_state_dirs() if d.name.startswith(f"{ns}_")], 90, "daemon state")


QUICK = "FROM scratch\nCOPY file.txt /file.txt\n"


def start_until_building(argv: list[str], env: dict[str, str], **popen: Any) -> subprocess.Popen[str]:
    """Start buildfan and return once a build is under way (its "building" line, then a moment)."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "building" in line:
            break
    time.sleep(1)
    return proc


def test_binpack_without_placement_packs_builders_on_one_node(testbed: Testbed, tmp_path: Path) -> None:
    with testbed.namespace() as ns:
        m = write_matrix(
            tmp_path,
            ns,
            {"a": QUICK, "b": QUICK, "c": QUICK},
            {"driver-opts": {"schedulername": "binpack", "requests.cpu": "500m"}, "placement": {"spread": "none"}},
        )
        r = buildfan(testbed, "run", str(m), "--no-build", "--report", str(tmp_path / "r.json"))
        assert r.returncode == 0, r.stderr[-3000:]
        rep = report_of(tmp_path / "r.json")
        nodes = [i["node"] for i in rep["images"]]
        assert len(nodes) == 3 and len(set(nodes)) == 1, nodes
        assert rep["nodes"][0]["builder_count"] == 3
        assert_nothing_left(testbed, ns, rep["run_id"])


def test_spread_puts_builders_on_three_nodes(testbed: Testbed, tmp_path: Path) -> None:
    with testbed.namespace() as ns:
        m = write_matrix(
            tmp_path,
            ns,
            {"a": QUICK, "b": QUICK, "c": QUICK},
            {
                "driver-opts": {"schedulername": "binpack", "requests.cpu": "500m"},
                "placement": {"spread": "kubernetes.io/hostname", "max-skew": 1},
            },
        )
        r = buildfan(testbed, "run", str(m), "--no-build", "--report", str(tmp_path / "r.json"))
        assert r.returncode == 0, r.stderr[-3000:]
        rep = report_of(tmp_path / "r.json")
        assert len({i["node"] for i in rep["images"]}) == 3, rep["images"]
        assert all(i["zone"] and i["ready_at"] for i in rep["images"])
        assert_nothing_left(testbed, ns, rep["run_id"])


def test_pod_template_from_configmap_takes_effect(testbed: Testbed, tmp_path: Path) -> None:
    core = client.CoreV1Api(testbed.api())
    with testbed.namespace() as ns:
        template = {"spec": {"nodeSelector": {"kubernetes.io/hostname": "node-b"}}}
        core.create_namespaced_config_map(
            ns, {"metadata": {"name": "tpl"}, "data": {"template": yaml.safe_dump(template)}}
        )
        m = write_matrix(
            tmp_path, ns, {"a": QUICK, "b": QUICK}, {"placement": {"spread": "none"}, "pod-template-configmap": "tpl"}
        )
        r = buildfan(testbed, "run", str(m), "--no-build", "--report", str(tmp_path / "r.json"))
        assert r.returncode == 0, r.stderr[-3000:]
        rep = report_of(tmp_path / "r.json")
        assert [i["node"] for i in rep["images"]] == ["node-b", "node-b"]
        assert_nothing_left(testbed, ns, rep["run_id"])


def test_three_real_builds_from_distinct_bases(testbed: Testbed, tmp_path: Path) -> None:
    reg = testbed.registry
    images = {
        f"img{n}": f"FROM {reg}/base:{n}\nCOPY file.txt /file.txt\nRUN cat /file.txt /etc/buildfan-base/layer1\n"
        for n in (1, 2, 3)
    }
    with testbed.namespace() as ns:
        m = write_matrix(
            tmp_path,
            ns,
            images,
            {"driver-opts": {"schedulername": "binpack"}, "placement": {"spread": "kubernetes.io/hostname"}},
        )
        r = buildfan(testbed, "run", str(m), "--report", str(tmp_path / "r.json"))
        assert r.returncode == 0, r.stderr[-3000:]
        rep = report_of(tmp_path / "r.json")
        assert rep["summary"] == {"images": 3, "succeeded": 3, "failed": 0}
        assert len({i["node"] for i in rep["images"]}) == 3
        digests = set()
        for img in rep["images"]:
            layers = img["extraction"]["layers"]
            assert len(layers) == 2, img
            assert all(layer["extract_s"] > 0 and layer["compressed_bytes"] > 10_000_000 for layer in layers)
            digests |= {layer["digest"] for layer in layers}
        assert len(digests) == 6
        assert {n["node"] for n in rep["nodes"]} == {i["node"] for i in rep["images"]}
        assert "NODE" in r.stdout and "img1" in r.stdout  # the summary table
        assert_nothing_left(testbed, ns, rep["run_id"])


def test_a_failing_build_fails_the_run_and_cleans_up(testbed: Testbed, tmp_path: Path) -> None:
    with testbed.namespace() as ns:
        m = write_matrix(
            tmp_path,
            ns,
            {"good": QUICK, "bad": "FROM scratch\nCOPY does-not-exist /x\n"},
            {"placement": {"spread": "kubernetes.io/hostname"}},
        )
        r = buildfan(testbed, "run", str(m), "--report", str(tmp_path / "r.json"))
        assert r.returncode == 1, r.stderr[-3000:]
        rep = report_of(tmp_path / "r.json")
        status = {i["name"]: i["status"] for i in rep["images"]}
        assert status == {"good": "succeeded", "bad": "failed"}
        bad = next(i for i in rep["images"] if i["name"] == "bad")
        assert "does-not-exist" in bad["error"]
        assert_nothing_left(testbed, ns, rep["run_id"])


def test_sigterm_mid_build_tears_down_and_exits_130(testbed: Testbed, tmp_path: Path) -> None:
    reg = testbed.registry
    with testbed.namespace() as ns:
        m = write_matrix(tmp_path, ns, {"slow": f"FROM {reg}/base:2\nRUN sleep 120\n"}, {})
        run_file = tmp_path / "run.json"
        proc = start_until_building(
            [*BUILDFAN, "--log-format", "plain", "run", str(m), "--run-file", str(run_file)], testbed.env
        )
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        out, _ = proc.communicate(timeout=60)
        took = time.monotonic() - t0
        assert proc.returncode == 130, out[-3000:]
        print(f"teardown after SIGTERM took {took:.1f}s")
        assert_nothing_left(testbed, ns, json.loads(run_file.read_text())["run_id"])


def test_gc_removes_an_orphan_and_leaves_an_unlabelled_decoy(testbed: Testbed) -> None:
    apps = client.AppsV1Api(testbed.api())

    def deployment(name: str, labels: dict[str, str]) -> dict[str, Any]:
        sel = {"app": name}
        return {
            "metadata": {"name": name, "labels": {**sel, **labels}},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": sel},
                "template": {"metadata": {"labels": sel}, "spec": {"containers": [{"name": "c", "image": "x"}]}},
            },
        }

    with testbed.namespace() as ns:
        apps.create_namespaced_deployment(
            ns, deployment("orphan", {"app.kubernetes.io/managed-by": "buildfan", "buildfan.dev/run": "deadbeef"})
        )
        apps.create_namespaced_deployment(ns, deployment("decoy", {"buildfan.dev/run": "deadbeef"}))
        r = buildfan(testbed, "gc", "--older-than", "0s", "--namespace", ns)
        assert r.returncode == 0, r.stderr
        names = [d.metadata.name for d in apps.list_namespaced_deployment(ns).items]
        assert names == ["decoy"]


def test_bad_input_is_one_line_exit_2_and_writes_nothing(testbed: Testbed, tmp_path: Path) -> None:
    core = client.CoreV1Api(testbed.api())
    apps = client.AppsV1Api(testbed.api())
    with testbed.namespace() as ns:
        forbidden = {"spec": {"containers": [{"name": "buildkitd", "image": "evil:latest"}]}}
        core.create_namespaced_config_map(
            ns, {"metadata": {"name": "bad"}, "data": {"template": yaml.safe_dump(forbidden)}}
        )
        cases = {
            "cm": ({"pod-template-configmap": "bad"}, ns, "must not change the buildkitd container's image"),
            "ns": ({}, "no-such-namespace", "namespace 'no-such-namespace' not found"),
            "opt": ({"driver-opts": {"nonsense": "1"}}, ns, "nonsense"),
        }
        for case, (builder, namespace, expected) in cases.items():
            d = tmp_path / case
            d.mkdir()
            m = write_matrix(d, namespace, {"a": QUICK}, builder)
            r = buildfan(testbed, "run", str(m), "--report", str(d / "r.json"))
            assert r.returncode == 2, (case, r.stderr)
            errors = [ln for ln in r.stderr.splitlines() if ln.startswith("buildfan: error:")]
            assert len(errors) == 1 and expected in errors[0], (case, r.stderr)
            assert not (d / "r.json").exists()
        assert apps.list_namespaced_deployment(ns).items == []
        assert core.list_namespaced_pod_template(ns).items == []
