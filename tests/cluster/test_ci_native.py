"""buildfan inside GitHub Actions and GitLab CI, on the real testbed: outputs, summaries, reports, post step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from kubernetes import client
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from testbed.handle import Testbed, write_matrix
from tests.cluster.test_run import BUILDFAN, QUICK, assert_nothing_left, start_until_building

pytestmark = pytest.mark.testbed
FAILING = "FROM scratch\nCOPY file.txt /file.txt\nCOPY no-such-file /x\n"


def parse_github_outputs(text: str) -> dict[str, str]:
    out, lines = {}, iter(text.splitlines())
    for line in lines:
        if "<<" in line:
            name, delim = line.split("<<", 1)
            out[name] = "\n".join(iter(lambda: next(lines), delim))
        else:
            name, _, value = line.partition("=")
            out[name] = value
    return out


def test_github_actions_outputs_summary_groups_and_annotations(testbed: Testbed, tmp_path: Path) -> None:
    with testbed.namespace() as ns:
        m = write_matrix(
            tmp_path, ns, {"good": QUICK, "bad": FAILING}, {"placement": {"spread": "kubernetes.io/hostname"}}
        )
        outputs, summary = tmp_path / "out.txt", tmp_path / "summary.md"
        env = {
            **testbed.env,
            "GITHUB_ACTIONS": "true",
            "GITHUB_OUTPUT": str(outputs),
            "GITHUB_STEP_SUMMARY": str(summary),
        }
        r = subprocess.run(
            [*BUILDFAN, "run", str(m), "--report", str(tmp_path / "r.json")],
            env=env,
            text=True,
            capture_output=True,
            timeout=600,
            cwd=tmp_path,
        )
        assert r.returncode == 1, r.stderr[-3000:]
        got = parse_github_outputs(outputs.read_text())
        assert got["report"] == str(tmp_path / "r.json")
        placements = json.loads(got["placements"])
        assert set(placements) == {"good", "bad"} and all(n.startswith("node-") for n in placements.values())
        assert set(json.loads(got["metadata"])) == {"good", "bad"}
        assert json.loads(got["digests"]) == {}  # output: none, so nothing was pushed
        assert "::group::build good (succeeded)" in r.stdout and "::group::build bad (failed)" in r.stdout
        assert r.stdout.count("::endgroup::") == 2
        error = next(ln for ln in r.stdout.splitlines() if ln.startswith("::error "))
        assert "file=bad/Dockerfile,line=3" in error and "title=buildfan" in error, error
        md = summary.read_text()
        assert "| good | ✅ succeeded |" in md and "| bad |" in md
        assert "```mermaid\ngantt" in md and "section node-" in md
        assert (tmp_path / "timeline.svg").read_text().startswith("<svg")
        assert_nothing_left(testbed, ns, json.loads((tmp_path / "r.json").read_text())["run_id"])


def test_gitlab_ci_sections_and_reports(testbed: Testbed, tmp_path: Path) -> None:
    with testbed.namespace() as ns:
        m = write_matrix(tmp_path, ns, {"one": QUICK, "two": FAILING}, {})
        out_dir = tmp_path / "out"
        env = {**testbed.env, "GITLAB_CI": "true"}
        r = subprocess.run(
            [*BUILDFAN, "run", str(m), "--report", str(out_dir / "r.json")], env=env, capture_output=True, timeout=600
        )  # bytes: text mode would turn GitLab's \r into \n
        stdout = r.stdout.decode()
        assert r.returncode == 1, r.stderr[-3000:]
        assert stdout.count("\x1b[0Ksection_start:") == 2 and stdout.count("\x1b[0Ksection_end:") == 2
        assert ":build_one[collapsed=true]\r\x1b[0K" in stdout and ":build_two\r\x1b[0K" in stdout
        suite = ET.parse(out_dir / "junit.xml").getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        assert suite is not None and suite.get("tests") == "2" and suite.get("failures") == "1"
        cases = {c.get("name"): c for c in suite.iter("testcase")}
        assert cases["two"].find("failure") is not None and cases["one"].find("failure") is None
        families = {f.name: f for f in text_string_to_metric_families((out_dir / "metrics.txt").read_text())}
        durations = {s.labels["image"]: s.value for s in families["buildfan_build_duration_seconds"].samples}
        assert set(durations) == {"one", "two"} and all(v > 0 for v in durations.values())
        assert sum(s.value for s in families["buildfan_node_builders"].samples) == 2
        env_lines = (out_dir / "build.env").read_text().splitlines()
        assert any(ln.startswith("BUILDFAN_RUN_ID=") for ln in env_lines)
        assert_nothing_left(testbed, ns, json.loads((out_dir / "r.json").read_text())["run_id"])


def test_action_post_step_cleans_up_after_sigkill(testbed: Testbed, tmp_path: Path) -> None:
    apps = client.AppsV1Api(testbed.api())
    with testbed.namespace() as ns:
        m = write_matrix(
            tmp_path,
            ns,
            {"slow": f"FROM {testbed.registry}/base:1\nRUN sleep 120\n"},
            {"placement": {"spread": "kubernetes.io/hostname"}},
        )
        home, state = tmp_path / "home", tmp_path / "state.txt"
        home.mkdir()
        state.touch()
        kubeconfig = Path(testbed.env["KUBECONFIG"]).read_text()
        env = {k: v for k, v in testbed.env.items() if k != "KUBECONFIG"}
        env |= {
            "GITHUB_ACTIONS": "true",
            "HOME": str(home),
            "GITHUB_STATE": str(state),
            "INPUT_MATRIX": str(m),
            "INPUT_KUBECONFIG": kubeconfig,
            "INPUT_REPORT": str(tmp_path / "r.json"),
            "INPUT_FAIL-FAST": "false",
            "INPUT_LOG-FORMAT": "json",
        }
        main = start_until_building([*BUILDFAN, "action", "main"], env, start_new_session=True)
        os.killpg(main.pid, signal.SIGKILL)  # the runner's kill: no teardown runs
        main.wait()
        assert main.stdout is not None
        main.stdout.close()
        run_id = json.loads((home / ".buildfan" / "run.json").read_text())["run_id"]
        left = apps.list_namespaced_deployment(ns, label_selector=f"buildfan.dev/run={run_id}").items
        assert len(left) == 1, "SIGKILL should have left the builder behind"
        state_vars = dict(ln.split("=", 1) for ln in state.read_text().splitlines())
        post_env = {**env, **{f"STATE_{k}": v for k, v in state_vars.items()}}
        post = subprocess.run([*BUILDFAN, "action", "post"], env=post_env, text=True, capture_output=True, timeout=120)
        assert post.returncode == 0, post.stderr
        assert_nothing_left(testbed, ns, run_id)
