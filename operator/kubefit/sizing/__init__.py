"""kubefit.sizing."""
