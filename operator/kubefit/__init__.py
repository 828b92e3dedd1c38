"""kubefit: sizes and runs elastic ML training jobs on Kubernetes without wasting accelerators."""

__version__ = "0.1.0"
