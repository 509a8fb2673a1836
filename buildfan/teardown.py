"""Undo everything a run made: register each resource the moment it exists, remove all on exit.

Runs on success, on build failure, on exceptions and on SIGINT/SIGTERM. Deletes are idempotent and run
concurrently, so that teardown fits in the seconds a CI runner grants after a cancel. A final sweep by the
run's label catches anything created but not yet registered (a kill between create and register).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import structlog

from buildfan.buildx import Buildx, BuildxError
from buildfan.cluster import Cluster, Resource

log = structlog.get_logger("buildfan.teardown")


class Teardown:
    def __init__(self, cluster: Cluster, buildx: Buildx, namespace: str, run_selector: str) -> None:
        self.cluster, self.buildx = cluster, buildx
        self.namespace, self.selector = namespace, run_selector
        self._builders: list[str] = []
        self._resources: list[Resource] = []
        self._lock = threading.Lock()

    def builder(self, name: str) -> None:
        with self._lock:
            self._builders.append(name)

    def resource(self, res: Resource) -> None:
        with self._lock:
            self._resources.append(res)

    def close(self) -> list[str]:
        """Remove builders from the buildx store (their Deployments go with them), then whatever is
        registered or still carries the run's label. Returns the problems it could not fix."""
        with self._lock:
            builders, resources = list(self._builders), list(self._resources)
        problems: list[str] = []
        with ThreadPoolExecutor(max_workers=max(4, len(builders))) as pool:
            problems += [p for p in pool.map(self._rm_builder, builders) if p]
            leftovers = set(resources) | set(self._sweep())
            problems += [p for p in pool.map(self._delete, leftovers) if p]
        for p in problems:
            log.error("teardown incomplete", problem=p)
        log.info("teardown done", builders=len(builders), resources=len(leftovers))
        return problems

    def _sweep(self) -> list[Resource]:
        try:
            return [
                Resource(r.kind, r.namespace, r.name) for r in self.cluster.list_labelled(self.selector, self.namespace)
            ]
        except Exception as e:
            log.error("could not list the run's resources", error=str(e))
            return []

    def _rm_builder(self, name: str) -> str | None:
        try:
            self.buildx.remove(name)
        except Exception as e:
            return str(e) if isinstance(e, BuildxError) else f"builder {name}: {e!r}"
        return None

    def _delete(self, res: Resource) -> str | None:
        try:
            self.cluster.delete(res)
        except Exception as e:
            return f"{res.kind} {res.namespace}/{res.name}: {e}"
        return None
