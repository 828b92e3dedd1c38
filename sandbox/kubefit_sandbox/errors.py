"""The error the sandbox's node code raises for an operation it cannot do.

One class for the pod-IP allocator, the watches, node operations and the agent process, so that
`kubefit-sandbox node ...` turns any of them into one message and exit status 2.
"""

from __future__ import annotations


class NodeAgentError(RuntimeError):
    """A sandbox node operation that cannot be done; the message says why."""
