"""Sizing: per-device memory estimates and accelerator planning. Pure logic, no Kubernetes I/O."""
