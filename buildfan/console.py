"""What a person watching the run sees: one plain line per meaningful event.

Every line starts with the image name, so interleaved concurrent builds stay readable in a CI log.
"""

from __future__ import annotations

import threading
import time
from typing import TextIO

from buildfan.progress import ProgressEvent

SHOWN = {"vertex_started", "vertex_errored", "extract_completed", "download_completed"}


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


class Console:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.t0 = time.monotonic()
        self.lock = threading.Lock()
        self.width = 0
        self.extracting: dict[tuple[str, str], ProgressEvent] = {}

    def __enter__(self) -> Console:
        return self

    def __exit__(self, *exc: object) -> None:
        self.out.flush()

    def event(self, image: str, ev: ProgressEvent | str) -> None:
        line = ev if isinstance(ev, str) else describe(ev, self._extract_s(image, ev))
        if line is None:
            return
        with self.lock:
            self.width = max(self.width, len(image))
            print(
                f"{time.monotonic() - self.t0:7.1f}s  {image:<{self.width}}  {line}",
                file=self.out,
                flush=True,
            )

    def _extract_s(self, image: str, ev: ProgressEvent) -> float | None:
        if ev.kind == "extract_started":
            self.extracting[(image, ev.name)] = ev
        start = self.extracting.get((image, ev.name)) if ev.kind == "extract_completed" else None
        if start is None or start.at is None or ev.at is None:
            return None
        return (ev.at - start.at).total_seconds()
