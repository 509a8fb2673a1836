"""Build results -> the run report (a JSON-ready dict), per-node aggregates and a console table.

Report schema ``buildfan-report/v1``. Times are ISO-8601 UTC strings (``2026-12-04T15:17:00.620441Z``),
durations are seconds rounded to 3 decimals, sizes are bytes, MB is 10**6 bytes; unknown values are
``null``::

    {
      "schema": "buildfan-report/v1",
      "run_id": str, "namespace": str,
      "started_at": time, "finished_at": time, "duration_s": float,
      "summary": {"images": int, "succeeded": int, "failed": int},
      "images": [{
        "name": str,                      # image name from the matrix
        "status": "succeeded" | "failed",
        "builder": str,                   # BuildKit builder (one per image)
        "pod": str?, "node": str?, "zone": str?,
        "instance_type": str?, "capacity_type": str?,
        "scheduled_at": time?, "ready_at": time?,   # builder pod conditions
        "started_at": time, "finished_at": time, "duration_s": float,
        "digest": str?, "tags": [str], "matrix": {str: str},
        "error": str?,
        "error_location": {"file": str, "line": int}?,   # the failing Dockerfile line
        "base_cached": bool,              # base image already present: nothing downloaded/extracted
        "extraction": {
          "total_s": float,               # sum of layer extraction times
          "download_total_s": float,      # sum of layer download times
          "compressed_bytes": int,        # sum of known compressed layer sizes
          "mb_per_s": float?,             # compressed MB / extraction s, over layers with both known
          "layers": [{"digest": str, "compressed_bytes": int?, "download_s": float?,
                      "extract_s": float?, "extract_started_at": time?,
                      "extract_completed_at": time?}]
        }
      }],
      "nodes": [{                         # one per node that ran a builder; images without a
        "node": str, "zone": str?,        # placement are left out
        "builders": [str],                # image names built on this node
        "builder_count": int,             # distinct builders on this node
        "extraction_total_s": float,      # sum over its builders (a layer counted once per builder)
        "extract_mb_per_s": float?,       # compressed MB / extraction s over those layers
        "max_concurrent_extractions": int # most builders extracting at the same instant
      }]
    }
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from buildfan.placement import Placement
from buildfan.progress import LayerTiming, SourceLocation

SCHEMA = "buildfan-report/v1"
STATUSES = ("succeeded", "failed")

Report = dict[str, Any]
Span = tuple[datetime, datetime]


@dataclass(frozen=True)
class BuildResult:
    """The outcome of one image build, with where it ran and what its base layers cost."""

    image: str
    status: str  # "succeeded" | "failed"
    builder: str
    placement: Placement | None
    started_at: datetime
    finished_at: datetime
    digest: str | None = None
    layers: tuple[LayerTiming, ...] = ()
    error: str | None = None
    base_cached: bool = False
    tags: tuple[str, ...] = ()
    matrix_values: tuple[tuple[str, str], ...] = ()
    error_location: SourceLocation | None = None  # the failing Dockerfile line, when BuildKit names it

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"BuildResult.status must be one of {STATUSES}, not {self.status!r}")

    @property
    def duration_s(self) -> float:
        """Wall-clock seconds of the build."""
        return (self.finished_at - self.started_at).total_seconds()


# -- values ------------------------------------------------------------------------------------------


def iso(value: datetime | None) -> str | None:
    """ISO-8601 UTC with a ``Z``; naive datetimes are taken as UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _mb_per_s(layers: Iterable[LayerTiming]) -> float | None:
    measured = [(t.compressed_bytes, t.extract_s) for t in layers if t.extract_mb_per_s is not None]
    seconds = sum(s for _, s in measured if s)
    return _round(sum(b for b, _ in measured if b) / 1e6 / seconds) if seconds else None


# -- images ------------------------------------------------------------------------------------------


def _layer_entry(layer: LayerTiming) -> dict[str, Any]:
    return {
        "digest": layer.digest,
        "compressed_bytes": layer.compressed_bytes,
        "download_s": _round(layer.download_s),
        "extract_s": _round(layer.extract_s),
        "extract_started_at": iso(layer.extract_started),
        "extract_completed_at": iso(layer.extract_completed),
    }


def extraction_summary(layers: Sequence[LayerTiming]) -> dict[str, Any]:
    """The ``extraction`` block of one image."""
    return {
        "total_s": round(sum((t.extract_s or 0.0 for t in layers), 0.0), 3),
        "download_total_s": round(sum((t.download_s or 0.0 for t in layers), 0.0), 3),
        "compressed_bytes": sum(t.compressed_bytes or 0 for t in layers),
        "mb_per_s": _mb_per_s(layers),
        "layers": [_layer_entry(t) for t in layers],
    }


def _placement_fields(placement: Placement | None) -> dict[str, Any]:
    p = placement
    return {
        "pod": p.pod if p else None,
        "node": p.node if p else None,
        "zone": p.zone if p else None,
        "instance_type": p.instance_type if p else None,
        "capacity_type": p.capacity_type if p else None,
        "scheduled_at": iso(p.scheduled_at) if p else None,
        "ready_at": iso(p.ready_at) if p else None,
    }


def image_entry(result: BuildResult) -> dict[str, Any]:
    """One element of the report's ``images`` list."""
    return {
        "name": result.image,
        "status": result.status,
        "builder": result.builder,
        **_placement_fields(result.placement),
        "started_at": iso(result.started_at),
        "finished_at": iso(result.finished_at),
        "duration_s": round(result.duration_s, 3),
        "digest": result.digest,
        "tags": list(result.tags),
        "matrix": dict(result.matrix_values),
        "error": result.error,
        "error_location": _location(result.error_location),
        "base_cached": result.base_cached,
        "extraction": extraction_summary(result.layers),
    }


def _location(loc: SourceLocation | None) -> dict[str, Any] | None:
    return None if loc is None else {"file": loc.filename, "line": loc.line}


# -- nodes -------------------------------------------------------------------------------------------


def _merge(spans: Iterable[Span]) -> list[Span]:
    merged: list[Span] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def max_concurrent(spans_by_builder: Mapping[str, Iterable[Span]]) -> int:
    """Most builders busy at one instant; a builder's own overlapping spans count once."""
    edges = [(t, d) for spans in spans_by_builder.values() for s, e in _merge(spans) for t, d in ((s, 1), (e, -1))]
    running = best = 0
    for _, delta in sorted(edges):  # at equal times -1 sorts first: touching spans do not overlap
        running += delta
        best = max(best, running)
    return best


def _node_layers(results: Sequence[BuildResult]) -> dict[str, list[tuple[LayerTiming, datetime]]]:
    """Extracted layers per builder, each once (two images on one builder share one extraction)."""
    seen: set[tuple[str, str, datetime]] = set()
    by_builder: dict[str, list[tuple[LayerTiming, datetime]]] = {}
    for result in results:
        for layer in result.layers:
            if layer.extract_started is None:
                continue
            key = (result.builder, layer.digest, layer.extract_started)
            if key in seen:
                continue
            seen.add(key)
            by_builder.setdefault(result.builder, []).append((layer, result.finished_at))
    return by_builder


def _spans(layers: Iterable[tuple[LayerTiming, datetime]]) -> list[Span]:
    """Extraction spans; one that never completed lasts until its build finished."""
    return [(t.extract_started, t.extract_completed or end) for t, end in layers if t.extract_started]


def node_entry(node: str, results: Sequence[BuildResult]) -> dict[str, Any]:
    """One element of the report's ``nodes`` list, for the results whose builder ran on ``node``."""
    by_builder = _node_layers(results)
    layers = [t for pairs in by_builder.values() for t, _ in pairs]
    zones = [r.placement.zone for r in results if r.placement and r.placement.zone]
    return {
        "node": node,
        "zone": zones[0] if zones else None,
        "builders": [r.image for r in results],
        "builder_count": len({r.builder for r in results}),
        "extraction_total_s": round(sum((t.extract_s or 0.0 for t in layers), 0.0), 3),
        "extract_mb_per_s": _mb_per_s(layers),
        "max_concurrent_extractions": max_concurrent({b: _spans(p) for b, p in by_builder.items()}),
    }


def node_entries(results: Iterable[BuildResult]) -> list[dict[str, Any]]:
    """Per-node aggregates, sorted by node name; results without a placement are skipped."""
    by_node: dict[str, list[BuildResult]] = {}
    for result in results:
        if result.placement is not None:
            by_node.setdefault(result.placement.node, []).append(result)
    return [node_entry(node, by_node[node]) for node in sorted(by_node)]


# -- report ------------------------------------------------------------------------------------------


def build_report(
    results: Sequence[BuildResult],
    run_id: str,
    namespace: str,
    started_at: datetime,
    finished_at: datetime,
) -> Report:
    """The whole run as a JSON-ready dict (schema in the module docstring)."""
    succeeded = sum(r.status == "succeeded" for r in results)
    return {
        "schema": SCHEMA,
        "run_id": run_id,
        "namespace": namespace,
        "started_at": iso(started_at),
        "finished_at": iso(finished_at),
        "duration_s": round((finished_at - started_at).total_seconds(), 3),
        "summary": {"images": len(results), "succeeded": succeeded, "failed": len(results) - succeeded},
        "images": [image_entry(r) for r in results],
        "nodes": node_entries(results),
    }


def write_report(report: Report, path: str | os.PathLike[str]) -> None:
    """Write the report as indented JSON, creating parent directories."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


# -- console -----------------------------------------------------------------------------------------


def _cell(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: frozenset[int]) -> str:
    """Align columns with spaces; columns whose index is in ``right`` are right-aligned."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def _image_row(image: Mapping[str, Any]) -> list[str]:
    extraction = image["extraction"]
    return [
        image["name"],
        image["status"],
        _cell(image["node"]),
        _cell(image["zone"]),
        _cell(image["duration_s"]),
        "cached" if image["base_cached"] else _cell(extraction["total_s"], 2),
        _cell(extraction["mb_per_s"]),
        str(len(extraction["layers"])),
    ]


def _node_row(node: Mapping[str, Any]) -> list[str]:
    return [
        node["node"],
        _cell(node["zone"]),
        str(node["builder_count"]),
        _cell(node["extraction_total_s"], 2),
        _cell(node["extract_mb_per_s"]),
        str(node["max_concurrent_extractions"]),
    ]


def _failures(report: Mapping[str, Any]) -> list[str]:
    return [
        f"  {image['name']}: {(image['error'] or 'failed').splitlines()[0]}"
        for image in report["images"]
        if image["status"] == "failed"
    ]


def format_table(report: Mapping[str, Any]) -> str:
    """A plain-text summary for the console: one row per image, then one row per node."""
    summary = report["summary"]
    head = (
        f"run {report['run_id']}: {summary['images']} images, {summary['succeeded']} succeeded, "
        f"{summary['failed']} failed in {report['duration_s']:.1f}s"
    )
    images = render_table(
        ("IMAGE", "STATUS", "NODE", "ZONE", "DURATION S", "EXTRACT S", "MB/S", "LAYERS"),
        [_image_row(image) for image in report["images"]],
        frozenset({4, 5, 6, 7}),
    )
    nodes = render_table(
        ("NODE", "ZONE", "BUILDERS", "EXTRACT S", "MB/S", "MAX CONCURRENT"),
        [_node_row(node) for node in report["nodes"]],
        frozenset({2, 3, 4, 5}),
    )
    failures = _failures(report)
    parts = [head, "", images, "", nodes]
    return "\n".join(parts + (["", "failures:", *failures] if failures else [])) + "\n"
