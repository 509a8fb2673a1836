"""The GitHub Action's two steps, built on the ordinary CLI.

GitHub passes each input as `INPUT_<ID upper-cased>` (dashes kept). The main step saves where it wrote the
run id (`$GITHUB_STATE` -> `STATE_run_file` in the post step, plus a file under `$HOME`, which GitHub
shares between a container action's steps). The post step runs even after a failure or cancel and removes
that run's leftovers; without a run file it sweeps leftovers of dead runs by label.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from buildfan import log

RunCli = Callable[[list[str]], int]


def inputs(env: Mapping[str, str]) -> dict[str, str]:
    """Pure: the action's inputs, by id, empty ones left out."""
    prefix = "INPUT_"
    return {k[len(prefix) :].lower(): v.strip() for k, v in env.items() if k.startswith(prefix) and v.strip()}


def run_file(env: Mapping[str, str]) -> Path:
    return Path(env.get("STATE_run_file") or Path(env.get("HOME", "/tmp")) / ".buildfan" / "run.json")


def main_argv(given: Mapping[str, str], run_path: Path) -> list[str]:
    """Pure: the `buildfan run` command line for the action's inputs."""
    argv = ["run", given.get("matrix", "matrix.yaml"), "--report", given.get("report", "buildfan-report.json")]
    argv += ["--run-file", str(run_path)]
    argv += ["--jobs", given["jobs"]] if "jobs" in given else []
    argv += ["--namespace", given["namespace"]] if "namespace" in given else []
    argv += ["--fail-fast"] if given.get("fail-fast", "false").lower() == "true" else []
    return argv


def _use_kubeconfig(given: Mapping[str, str], env: Mapping[str, str]) -> None:
    """A kubeconfig given as content is written to a private file that KUBECONFIG then names."""
    if "kubeconfig" not in given:
        return
    path = Path(env.get("RUNNER_TEMP") or Path(env.get("HOME", "/tmp")) / ".kube") / "buildfan-kubeconfig"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when the file already existed with a wider mode
    with os.fdopen(fd, "w") as f:
        f.write(given["kubeconfig"] + "\n")
    os.environ["KUBECONFIG"] = str(path)


def _setup(env: Mapping[str, str]) -> dict[str, str]:
    given = inputs(env)
    log.configure(given.get("log-format", "auto"))
    _use_kubeconfig(given, env)
    return given


def main_step(run_cli: RunCli, env: Mapping[str, str] = os.environ) -> int:
    given = _setup(env)
    path = run_file(env)
    if "GITHUB_STATE" in env:
        with open(env["GITHUB_STATE"], "a") as f:
            f.write(f"run_file={path}\n")
    return run_cli(main_argv(given, path))


def post_step(run_cli: RunCli, env: Mapping[str, str] = os.environ) -> int:
    given = _setup(env)
    path = run_file(env)
    if path.exists():
        code = run_cli(["gc", "--run-file", str(path)])
        path.unlink(missing_ok=True)
        return code
    sweep = ["gc", "--older-than", "1h"] + (["--namespace", given["namespace"]] if "namespace" in given else [])
    return run_cli(sweep)
