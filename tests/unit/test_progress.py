"""progress: real BuildKit captures and small synthetic lines for the edge cases."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from buildfan.progress import (
    LayerTiming,
    ProgressEvent,
    ProgressTracker,
    SourceLocation,
    decode_warning,
    parse_line,
    parse_time,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "progress"
FROM = "sha256:f0"
FROM_NAME = "[1/2] FROM registry/base:1@sha256:abc"
RUN = "sha256:r1"
RUN_NAME = "[2/2] RUN make"
LAYER = "sha256:" + "a" * 64


def track(name: str) -> tuple[ProgressTracker, list[ProgressEvent]]:
    tracker = ProgressTracker()
    events: list[ProgressEvent] = []
    with (FIXTURES / name).open(encoding="utf-8") as stream:
        for line in stream:
            events.extend(tracker.feed(line))
    return tracker, events


def line(**status: Any) -> str:
    return json.dumps(status) + "\n"


def vertex(digest: str, name: str, **fields: Any) -> dict[str, Any]:
    return {"digest": digest, "name": name, **fields}


def ts(second: int, fraction: str = "0") -> str:
    return f"2026-12-04T15:17:{second:02d}.{fraction}Z"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def feed_all(tracker: ProgressTracker, *lines: str) -> list[ProgressEvent]:
    return [event for text in lines for event in tracker.feed(text)]


# -- real captures -----------------------------------------------------------------------------------


def test_cold_pull_two_layers() -> None:
    tracker, _ = track("cold-pull-two-layers.jsonl")
    layers = {layer.digest: layer for layer in tracker.layers()}
    assert set(layers) == {
        "sha256:a29ce89b53bdb3c05ea68f03f3779b2c90b5f36fe60b375fd881d8796487abe4",
        "sha256:e487860f15eccc49301f1afd77ee89c22f5309b9edc25705674a9fb0fb6defa4",
    }
    first = layers["sha256:e487860f15eccc49301f1afd77ee89c22f5309b9edc25705674a9fb0fb6defa4"]
    second = layers["sha256:a29ce89b53bdb3c05ea68f03f3779b2c90b5f36fe60b375fd881d8796487abe4"]
    assert (first.compressed_bytes, second.compressed_bytes) == (51105567, 50234839)
    for layer in (first, second):
        assert layer.extract_started is not None and layer.extract_completed is not None
        assert layer.extract_s is not None and layer.extract_s > 0
        assert layer.extract_s == (layer.extract_completed - layer.extract_started).total_seconds()
        assert layer.download_s is not None and layer.download_s > 0
    assert first.extract_s == pytest.approx(1.277026)
    assert second.extract_s == pytest.approx(1.002558)
    assert first.extract_completed is not None and second.extract_started is not None
    assert first.extract_completed <= second.extract_started  # one after the other
    assert second.extract_mb_per_s == pytest.approx(50.234839 / 1.002558)


def test_cold_pull_state_at_end() -> None:
    tracker, events = track("cold-pull-two-layers.jsonl")
    assert not tracker.base_cached
    assert tracker.errors == () and tracker.non_json_lines == () and tracker.warnings == ()
    assert tracker.current_phase == "done"
    layer_kinds = [e.kind for e in events if e.kind.startswith(("download", "extract"))]
    assert layer_kinds.count("download_completed") == 2
    assert layer_kinds.count("extract_started") == layer_kinds.count("extract_completed") == 2


def test_concurrent_distinct_base_is_slower() -> None:
    tracker, _ = track("concurrent-distinct-base.jsonl")
    layers = tracker.layers()
    assert [layer.compressed_bytes for layer in layers] == [46507696, 48720313]
    assert all(layer.extract_s is not None and layer.extract_s > 2.5 for layer in layers)
    assert not tracker.base_cached


def test_warm_cached_base() -> None:
    tracker, events = track("warm-cached-base.jsonl")
    assert tracker.layers() == ()
    assert tracker.base_cached
    cached = [e.name for e in events if e.kind == "vertex_completed" and e.detail == "cached"]
    assert cached == ["[2/3] RUN echo hi > /x", "[3/3] COPY hello.txt /hello.txt"]


def test_buildx_stderr_keeps_non_json_lines() -> None:
    tracker, events = track("buildx-build-cold-pull.stderr.txt")
    assert len(tracker.layers()) == 2
    assert all(layer.extract_s and layer.extract_s > 0 for layer in tracker.layers())
    assert len(tracker.non_json_lines) == 1
    assert tracker.non_json_lines[0].startswith("WARNING: No output specified")
    assert "resolving provenance for metadata file" in {e.name for e in events}
    assert tracker.errors == () and tracker.failure_message is None


def test_first_vertex_events_of_a_capture() -> None:
    _, events = track("cold-pull-two-layers.jsonl")
    name = "[internal] load build definition from Dockerfile"
    assert [(e.kind, e.name) for e in events[:3]] == [
        ("vertex_completed", name),
        ("vertex_started", name),
        ("vertex_completed", name),
    ]
    assert events[1].at == datetime(2026, 12, 4, 15, 17, 0, 43598, tzinfo=UTC)


# -- parsing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["", "\n", "WARNING: x", 'time="t" level=warning msg="m"', "[1, 2]", "42", "{not json", "{}}"]
)
def test_parse_line_rejects_non_objects(text: str) -> None:
    assert parse_line(text) is None


def test_parse_line_accepts_padding() -> None:
    assert parse_line('  {"vertexes": []}\r\n') == {"vertexes": []}


@pytest.mark.parametrize(
    ("text", "micro"),
    [("2026-12-04T15:17:00.1582334Z", 158233), ("2026-12-04T15:17:00.043391604Z", 43391)],
)
def test_parse_time_truncates_to_microseconds(text: str, micro: int) -> None:
    parsed = parse_time(text)
    assert parsed is not None and parsed.microsecond == micro and parsed.tzinfo is not None


def test_parse_time_none() -> None:
    assert parse_time(None) is None and parse_time("") is None


# -- layers ------------------------------------------------------------------------------------------


def download(current: int, stamp: str, completed: str | None = None) -> str:
    status = {"id": LAYER, "vertex": FROM, "total": 1000, "current": current, "timestamp": stamp}
    status["started"] = ts(1)
    if completed:
        status["completed"] = completed
    return line(statuses=[status])


def extract(completed: str | None = None, digest: str = LAYER) -> str:
    status = {"id": f"extracting {digest}", "vertex": FROM, "name": "extracting", "current": 0}
    status |= {"timestamp": completed or ts(3), "started": ts(3)}
    if completed:
        status["completed"] = completed
    return line(statuses=[status])


def test_repeated_download_ids_complete_once() -> None:
    tracker = ProgressTracker()
    events = feed_all(
        tracker,
        download(100, ts(1, "5")),
        download(1000, ts(2)),  # current == total before the completed line
        download(1000, ts(2, "1"), completed=ts(2, "05")),
    )
    assert [e.kind for e in events] == ["download_started", "download_completed"]
    (layer,) = tracker.layers()
    assert layer.compressed_bytes == 1000
    assert layer.download_s == pytest.approx(1.05)


def test_two_extraction_lines() -> None:
    tracker = ProgressTracker()
    tracker.feed(download(1000, ts(2), completed=ts(2)))
    assert [e.kind for e in tracker.feed(extract())] == ["extract_started"]
    assert tracker.current_phase == "extracting"
    assert [e.kind for e in tracker.feed(extract(completed=ts(5, "5")))] == ["extract_completed"]
    (layer,) = tracker.layers()
    assert layer.extract_s == pytest.approx(2.5)
    assert layer.extract_mb_per_s == pytest.approx(0.001 / 2.5)


def test_layer_seen_only_as_extraction() -> None:
    tracker = ProgressTracker()
    feed_all(tracker, extract(), extract(completed=ts(4)))
    (layer,) = tracker.layers()
    assert layer == LayerTiming(LAYER, None, None, None, parse_time(ts(3)), parse_time(ts(4)))
    assert layer.download_s is None and layer.extract_mb_per_s is None
    assert not tracker.base_cached


def test_unfinished_layer_has_no_durations() -> None:
    tracker = ProgressTracker()
    feed_all(tracker, download(100, ts(1, "5")), extract())
    (layer,) = tracker.layers()
    assert layer.download_completed is None and layer.download_s is None
    assert layer.extract_s is None and layer.extract_mb_per_s is None
    assert tracker.current_phase == "extracting"


def test_zero_length_extraction_has_no_rate() -> None:
    layer = LayerTiming(LAYER, 10, extract_started=parse_time(ts(3)), extract_completed=parse_time(ts(3)))
    assert layer.extract_s == 0 and layer.extract_mb_per_s is None


def test_exporter_sha256_statuses_are_not_layers() -> None:
    tracker = ProgressTracker()
    export = "sha256:e1"
    tracker.feed(line(vertexes=[vertex(export, "exporting to image", started=ts(1))]))
    push = {"id": LAYER, "vertex": export, "total": 5, "current": 5, "timestamp": ts(2), "started": ts(1)}
    tracker.feed(line(statuses=[push]))
    assert tracker.layers() == ()
    assert tracker.current_phase == "exporting"


# -- vertexes, base cache, phases ------------------------------------------------------------------


def test_vertex_events_and_phase() -> None:
    tracker = ProgressTracker()
    assert tracker.current_phase == "starting"
    started = tracker.feed(line(vertexes=[vertex(RUN, RUN_NAME, started=ts(1))]))
    assert started == [ProgressEvent("vertex_started", RUN, RUN_NAME, parse_time(ts(1)))]
    assert tracker.current_phase == "building"
    assert tracker.feed(line(vertexes=[vertex(RUN, RUN_NAME, started=ts(1))])) == []  # repeat
    (done,) = tracker.feed(line(vertexes=[vertex(RUN, RUN_NAME, started=ts(1), completed=ts(2))]))
    assert (done.kind, done.detail) == ("vertex_completed", None)


def test_base_cached_needs_a_later_step() -> None:
    tracker = ProgressTracker()
    tracker.feed(line(vertexes=[vertex(FROM, FROM_NAME, started=ts(1), completed=ts(1))]))
    assert not tracker.base_cached  # resolved only; a cold pull has not started yet
    tracker.feed(line(vertexes=[vertex(RUN, RUN_NAME, started=ts(2), completed=ts(2), cached=True)]))
    assert tracker.base_cached


def test_base_cached_false_when_layers_seen() -> None:
    tracker = ProgressTracker()
    tracker.feed(line(vertexes=[vertex(FROM, FROM_NAME, started=ts(1), completed=ts(1))]))
    tracker.feed(download(10, ts(2), completed=ts(2)))
    tracker.feed(line(vertexes=[vertex(RUN, RUN_NAME, started=ts(3))]))
    assert not tracker.base_cached


# -- failures ----------------------------------------------------------------------------------------

BUILDX_FAILURE = [
    "Dockerfile:2",
    "--------------------",
    "   1 |     FROM registry/base:1",
    "   2 | >>> RUN make",
    "   3 |     ",
    "--------------------",
    'ERROR: failed to build: failed to solve: process "/bin/sh -c make" did not complete successfully: exit code: 2',
]


def failing_stream() -> list[str]:
    error = 'process "/bin/sh -c make" did not complete successfully: exit code: 2'
    return [
        line(vertexes=[vertex(RUN, RUN_NAME, started=ts(1))]),
        line(logs=[{"vertex": RUN, "stream": 2, "data": b64("cc -o x x.c\n"), "timestamp": ts(2)}]),
        line(logs=[{"vertex": RUN, "stream": 2, "data": b64("x.c:1: error\n"), "timestamp": ts(2)}]),
        line(vertexes=[vertex("sha256:c2", "[3/3] COPY . /", started=ts(1), completed=ts(3), error="canceled")]),
        line(vertexes=[vertex(RUN, RUN_NAME, started=ts(1), completed=ts(3), error=error)]),
        *(text + "\n" for text in BUILDX_FAILURE),
    ]


def test_failed_build() -> None:
    tracker = ProgressTracker()
    events = feed_all(tracker, *failing_stream())
    assert [e.kind for e in events][-2:] == ["vertex_errored", "vertex_errored"]
    assert tracker.current_phase == "failed"
    canceled, failed = tracker.errors
    assert canceled.canceled and not failed.canceled
    assert tracker.failed_step == failed
    assert failed.name == RUN_NAME and failed.log_tail == ("cc -o x x.c", "x.c:1: error")
    assert failed.message.endswith("exit code: 2")
    assert tracker.non_json_lines == tuple(BUILDX_FAILURE)


def test_failure_source_from_buildx_text() -> None:
    tracker = ProgressTracker()
    feed_all(tracker, *failing_stream())
    assert tracker.failure_source == SourceLocation("Dockerfile", 2, ("RUN make",))
    assert tracker.failure_message is not None
    assert tracker.failure_message.startswith("failed to build: failed to solve: process")


def test_buildctl_error_line_and_no_source() -> None:
    tracker = ProgressTracker()
    feed_all(tracker, "error: failed to solve: boom\n", "localhost:5000\n", "not a rule\n")
    assert tracker.failure_message == "failed to solve: boom"
    assert tracker.failure_source is None
    assert tracker.failed_step is None


def test_only_canceled_errors() -> None:
    tracker = ProgressTracker()
    tracker.feed(line(vertexes=[vertex(RUN, RUN_NAME, error="context canceled")]))
    assert tracker.failed_step == tracker.errors[0]


# -- warnings ----------------------------------------------------------------------------------------


def test_warning_is_decoded_with_its_source() -> None:
    raw = {
        "vertex": RUN,
        "level": 1,
        "short": b64("FromAsCasing: 'as' and 'FROM' keywords' casing do not match"),
        "detail": [b64("detail line")],
        "url": "https://docs.docker.com/go/dockerfile/rule/from-as-casing/",
        "sourceInfo": {"filename": "Dockerfile", "data": b64("FROM a as b\nRUN x\n")},
        "range": [{"start": {"line": 1}, "end": {"line": 1}}],
    }
    tracker = ProgressTracker()
    (event,) = tracker.feed(line(warnings=[raw]))
    assert event.kind == "warning" and event.detail is not None and event.detail.startswith("FromAsCasing")
    (warning,) = tracker.warnings
    assert warning.detail == ("detail line",)
    assert warning.source == SourceLocation("Dockerfile", 1, ("FROM a as b",))


def test_minimal_warning() -> None:
    warning = decode_warning({"short": "not base64!"})
    assert (warning.short, warning.source, warning.url, warning.level) == ("not base64!", None, None, 0)
