"""kubefit-sandbox: a real local Kubernetes control plane with simulated GPU/TPU nodes, for developing
and testing the kubefit operator. Installed apart from the operator (sandbox/pyproject.toml); the command
is `kubefit-sandbox`. See docs/sandbox.md."""
