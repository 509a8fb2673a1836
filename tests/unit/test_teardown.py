"""buildfan.teardown: everything registered or still labelled is removed once; failures are reported."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
import structlog

from buildfan.buildx import BuildxError
from buildfan.cluster import Resource
from buildfan.teardown import Teardown

SELECTOR = "buildfan.dev/run=r1"
DEPLOY = Resource("Deployment", "ci", "buildfan-r1-api0")
SCRATCH = Resource("PodTemplate", "ci", "buildfan-r1-merge-1")

Logs = list[MutableMapping[str, Any]]


@pytest.fixture(autouse=True)
def logs() -> Iterator[Logs]:
    """Capture structlog events (and keep them off a stream an earlier test may have left configured)."""
    with structlog.testing.capture_logs() as captured:
        yield captured


class FakeCluster:
    def __init__(self, labelled: list[Resource] | None = None, failing: set[str] | None = None) -> None:
        self.labelled = labelled or []
        self.failing = failing or set()
        self.deleted: list[Resource] = []
        self.listed: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()

    def list_labelled(self, selector: str, namespace: str | None = None) -> list[Resource]:
        self.listed.append((selector, namespace))
        return list(self.labelled)

    def delete(self, res: Resource) -> None:
        if res.name in self.failing:
            raise RuntimeError("forbidden")
        with self.lock:
            self.deleted.append(res)


class BrokenListing(FakeCluster):
    def list_labelled(self, selector: str, namespace: str | None = None) -> list[Resource]:
        raise ConnectionError("connection refused")


class FakeBuildx:
    def __init__(self, failing: set[str] | None = None) -> None:
        self.failing = failing or set()
        self.removed: list[str] = []
        self.lock = threading.Lock()

    def remove(self, name: str) -> None:
        if name in self.failing:
            raise BuildxError(f"builder {name}: buildx rm failed", "permission denied")
        with self.lock:
            self.removed.append(name)


def teardown(cluster: FakeCluster, buildx: FakeBuildx) -> Teardown:
    return Teardown(cluster, buildx, "ci", SELECTOR)  # type: ignore[arg-type]


def test_removes_builders_and_registered_resources() -> None:
    cluster, buildx = FakeCluster(), FakeBuildx()
    t = teardown(cluster, buildx)
    t.builder("buildfan-r1-api")
    t.builder("buildfan-r1-web")
    t.resource(DEPLOY)
    assert t.close() == []
    assert sorted(buildx.removed) == ["buildfan-r1-api", "buildfan-r1-web"]
    assert cluster.deleted == [DEPLOY]
    assert cluster.listed == [(SELECTOR, "ci")]


def test_sweeps_what_the_run_label_still_finds_once() -> None:
    created = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    swept_twin = Resource(DEPLOY.kind, DEPLOY.namespace, DEPLOY.name, created, (("buildfan.dev/run", "r1"),))
    swept_scratch = Resource(SCRATCH.kind, SCRATCH.namespace, SCRATCH.name, created)
    cluster = FakeCluster(labelled=[swept_twin, swept_scratch])
    t = teardown(cluster, FakeBuildx())
    t.resource(DEPLOY)
    t.resource(DEPLOY)
    assert t.close() == []
    assert sorted(cluster.deleted, key=lambda r: r.kind) == [DEPLOY, SCRATCH]


def test_nothing_registered() -> None:
    cluster, buildx = FakeCluster(), FakeBuildx()
    assert teardown(cluster, buildx).close() == []
    assert (cluster.deleted, buildx.removed) == ([], [])


def test_failures_are_reported_not_raised(logs: Logs) -> None:
    cluster = FakeCluster(labelled=[SCRATCH], failing={DEPLOY.name})
    buildx = FakeBuildx(failing={"buildfan-r1-api"})
    t = teardown(cluster, buildx)
    t.builder("buildfan-r1-api")
    t.builder("buildfan-r1-web")
    t.resource(DEPLOY)
    problems = t.close()
    assert sorted(problems) == [
        "Deployment ci/buildfan-r1-api0: forbidden",
        "builder buildfan-r1-api: buildx rm failed: permission denied",
    ]
    assert buildx.removed == ["buildfan-r1-web"]
    assert cluster.deleted == [SCRATCH]  # the other deletes still ran
    assert sorted(e["problem"] for e in logs if e["event"] == "teardown incomplete") == sorted(problems)


def test_a_failed_sweep_still_removes_what_was_registered(logs: Logs) -> None:
    cluster = BrokenListing()
    t = teardown(cluster, FakeBuildx())
    t.resource(DEPLOY)
    assert t.close() == []
    assert cluster.deleted == [DEPLOY]
    assert {"event": "could not list the run's resources", "error": "connection refused", "log_level": "error"} in logs


def test_many_builders_are_removed_concurrently() -> None:
    names = [f"buildfan-r1-img{i}" for i in range(12)]
    buildx = FakeBuildx()
    t = teardown(FakeCluster(), buildx)
    for name in names:
        t.builder(name)
    assert t.close() == []
    assert sorted(buildx.removed) == sorted(names)


class CrashingBuildx(FakeBuildx):
    def remove(self, name: str) -> None:
        raise OSError(24, "Too many open files")  # e.g. spawning `docker buildx rm` fails


def test_an_unexpected_builder_error_does_not_stop_teardown() -> None:
    cluster = FakeCluster()
    t = teardown(cluster, CrashingBuildx())
    t.builder("buildfan-r1-api")
    t.resource(DEPLOY)
    problems = t.close()
    assert len(problems) == 1 and "buildfan-r1-api" in problems[0]
    assert cluster.deleted == [DEPLOY]
