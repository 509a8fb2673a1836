"""The CI integration files: action.yml, the Dockerfile and .dockerignore, and the two CI examples.

Each YAML file is validated against the JSON Schema its CI system publishes, as vendored (pinned) inside the
check-jsonschema package, and the GitHub workflow also goes through actionlint, twice: as written (remote
`buildfan/buildfan@v0`) and with the action taken from this checkout (`uses: ./`), so that actionlint checks
the step's inputs and the outputs it reads against action.yml.

Missing tools skip locally; with BUILDFAN_REQUIRE_TOOLS=1 (CI) they fail, so a missing tool never passes as
green. actionlint is a Go program:
    GOBIN=~/.cache/buildfan-tools/bin go install github.com/rhysd/actionlint/cmd/actionlint@v1.7.12
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ACTION = REPO / "action.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
GITLAB = REPO / "examples" / "gitlab-ci.yml"
WORKFLOW = REPO / "examples" / "github-workflow.yml"

REQUIRED = os.environ.get("BUILDFAN_REQUIRE_TOOLS") == "1"
TOOLS_BIN = Path.home() / ".cache" / "buildfan-tools" / "bin"
ACTIONLINT_VERSION = "v1.7.12"
ACTIONLINT_INSTALL = f"GOBIN={TOOLS_BIN} go install github.com/rhysd/actionlint/cmd/actionlint@{ACTIONLINT_VERSION}"

INPUTS = {
    "matrix": "matrix.yaml",
    "namespace": "",
    "jobs": "",
    "kubeconfig": "",
    "fail-fast": "false",
    "report": "buildfan-report.json",
    "log-format": "auto",
}
OUTPUTS = {"report", "digests", "placements", "metadata"}
POST_SCRIPT = "/usr/local/bin/buildfan-action-post"


def missing_tool(why: str) -> None:
    if REQUIRED:
        pytest.fail(f"{why} (BUILDFAN_REQUIRE_TOOLS=1)")
    pytest.skip(why)


class Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans, as GitHub and GitLab read YAML: `on:` stays the string "on"."""


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=Yaml12Loader)


@cache
def vendored_schema(name: str) -> dict[str, Any]:
    """A schema vendored in check-jsonschema (check_jsonschema/builtin_schemas/vendor/<name>.json)."""
    try:
        text = files("check_jsonschema.builtin_schemas.vendor").joinpath(f"{name}.json").read_text()
    except ModuleNotFoundError:
        missing_tool("check-jsonschema is not installed: pip install -e '.[dev]'")
    schema: dict[str, Any] = json.loads(text)
    return schema


def schema_errors(schema_name: str, document: Any) -> list[str]:
    schema = vendored_schema(schema_name)
    import jsonschema  # a dependency of check-jsonschema, so present once the schema loaded

    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema, format_checker=validator_cls.FORMAT_CHECKER)
    return [
        f"{'/'.join(map(str, err.absolute_path)) or '<root>'}: {err.message}"
        for err in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    ]


# --- JSON Schema validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema_name", "path"),
    [("github-actions", ACTION), ("github-workflows", WORKFLOW), ("gitlab-ci", GITLAB)],
    ids=["action.yml", "github-workflow.yml", "gitlab-ci.yml"],
)
def test_file_matches_its_ci_schema(schema_name: str, path: Path) -> None:
    assert schema_errors(schema_name, load(path)) == []


def test_schemas_reject_a_broken_file() -> None:
    """The validation above is live: a wrong `runs.using` or `artifacts.when` is caught."""
    action = load(ACTION)
    action["runs"]["using"] = "dockerfile"
    assert schema_errors("github-actions", action)
    gitlab = load(GITLAB)
    gitlab["build-images"]["artifacts"]["when"] = "sometimes"
    assert schema_errors("gitlab-ci", gitlab)


# --- action.yml -------------------------------------------------------------------------------------------


def test_action_inputs_and_outputs() -> None:
    action = load(ACTION)
    inputs = action["inputs"]
    assert {name: spec.get("default") for name, spec in inputs.items()} == INPUTS
    for name, spec in inputs.items():
        assert name == name.lower(), name
        assert spec.get("description", "").strip(), f"input {name} has no description"
        assert spec.get("required", False) is False, name
        assert isinstance(spec["default"], str), f"input {name}: defaults reach the container as strings"
    assert set(action["outputs"]) == OUTPUTS
    for name, spec in action["outputs"].items():
        assert spec.get("description", "").strip(), f"output {name} has no description"


def test_action_runs_the_dockerfile_with_a_post_step() -> None:
    runs = load(ACTION)["runs"]
    assert runs["using"] == "docker"
    assert runs["image"] == "Dockerfile"
    assert runs["entrypoint"] == "buildfan"
    assert runs["args"] == ["action", "main"]
    assert runs["post-entrypoint"] == POST_SCRIPT


# --- Dockerfile and .dockerignore -------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) per instruction: comments dropped, continuations and heredoc bodies folded in."""
    out: list[tuple[str, str]] = []
    lines = iter(DOCKERFILE.read_text().splitlines())
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        text = line
        while text.endswith("\\"):
            text = text[:-1] + " " + next(lines).strip()
        heredoc = re.search(r"<<-?['\"]?(\w+)['\"]?", text)
        if heredoc:
            body = []
            for body_line in lines:
                if body_line.strip() == heredoc.group(1):
                    break
                body.append(body_line)
            text += "\n" + "\n".join(body)
        keyword, _, rest = text.strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def stages() -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(base, name, instructions) per stage."""
    result: list[tuple[str, str, list[tuple[str, str]]]] = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            base, _, name = rest.partition(" AS ")
            result.append((base.strip(), name.strip(), []))
        elif result:
            result[-1][2].append((keyword, rest))
    return result


def test_dockerfile_base_images_are_build_args() -> None:
    global_args = dict(rest.partition("=")[::2] for kw, rest in dockerfile_instructions()[:3] if kw == "ARG")
    assert global_args == {
        "PYTHON_IMAGE": "python:3.11-slim-bookworm",
        "DOCKER_CLI_IMAGE": "docker:28.2.2-cli",
        "BUILDX_IMAGE": "docker/buildx-bin:0.36.1",
    }
    names = [name for _, name, _ in stages()]
    assert names == ["docker-cli", "buildx", "builder", "runtime", "action"]
    for base, name, _ in stages():
        assert re.fullmatch(r"\$\{[A-Z_]+_IMAGE\}", base) or base in names, f"stage {name}: FROM {base}"


def test_dockerfile_final_stages() -> None:
    by_name = {name: instructions for _, name, instructions in stages()}
    runtime = by_name["runtime"]
    copies = [rest for kw, rest in runtime if kw == "COPY"]
    assert any("--from=builder /opt/buildfan /opt/buildfan" in c for c in copies)
    assert any("--from=docker-cli /usr/local/bin/docker /usr/local/bin/docker" in c for c in copies)
    assert any("--from=buildx /buildx /usr/libexec/docker/cli-plugins/docker-buildx" in c for c in copies)
    post = next(c for c in copies if POST_SCRIPT in c)
    assert "--chmod=0755" in post
    body = post.splitlines()[1:]
    assert body[0] == "#!/bin/sh"
    # The runner passes runs.args (`action main`) to the post step as well: they must not reach the CLI.
    assert body[-1] == "exec buildfan action post"
    assert ("USER", "buildfan:buildfan") in runtime
    assert ("ENTRYPOINT", '["buildfan"]') in runtime
    assert ("CMD", '["--help"]') in runtime
    env = " ".join(rest for kw, rest in runtime if kw == "ENV")
    assert "DOCKER_CONFIG=/home/buildfan/.docker" in env
    assert 'PATH="/opt/buildfan/bin:${PATH}"' in env
    assert "--uid 10001" in next(rest for kw, rest in runtime if kw == "RUN" and "useradd" in rest)
    # GitHub builds the last stage for `image: Dockerfile`; container actions must run as root.
    assert stages()[-1][:2] == ("runtime", "action")
    assert ("USER", "root") in by_name["action"]


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories decides."""

    def matches(pattern: str, candidate: str) -> bool:
        regex = re.escape(pattern.strip("/")).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        return re.fullmatch(regex, candidate) is not None

    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate, pattern = raw.startswith("!"), raw.lstrip("!")
        if any(matches(pattern, c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_only_the_package_sources() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    for path in (
        ".git/HEAD", ".venv/bin/python", ".testbed/env", "tests/unit/test_plan.py", "bench/all.py",
        "examples/matrix.yaml", ".mypy_cache/3.11/x.json", "buildfan/__pycache__/cli.cpython-311.pyc",
        "buildfan.egg-info/PKG-INFO", ".pytest_cache/README.md",
    ):  # fmt: skip
        assert dockerignored(path, patterns), f"{path} should be ignored"
    sources = [
        src
        for kw, rest in dockerfile_instructions()
        if kw == "COPY" and "--from" not in rest and "<<" not in rest
        for src in rest.split()[:-1]
        if not src.startswith("--")
    ]
    assert sources == ["pyproject.toml", "README.md", "buildfan/"]
    for path in ("pyproject.toml", "README.md", "buildfan/__init__.py", "buildfan/cli.py"):
        assert not dockerignored(path, patterns), f"{path} is needed by the Dockerfile"


# --- the GitLab example -----------------------------------------------------------------------------------


def test_gitlab_example_job() -> None:
    ci = load(GITLAB)
    job = ci["build-images"]
    assert job["image"]["entrypoint"] == [""], "GitLab pipes the script to sh: the ENTRYPOINT must be cleared"
    assert job["image"]["name"].endswith("/buildfan:0.1.0")
    assert job["script"] == ["buildfan run matrix.yaml --report buildfan-report.json --run-file .buildfan/run-id"]
    assert job["after_script"] == ["buildfan gc --run-file .buildfan/run-id"]
    artifacts = job["artifacts"]
    assert artifacts["when"] == "always"
    assert set(artifacts["paths"]) == {"buildfan-report.json", "timeline.svg"}
    assert artifacts["reports"] == {"junit": "junit.xml", "metrics": "metrics.txt", "dotenv": "build.env"}
    consumers = [
        name
        for name, spec in ci.items()
        if isinstance(spec, dict)
        and any((n if isinstance(n, str) else n.get("job")) == "build-images" for n in spec.get("needs", []))
    ]
    assert consumers, "a later job should consume build-images' dotenv"
    assert ci["stages"].index(ci[consumers[0]]["stage"]) > ci["stages"].index(job["stage"])


# --- the GitHub example -----------------------------------------------------------------------------------


def fan_step(workflow: dict[str, Any]) -> dict[str, Any]:
    steps = [s for job in workflow["jobs"].values() for s in job["steps"]]
    return next(s for s in steps if str(s.get("uses", "")).startswith("buildfan/buildfan@"))


def test_github_example_uses_the_action() -> None:
    workflow = load(WORKFLOW)
    assert workflow["permissions"] == {"contents": "read"}
    assert workflow["concurrency"]["group"]
    step = fan_step(workflow)
    assert step["uses"] == "buildfan/buildfan@v0"
    assert step["id"] == "fan"
    assert set(step["with"]) <= set(INPUTS)
    assert step["with"]["kubeconfig"] == "${{ secrets.KUBECONFIG }}"
    text = WORKFLOW.read_text()
    assert "${{ steps.fan.outputs.digests }}" in text
    assert set(re.findall(r"steps\.fan\.outputs\.([\w-]+)", text)) <= OUTPUTS


@pytest.fixture(scope="module")
def actionlint() -> str:
    found = shutil.which("actionlint") or shutil.which("actionlint", path=str(TOOLS_BIN))
    if not found:
        missing_tool(f"actionlint not found in PATH or {TOOLS_BIN}; install it with: {ACTIONLINT_INSTALL}")
    return str(found)


def run_actionlint(actionlint: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [actionlint, "-no-color", "-shellcheck=", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_actionlint_accepts_the_github_example(actionlint: str) -> None:
    done = run_actionlint(actionlint, REPO, str(WORKFLOW))
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_checks_the_example_against_action_yml(actionlint: str, tmp_path: Path) -> None:
    """With `uses: ./` actionlint reads action.yml: unknown inputs and undefined outputs are errors."""
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    (tmp_path / ".git").touch()  # how actionlint finds a project root, against which `./` resolves
    shutil.copy(ACTION, tmp_path / "action.yml")
    shutil.copy(DOCKERFILE, tmp_path / "Dockerfile")
    local = WORKFLOW.read_text().replace("buildfan/buildfan@v0", "./")
    workflow = tmp_path / ".github" / "workflows" / "images.yml"
    # actionlint takes runs.entrypoint/post-entrypoint for files of the action's repository; for a Docker
    # action they are commands inside the image (buildfan on PATH, the post script the Dockerfile installs).
    ignore = ["-ignore", r'it is specified at "(entrypoint|post-entrypoint)" key in "runs" section']

    workflow.write_text(local)
    done = run_actionlint(actionlint, tmp_path, *ignore, str(workflow))
    assert done.returncode == 0, done.stdout + done.stderr

    workflow.write_text(local.replace("fail-fast:", "fail-fasst:").replace("outputs.digests", "outputs.digest"))
    done = run_actionlint(actionlint, tmp_path, *ignore, str(workflow))
    assert done.returncode == 1
    assert 'input "fail-fasst" is not defined' in done.stdout
    assert 'property "digest" is not defined' in done.stdout
