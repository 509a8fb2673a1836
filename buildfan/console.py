"""What a person watching the run sees.

Three views over the same events (`sink(image, event)` from the runner):
- `Plain`: one line per meaningful event, prefixed with elapsed time and image (not a TTY, local logs).
- `Grouped`: CI logs. A short line per milestone live; each image's detailed lines are printed together
  when it finishes, inside a GitHub `::group::` or a collapsible GitLab section, with an `::error::`
  annotation (Dockerfile file and line when BuildKit gives them) for a failed build on GitHub.
- `Live`: a terminal. A table of images redrawn in place: phase and elapsed time per image.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TextIO

import structlog

from buildfan import ci
from buildfan.progress import ProgressEvent
from buildfan.report import BuildResult

Event = ProgressEvent | str | BuildResult
SHOWN = {"vertex_started", "vertex_errored", "extract_completed", "download_completed"}
MILESTONES = ("creating builder", "builder ready", "building", "tearing down")


def describe(ev: ProgressEvent, extract_s: float | None = None) -> str | None:
    """Pure: the line for one progress event, or None for events not worth a line."""
    if ev.kind not in SHOWN:
        return None
    if ev.kind == "vertex_started":
        return None if ev.name.startswith("[internal]") else ev.name
    if ev.kind == "vertex_errored":
        return f"ERROR in {ev.name}: {ev.detail}"
    if ev.kind == "download_completed":
        return f"pulled {ev.name[:19]}" + (f" ({int(ev.detail) / 1e6:.1f} MB)" if ev.detail else "")
    return f"extracted {ev.name[:19]}" + (f" in {extract_s:.2f}s" if extract_s is not None else "")


def finished_line(result: BuildResult) -> str:
    if result.status == "succeeded":
        return f"succeeded in {result.duration_s:.1f}s" + (f" on {result.placement.node}" if result.placement else "")
    return f"FAILED after {result.duration_s:.1f}s: {(result.error or '').splitlines()[0] if result.error else ''}"


@dataclass
class Plain:
    out: TextIO
    t0: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)
    width: int = 6
    extracting: dict[tuple[str, str], ProgressEvent] = field(default_factory=dict)

    def __enter__(self) -> Plain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.out.flush()

    def line_for(self, image: str, ev: Event) -> str | None:
        if isinstance(ev, BuildResult):
            return finished_line(ev)
        return ev if isinstance(ev, str) else describe(ev, self._extract_s(image, ev))

    def event(self, image: str, ev: Event) -> None:
        line = self.line_for(image, ev)
        if line is not None:
            self.emit(image, line)

    def emit(self, image: str, line: str) -> None:
        with self.lock:
            self.width = max(self.width, len(image))
            print(self.stamp(image, line), file=self.out, flush=True)

    def stamp(self, image: str, line: str) -> str:
        return f"{time.monotonic() - self.t0:7.1f}s  {image:<{self.width}}  {line}"

    def _extract_s(self, image: str, ev: ProgressEvent) -> float | None:
        if ev.kind == "extract_started":
            self.extracting[(image, ev.name)] = ev
        start = self.extracting.get((image, ev.name)) if ev.kind == "extract_completed" else None
        if start is None or start.at is None or ev.at is None:
            return None
        return (ev.at - start.at).total_seconds()


@dataclass
class Grouped(Plain):
    """CI log view: milestones live, details grouped per image when it finishes."""

    flavour: str = "github"  # github | gitlab
    buffers: dict[str, list[str]] = field(default_factory=dict)

    def event(self, image: str, ev: Event) -> None:
        line = self.line_for(image, ev)
        if line is None:
            return
        with self.lock:
            self.buffers.setdefault(image, []).append(self.stamp(image, line))
        if isinstance(ev, BuildResult):
            self.flush_image(image, ev)
        elif isinstance(ev, str) and (ev in MILESTONES or ev.startswith("failed")):
            self.emit(image, line)

    def flush_image(self, image: str, result: BuildResult) -> None:
        with self.lock:
            lines = self.buffers.pop(image, [])
            header = f"{image}: {finished_line(result)}"
            if self.flavour == "github":
                print(ci.group_start(f"{image} ({result.status})"), *lines, ci.group_end(), sep="\n", file=self.out)
                if result.status == "failed":
                    loc = result.error_location
                    msg = result.error or "build failed"
                    print(
                        ci.error_annotation(image, msg, loc.filename if loc else None, loc.line if loc else None),
                        file=self.out,
                    )
            else:
                name = ci.section_name(f"build_{image}")
                print(
                    ci.section_start(name, header, collapsed=result.status == "succeeded"),
                    *lines,
                    ci.section_end(name),
                    sep="\n",
                    file=self.out,
                )
            print(header, file=self.out, flush=True)


@dataclass
class Live(Plain):
    """Terminal view: one row per image, redrawn in place twice a second."""

    images: Sequence[str] = ()
    phase: dict[str, str] = field(default_factory=dict)
    since: dict[str, float] = field(default_factory=dict)
    done: dict[str, str] = field(default_factory=dict)
    drawn: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Live:
        # Log lines would scroll the table out from under the cursor: only warnings while it is drawn.
        self.saved_wrapper = structlog.get_config()["wrapper_class"]
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
        self.width = max([6, *map(len, self.images)])
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(2)
        self.draw()
        structlog.configure(wrapper_class=self.saved_wrapper)

    def event(self, image: str, ev: Event) -> None:
        with self.lock:
            if isinstance(ev, BuildResult):
                self.done[image] = finished_line(ev)
            elif isinstance(ev, str):
                self.phase[image] = ev
            elif ev.kind in ("download_started", "extract_started", "vertex_started"):
                self.phase[image] = _phase_of(ev)
            self.since.setdefault(image, time.monotonic())

    def _loop(self) -> None:
        while not self.stop.wait(0.5):
            self.draw()

    def draw(self) -> None:
        with self.lock:
            rows = [self._row(i) for i in self.images]
            up = f"\x1b[{self.drawn}F" if self.drawn else ""
            self.out.write(up + "".join(f"\x1b[2K{r}\n" for r in rows))
            self.out.flush()
            self.drawn = len(rows)

    def _row(self, image: str) -> str:
        now = time.monotonic()
        elapsed = now - self.since.get(image, now)
        status = self.done.get(image) or f"{self.phase.get(image, 'waiting')} ({elapsed:.0f}s)"
        return f"  {image:<{self.width}}  {status}"[:200]


def _phase_of(ev: ProgressEvent) -> str:
    if ev.kind == "download_started":
        return "pulling base layers"
    if ev.kind == "extract_started":
        return f"extracting {ev.name[:19]}"
    return ev.name[:80]


def choose(out: TextIO, images: Sequence[str], env: Mapping[str, str]) -> Plain:
    """The view for where we run: GitHub or GitLab logs, a terminal, or plain lines."""
    if ci.github_active(env):
        return Grouped(out, flavour="github")
    if ci.gitlab_active(env):
        return Grouped(out, flavour="gitlab")
    if out.isatty():
        return Live(out, images=images)
    return Plain(out)
