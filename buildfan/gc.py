"""`buildfan gc`: remove what dead runs left behind, selecting only by buildfan's labels."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass

import structlog

from buildfan.buildx import Buildx
from buildfan.cluster import Cluster, Resource
from buildfan.plan import MANAGED_BY_LABEL, MANAGED_BY_VALUE, RUN_LABEL

log = structlog.get_logger("buildfan.gc")


@dataclass(frozen=True)
class GcResult:
    runs: tuple[str, ...]
    deleted: tuple[Resource, ...]
    builders: tuple[str, ...]


def select(resources: list[Resource], older_than: dt.timedelta | None, now: dt.datetime) -> list[Resource]:
    """Pure: the resources created before now - older_than (all of them when older_than is None)."""
    if older_than is None:
        return list(resources)
    cutoff = now - older_than
    return [r for r in resources if r.created_at is not None and r.created_at <= cutoff]


def runs_of(resources: list[Resource]) -> dict[str, list[Resource]]:
    by_run: dict[str, list[Resource]] = defaultdict(list)
    for r in resources:
        by_run[dict(r.labels).get(RUN_LABEL, "?")].append(r)
    return dict(by_run)


def collect(
    cluster: Cluster,
    buildx: Buildx,
    namespace: str | None,
    older_than: dt.timedelta | None,
    run_id: str | None = None,
    dry_run: bool = False,
) -> GcResult:
    selector = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}" + (f",{RUN_LABEL}={run_id}" if run_id else "")
    found = cluster.list_labelled(selector, namespace)
    doomed = select(found, None if run_id else older_than, dt.datetime.now(dt.UTC))
    runs = sorted(runs_of(doomed)) + ([run_id] if run_id and not doomed else [])
    builders = [b for r in runs for b in buildx.names(f"buildfan-{r}-")]
    for b in builders:
        log.info("removing builder" if not dry_run else "would remove builder", builder=b)
        if not dry_run:
            buildx.remove(b)
    for res in doomed:
        log.info(
            "deleting" if not dry_run else "would delete",
            kind=res.kind,
            namespace=res.namespace,
            name=res.name,
        )
        if not dry_run:
            cluster.delete(res)
    return GcResult(tuple(runs), tuple(doomed), tuple(builders))
