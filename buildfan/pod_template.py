"""A user's partial pod template, merged onto the builder Deployment by the API server.

The merge is Kubernetes' own strategic merge patch (containers by name, topologySpreadConstraints by
topologyKey, nodeSelector per key...), computed server-side: no home-made merge engine. The result is then
checked: buildx depends on the buildkitd container's image, command and args, on the `app` label and on
the selector, so a template that changes any of them is refused.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from buildfan.errors import UserError
from buildfan.matrix import validate_pod_template
from buildfan.plan import APP_LABEL, CONTAINER, BuilderPlan

PROTECTED_CONTAINER_FIELDS = ("image", "command", "args")


class TemplateSource(Protocol):
    def read_template_configmap(self, namespace: str, name: str) -> dict[str, Any]: ...

    def merge_pod_template(
        self, namespace: str, base: dict[str, Any], patch: dict[str, Any], labels: dict[str, str], source: str
    ) -> dict[str, Any]: ...


def apply_template(plan: BuilderPlan, cluster: TemplateSource, matrix_path: Path) -> BuilderPlan:
    """The plan with its Deployment's pod template merged with the user's, or the plan unchanged."""
    found = _user_template(plan, cluster)
    if found is None or plan.manifest is None:
        return plan
    patch, source = found
    base = plan.manifest["spec"]["template"]
    merged = cluster.merge_pod_template(plan.namespace, base, patch, dict(plan.labels), source)
    check_protected(base, merged, source)
    manifest = copy.deepcopy(plan.manifest)
    manifest["spec"]["template"] = merged
    return replace(plan, manifest=manifest)


def _user_template(plan: BuilderPlan, cluster: TemplateSource) -> tuple[dict[str, Any], str] | None:
    if plan.pod_template is not None:
        return plan.pod_template.as_dict(), plan.pod_template.source
    if plan.pod_template_configmap is None:
        return None
    source = f"ConfigMap {plan.namespace}/{plan.pod_template_configmap} key `template`"
    raw = cluster.read_template_configmap(plan.namespace, plan.pod_template_configmap)
    return validate_pod_template(raw, source), source


def _buildkitd(template: dict[str, Any]) -> dict[str, Any]:
    containers = template.get("spec", {}).get("containers", [])
    return next((c for c in containers if c.get("name") == CONTAINER), {})


def check_protected(base: dict[str, Any], merged: dict[str, Any], source: str) -> None:
    """Refuse a merge result that changed what buildx relies on."""
    before, after = _buildkitd(base), _buildkitd(merged)
    if not after:
        raise UserError(f"{source}: the merge removed the buildkitd container; do not use $patch on containers")
    for key in PROTECTED_CONTAINER_FIELDS:
        if before.get(key) != after.get(key):
            raise UserError(f"{source}: must not change the buildkitd container's {key}; use driver-opts instead")
    labels_before = base.get("metadata", {}).get("labels", {})
    labels_after = merged.get("metadata", {}).get("labels", {})
    if labels_before.get(APP_LABEL) != labels_after.get(APP_LABEL):
        raise UserError(f"{source}: must not change the `{APP_LABEL}` label; buildx selects its pods by it")
    if any(labels_after.get(k) != v for k, v in labels_before.items()):
        raise UserError(f"{source}: must not change buildfan's labels; they select the run's pods")
