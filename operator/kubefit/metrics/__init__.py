"""Prometheus metrics of the operator: reconciles, per-job gauges, scheduling latencies and events, and
the cluster's accelerators (docs/metrics.md)."""

from kubefit.metrics.operator_metrics import AcceleratorCount, OperatorMetrics, serve_metrics

__all__ = ["AcceleratorCount", "OperatorMetrics", "serve_metrics"]
