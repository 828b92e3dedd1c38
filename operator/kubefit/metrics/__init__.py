"""kubefit.metrics."""
