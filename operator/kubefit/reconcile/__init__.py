"""kubefit.reconcile."""
