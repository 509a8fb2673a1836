"""buildfan.buildx: the pure parts (driver-opt quoting, build keyword arguments, the metadata digest)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from python_on_whales.components.buildx.cli_wrapper import format_dict_for_buildx

from buildfan.buildx import build_kwargs, driver_options, read_digest
from buildfan.errors import UserError
from buildfan.matrix import ImageSpec

Opts = list[tuple[str, str]]


def as_buildx_reads_it(opts: Opts) -> list[str]:
    """What python-on-whales passes as `--driver-opt`, parsed back the way buildx does (one CSV record)."""
    records = list(csv.reader(io.StringIO(format_dict_for_buildx(driver_options(opts)), newline="")))
    assert len(records) == 1, records
    return records[0]


@pytest.mark.parametrize(
    "opts",
    [
        [("namespace", "ci")],
        [("namespace", "ci"), ("requests.cpu", "1"), ("rootless", "true")],
        [("labels", "app.kubernetes.io/managed-by=buildfan,buildfan.dev/run=r1")],
        [("nodeselector", "kubernetes.io/arch=amd64,pool=ci"), ("namespace", "ci")],
        [("tolerations", "key=ci,operator=Equal,value=true,effect=NoSchedule;key=spot,operator=Exists")],
        [("env.MSG", 'say "hi"')],
        [("env.MSG", 'a,"b",c'), ("annotations", "x=1")],
        [("env.EMPTY", "")],
        [("env.EDGE", '"')],
        [("env.EDGE", ",")],
    ],
)
def test_driver_options_round_trip_through_csv(opts: Opts) -> None:
    assert as_buildx_reads_it(opts) == [f"{k}={v}" for k, v in opts]


def test_driver_options_leave_plain_values_alone() -> None:
    assert driver_options([("namespace", "ci"), ("image", "moby/buildkit:v0.20")]) == {
        "namespace": "ci",
        "image": "moby/buildkit:v0.20",
    }


# --- build_kwargs --------------------------------------------------------------------------------------


def spec(**kw: object) -> ImageSpec:
    return ImageSpec("api", Path("/src"), Path("/src/Dockerfile"), **kw)  # type: ignore[arg-type]


def test_build_kwargs_defaults() -> None:
    assert build_kwargs(spec()) == {
        "tags": [],
        "build_args": {},
        "labels": {},
        "target": None,
        "secrets": [],
        "cache_from": None,
        "platforms": None,
    }


def test_build_kwargs_values() -> None:
    kw = build_kwargs(
        spec(
            tags=("r/api:1", "r/api:latest"),
            build_args=(("PY", "3.12"),),
            labels=(("org.opencontainers.image.source", "x"),),
            target="runtime",
            platforms=("linux/amd64", "linux/arm64"),
            secrets=("id=npm,env=NPM_TOKEN", "id=key,src=/run/key"),
        )
    )
    assert kw["tags"] == ["r/api:1", "r/api:latest"]
    assert kw["build_args"] == {"PY": "3.12"}
    assert kw["labels"] == {"org.opencontainers.image.source": "x"}
    assert kw["target"] == "runtime"
    assert kw["platforms"] == ["linux/amd64", "linux/arm64"]
    assert kw["secrets"] == ["id=npm,env=NPM_TOKEN", "id=key,src=/run/key"]


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("none", {}),
        ("", {}),
        ("push", {"push": True}),
        ("load", {"load": True}),
        ("type=local,dest=out", {"output": {"type": "local", "dest": "out"}}),
        ("type=image,name=r/api:1,push=true", {"output": {"type": "image", "name": "r/api:1", "push": "true"}}),
    ],
)
def test_build_kwargs_output(output: str, expected: dict[str, object]) -> None:
    kw = build_kwargs(spec(output=output))
    assert {k: kw[k] for k in ("push", "load", "output") if k in kw} == expected


def test_build_kwargs_output_path_is_a_local_export() -> None:
    assert build_kwargs(spec(output="out/dir"))["output"] == {"type": "local", "dest": "out/dir"}


def test_build_kwargs_cache() -> None:
    kw = build_kwargs(
        spec(cache_from=("r/api:cache", "type=local,src=/tmp/c"), cache_to=("type=registry,ref=r/api:cache,mode=max",))
    )
    assert kw["cache_from"] == [{"type": "registry", "ref": "r/api:cache"}, {"type": "local", "src": "/tmp/c"}]
    assert kw["cache_to"] == "type=registry,ref=r/api:cache,mode=max"


def test_build_kwargs_malformed_cache_from_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"^image api: "):
        build_kwargs(spec(cache_from=("type=local,src",)))


def test_build_kwargs_one_cache_export_only() -> None:
    with pytest.raises(UserError, match=r"^image api: cache-to: "):
        build_kwargs(spec(cache_to=("type=inline", "type=local,dest=/c")))


# --- read_digest ---------------------------------------------------------------------------------------


def test_read_digest(tmp_path: Path) -> None:
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"containerimage.digest": "sha256:" + "a" * 64, "image.name": "r/api:1"}))
    assert read_digest(meta) == "sha256:" + "a" * 64


@pytest.mark.parametrize("content", [None, "", "not json", "{}", '{"containerimage.digest": ""}'])
def test_read_digest_absent(content: str | None, tmp_path: Path) -> None:
    meta = tmp_path / "meta.json"
    if content is not None:
        meta.write_text(content)
    assert read_digest(meta) is None
