"""kubefit.sandbox."""
