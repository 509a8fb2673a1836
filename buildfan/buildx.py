"""Every `docker buildx` call buildfan makes, through python-on-whales, in one place.

A buildx failure becomes a `BuildxError` carrying the builder or image name and the tail of stderr.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import structlog
from python_on_whales import DockerClient
from python_on_whales.exceptions import DockerException
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_fixed

from buildfan.errors import UserError
from buildfan.matrix import ImageSpec

log = structlog.get_logger("buildfan.buildx")

BOOTSTRAP_TRANSIENT = (
    "expected 1 replicas to be ready",
    "context deadline exceeded",
    "connection reset",
    "i/o timeout",
    "EOF",
)


class BuildxError(Exception):
    """A buildx command failed; `detail` is the tail of its output."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"{what}: {detail}")
        self.what, self.detail = what, detail


def _tail(e: DockerException, lines: int = 5) -> str:
    text = (e.stderr or e.stdout or str(e)).strip()
    return " | ".join(text.splitlines()[-lines:])


def driver_options(opts: Sequence[tuple[str, str]]) -> dict[str, str]:
    """python-on-whales joins driver options into one CSV `--driver-opt` value; quote fields with commas.

    `labels=a=b,c=d` must reach buildx as the CSV field `"labels=a=b,c=d"`, so the quote characters go
    into the key and the value of the mapping that python-on-whales formats as `key=value`.
    """
    out: dict[str, str] = {}
    for k, v in opts:
        if "," in v or '"' in v:
            out['"' + k] = v.replace('"', '""') + '"'
        else:
            out[k] = v
    return out


class Buildx:
    def __init__(self, docker: DockerClient | None = None) -> None:
        self.docker = docker or DockerClient()

    def create(self, name: str, opts: Sequence[tuple[str, str]], bootstrap_retries: int = 2) -> None:
        """`docker buildx create --driver kubernetes --bootstrap`.

        A transient bootstrap failure (pod not ready in time, a dropped exec stream) leaves the builder in
        the store; it is retried with `docker buildx inspect --bootstrap`, which adopts the same Deployment.
        """
        log.debug("buildx create", builder=name, driver_opts=dict(opts))
        try:
            self.docker.buildx.create(
                name=name, driver="kubernetes", driver_options=driver_options(opts), bootstrap=True
            )
        except DockerException as e:
            detail = _tail(e)
            if "invalid driver option" in detail or "reserved" in detail:
                raise UserError(f"builder {name}: buildx refused the driver-opts: {detail}") from e
            if not _bootstrap_transient(e):
                raise BuildxError(f"builder {name}: buildx create failed", detail) from e
            log.warning("builder bootstrap failed, retrying", builder=name, error=detail)
            self._bootstrap(name, bootstrap_retries)

    def _bootstrap(self, name: str, attempts: int) -> None:
        @retry(
            retry=retry_if_exception(_bootstrap_transient),
            stop=stop_after_attempt(attempts),
            wait=wait_fixed(1),
            reraise=True,
        )
        def attempt() -> None:
            self.docker.buildx.inspect(name, bootstrap=True)

        try:
            attempt()
        except DockerException as e:
            raise BuildxError(f"builder {name}: bootstrap failed", _tail(e)) from e

    def remove(self, name: str) -> None:
        """Idempotent `docker buildx rm` (a builder already gone is success)."""
        try:
            self.docker.buildx.remove(name)
        except DockerException as e:
            if "no builder" not in _tail(e) and "not found" not in _tail(e):
                raise BuildxError(f"builder {name}: buildx rm failed", _tail(e)) from e

    def names(self, prefix: str) -> list[str]:
        return [str(b.name) for b in self.docker.buildx.list() if str(b.name).startswith(prefix)]

    def build(self, image: ImageSpec, builder: str, metadata_file: Path) -> Iterator[str]:
        """Start `docker buildx build --progress=rawjson` and yield its output lines as they arrive.

        Raises BuildxError at the end of the stream when the build failed.
        """
        log.debug("buildx build", image=image.name, builder=builder, context=str(image.context))
        kwargs = build_kwargs(image)
        stream = self.docker.buildx.build(
            image.context,
            builder=builder,
            metadata_file=metadata_file,
            file=image.file,
            progress=cast(Any, "rawjson"),
            stream_logs=True,
            **kwargs,
        )
        try:
            yield from cast(Iterator[str], stream)
        except DockerException as e:
            raise BuildxError(f"image {image.name}: build failed", _tail(e)) from e


def build_kwargs(image: ImageSpec) -> dict[str, Any]:
    """The python-on-whales keyword arguments for one image (pure)."""
    kw: dict[str, Any] = {
        "tags": list(image.tags),
        "build_args": dict(image.build_args),
        "labels": dict(image.labels),
        "target": image.target,
        "secrets": list(image.secrets),
        "cache_from": [_csv_dict(c, "type=registry,ref", f"image {image.name}: cache-from") for c in image.cache_from]
        or None,
        "platforms": list(image.platforms) or None,
    }
    if len(image.cache_to) > 1:
        raise UserError(f"image {image.name}: cache-to: python-on-whales supports one cache export")
    if image.cache_to:
        kw["cache_to"] = image.cache_to[0]
    kw.update(_output_kwargs(image.output, f"image {image.name}: output"))
    return kw


def _output_kwargs(output: str | None, where: str) -> dict[str, Any]:
    if output in (None, "", "none"):
        return {}
    if output == "push":
        return {"push": True}
    if output == "load":
        return {"load": True}
    return {"output": _csv_dict(str(output), "type=local,dest", where)}  # `-o PATH` is a local export


def _csv_dict(spec: str, bare: str, where: str) -> dict[str, str]:
    """buildx's CSV `k=v,k2=v2` syntax; a bare value means `<bare>=value` (as buildx reads it)."""
    fields = next(csv.reader([spec]), [])
    if len(fields) == 1 and "=" not in fields[0]:
        fields = [*bare.split(",")[:-1], f"{bare.split(',')[-1]}={fields[0]}"]
    pairs = [f.split("=", 1) for f in fields]
    if not pairs or any(len(p) != 2 or not p[0] for p in pairs):
        raise UserError(f"{where}: {spec!r} is not buildx's key=value,key=value syntax; e.g. type=local,dest=out")
    return {k.strip(): v for k, v in pairs}


def _bootstrap_transient(exc: BaseException) -> bool:
    return isinstance(exc, DockerException) and any(t in _tail(exc) for t in BOOTSTRAP_TRANSIENT)


def read_digest(metadata_file: Path) -> str | None:
    try:
        meta = json.loads(metadata_file.read_text())
    except (OSError, ValueError):
        return None
    digest = meta.get("containerimage.digest")
    return str(digest) if digest else None
