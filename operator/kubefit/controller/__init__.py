"""The operator's Kubernetes side: kopf handlers and indexes, API calls, and the run loop.

Thin by design: handlers only trigger `Reconciler.reconcile`, which observes, calls the pure
`kubefit.decisions.job.decide` and applies its decision.
"""
