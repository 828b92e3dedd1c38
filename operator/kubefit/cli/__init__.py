"""kubefit.cli."""
