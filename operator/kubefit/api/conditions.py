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

    ADMITTED: Final = "Admitted"
    """True once the operator's scheduling pass has granted the job workers (its effective minimum fits
    free capacity); False while it waits in the queue, after a gang timeout, or after preemption. No
    worker pod exists before it is True. Its lastTransitionTime is the admission time the gang timeout
    counts from."""


class Reason:
    """The `reason` of a condition, and of the event posted when that condition changes."""

    FITS: Final = "Fits"
    """Sized=True: the layout fits device memory with the headroom kept free."""

    DOES_NOT_FIT: Final = "DoesNotFit"
    """Sized=False, Ready=False: even the chosen layout needs more memory than the device has usable; no
    workers are started (Running=False), and workers already running are left alone (Running follows them)."""

    INVALID_SPEC: Final = "InvalidSpec"
    """Sized=Unknown, Ready=False: the spec (or the job's name) is invalid; the message names each field at
    fault. No workers are started (Running=False); workers already running are left alone (Running follows
    them)."""

    TOO_FEW_WORKERS: Final = "TooFewWorkers"
    """Ready=False: memory needs more workers than spec.workers allows. No workers are started
    (Running=False); workers already running are left alone (Running follows them)."""

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

    TRAINING_ENDED: Final = "TrainingEnded"
    """Succeeded=True: the group's training ended (framework pytorch or jax: a worker of an elastic pytorch
    group succeeded, a fixed group's worker 0) and no other worker runs, but not every worker succeeded:
    the others failed after the end or never started; the message counts them. Running=False: a worker of
    the group succeeded (framework pytorch or jax), and the others still run only to finish."""

    RESTART_LIMIT_EXCEEDED: Final = "RestartLimitExceeded"
    """Failed=True: a worker failed after spec.runPolicy.maxRestarts restarts."""

    JOB_SUCCEEDED: Final = "Succeeded"
    """Ready=False, Running=False: the job has succeeded; nothing runs any more."""

    JOB_FAILED: Final = "Failed"
    """Ready=False, Running=False: the job has failed; nothing runs any more."""

    INSUFFICIENT_CAPACITY: Final = "InsufficientCapacity"
    """Admitted=False: the job waits in the admission queue because its minimum does not fit the free
    devices it may use; the message says what is missing (e.g. needs 2 nodes with 8 free
    nvidia-h100-80gb; 1 has). No worker pods exist."""

    QUOTA_EXCEEDED: Final = "QuotaExceeded"
    """Admitted=False: the job's minimum of workers is over what a ResourceQuota of its namespace leaves room
    for; the message names the quota, the resource and what is left. It takes no devices and preempts no one
    until the quota has room. No worker pods exist."""

    QUEUED: Final = "Queued"
    """Admitted=False: the job waits in the admission queue behind another job (StrictFIFO, or a job at the
    head of the line keeping the nodes), or for the operator's first scheduling pass; the message says
    which. Ready=False, Running=False: the job is queued. No worker pods exist."""

    ADMITTED: Final = "Admitted"
    """Admitted=True: the scheduling pass granted the job workers; the message says how many."""

    GANG_TIMEOUT: Final = "GangTimeout"
    """Admitted=False: the admitted workers were not all placed (bound to a node) within
    spec.scheduling.gangTimeoutSeconds;
    every worker was deleted and the job requeues after a backoff (status.gang)."""

    PREEMPTED: Final = "Preempted"
    """Admitted=False: a higher-priority job whose spec.scheduling.preemption allows it took the devices;
    the workers were asked to checkpoint, then deleted, and the job requeues (it does not fail)."""

    SHRUNK_FOR_PRIORITY: Final = "ShrunkForPriority"
    """Admitted=True: an elastic job runs fewer workers (never below its minimum) so a higher-priority job
    could be admitted."""

    SCALED_DOWN: Final = "ScaledDown"
    """Admitted=True: the worker count went down (spec.workers.replicas lowered, or less capacity);
    surplus workers are removed highest index first, after the checkpoint handshake."""

    SCALED_UP: Final = "ScaledUp"
    """Admitted=True: the job was granted more workers (capacity appeared or replicas went up)."""

    RESTARTING: Final = "Restarting"
    """Ready=False: a fixed group's world size changed (spec.workers.replicas of a non-elastic job, or of
    an elastic jax job, whose process count is fixed when its workers start), or an elastic pytorch job's
    torchrun node range did (its bounds follow replicas); every worker is stopped after the checkpoint
    handshake and recreated with the new size."""

    RESTART_BACKOFF: Final = "RestartBackoff"
    """Ready=False: a failed worker was deleted; its replacement is created once the backoff after the
    last failure has passed (5 s doubled per restart, at most 5 minutes)."""

    RECONCILE_ERROR: Final = "ReconcileError"
    """Ready=False: reconciling the job raised (an API error or a bug); the message is the error's. It
    is retried with a backoff and cleared by the next reconcile that succeeds."""


class EventReason:
    """Reasons of the events the operator posts that are not a condition's change."""

    OVER_PROVISIONED: Final = "OverProvisioned"
    """Normal: a fixed layout is far bigger than the job needs (also in status.sizing.warnings)."""

    WORKER_FAILED: Final = "WorkerFailed"
    """Warning: a worker pod failed and is being replaced (the message counts the restarts), or removed
    uncounted where a lowered worker count takes it in place of a running worker."""

    WORKER_LOST: Final = "WorkerLost"
    """Warning: a worker of a running fixed group is gone (its node removed, its pod deleted by someone else):
    the group restarts, which is not counted against runPolicy.maxRestarts."""

    CREATED_WORKERS: Final = "CreatedWorkers"
    """Normal: the named worker pods were created."""

    DELETED_WORKERS: Final = "DeletedWorkers"
    """Normal: the named worker pods were deleted."""

    CHECKPOINT_REQUESTED: Final = "CheckpointRequested"
    """Normal: the workers were asked to checkpoint before some are removed (the message says why)."""

    CHECKPOINT_DONE: Final = "CheckpointDone"
    """Normal: every running worker acknowledged the checkpoint request; the planned removal proceeds."""

    CHECKPOINT_TIMED_OUT: Final = "CheckpointTimedOut"
    """Warning: spec.elastic.checkpointGracePeriodSeconds passed before every running worker acknowledged the
    checkpoint request (the message counts those that did); the planned removal proceeds all the same, and
    progress since the workers' last checkpoint may be lost."""

    CAPACITY_CHANGED: Final = "CapacityChanged"
    """Normal: an elastic job's worker above its floor found no node within
    spec.scheduling.gangTimeoutSeconds of its creation (CPU, memory, a pod limit or a taint the operator
    does not count); it is deleted (it never ran), the job runs the workers placed and grows again one gang
    timeout later. (A grant the scheduling pass lowers because workers no longer fit, which
    kubefit_scale_events_total counts as CapacityChanged, is told by condition Admitted instead, reason
    ScaledDown.)"""


class JobPhase:
    """status.phase, the one-word summary `kubectl get` prints; derived from the conditions."""

    PENDING: Final[Phase] = "Pending"
    """The job does not train yet: the spec is invalid, the job does not fit, or its admitted pods are
    starting (fewer run than it trains with: condition Running is False)."""

    QUEUED: Final[Phase] = "Queued"
    """The job waits for admission (condition Admitted says why); no worker pod exists."""

    RUNNING: Final[Phase] = "Running"
    """Every worker granted runs (status.desiredReplicas)."""

    SCALING: Final[Phase] = "Scaling"
    """Not every desired worker runs, or surplus ones are still there, after every desired worker has run at
    once, or while enough run to train (an elastic job on its floor while a worker above it starts): the
    count is changing, or a worker is being replaced or placed."""

    SUCCEEDED: Final[Phase] = "Succeeded"
    """Finished: every desired worker succeeded."""

    FAILED: Final[Phase] = "Failed"
    """Finished: workers failed more often than spec.runPolicy.maxRestarts allows."""

    SUSPENDED: Final[Phase] = "Suspended"
    """spec.runPolicy.suspend is true: no workers, the job is kept."""


FINISHED_PHASES: Final = frozenset({JobPhase.SUCCEEDED, JobPhase.FAILED})
