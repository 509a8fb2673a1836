"""The container image (Dockerfile): built by the testbed's real BuildKit, checked, and run with runc."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.handle import Testbed

pytestmark = pytest.mark.testbed
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def builder(testbed: Testbed) -> Iterator[str]:
    name = f"img-{uuid.uuid4().hex[:6]}"
    testbed.run(
        "docker",
        "buildx",
        "create",
        "--name",
        name,
        "--driver",
        "kubernetes",
        "--driver-opt",
        "namespace=default",
        "--bootstrap",
        timeout=180,
    )
    try:
        yield name
    finally:
        testbed.run("docker", "buildx", "rm", name, timeout=120)


def push_scratch_image(tb: Testbed, builder: str, tmp: Path, ref: str, files: dict[str, Path]) -> str:
    """An image holding just these host files (the docker CLI, the buildx plugin), pushed to the testbed."""
    ctx = tmp / ref.replace("/", "_").replace(":", "_")
    ctx.mkdir()
    lines = ["FROM scratch"]
    for dest, src in files.items():
        shutil.copy(src, ctx / src.name)
        lines.append(f"COPY --chmod=0755 {src.name} {dest}")
    (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")
    full = f"{tb.registry}/{ref}"
    tb.run(
        "docker",
        "buildx",
        "build",
        "--builder",
        builder,
        "--output",
        f"type=image,name={full},push=true,registry.insecure=true",
        str(ctx),
        timeout=300,
    )
    return full


def base_args(tb: Testbed, builder: str, tmp: Path) -> list[str]:
    docker = Path(shutil.which("docker", path=tb.env["PATH"]) or "/usr/local/bin/docker")
    plugin = Path(tb.env["DOCKER_CONFIG"]) / "cli-plugins" / "docker-buildx"
    cli = push_scratch_image(tb, builder, tmp, "tools/docker-cli:test", {"/usr/local/bin/docker": docker})
    bx = push_scratch_image(tb, builder, tmp, "tools/buildx-bin:test", {"/buildx": plugin.resolve()})
    return [
        "--build-arg",
        f"PYTHON_IMAGE={tb.registry}/base:2",
        "--build-arg",
        f"DOCKER_CLI_IMAGE={cli}",
        "--build-arg",
        f"BUILDX_IMAGE={bx}",
    ]


def buildx_build(tb: Testbed, builder: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """`docker buildx build` of this repository on the testbed, base images from its registry."""
    return tb.run("docker", "buildx", "build", "--builder", builder, *args, str(REPO), timeout=timeout, check=False)


def test_dockerfile_check_has_no_warnings(testbed: Testbed, builder: str, tmp_path: Path) -> None:
    r = buildx_build(testbed, builder, "--call=check", *base_args(testbed, builder, tmp_path), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "no warnings found" in (r.stdout + r.stderr), r.stdout + r.stderr


def test_image_builds_and_runs_buildfan_version(testbed: Testbed, builder: str, tmp_path: Path) -> None:
    oci = tmp_path / "image.tar"
    ca = testbed.env.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")  # this machine's proxy CA
    args = ["--target", "runtime", "--secret", f"id=pip-ca,src={ca}", "--output", f"type=oci,dest={oci}"]
    r = buildx_build(testbed, builder, *args, *base_args(testbed, builder, tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    layout = tmp_path / "layout"
    layout.mkdir()
    subprocess.run(["tar", "-xf", oci, "-C", layout], check=True)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0].setdefault("annotations", {})["org.opencontainers.image.ref.name"] = "runtime"
    (layout / "index.json").write_text(json.dumps(index))
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:runtime", bundle], check=True, capture_output=True)
    spec = json.loads((bundle / "config.json").read_text())
    assert spec["process"]["user"]["uid"] == 10001  # USER buildfan
    assert spec["process"]["args"][0] == "buildfan"  # ENTRYPOINT
    spec["process"]["args"] = ["buildfan", "--version"]
    spec["process"]["terminal"] = False
    (bundle / "config.json").write_text(json.dumps(spec))
    run = subprocess.run(
        ["runc", "run", "--bundle", bundle, f"buildfan-image-{uuid.uuid4().hex[:6]}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "buildfan 0.1.0"
    sh = subprocess.run(["test", "-x", bundle / "rootfs" / "bin" / "sh"], check=False)
    assert sh.returncode == 0, "GitLab pipes its script into sh: the image needs one"
