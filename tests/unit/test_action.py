"""buildfan.action: GitHub Action inputs -> CLI command lines, and the main/post steps with a fake CLI."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from buildfan.action import inputs, main_argv, main_step, post_step, run_file

KUBECONFIG = "apiVersion: v1\nkind: Config\n"


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """The steps configure structlog to write to the (captured) stderr of the moment; undo that afterwards."""
    yield
    structlog.reset_defaults()


class FakeCli:
    """Stands in for cli.run_cli: records each command line and returns a fixed code."""

    def __init__(self, code: int = 0) -> None:
        self.code = code
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> int:
        self.calls.append(argv)
        return self.code


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A job environment: a tmp HOME and GITHUB_STATE; os.environ is restored afterwards."""
    monkeypatch.setenv("KUBECONFIG", "")  # records the original value, restored afterwards:
    monkeypatch.delenv("KUBECONFIG")  # the main step sets os.environ["KUBECONFIG"] itself
    (tmp_path / "home").mkdir()
    return {"HOME": str(tmp_path / "home"), "GITHUB_STATE": str(tmp_path / "state"), "INPUT_LOG-FORMAT": "plain"}


# --- pure parts ----------------------------------------------------------------------------------------


def test_inputs_drop_empty_keep_dashes_lower_case() -> None:
    env = {
        "INPUT_MATRIX": " ci/matrix.yaml ",
        "INPUT_FAIL-FAST": "true",
        "INPUT_NAMESPACE": "",
        "INPUT_JOBS": "   ",
        "HOME": "/home/runner",
        "XINPUT_OTHER": "x",
    }
    assert inputs(env) == {"matrix": "ci/matrix.yaml", "fail-fast": "true"}


def test_main_argv_defaults() -> None:
    assert main_argv({}, Path("/h/run.json")) == [
        "run",
        "matrix.yaml",
        "--report",
        "buildfan-report.json",
        "--run-file",
        "/h/run.json",
    ]


def test_main_argv_maps_every_input() -> None:
    given = {"matrix": "m.yaml", "report": "out/r.json", "jobs": "3", "namespace": "ci", "fail-fast": "true"}
    assert main_argv(given, Path("rf")) == [
        "run",
        "m.yaml",
        "--report",
        "out/r.json",
        "--run-file",
        "rf",
        "--jobs",
        "3",
        "--namespace",
        "ci",
        "--fail-fast",
    ]


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("TRUE", True), ("false", False), ("yes", False)])
def test_main_argv_fail_fast_only_when_true(value: str, expected: bool) -> None:
    assert ("--fail-fast" in main_argv({"fail-fast": value}, Path("rf"))) is expected


def test_run_file_from_state_wins_over_home() -> None:
    assert run_file({"STATE_run_file": "/s/run.json", "HOME": "/h"}) == Path("/s/run.json")


def test_run_file_under_home() -> None:
    assert run_file({"HOME": "/h"}) == Path("/h/.buildfan/run.json")
    assert run_file({"STATE_run_file": "", "HOME": "/h"}) == Path("/h/.buildfan/run.json")


# --- main step -----------------------------------------------------------------------------------------


def test_main_step_saves_state_and_runs(env: dict[str, str]) -> None:
    env |= {"INPUT_MATRIX": "m.yaml", "INPUT_FAIL-FAST": "true"}
    cli = FakeCli(code=1)
    assert main_step(cli, env) == 1
    path = Path(env["HOME"]) / ".buildfan" / "run.json"
    assert Path(env["GITHUB_STATE"]).read_text() == f"run_file={path}\n"
    assert cli.calls == [["run", "m.yaml", "--report", "buildfan-report.json", "--run-file", str(path), "--fail-fast"]]


def test_main_step_appends_to_existing_state(env: dict[str, str]) -> None:
    Path(env["GITHUB_STATE"]).write_text("other=1\n")
    main_step(FakeCli(), env)
    assert Path(env["GITHUB_STATE"]).read_text().splitlines()[0] == "other=1"


def test_main_step_without_github_state(env: dict[str, str]) -> None:
    del env["GITHUB_STATE"]
    cli = FakeCli()
    assert main_step(cli, env) == 0
    assert len(cli.calls) == 1


def test_main_step_writes_private_kubeconfig(env: dict[str, str], tmp_path: Path) -> None:
    env |= {"INPUT_KUBECONFIG": KUBECONFIG, "RUNNER_TEMP": str(tmp_path / "runner-temp")}
    main_step(FakeCli(), env)
    path = Path(os.environ["KUBECONFIG"])
    assert path == tmp_path / "runner-temp" / "buildfan-kubeconfig"
    assert path.read_text() == KUBECONFIG.strip() + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_main_step_kubeconfig_under_home_without_runner_temp(env: dict[str, str]) -> None:
    env["INPUT_KUBECONFIG"] = KUBECONFIG
    main_step(FakeCli(), env)
    assert os.environ["KUBECONFIG"] == str(Path(env["HOME"]) / ".kube" / "buildfan-kubeconfig")


def test_main_step_kubeconfig_private_even_if_file_existed(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "runner-temp" / "buildfan-kubeconfig"
    path.parent.mkdir()
    path.write_text("old\n")
    path.chmod(0o644)
    env |= {"INPUT_KUBECONFIG": KUBECONFIG, "RUNNER_TEMP": str(path.parent)}
    main_step(FakeCli(), env)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_main_step_leaves_kubeconfig_alone_without_input(env: dict[str, str]) -> None:
    main_step(FakeCli(), env)
    assert "KUBECONFIG" not in os.environ


# --- post step -----------------------------------------------------------------------------------------


def test_post_step_collects_the_run_and_removes_the_file(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "state-run.json"
    path.write_text('{"run_id": "r1", "namespace": "ci"}\n')
    env["STATE_run_file"] = str(path)
    cli = FakeCli(code=0)
    assert post_step(cli, env) == 0
    assert cli.calls == [["gc", "--run-file", str(path)]]
    assert not path.exists()


def test_post_step_passes_on_gc_failure(env: dict[str, str]) -> None:
    path = Path(env["HOME"]) / ".buildfan" / "run.json"
    path.parent.mkdir()
    path.write_text("{}\n")
    cli = FakeCli(code=2)
    assert post_step(cli, env) == 2
    assert cli.calls == [["gc", "--run-file", str(path)]]


def test_post_step_sweeps_by_label_without_run_file(env: dict[str, str]) -> None:
    cli = FakeCli()
    assert post_step(cli, env) == 0
    assert cli.calls == [["gc", "--older-than", "1h"]]


def test_post_step_sweep_is_limited_to_the_namespace_input(env: dict[str, str]) -> None:
    env["INPUT_NAMESPACE"] = "ci"
    cli = FakeCli()
    post_step(cli, env)
    assert cli.calls == [["gc", "--older-than", "1h", "--namespace", "ci"]]


def test_main_then_post_share_the_run_file(env: dict[str, str]) -> None:
    cli = FakeCli()
    main_step(cli, env)
    path = Path(cli.calls[0][cli.calls[0].index("--run-file") + 1])
    path.parent.mkdir(parents=True)
    path.write_text('{"run_id": "r1", "namespace": "ci"}\n')  # what `run --run-file` writes
    state = dict(line.split("=", 1) for line in Path(env["GITHUB_STATE"]).read_text().splitlines())
    post_step(cli, {**env, "STATE_run_file": state["run_file"]})
    assert cli.calls[1] == ["gc", "--run-file", str(path)]
