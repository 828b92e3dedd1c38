"""kubefit.controller."""
