"""Shared fixtures: a scratch project directory with build contexts and a matrix writer."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog

WriteMatrix = Callable[[str], Path]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """tmp dir with services/{api,web}/Dockerfile and services/api/Dockerfile.dev."""
    for name in ("api", "web"):
        context = tmp_path / "services" / name
        context.mkdir(parents=True)
        (context / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "services" / "api" / "Dockerfile.dev").write_text("FROM scratch\n")
    return tmp_path


@pytest.fixture
def write_matrix(project: Path) -> WriteMatrix:
    """Write (dedented) YAML to <project>/matrix.yaml and return its path."""

    def write(text: str, name: str = "matrix.yaml") -> Path:
        path = project / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """`main()` points structlog at the captured stderr of its test; later tests must not inherit it."""
    yield
    structlog.reset_defaults()
