"""buildfan.runner: the placement watcher's bookkeeping, fail-fast waiting, and prepare() on a fake cluster."""

from __future__ import annotations

import copy
import datetime as dt
import threading
import time
from collections.abc import Iterator, MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog

from buildfan import runner
from buildfan.errors import UserError
from buildfan.matrix import BuilderSpec, ImageSpec, Matrix, PlacementSpec, PodTemplate
from buildfan.placement import Placement
from buildfan.plan import IMAGE_LABEL, RUN_LABEL, BuilderPlan
from buildfan.report import BuildResult
from buildfan.runner import Placements, _wait, prepare

T0 = dt.datetime(2026, 12, 4, 15, 16, 50, tzinfo=dt.UTC)

Logs = list[MutableMapping[str, Any]]


@pytest.fixture(autouse=True)
def logs() -> Iterator[Logs]:
    """Capture structlog events (and keep them off a stream an earlier test may have left configured)."""
    with structlog.testing.capture_logs() as captured:
        yield captured


# --- Placements ----------------------------------------------------------------------------------------


def pod(
    name: str, image: str | None = "api", node: str | None = "node-a", ready: bool = True, deleting: bool = False
) -> Any:
    labels = {IMAGE_LABEL: image, RUN_LABEL: "r1"} if image else None
    return SimpleNamespace(
        metadata=SimpleNamespace(name=name, labels=labels, deletion_timestamp=T0 if deleting else None),
        spec=SimpleNamespace(node_name=node),
        status=SimpleNamespace(ready=ready),
    )


class PodCluster:
    """placement_of as the real one computes it, from the fake pod; watch_pods yields the given pods."""

    def __init__(self, pods: list[Any] | None = None, fail: bool = False) -> None:
        self.pods, self.fail = pods or [], fail
        self.watched: list[tuple[str, str]] = []

    def placement_of(self, p: Any) -> Placement:
        return Placement(p.metadata.name, p.spec.node_name, ready_at=T0 if p.status.ready else None)

    def watch_pods(self, namespace: str, selector: str, stop: threading.Event) -> Iterator[Any]:
        self.watched.append((namespace, selector))
        if self.fail:
            raise ConnectionError("watch failed")
        yield from self.pods


def placements(cluster: PodCluster | None = None) -> Placements:
    return Placements(cluster or PodCluster(), "ci", "r1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "ignored",
    [pod("p", image=None), pod("p", node=None), pod("p", deleting=True)],
    ids=["no image label", "not scheduled", "being deleted"],
)
def test_ignored_pods(ignored: Any) -> None:
    pl = placements()
    pl._see(ignored)
    assert pl.all() == {}


def test_unready_placement_is_kept_until_a_ready_one() -> None:
    pl = placements()
    pl._see(pod("p1", ready=False))
    assert pl.get("api", timeout=0) == Placement("p1", "node-a")
    pl._see(pod("p1", ready=True))
    assert pl.get("api", timeout=0) == Placement("p1", "node-a", ready_at=T0)


def test_a_ready_placement_is_not_replaced_by_an_unready_pod() -> None:
    pl = placements()
    pl._see(pod("p1", node="node-a"))
    pl._see(pod("p2", node="node-b", ready=False))
    assert pl.get("api", timeout=0) == Placement("p1", "node-a", ready_at=T0)


def test_a_newer_ready_pod_wins() -> None:
    pl = placements()
    pl._see(pod("p1", node="node-a"))
    pl._see(pod("p2", node="node-b"))
    assert pl.all() == {"api": Placement("p2", "node-b", ready_at=T0)}


def test_placements_per_image() -> None:
    pl = placements()
    pl._see(pod("p1", image="api"))
    pl._see(pod("p2", image="web", node="node-b"))
    assert {k: v.node for k, v in pl.all().items()} == {"api": "node-a", "web": "node-b"}


def test_get_unknown_image_times_out_with_none() -> None:
    assert placements().get("api", timeout=0) is None


def test_get_waits_for_readiness() -> None:
    pl = placements()
    pl._see(pod("p1", ready=False))
    later = threading.Timer(0.05, pl._see, [pod("p1", ready=True)])
    later.start()
    try:
        assert pl.get("api", timeout=5) == Placement("p1", "node-a", ready_at=T0)
    finally:
        later.join()


def test_all_is_a_copy() -> None:
    pl = placements()
    pl._see(pod("p1"))
    pl.all().clear()
    assert "api" in pl.all()


def test_watcher_follows_the_runs_pods() -> None:
    cluster = PodCluster([pod("p1", ready=False), pod("p1"), pod("w1", image="web")])
    with placements(cluster) as pl:
        pl._thread.join(5)
    assert cluster.watched == [("ci", f"{RUN_LABEL}=r1")]
    assert set(pl.all()) == {"api", "web"}
    assert pl._stop.is_set()


def test_a_failing_watch_is_not_fatal(logs: Logs) -> None:
    with placements(PodCluster(fail=True)) as pl:
        pl._thread.join(5)
    assert pl.all() == {}
    assert {"event": "placement watch stopped", "error": "watch failed", "log_level": "warning"} in logs


# --- _wait ---------------------------------------------------------------------------------------------


@pytest.fixture
def kills(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """kill_children would SIGTERM the test process's children: count calls instead."""
    calls: list[int] = []
    monkeypatch.setattr(runner, "kill_children", lambda: calls.append(1))
    return calls


def result(image: str, status: str = "succeeded") -> BuildResult:
    return BuildResult(image, status, f"bf-{image}", None, T0, T0)


def done(value: BuildResult | BaseException) -> Future[BuildResult]:
    f: Future[BuildResult] = Future()
    if isinstance(value, BaseException):
        f.set_exception(value)
    else:
        f.set_result(value)
    return f


def test_wait_all_succeeded(kills: list[int]) -> None:
    cancelled = threading.Event()
    _wait([done(result("a")), done(result("b"))], True, cancelled)
    assert not cancelled.is_set() and kills == []


def test_wait_failure_without_fail_fast_lets_others_run(kills: list[int]) -> None:
    cancelled = threading.Event()
    _wait([done(result("a", "failed")), done(result("b"))], False, cancelled)
    assert not cancelled.is_set() and kills == []


def test_wait_fail_fast_cancels_once(kills: list[int]) -> None:
    cancelled = threading.Event()
    _wait([done(result("a", "failed")), done(result("b", "failed")), done(result("c"))], True, cancelled)
    assert cancelled.is_set()
    assert kills == [1]


def test_wait_fail_fast_stops_builds_still_running(kills: list[int]) -> None:
    cancelled = threading.Event()

    def slow_build() -> BuildResult:
        stopped = cancelled.wait(10)
        return result("slow", "failed" if stopped else "succeeded")

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(result, "quick", "failed"), pool.submit(slow_build)]
        t0 = time.monotonic()
        _wait(futures, True, cancelled)
    assert time.monotonic() - t0 < 5
    assert futures[1].result().status == "failed"
    assert kills == [1]


def test_wait_reraises_a_crash(kills: list[int]) -> None:
    boom = RuntimeError("boom")
    with pytest.raises(RuntimeError) as info:
        _wait([done(result("a")), done(boom)], False, threading.Event())
    assert info.value is boom


def test_wait_nothing() -> None:
    _wait([], True, threading.Event())


# --- prepare -------------------------------------------------------------------------------------------


class PrepCluster:
    """What prepare needs from Cluster; records the calls."""

    default_namespace = "ctx-ns"

    def __init__(self, missing_namespace: bool = False) -> None:
        self.missing_namespace = missing_namespace
        self.calls: list[tuple[Any, ...]] = []

    def check_namespace(self, namespace: str) -> None:
        self.calls.append(("check_namespace", namespace))
        if self.missing_namespace:
            raise UserError(f"namespace {namespace!r} not found; create it or set `namespace:`")

    def validate_deployment(self, namespace: str, manifest: dict[str, Any], source: str) -> None:
        self.calls.append(("validate", namespace, manifest["metadata"]["name"], source))
        self.validated = copy.deepcopy(manifest)

    def read_template_configmap(self, namespace: str, name: str) -> dict[str, Any]:
        raise AssertionError("no ConfigMap template in these matrices")

    def merge_pod_template(
        self, namespace: str, base: dict[str, Any], patch: dict[str, Any], labels: dict[str, str], source: str
    ) -> dict[str, Any]:
        self.calls.append(("merge", namespace, source))
        merged = copy.deepcopy(base)
        merged["spec"] |= patch.get("spec", {})
        return merged


def image(name: str, builder: BuilderSpec | None = None) -> ImageSpec:
    return ImageSpec(name, Path("/src") / name, Path("/src") / name / "Dockerfile", builder=builder or BuilderSpec())


def matrix(*images: ImageSpec, namespace: str | None = None) -> Matrix:
    return Matrix(Path("/src/matrix.yaml"), namespace, None, images)


def prep(m: Matrix, cluster: PrepCluster) -> tuple[str, tuple[BuilderPlan, ...]]:
    return prepare(m, cluster, "r1")  # type: ignore[arg-type]


UNPLACED = BuilderSpec(placement=PlacementSpec(spread=None))


def test_prepare_uses_the_context_namespace_and_validates_each_manifest() -> None:
    cluster = PrepCluster()
    namespace, plans = prep(matrix(image("api"), image("web", UNPLACED)), cluster)
    assert namespace == "ctx-ns"
    assert [(p.image, p.namespace) for p in plans] == [("api", "ctx-ns"), ("web", "ctx-ns")]
    assert plans[1].manifest is None
    assert cluster.calls == [
        ("check_namespace", "ctx-ns"),
        ("validate", "ctx-ns", plans[0].deployment, "/src/matrix.yaml: images[api]"),
    ]


def test_prepare_prefers_the_matrix_namespace() -> None:
    cluster = PrepCluster()
    namespace, plans = prep(matrix(image("api"), namespace="builds"), cluster)
    assert namespace == "builds" and plans[0].namespace == "builds"
    assert cluster.calls[0] == ("check_namespace", "builds")


def test_prepare_validates_the_merged_manifest() -> None:
    template = PodTemplate("/src/pod.yaml", '{"spec": {"nodeSelector": {"pool": "builders"}}}')
    cluster = PrepCluster()
    _, (plan,) = prep(matrix(image("api", BuilderSpec(pod_template=template))), cluster)
    assert [c[0] for c in cluster.calls] == ["check_namespace", "merge", "validate"]
    assert cluster.validated == plan.manifest
    assert cluster.validated["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "builders"}


def test_prepare_stops_at_a_missing_namespace() -> None:
    cluster = PrepCluster(missing_namespace=True)
    with pytest.raises(UserError, match="namespace 'ctx-ns' not found"):
        prep(matrix(image("api")), cluster)
    assert cluster.calls == [("check_namespace", "ctx-ns")]
