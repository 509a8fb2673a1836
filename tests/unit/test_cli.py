"""buildfan.cli: durations, argument parsing, and the plan/run/report commands end to end (no cluster)."""

from __future__ import annotations

import datetime as dt
import json
import re
import shlex
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

import buildfan.cluster  # imports the kubernetes client now, as any earlier test module would
from buildfan import __version__
from buildfan.cli import main, parse_duration, parser
from buildfan.placement import Placement
from buildfan.report import BuildResult, build_report, write_report

T0 = dt.datetime(2026, 12, 4, 15, 16, 50, tzinfo=dt.UTC)
MATRIX = """\
images:
  - name: api
    context: ./api
  - name: web
    context: ./web
    builder:
      placement: {spread: none}
"""


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """main() configures structlog to write to the (captured) stderr of the moment; undo that afterwards."""
    yield
    structlog.reset_defaults()


def kubeconfig(path: Path, namespace: str = "ns1") -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": namespace}}],
            }
        )
    )
    return path


@pytest.fixture
def matrix(tmp_path: Path) -> Path:
    for name in ("api", "web"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "Dockerfile").write_text("FROM scratch\n")
    path = tmp_path / "matrix.yaml"
    path.write_text(MATRIX)
    return path


@pytest.fixture
def no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kw: object) -> None:
        raise AssertionError("plan must not connect to a cluster")

    monkeypatch.setattr(buildfan.cluster, "Cluster", refuse)


# --- parse_duration ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0s", dt.timedelta(0)),
        ("45s", dt.timedelta(seconds=45)),
        ("30m", dt.timedelta(minutes=30)),
        ("1h", dt.timedelta(hours=1)),
        ("2d", dt.timedelta(days=2)),
        (" 90m ", dt.timedelta(minutes=90)),
    ],
)
def test_parse_duration(text: str, expected: dt.timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "1", "h", "1w", "-1h", "1.5h", "1h30m", "1H", "one hour"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(Exception, match="expected a duration like 30m") as info:
        parse_duration(text)
    assert type(info.value).__name__ == "ArgumentTypeError"


# --- argument parsing ----------------------------------------------------------------------------------


def test_run_defaults() -> None:
    args = parser().parse_args(["run", "m.yaml"])
    assert (args.command, args.matrix, args.report) == ("run", Path("m.yaml"), Path("buildfan-report.json"))
    assert (args.jobs, args.fail_fast, args.no_build, args.namespace, args.svg, args.run_file) == (
        None,
        False,
        False,
        None,
        None,
        None,
    )
    assert (args.log_format, args.verbose, args.kubeconfig, args.context) == ("auto", False, None, None)


def test_run_options() -> None:
    argv = ["-v", "--log-format", "json", "--kubeconfig", "k", "--context", "c", "run", "m.yaml"]
    argv += ["--report", "out/r.json", "--jobs", "3", "--fail-fast", "--no-build", "--namespace", "ci"]
    argv += ["--svg", "t.svg", "--run-file", "run.json"]
    args = parser().parse_args(argv)
    assert (args.verbose, args.log_format, args.kubeconfig, args.context) == (True, "json", "k", "c")
    assert (args.report, args.jobs, args.fail_fast, args.no_build) == (Path("out/r.json"), 3, True, True)
    assert (args.namespace, args.svg, args.run_file) == ("ci", Path("t.svg"), Path("run.json"))


@pytest.mark.parametrize("jobs", ["0", "-1", "x", "1.5"])
def test_run_rejects_bad_jobs(jobs: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parser().parse_args(["run", "m.yaml", "--jobs", jobs])
    assert info.value.code == 2
    assert "expected a positive integer" in capsys.readouterr().err


def test_plan_args() -> None:
    args = parser().parse_args(["plan", "m.yaml", "--namespace", "ns2"])
    assert (args.command, args.matrix, args.namespace) == ("plan", Path("m.yaml"), "ns2")


def test_gc_defaults() -> None:
    args = parser().parse_args(["gc"])
    assert (args.older_than, args.namespace, args.run_id, args.run_file, args.dry_run) == (
        dt.timedelta(hours=1),
        None,
        None,
        None,
        False,
    )


def test_gc_options() -> None:
    args = parser().parse_args(
        ["gc", "--older-than", "30m", "--namespace", "ci", "--run-id", "abc", "--run-file", "r.json", "--dry-run"]
    )
    assert args.older_than == dt.timedelta(minutes=30)
    assert (args.namespace, args.run_id, args.run_file, args.dry_run) == ("ci", "abc", Path("r.json"), True)


def test_gc_rejects_bad_duration(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["gc", "--older-than", "soon"])
    assert "expected a duration" in capsys.readouterr().err


def test_report_args() -> None:
    args = parser().parse_args(["report", "r.json", "--svg", "t.svg"])
    assert (args.command, args.report, args.svg) == ("report", Path("r.json"), Path("t.svg"))


@pytest.mark.parametrize("step", ["main", "post"])
def test_action_args(step: str) -> None:
    assert parser().parse_args(["action", step]).step == step


@pytest.mark.parametrize("argv", [[], ["action", "other"], ["build", "m.yaml"], ["--log-format", "xml", "gc"]])
def test_bad_command_lines_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parser().parse_args(argv)
    assert info.value.code == 2


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"buildfan {__version__}"


# --- plan ----------------------------------------------------------------------------------------------


def plan_output(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[list[str], list[dict[str, Any]]]:
    assert main(argv) == 0
    out = capsys.readouterr().out
    creates = [ln for ln in out.splitlines() if ln.startswith("docker buildx create")]
    rest = "\n".join(ln for ln in out.splitlines() if not ln.startswith("docker buildx create"))
    docs = [d for d in yaml.safe_load_all(rest) if d is not None]
    return creates, docs


def driver_opts(create_line: str) -> list[str]:
    words = shlex.split(create_line)
    return [words[i + 1] for i, w in enumerate(words) if w == "--driver-opt"]


def check_plan(creates: list[str], docs: list[dict[str, Any]], namespace: str) -> None:
    assert len(creates) == 2
    for line, image in zip(creates, ("api", "web"), strict=True):
        assert re.fullmatch(
            rf"docker buildx create --driver kubernetes --bootstrap --name buildfan-[a-z0-9]{{8}}-{image} .*", line
        )
        assert f"namespace={namespace}" in driver_opts(line)
    (deployment,) = docs  # web has no placement, so buildx makes its own Deployment
    assert deployment["kind"] == "Deployment"
    assert deployment["metadata"]["namespace"] == namespace
    assert deployment["metadata"]["name"].endswith("-api0")
    (spread,) = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"


def test_plan_with_kubeconfig_option(
    matrix: Path, tmp_path: Path, no_cluster: None, capsys: pytest.CaptureFixture[str]
) -> None:
    config = kubeconfig(tmp_path / "kubeconfig")
    creates, docs = plan_output(capsys, ["--log-format", "plain", "--kubeconfig", str(config), "plan", str(matrix)])
    check_plan(creates, docs, "ns1")


def test_plan_namespace_option_wins(
    matrix: Path, tmp_path: Path, no_cluster: None, capsys: pytest.CaptureFixture[str]
) -> None:
    config = kubeconfig(tmp_path / "kubeconfig")
    argv = ["--log-format", "plain", "--kubeconfig", str(config), "plan", str(matrix), "--namespace", "other"]
    check_plan(*plan_output(capsys, argv), "other")


def test_plan_without_manifest_says_so(
    matrix: Path, tmp_path: Path, no_cluster: None, capsys: pytest.CaptureFixture[str]
) -> None:
    config = kubeconfig(tmp_path / "kubeconfig")
    assert main(["--kubeconfig", str(config), "plan", str(matrix)]) == 0
    assert "# buildx creates its own Deployment (placement: none, no pod template)" in capsys.readouterr().out


def test_plan_reads_kubeconfig_env(
    matrix: Path, tmp_path: Path, no_cluster: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "kubeconfig")))
    check_plan(*plan_output(capsys, ["--log-format", "plain", "plan", str(matrix)]), "ns1")


# --- run: errors ---------------------------------------------------------------------------------------


def test_run_missing_matrix_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--log-format", "plain", "run", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0].startswith("buildfan: error: ")
    assert "missing.yaml" in err[0]


# --- report --------------------------------------------------------------------------------------------


def sample_report() -> dict[str, Any]:
    results = [
        BuildResult(
            "api",
            "succeeded",
            "bf-api",
            Placement("bf-api-0", "node-a"),
            T0,
            T0 + dt.timedelta(seconds=30),
            digest="sha256:" + "a" * 64,
        ),
        BuildResult("web", "failed", "bf-web", None, T0, T0 + dt.timedelta(seconds=5), error="exit code: 2"),
    ]
    return build_report(results, "run1", "ci", T0, T0 + dt.timedelta(seconds=40))


def test_report_prints_tables_and_writes_svg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_report(sample_report(), tmp_path / "report.json")
    svg = tmp_path / "out" / "timeline.svg"
    assert main(["--log-format", "plain", "report", str(tmp_path / "report.json"), "--svg", str(svg)]) == 0
    out = capsys.readouterr().out
    assert "api" in out and "web" in out and "node-a" in out
    assert out.rstrip().endswith(f"timeline: {svg}")
    assert ET.parse(svg).getroot().tag.endswith("svg")


def test_report_without_svg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_report(sample_report(), tmp_path / "report.json")
    assert main(["report", str(tmp_path / "report.json")]) == 0
    assert "timeline:" not in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == [tmp_path / "report.json"]


@pytest.mark.parametrize("content", ["not json", json.dumps({"schema": "other"}), "[]"])
def test_report_rejects_non_reports(content: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "r.json").write_text(content)
    assert main(["report", str(tmp_path / "r.json")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"buildfan: error: {tmp_path / 'r.json'}: ")
