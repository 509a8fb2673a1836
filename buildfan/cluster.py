"""Every Kubernetes API call buildfan makes, in one place.

Third-party errors are translated here: an `ApiException` never leaves this module. Transient failures
(429, 5xx, connection resets) are retried with tenacity; user errors (403, 404, 422) are not.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import structlog
import urllib3
import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from buildfan import __version__
from buildfan.errors import UserError
from buildfan.placement import Placement

log = structlog.get_logger("buildfan.cluster")

ZONE_LABEL = "topology.kubernetes.io/zone"
INSTANCE_TYPE_LABELS = ("node.kubernetes.io/instance-type", "beta.kubernetes.io/instance-type")
CAPACITY_TYPE_LABELS = (
    "karpenter.sh/capacity-type",
    "eks.amazonaws.com/capacityType",
    "cloud.google.com/gke-spot",
    "kubernetes.azure.com/scalesetpriority",
)
TEMPLATE_KEY = "template"


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, ApiException):
        return exc.status in (0, 429) or exc.status >= 500
    return isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError)


api_retry = retry(
    retry=retry_if_exception(_transient),
    stop=stop_after_attempt(5),
    wait=wait_exponential(multiplier=0.2, max=5),
    reraise=True,
    before_sleep=lambda rs: log.warning(
        "kubernetes API call failed, retrying",
        attempt=rs.attempt_number,
        error=str(rs.outcome.exception() if rs.outcome else ""),
    ),
)


def _reason(e: ApiException) -> str:
    try:
        return str(yaml.safe_load(e.body or "{}").get("message") or e.reason)
    except (yaml.YAMLError, AttributeError):
        return str(e.reason)


@dataclass(frozen=True)
class Resource:
    """A namespaced object buildfan made: what teardown and gc delete."""

    kind: str  # Deployment | ConfigMap | PodTemplate
    namespace: str
    name: str
    created_at: dt.datetime | None = None
    labels: tuple[tuple[str, str], ...] = ()


class Cluster:
    """A connection to one cluster, built from the kubeconfig (or in-cluster config)."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        try:
            self.api = _load_client(kubeconfig, context)
        except (ConfigException, FileNotFoundError, TypeError) as e:
            raise UserError(f"kubeconfig: cannot load it: {e}; set KUBECONFIG or pass --kubeconfig") from e
        self.api.user_agent = f"buildfan/{__version__}"
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.default_namespace = namespace_from_kubeconfig(kubeconfig, context)
        self._node_labels: dict[str, dict[str, str]] = {}

    # ------------------------------------------------------------ checks before any write

    def check_namespace(self, namespace: str) -> None:
        try:
            api_retry(self.core.read_namespace)(namespace)
        except ApiException as e:
            if e.status == 404:
                raise UserError(f"namespace {namespace!r} not found; create it or set `namespace:`") from e
            raise UserError(f"namespace {namespace!r}: {_reason(e)}") from e
        except (urllib3.exceptions.HTTPError, ConnectionError) as e:
            raise UserError(f"cluster unreachable at {self.api.configuration.host}: {e}; check KUBECONFIG") from e

    def read_template_configmap(self, namespace: str, name: str) -> dict[str, Any]:
        where = f"ConfigMap {namespace}/{name}"
        try:
            cm = api_retry(self.core.read_namespaced_config_map)(name, namespace)
        except ApiException as e:
            raise UserError(f"{where}: {_reason(e)}; create it with a `{TEMPLATE_KEY}` key") from e
        text = (cm.data or {}).get(TEMPLATE_KEY)
        if text is None:
            raise UserError(f"{where}: no `{TEMPLATE_KEY}` key; put the partial pod template under it")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UserError(f"{where}: key `{TEMPLATE_KEY}` is not YAML: {e}") from e
        if not isinstance(data, dict):
            raise UserError(f"{where}: key `{TEMPLATE_KEY}` must be a mapping (a pod template)")
        return data

    def merge_pod_template(
        self, namespace: str, base: dict[str, Any], patch: dict[str, Any], labels: dict[str, str], source: str
    ) -> dict[str, Any]:
        """Strategic-merge `patch` onto `base` (both PodTemplateSpecs), computed by the API server.

        The server needs an object to patch: a labelled scratch PodTemplate is created, patched with
        dryRun=All (nothing of the patch is stored) and deleted again before this returns.
        """
        name = f"{labels.get('buildfan.dev/run', 'x')}-merge-{threading.get_ident() % 100000}"
        scratch = {"metadata": {"name": f"buildfan-{name}", "labels": labels}, "template": base}
        created = self._create_scratch(namespace, scratch)
        try:
            merged = api_retry(self.core.patch_namespaced_pod_template)(
                created, namespace, {"template": patch}, dry_run="All"
            )
        except ApiException as e:
            raise UserError(f"{source}: the API server rejected the pod template: {_reason(e)}") from e
        finally:
            self.delete(Resource("PodTemplate", namespace, created))
        return dict(self.api.sanitize_for_serialization(merged.template))

    def _create_scratch(self, namespace: str, body: dict[str, Any]) -> str:
        try:
            obj = api_retry(self.core.create_namespaced_pod_template)(namespace, body)
        except ApiException as e:
            raise UserError(f"namespace {namespace}: cannot create a PodTemplate: {_reason(e)}") from e
        return str(obj.metadata.name)

    def validate_deployment(self, namespace: str, manifest: dict[str, Any], source: str) -> None:
        """A dry-run create: the API server validates the manifest and RBAC; nothing is stored."""
        try:
            api_retry(self.apps.create_namespaced_deployment)(namespace, manifest, dry_run="All")
        except ApiException as e:
            if e.status == 409:
                raise UserError(
                    f"{source}: Deployment {namespace}/{manifest['metadata']['name']} "
                    "already exists; run `buildfan gc` or pick another name"
                ) from e
            raise UserError(f"{source}: the API server rejected the builder Deployment: {_reason(e)}") from e

    # ------------------------------------------------------------ writes

    def create_deployment(self, namespace: str, manifest: dict[str, Any]) -> Resource:
        api_retry(self.apps.create_namespaced_deployment)(namespace, manifest)
        return Resource("Deployment", namespace, manifest["metadata"]["name"])

    def delete(self, res: Resource) -> None:
        """Idempotent: NotFound is success. The garbage collector removes dependents (ReplicaSets, pods)."""
        fn = {
            "Deployment": self.apps.delete_namespaced_deployment,
            "ConfigMap": self.core.delete_namespaced_config_map,
            "PodTemplate": self.core.delete_namespaced_pod_template,
        }[res.kind]
        try:
            api_retry(fn)(res.name, res.namespace, propagation_policy="Background")
        except ApiException as e:
            if e.status != 404:
                raise
        log.debug("deleted", kind=res.kind, namespace=res.namespace, name=res.name)

    # ------------------------------------------------------------ reads for teardown and gc

    def list_labelled(self, selector: str, namespace: str | None = None) -> list[Resource]:
        """Deployments, ConfigMaps and PodTemplates carrying `selector`, in one or all namespaces."""
        out: list[Resource] = []
        for kind, ns_fn, all_fn in (
            (
                "Deployment",
                self.apps.list_namespaced_deployment,
                self.apps.list_deployment_for_all_namespaces,
            ),
            ("ConfigMap", self.core.list_namespaced_config_map, self.core.list_config_map_for_all_namespaces),
            (
                "PodTemplate",
                self.core.list_namespaced_pod_template,
                self.core.list_pod_template_for_all_namespaces,
            ),
        ):
            items = (
                api_retry(ns_fn)(namespace, label_selector=selector)
                if namespace
                else api_retry(all_fn)(label_selector=selector)
            ).items
            out += [
                Resource(
                    kind,
                    o.metadata.namespace,
                    o.metadata.name,
                    o.metadata.creation_timestamp,
                    tuple(sorted((o.metadata.labels or {}).items())),
                )
                for o in items
            ]
        return out

    def pods(self, namespace: str, selector: str) -> list[Any]:
        return list(api_retry(self.core.list_namespaced_pod)(namespace, label_selector=selector).items)

    # ------------------------------------------------------------ placement

    def placement_of(self, pod: Any) -> Placement:
        labels = self._labels_of_node(pod.spec.node_name)
        return Placement(
            pod=pod.metadata.name,
            node=pod.spec.node_name,
            zone=labels.get(ZONE_LABEL),
            instance_type=_first(labels, INSTANCE_TYPE_LABELS),
            capacity_type=_first(labels, CAPACITY_TYPE_LABELS),
            scheduled_at=_condition_time(pod, "PodScheduled"),
            ready_at=_condition_time(pod, "Ready"),
        )

    def _labels_of_node(self, node: str) -> dict[str, str]:
        if node not in self._node_labels:
            try:
                obj = api_retry(self.core.read_node)(node)
                self._node_labels[node] = dict(obj.metadata.labels or {})
            except ApiException as e:  # RBAC may forbid reading nodes: report what the pod says
                log.warning("cannot read node labels", node=node, status=e.status)
                self._node_labels[node] = {}
        return self._node_labels[node]

    def watch_pods(self, namespace: str, selector: str, stop: threading.Event) -> Iterator[Any]:
        """Yield the run's pods as they change (list first, then a watch), until `stop` is set."""
        while not stop.is_set():
            listed = api_retry(self.core.list_namespaced_pod)(namespace, label_selector=selector)
            yield from listed.items
            yield from self._watch_from(namespace, selector, listed.metadata.resource_version, stop)

    def _watch_from(self, namespace: str, selector: str, rv: str, stop: threading.Event) -> Iterator[Any]:
        w = watch.Watch()
        try:
            for ev in w.stream(
                self.core.list_namespaced_pod,
                namespace,
                label_selector=selector,
                resource_version=rv,
                timeout_seconds=5,
            ):
                if stop.is_set():
                    w.stop()
                    return
                if ev["type"] in ("ADDED", "MODIFIED"):
                    yield ev["object"]
        except ApiException as e:
            if e.status != 410:
                log.warning("pod watch failed, relisting", status=e.status)
        except (urllib3.exceptions.HTTPError, ConnectionError) as e:
            log.warning("pod watch connection dropped, relisting", error=str(e))


def _kubeconfig_path(kubeconfig: str | None) -> str | None:
    """The client reads $KUBECONFIG once, at import; read it now, so a later change counts."""
    return kubeconfig or os.environ.get("KUBECONFIG") or None


def _load_client(kubeconfig: str | None, context: str | None) -> client.ApiClient:
    try:
        return config.new_client_from_config(config_file=_kubeconfig_path(kubeconfig), context=context)
    except ConfigException:
        if kubeconfig:
            raise
        config.load_incluster_config()
        return client.ApiClient()


def namespace_from_kubeconfig(kubeconfig: str | None, context: str | None) -> str:
    """The namespace of the chosen kubeconfig context (a file read, no API call)."""
    try:
        contexts, current = config.list_kube_config_contexts(config_file=_kubeconfig_path(kubeconfig))
    except (ConfigException, FileNotFoundError, TypeError):
        return _incluster_namespace()
    chosen = next((c for c in contexts if c["name"] == context), current) if context else current
    return str((chosen or {}).get("context", {}).get("namespace") or "default")


def _incluster_namespace() -> str:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip()
    except OSError:
        return "default"


def _first(labels: dict[str, str], keys: tuple[str, ...]) -> str | None:
    return next((labels[k] for k in keys if k in labels), None)


def _condition_time(pod: Any, kind: str) -> dt.datetime | None:
    for c in (pod.status.conditions or []) if pod.status else []:
        if c.type == kind and c.status == "True":
            return c.last_transition_time  # type: ignore[no-any-return]
    return None
