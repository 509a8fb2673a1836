"""Where a builder's pod ran: read from the Kubernetes API, reported per image."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Placement:
    """The node a builder's pod was bound to, with the node's topology labels.

    Fields that the cluster does not provide (a node without a zone label, say) are None.
    """

    pod: str
    node: str
    zone: str | None = None
    instance_type: str | None = None  # node.kubernetes.io/instance-type
    capacity_type: str | None = None  # karpenter.sh/capacity-type, eks/gke spot labels
    scheduled_at: datetime | None = None  # PodScheduled condition's lastTransitionTime
    ready_at: datetime | None = None  # Ready condition's lastTransitionTime
