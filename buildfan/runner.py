"""One run: prepare (validate everything, no writes), create builders concurrently, build with at most
`jobs` at once, watch placements, tear down. Concurrency lives here and only here: a thread per image,
a semaphore for `jobs`, one watcher thread for pods.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from buildfan.buildx import Buildx, BuildxError, build_kwargs, read_digest
from buildfan.cluster import Cluster, Resource
from buildfan.errors import Interrupted
from buildfan.matrix import ImageSpec, Matrix
from buildfan.placement import Placement
from buildfan.plan import IMAGE_LABEL, RUN_LABEL, BuilderPlan, new_run_id, plan_builders
from buildfan.pod_template import apply_template
from buildfan.progress import ProgressEvent, ProgressTracker, SourceLocation
from buildfan.report import BuildResult, Report, build_report
from buildfan.teardown import Teardown

log = structlog.get_logger("buildfan.runner")

EventSink = Callable[[str, ProgressEvent | str | BuildResult], None]


@dataclass(frozen=True)
class RunOptions:
    jobs: int | None = None
    fail_fast: bool = False
    build: bool = True  # False: create and place builders only (benchmarks, `--no-build`)
    run_id: str = field(default_factory=new_run_id)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- prepare: validation, no cluster writes


def prepare(matrix: Matrix, cluster: Cluster, run_id: str) -> tuple[str, tuple[BuilderPlan, ...]]:
    """Resolve the namespace, plan the builders and have the API server validate every manifest.

    The only write is the short-lived scratch PodTemplate the pod-template merge needs (see cluster).
    """
    for image in matrix.images:
        build_kwargs(image)  # buildx option syntax errors surface now, before anything is created
    namespace = matrix.namespace or cluster.default_namespace
    cluster.check_namespace(namespace)
    plans = tuple(apply_template(p, cluster, matrix.path) for p in plan_builders(matrix, run_id, namespace))
    for p in plans:
        if p.manifest is not None:
            cluster.validate_deployment(namespace, p.manifest, f"{matrix.path}: images[{p.image}]")
    return namespace, plans


# ---------------------------------------------------------------- signals


@contextmanager
def interrupts() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP (a closed terminal) raise Interrupted in the main thread (once): teardown runs."""
    fired = threading.Event()

    def handler(signum: int, _frame: FrameType | None) -> None:
        if not fired.is_set():
            fired.set()
            raise Interrupted(f"interrupted by {signal.Signals(signum).name}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def kill_children() -> None:
    """Stop the buildx processes this run started (python-on-whales keeps their handles to itself)."""
    me = os.getpid()
    for task in Path(f"/proc/{me}/task").glob("*"):
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in kids:
            with suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGTERM)


# ---------------------------------------------------------------- placement watcher


class Placements:
    """Follows the run's pods with a watch and keeps the latest Ready placement per image."""

    def __init__(self, cluster: Cluster, namespace: str, run_id: str) -> None:
        self.cluster, self.namespace, self.run_id = cluster, namespace, run_id
        self._by_image: dict[str, Placement] = {}
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="placements", daemon=True)

    def __enter__(self) -> Placements:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def _follow(self) -> None:
        try:
            for pod in self.cluster.watch_pods(self.namespace, f"{RUN_LABEL}={self.run_id}", self._stop):
                self._see(pod)
        except Exception as e:
            log.warning("placement watch stopped", error=str(e))

    def _see(self, pod: Any) -> None:
        image = (pod.metadata.labels or {}).get(IMAGE_LABEL)
        if not image or not pod.spec.node_name or pod.metadata.deletion_timestamp:
            return
        placement = self.cluster.placement_of(pod)
        if placement.ready_at is None and image in self._by_image:
            return
        with self._changed:
            self._by_image[image] = placement
            self._changed.notify_all()
        log.debug("placed", image=image, pod=placement.pod, node=placement.node, ready=bool(placement.ready_at))

    def get(self, image: str, timeout: float = 10.0) -> Placement | None:
        with self._changed:
            self._changed.wait_for(lambda: self._ready(image), timeout)
            return self._by_image.get(image)

    def _ready(self, image: str) -> bool:
        p = self._by_image.get(image)
        return p is not None and p.ready_at is not None

    def all(self) -> dict[str, Placement]:
        with self._changed:
            return dict(self._by_image)


# ---------------------------------------------------------------- one image


@dataclass
class ImageRun:
    """Everything one image's thread does: create its builder, build, collect the result."""

    image: ImageSpec
    plan: BuilderPlan
    cluster: Cluster
    buildx: Buildx
    teardown: Teardown
    placements: Placements
    jobs: threading.Semaphore
    sink: EventSink
    build: bool
    workdir: Path
    cancelled: threading.Event

    def __call__(self) -> BuildResult:
        result = self.attempt()
        self.sink(self.image.name, result)
        return result

    def attempt(self) -> BuildResult:
        started = now()
        try:
            self.create_builder()
            placement = self.placements.get(self.image.name)
            if not self.build:
                return self._result("succeeded", started, placement)
            return self.run_build(started, placement)
        except BuildxError as e:
            return self._result("failed", started, self.placements.get(self.image.name, 0), error=str(e))

    def create_builder(self) -> None:
        if self.cancelled.is_set():
            raise BuildxError(f"image {self.image.name}", "cancelled before its builder was created")
        self.sink(self.image.name, "creating builder")
        if self.plan.manifest is not None:
            self.cluster.create_deployment(self.plan.namespace, self.plan.manifest)
            self.teardown.resource(Resource("Deployment", self.plan.namespace, self.plan.deployment))
        self.teardown.builder(self.plan.builder)
        self.buildx.create(self.plan.builder, self.plan.driver_opts)
        self.sink(self.image.name, "builder ready")

    def run_build(self, started: dt.datetime, placement: Placement | None) -> BuildResult:
        tracker = ProgressTracker()
        meta = self.workdir / f"{self.image.name}.metadata.json"
        with self.jobs:
            if self.cancelled.is_set():
                raise BuildxError(f"image {self.image.name}", "cancelled (--fail-fast) before it started")
            build_started = now()
            self.sink(self.image.name, "building")
            try:
                for line in self.buildx.build(self.image, self.plan.builder, meta):
                    for ev in tracker.feed(line):
                        self.sink(self.image.name, ev)
            except BuildxError as e:
                msg = tracker.failure_message or e.detail
                return self._result(
                    "failed", build_started, placement, tracker, error=msg, error_location=self._location(tracker)
                )
        return self._result("succeeded", build_started, placement, tracker, digest=read_digest(meta))

    def _location(self, tracker: ProgressTracker) -> SourceLocation | None:
        """The failing line, in the image's Dockerfile as the user names it (relative to the cwd)."""
        src = tracker.failure_source
        if src is None:
            return None
        return SourceLocation(_relative(self.image.file), src.line, src.snippet)

    def _result(
        self,
        status: str,
        started: dt.datetime,
        placement: Placement | None,
        tracker: ProgressTracker | None = None,
        **kw: Any,
    ) -> BuildResult:
        return BuildResult(
            image=self.image.name,
            status=status,
            builder=self.plan.builder,
            placement=placement,
            started_at=started,
            finished_at=now(),
            layers=tracker.layers() if tracker else (),
            base_cached=tracker.base_cached if tracker else False,
            tags=self.image.tags,
            matrix_values=self.image.matrix_values,
            **kw,
        )


# ---------------------------------------------------------------- the run


@dataclass(frozen=True)
class RunOutcome:
    report: Report
    results: tuple[BuildResult, ...]
    teardown_problems: tuple[str, ...]


def run(
    matrix: Matrix,
    opts: RunOptions,
    sink: EventSink,
    cluster: Cluster | None = None,
    buildx: Buildx | None = None,
) -> RunOutcome:
    cluster = cluster or Cluster()
    buildx = buildx or Buildx()
    started = now()
    namespace, plans = prepare(matrix, cluster, opts.run_id)
    log.info("run planned", run_id=opts.run_id, namespace=namespace, images=len(plans))
    teardown = Teardown(cluster, buildx, namespace, f"{RUN_LABEL}={opts.run_id}")
    results: list[BuildResult] = []
    problems: list[str] = []
    try:
        results = _execute(matrix, plans, opts, sink, cluster, buildx, teardown, namespace)
    finally:
        t0 = time.monotonic()
        sink("*", "tearing down")
        problems = teardown.close()
        log.info("teardown finished", seconds=round(time.monotonic() - t0, 2))
    report = build_report(results, opts.run_id, namespace, started, now())
    return RunOutcome(report, tuple(results), tuple(problems))


def _execute(
    matrix: Matrix,
    plans: tuple[BuilderPlan, ...],
    opts: RunOptions,
    sink: EventSink,
    cluster: Cluster,
    buildx: Buildx,
    teardown: Teardown,
    namespace: str,
) -> list[BuildResult]:
    jobs = threading.Semaphore(opts.jobs or matrix.jobs or len(plans))
    cancelled = threading.Event()
    by_name = {i.name: i for i in matrix.images}
    pool = ThreadPoolExecutor(max_workers=len(plans), thread_name_prefix="image")
    with (
        tempfile.TemporaryDirectory(prefix="buildfan-") as tmp,
        Placements(cluster, namespace, opts.run_id) as pl,
    ):
        runs = [
            ImageRun(
                by_name[p.image],
                p,
                cluster,
                buildx,
                teardown,
                pl,
                jobs,
                sink,
                opts.build,
                Path(tmp),
                cancelled,
            )
            for p in plans
        ]
        futures = [pool.submit(r) for r in runs]
        try:
            _wait(futures, opts.fail_fast, cancelled)
        except BaseException:
            cancelled.set()
            kill_children()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        results = [f.result() for f in futures]
        placements = pl.all()
    return [r if r.placement else replace(r, placement=placements.get(r.image)) for r in results]


def _wait(futures: list[Future[BuildResult]], fail_fast: bool, cancelled: threading.Event) -> None:
    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
        for f in done:
            if f.exception() is not None:
                raise f.exception()  # type: ignore[misc]
            if fail_fast and f.result().status == "failed" and not cancelled.is_set():
                log.warning("--fail-fast: stopping the other builds", image=f.result().image)
                cancelled.set()
                kill_children()
