"""Read BuildKit's ``--progress=rawjson`` stream: line -> SolveStatus -> per-layer state -> timings.

Each JSON line is one ``SolveStatus`` (``vertexes``, ``statuses``, ``logs``, ``warnings``; empty keys
omitted). :func:`parse_line` decodes a line, :class:`ProgressTracker` folds lines into vertex and layer
state as they arrive and returns :class:`ProgressEvent` values for a live view, and
:meth:`ProgressTracker.layers` turns the layer state into :class:`LayerTiming` values.

What the stream looks like (BuildKit v0.32, buildx v0.36, see ``tests/fixtures/progress``):

- layer download: status ``id = "sha256:<digest>"``, no ``name``, ``total`` = compressed bytes; the id
  repeats and only the last line carries ``completed``.
- layer extraction: status ``id = "extracting sha256:<digest>"``, exactly two lines (start, then the same
  ``started`` plus ``completed``); a layer may appear only as an extraction.
- a cached base shows no download or extraction statuses at all; its ``FROM`` vertex is *not* flagged
  ``cached`` (only the later steps are), so "base cached" means: a FROM completed, later steps ran, and
  no layer status was seen.
- vertex errors carry only a message; the Dockerfile location of a failing step is printed by buildx
  as plain text after the stream (``Dockerfile:3``, a ``---`` framed excerpt with ``>>>`` on the failing
  lines, ``ERROR: failed to build: ...``); warnings carry ``sourceInfo`` and ``range`` in the JSON.

Times are Go RFC 3339 with up to 9 fractional digits; they are parsed with
``datetime.fromisoformat``, which keeps microseconds and drops the last three digits (durations are
exact to 1 µs, far below the milliseconds that matter here).

A tracker is not thread-safe: one tracker per build stream, fed and read by the thread that reads it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections import deque
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

SolveStatus = dict[str, Any]
EventKind = Literal[
    "vertex_started",
    "vertex_completed",
    "vertex_errored",
    "download_started",
    "download_completed",
    "extract_started",
    "extract_completed",
    "warning",
]

_EXTRACTING = "extracting "
_LOG_TAIL_CHUNKS = 64
_LOG_TAIL_LINES = 20
_SOURCE_HEADER = re.compile(r"(\S+):(\d+)")
_SOURCE_MARKED = re.compile(r"\s*\d+\s*\|\s?>>>\s?(.*)")


def parse_line(line: str) -> SolveStatus | None:
    """Decode one stream line into a SolveStatus dict; None for anything that is not a JSON object."""
    if not line.startswith("{"):
        line = line.strip()
        if not line.startswith("{"):
            return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def parse_time(value: str | None) -> datetime | None:
    """Parse a BuildKit RFC 3339 time (``...T15:17:00.043391604Z``), truncated to microseconds."""
    return datetime.fromisoformat(value) if value else None


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


def _b64text(value: str | None) -> str:
    if not value:
        return ""
    try:
        return base64.b64decode(value).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return value


@dataclass(frozen=True, slots=True)
class LayerTiming:
    """Download and extraction times of one base-image layer, as one builder saw them."""

    digest: str
    compressed_bytes: int | None = None
    download_started: datetime | None = None
    download_completed: datetime | None = None
    extract_started: datetime | None = None
    extract_completed: datetime | None = None

    @property
    def download_s(self) -> float | None:
        """Seconds from download start to completion; None if either end is unknown."""
        return _seconds(self.download_started, self.download_completed)

    @property
    def extract_s(self) -> float | None:
        """Seconds from extraction start to completion; None if either end is unknown."""
        return _seconds(self.extract_started, self.extract_completed)

    @property
    def extract_mb_per_s(self) -> float | None:
        """Compressed megabytes (10**6 bytes) extracted per second; None when not computable."""
        seconds = self.extract_s
        if self.compressed_bytes is None or not seconds or seconds <= 0:
            return None
        return self.compressed_bytes / 1e6 / seconds


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """A state change worth showing live; ``name`` is the vertex name, or the layer digest."""

    kind: EventKind
    vertex: str
    name: str
    at: datetime | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class SourceLocation:
    """A place in a Dockerfile: file name, first line, and the text of the marked lines."""

    filename: str
    line: int
    snippet: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class VertexError:
    """A step that failed: its name, BuildKit's message and the last lines of its output."""

    vertex: str
    name: str
    message: str
    log_tail: tuple[str, ...] = ()

    @property
    def canceled(self) -> bool:
        """True for steps cancelled because another step failed."""
        return "context canceled" in self.message or self.message == "canceled"


@dataclass(frozen=True, slots=True)
class BuildWarning:
    """A decoded BuildKit warning (lint rules, deprecated syntax...)."""

    vertex: str
    level: int
    short: str
    detail: tuple[str, ...] = ()
    url: str | None = None
    source: SourceLocation | None = None


def _is_from(name: str) -> bool:
    return "] FROM " in name or name.startswith("FROM ")


def _is_exporter(name: str) -> bool:
    return name.startswith(("exporting", "pushing", "writing image", "naming to"))


class _Vertex:
    __slots__ = ("cached", "completed", "error", "is_from", "name", "started")

    def __init__(self, name: str) -> None:
        self.name = name
        self.is_from = _is_from(name)
        self.started: str | None = None
        self.completed: str | None = None
        self.error: str | None = None
        self.cached = False


class _Layer:
    __slots__ = ("dl_completed", "dl_started", "ex_completed", "ex_started", "total")

    def __init__(self) -> None:
        self.total: int | None = None
        self.dl_started: str | None = None
        self.dl_completed: str | None = None
        self.ex_started: str | None = None
        self.ex_completed: str | None = None

    def timing(self, digest: str) -> LayerTiming:
        return LayerTiming(
            digest=digest,
            compressed_bytes=self.total,
            download_started=parse_time(self.dl_started),
            download_completed=parse_time(self.dl_completed),
            extract_started=parse_time(self.ex_started),
            extract_completed=parse_time(self.ex_completed),
        )


def _source_from_warning(raw: dict[str, Any]) -> SourceLocation | None:
    info = raw.get("sourceInfo")
    ranges = raw.get("range") or []
    if not info or not ranges:
        return None
    start = (ranges[0].get("start") or {}).get("line", 0)
    end = (ranges[0].get("end") or {}).get("line", start)
    lines = _b64text(info.get("data")).splitlines()
    return SourceLocation(info.get("filename", ""), start, tuple(lines[max(start - 1, 0) : end]))


def decode_warning(raw: dict[str, Any]) -> BuildWarning:
    """Turn one JSON ``warnings`` entry into a BuildWarning (base64 fields decoded)."""
    return BuildWarning(
        vertex=raw.get("vertex", ""),
        level=raw.get("level", 0),
        short=_b64text(raw.get("short")),
        detail=tuple(_b64text(d) for d in raw.get("detail") or ()),
        url=raw.get("url") or None,
        source=_source_from_warning(raw),
    )


class _TextErrors:
    """Reads buildx's plain-text failure report: ``Dockerfile:3``, a framed excerpt, ``ERROR: ...``."""

    def __init__(self) -> None:
        self.message: str | None = None
        self.source: SourceLocation | None = None
        self._header: tuple[str, int] | None = None
        self._in_excerpt = False

    def feed(self, text: str) -> None:
        if text.startswith("-----"):
            self._on_rule()
        elif self._in_excerpt:
            self._on_excerpt_line(text)
        elif text[:6].lower() == "error:":
            self.message = text[6:].strip()
        else:
            match = _SOURCE_HEADER.fullmatch(text)
            self._header = (match[1], int(match[2])) if match else None

    def _on_rule(self) -> None:
        if self._in_excerpt:
            self._in_excerpt = False
        elif self._header is not None:
            self.source = SourceLocation(*self._header)
            self._in_excerpt = True
        self._header = None

    def _on_excerpt_line(self, text: str) -> None:
        match = _SOURCE_MARKED.fullmatch(text)
        if match and self.source is not None:
            self.source = replace(self.source, snippet=(*self.source.snippet, match[1].rstrip()))


class ProgressTracker:
    """Fold a build's progress lines, as they arrive, into vertex and layer state."""

    def __init__(self) -> None:
        self._vertices: dict[str, _Vertex] = {}
        self._running: dict[str, str] = {}
        self._layers: dict[str, _Layer] = {}
        self._downloading: set[str] = set()
        self._extracting: set[str] = set()
        self._logs: dict[str, deque[str]] = {}
        self._errors: list[VertexError] = []
        self._warnings: list[BuildWarning] = []
        self._non_json: list[str] = []
        self._text = _TextErrors()
        self._from_done = False
        self._past_base = False
        self._export_started = False
        self._phase = "starting"

    # -- feeding -----------------------------------------------------------------------------------

    def feed(self, line: str) -> list[ProgressEvent]:
        """Take one stream line; return the events it caused (empty for most lines)."""
        status = parse_line(line)
        if status is None:
            self._feed_text(line.rstrip("\r\n"))
            return []
        events: list[ProgressEvent] = []
        for vertex in status.get("vertexes", ()):
            self._on_vertex(vertex, events)
        for item in status.get("statuses", ()):
            self._on_status(item, events)
        if "logs" in status:
            self._on_logs(status["logs"])
        if "warnings" in status:
            self._on_warnings(status["warnings"], events)
        if events:
            self._phase = self._phase_now() or self._phase
        return events

    def _feed_text(self, text: str) -> None:
        if text.strip():
            self._non_json.append(text)
            self._text.feed(text)

    def _on_vertex(self, raw: dict[str, Any], events: list[ProgressEvent]) -> None:
        digest = raw["digest"]
        state = self._vertices.get(digest)
        if state is None:
            state = self._vertices[digest] = _Vertex(raw.get("name", ""))
        error = raw.get("error")
        if error:
            self._vertex_errored(digest, state, raw, events)
        elif "completed" in raw:
            self._vertex_completed(digest, state, raw, events)
        elif "started" in raw:
            self._vertex_started(digest, state, raw["started"], events)

    def _vertex_started(self, digest: str, state: _Vertex, started: str, events: list[ProgressEvent]) -> None:
        if started == state.started:
            return
        state.started = started
        self._running[digest] = state.name
        self._note_progress(state)
        events.append(ProgressEvent("vertex_started", digest, state.name, parse_time(started)))

    def _vertex_completed(self, digest: str, state: _Vertex, raw: dict[str, Any], events: list[ProgressEvent]) -> None:
        completed = raw["completed"]
        if completed == state.completed:
            return
        state.started, state.completed = raw.get("started"), completed
        state.cached = bool(raw.get("cached"))
        self._running.pop(digest, None)
        self._from_done = self._from_done or state.is_from
        self._note_progress(state)
        detail = "cached" if state.cached else None
        events.append(ProgressEvent("vertex_completed", digest, state.name, parse_time(completed), detail))

    def _vertex_errored(self, digest: str, state: _Vertex, raw: dict[str, Any], events: list[ProgressEvent]) -> None:
        message = raw["error"]
        if message == state.error:
            return
        state.error = message
        self._running.pop(digest, None)
        self._errors.append(VertexError(digest, state.name, message, self._log_tail(digest)))
        at = parse_time(raw.get("completed"))
        events.append(ProgressEvent("vertex_errored", digest, state.name, at, message))

    def _note_progress(self, state: _Vertex) -> None:
        if _is_exporter(state.name):
            self._export_started = True
        if self._from_done and not state.is_from and not state.name.startswith("[internal]"):
            self._past_base = True

    def _on_status(self, raw: dict[str, Any], events: list[ProgressEvent]) -> None:
        sid: str = raw.get("id", "")
        if sid.startswith("sha256:"):
            if not self._is_export_status(raw):
                self._on_download(sid, raw, events)
        elif sid.startswith(_EXTRACTING):
            self._on_extract(sid[len(_EXTRACTING) :], raw, events)

    def _is_export_status(self, raw: dict[str, Any]) -> bool:
        vertex = self._vertices.get(raw.get("vertex", ""))
        return vertex is not None and _is_exporter(vertex.name)

    def _layer(self, digest: str) -> _Layer:
        layer = self._layers.get(digest)
        if layer is None:
            layer = self._layers[digest] = _Layer()
        return layer

    def _on_download(self, digest: str, raw: dict[str, Any], events: list[ProgressEvent]) -> None:
        layer = self._layer(digest)
        if "total" in raw:
            layer.total = raw["total"]
        vertex = raw.get("vertex", "")
        if layer.dl_started is None:
            layer.dl_started = raw.get("started") or raw.get("timestamp")
            self._downloading.add(digest)
            events.append(ProgressEvent("download_started", vertex, digest, parse_time(layer.dl_started)))
        completed = raw.get("completed")
        if completed and layer.dl_completed is None:
            layer.dl_completed = completed
            self._downloading.discard(digest)
            at = parse_time(completed)
            size = None if layer.total is None else str(layer.total)
            events.append(ProgressEvent("download_completed", vertex, digest, at, size))

    def _on_extract(self, digest: str, raw: dict[str, Any], events: list[ProgressEvent]) -> None:
        layer = self._layer(digest)
        vertex = raw.get("vertex", "")
        if layer.ex_started is None:
            layer.ex_started = raw.get("started") or raw.get("timestamp")
            self._extracting.add(digest)
            events.append(ProgressEvent("extract_started", vertex, digest, parse_time(layer.ex_started)))
        completed = raw.get("completed")
        if completed and layer.ex_completed is None:
            layer.ex_completed = completed
            self._extracting.discard(digest)
            events.append(ProgressEvent("extract_completed", vertex, digest, parse_time(completed)))

    def _on_logs(self, logs: list[dict[str, Any]]) -> None:
        for log in logs:
            vertex = log.get("vertex", "")
            tail = self._logs.get(vertex)
            if tail is None:
                tail = self._logs[vertex] = deque(maxlen=_LOG_TAIL_CHUNKS)
            tail.append(log.get("data", ""))

    def _log_tail(self, vertex: str) -> tuple[str, ...]:
        chunks = self._logs.get(vertex, ())
        text = "".join(_b64text(chunk) for chunk in chunks)
        return tuple(text.splitlines()[-_LOG_TAIL_LINES:])

    def _on_warnings(self, warnings: list[dict[str, Any]], events: list[ProgressEvent]) -> None:
        for raw in warnings:
            warning = decode_warning(raw)
            self._warnings.append(warning)
            name = self._vertex_name(warning.vertex)
            events.append(ProgressEvent("warning", warning.vertex, name, None, warning.short))

    def _vertex_name(self, digest: str) -> str:
        vertex = self._vertices.get(digest)
        return vertex.name if vertex else ""

    def _phase_now(self) -> str | None:
        if self._errors:
            return "failed"
        if self._extracting:
            return "extracting"
        if self._downloading:
            return "pulling"
        if self._running:
            return "exporting" if self._export_started else "building"
        return "done" if self._export_started else None

    # -- reading -----------------------------------------------------------------------------------

    def layers(self) -> tuple[LayerTiming, ...]:
        """Timings of every layer seen so far, in the order the stream first mentioned them."""
        return tuple(layer.timing(digest) for digest, layer in self._layers.items())

    @property
    def non_json_lines(self) -> tuple[str, ...]:
        """Lines that were not JSON (buildx/logrus messages, exec stderr), for error reports."""
        return tuple(self._non_json)

    @property
    def errors(self) -> tuple[VertexError, ...]:
        """Steps that reported an error, in order (cancelled siblings included; see ``canceled``)."""
        return tuple(self._errors)

    @property
    def warnings(self) -> tuple[BuildWarning, ...]:
        """BuildKit warnings, decoded."""
        return tuple(self._warnings)

    @property
    def base_cached(self) -> bool:
        """True when the base image was already there: a FROM completed, later steps ran, no layers."""
        return self._from_done and self._past_base and not self._layers

    @property
    def current_phase(self) -> str:
        """starting, pulling, extracting, building, exporting, done or failed."""
        return self._phase

    @property
    def failed_step(self) -> VertexError | None:
        """The first error that is not a cancellation caused by another failure."""
        return next((e for e in self._errors if not e.canceled), self._errors[0] if self._errors else None)

    @property
    def failure_message(self) -> str | None:
        """The ``ERROR: ...`` / ``error: ...`` line buildx or buildctl printed, without the prefix."""
        return self._text.message

    @property
    def failure_source(self) -> SourceLocation | None:
        """The Dockerfile location buildx printed for the failing step, if it printed one."""
        return self._text.source
