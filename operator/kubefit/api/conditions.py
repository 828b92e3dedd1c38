"""The words of a TrainingJob's status: condition types, their reasons, event reasons and phases.

Each is a documented constant, so the operator, its tests and the docs use one spelling, and `kubectl
describe` readers can look a reason up here. The layout follows Kubeflow Trainer's API, which declares
each condition type and each reason as a commented constant (github.com/kubeflow/trainer,
pkg/apis/trainer/v1alpha1/trainjob_types.go). The values are plain strings: they go into the status
and events as they are.
"""

from __future__ import annotations

from typing import Final, Literal

ConditionStatus = Literal["True", "False", "Unknown"]
EventType = Literal["Normal", "Warning"]
Phase = Literal["Pending", "Queued", "Running", "Scaling", "Succeeded", "Failed", "Suspended"]


class ConditionType:
    """The `type` of each condition in status.conditions (metav1.Condition)."""

    SIZED: Final = "Sized"
    """True when the chosen layout fits device memory with the headroom kept free; False when it does
    not; Unknown while the spec is invalid. Its message is the sizing summary."""

    READY: Final = "Ready"
    """True when every desired worker runs; False otherwise, with the reason saying why."""

    RUNNING: Final = "Running"
    """True when at least the elastic floor of workers runs, so training can proceed (even while
    scaling). Not a pod phase: pod phases are kubefit.decisions.observed.POD_*."""

    SUCCEEDED: Final = "Succeeded"
    """True once every desired worker has succeeded; the job is finished."""

    FAILED: Final = "Failed"
    """True once workers failed more often than spec.runPolicy.maxRestarts allows; the job is finished."""

    SUSPENDED: Final = "Suspended"
    """True while spec.runPolicy.suspend is true (the workers are deleted, the job kept); False after a
    resume."""


class Reason:
    """The `reason` of a condition, and of the event posted when that condition changes."""

    FITS: Final = "Fits"
    """Sized=True: the layout fits device memory with the headroom kept free."""

    DOES_NOT_FIT: Final = "DoesNotFit"
    """Sized=False, Ready=False, Running=False: even the chosen layout needs more memory than the device
    has usable; no workers are started."""

    INVALID_SPEC: Final = "InvalidSpec"
    """Sized=Unknown, Ready=False, Running=False: the spec (or the job's name) is invalid; the message
    names each field at fault. No workers are started."""

    TOO_FEW_WORKERS: Final = "TooFewWorkers"
    """Ready=False, Running=False: memory needs more workers than spec.workers allows."""

    SUSPENDED: Final = "Suspended"
    """Suspended=True, Ready=False, Running=False: spec.runPolicy.suspend is true."""

    RESUMED: Final = "Resumed"
    """Suspended=False: spec.runPolicy.suspend went back to false."""

    ALL_WORKERS_READY: Final = "AllWorkersReady"
    """Ready=True: every desired worker runs."""

    WORKERS_NOT_READY: Final = "WorkersNotReady"
    """Ready=False: some desired workers do not run yet; the message counts them."""

    WORKERS_RUNNING: Final = "WorkersRunning"
    """Running=True: at least the elastic floor of workers runs."""

    WORKERS_STARTING: Final = "WorkersStarting"
    """Running=False: fewer workers than the elastic floor run yet."""

    ALL_WORKERS_SUCCEEDED: Final = "AllWorkersSucceeded"
    """Succeeded=True: every desired worker exited successfully."""

    RESTART_LIMIT_EXCEEDED: Final = "RestartLimitExceeded"
    """Failed=True: a worker failed after spec.runPolicy.maxRestarts restarts."""

    JOB_SUCCEEDED: Final = "Succeeded"
    """Ready=False, Running=False: the job has succeeded; nothing runs any more."""

    JOB_FAILED: Final = "Failed"
    """Ready=False, Running=False: the job has failed; nothing runs any more."""

    RECONCILE_ERROR: Final = "ReconcileError"
    """Ready=False: reconciling the job raised (an API error or a bug); the message is the error's. It
    is retried with a backoff and cleared by the next reconcile that succeeds."""


class EventReason:
    """Reasons of the events the operator posts that are not a condition's change."""

    OVER_PROVISIONED: Final = "OverProvisioned"
    """Normal: a fixed layout is far bigger than the job needs (also in status.sizing.warnings)."""

    WORKER_FAILED: Final = "WorkerFailed"
    """Warning: a worker pod failed and is being replaced (the message counts the restarts)."""

    CREATED_WORKERS: Final = "CreatedWorkers"
    """Normal: the named worker pods were created."""

    DELETED_WORKERS: Final = "DeletedWorkers"
    """Normal: the named worker pods were deleted."""


class JobPhase:
    """status.phase, the one-word summary `kubectl get` prints; derived from the conditions."""

    PENDING: Final[Phase] = "Pending"
    """No worker runs yet: the spec is invalid, the job does not fit, or its pods are starting."""

    QUEUED: Final[Phase] = "Queued"
    """Some workers wait for the scheduler to find them a node."""

    RUNNING: Final[Phase] = "Running"
    """Every desired worker runs."""

    SCALING: Final[Phase] = "Scaling"
    """Every desired worker has run at once before, and now some do not run or surplus ones are still
    there: the count is changing, or a worker is being replaced."""

    SUCCEEDED: Final[Phase] = "Succeeded"
    """Finished: every desired worker succeeded."""

    FAILED: Final[Phase] = "Failed"
    """Finished: workers failed more often than spec.runPolicy.maxRestarts allows."""

    SUSPENDED: Final[Phase] = "Suspended"
    """spec.runPolicy.suspend is true: no workers, the job is kept."""


FINISHED_PHASES: Final = frozenset({JobPhase.SUCCEEDED, JobPhase.FAILED})
