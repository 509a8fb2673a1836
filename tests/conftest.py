"""Test-suite wiring: the `testbed` marker and the session fixture that brings the real local cluster up.

Tests marked `testbed` need the real cluster (`make testbed-up`). The session fixture starts it or reuses a
running one. When it cannot, the tests skip locally; with BUILDFAN_REQUIRE_TESTBED=1 (what `make test` and CI
set) they fail instead, so a missing cluster can never pass as green.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.handle import Testbed

REPO = Path(__file__).resolve().parent.parent
REQUIRED = os.environ.get("BUILDFAN_REQUIRE_TESTBED") == "1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("testbed"):
            item.add_marker(pytest.mark.usefixtures("testbed"))


@pytest.fixture(scope="session")
def testbed() -> Iterator[Testbed]:
    up = subprocess.run([sys.executable, REPO / "testbed" / "testbed.py", "up"], capture_output=True, text=True)
    env_file = REPO / ".testbed" / "env"
    if up.returncode != 0 or not env_file.exists():
        why = f"testbed unavailable: {(up.stderr.strip().splitlines() or ['no output'])[-1]}"
        if REQUIRED:
            pytest.fail(why + " (BUILDFAN_REQUIRE_TESTBED=1)")
        pytest.skip(why)
    yield Testbed.from_env_file(env_file)
