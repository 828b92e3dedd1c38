"""kubefit.builders."""
