"""Prometheus metrics of the operator: reconcile counts, errors and durations, and per-job gauges."""

from kubefit.metrics.operator_metrics import OperatorMetrics, serve_metrics

__all__ = ["OperatorMetrics", "serve_metrics"]
