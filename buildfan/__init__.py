"""buildfan: fan a matrix of Docker image builds out over a Kubernetes cluster."""

__version__ = "0.1.0"
