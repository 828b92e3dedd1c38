"""A tiny elastic DDP training loop for CPUs: what kubefit's elastic scheduling is tested with.

Run by torchrun's elastic agent (one process per worker pod here, NPROC_PER_NODE=1), it trains a
4,192-parameter MLP on synthetic regression data with the gloo backend. It is written to survive
torchrun re-forming the group whenever workers come or go:

* every (re)start loads the newest checkpoint from the shared directory, so the step counter never
  goes back past the last checkpoint;
* each step it asks kubefit's checkpoint handshake (kubefit_trainer) whether the operator wants a
  checkpoint before it removes workers; if so rank 0 saves one, and every worker acknowledges the step;
* SIGTERM (torchrun stopping its workers for a new round, or the pod being deleted), or a peer lost in
  the middle of a step, saves a checkpoint before exiting;
* it ends with exit status 0 once --total-steps steps are done.

Each step prints `step=N loss=X world_size=W rank=R` (what tests/e2e/test_torchrun_elastic.py reads).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

# This CPU example needs no NumPy; torch warns at import when it is missing.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from kubefit_trainer import CheckpointHandshake  # noqa: E402

FEATURES = 32
HIDDEN = 64
BATCH = 64
CHECKPOINT_FILE = "checkpoint.pt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--total-steps", type=int, default=int(os.environ.get("TOTAL_STEPS", "300")))
    parser.add_argument(
        "--checkpoint-dir",
        default=os.environ.get("CHECKPOINT_DIR", "checkpoints"),
        help="shared by every worker (a ReadWriteMany volume on a cluster; the same disk on the sandbox)",
    )
    parser.add_argument("--save-every", type=int, default=int(os.environ.get("SAVE_EVERY", "50")))
    parser.add_argument(
        "--step-seconds",
        type=float,
        default=float(os.environ.get("STEP_SECONDS", "0")),
        help="sleep per step, so that a demo lasts long enough to watch it scale",
    )
    return parser.parse_args(argv)


def build_model() -> nn.Module:
    torch.manual_seed(0)  # the same initial weights on every rank
    return nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, FEATURES))


def batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic data: y = sin(x @ W) for a fixed W; each (step, rank) gets its own batch."""
    generator = torch.Generator().manual_seed(step * 1000 + rank)
    weights = torch.Generator().manual_seed(42)
    target_map = torch.randn(FEATURES, FEATURES, generator=weights) / FEATURES**0.5
    inputs = torch.randn(BATCH, FEATURES, generator=generator)
    return inputs, torch.sin(inputs @ target_map)


class Checkpoints:
    """The newest checkpoint in a shared directory; only rank 0 writes, atomically, never backwards."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / CHECKPOINT_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=True)

    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, reason: str) -> None:
        current = self.load()
        if current is not None and current["step"] > step:
            return  # a newer one is there already (saved before a restart): never go back
        # The same step again (e.g. "done" after a periodic save at the last step) is the same state:
        # written again, so that the log says why the last checkpoint exists.
        temporary = self.path.with_suffix(f".tmp{os.getpid()}")
        state = {"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict()}
        torch.save(state, temporary)
        os.replace(temporary, self.path)
        print(f"checkpoint saved step={step} reason={reason}", flush=True)


class Stop(Exception):
    """SIGTERM arrived: save and leave."""


# Set by SIGTERM and acted on between steps: raising from the handler itself could land inside
# optimizer.step() (a loop over parameters), saving a half-updated model under the previous step.
STOP_REQUESTED = threading.Event()


def _request_stop(signum: int, frame: Any) -> None:
    STOP_REQUESTED.set()


def train(args: argparse.Namespace) -> int:
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    checkpoints = Checkpoints(args.checkpoint_dir)
    model = build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    state = checkpoints.load()
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
    print(f"resumed step={step} world_size={world_size} rank={rank}", flush=True)
    ddp = DistributedDataParallel(model)
    handshake = CheckpointHandshake.from_env()
    loss_fn = nn.MSELoss()

    def save(reason: str) -> None:
        if rank == 0:
            checkpoints.save(step, model, optimizer, reason)

    signal.signal(signal.SIGTERM, _request_stop)
    try:
        while step < args.total_steps:
            if STOP_REQUESTED.is_set():
                raise Stop()
            inputs, targets = batch(step, rank)
            optimizer.zero_grad()
            loss = loss_fn(ddp(inputs), targets)
            loss.backward()
            optimizer.step()
            step += 1
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            print(f"step={step} loss={mean_loss.item() / world_size:.6f} world_size={world_size} rank={rank}",
                  flush=True)  # fmt: skip
            asked = _checkpoint_if_asked(handshake, save, step)
            if not asked and args.save_every and step % args.save_every == 0:
                save("periodic")
            if args.step_seconds:
                time.sleep(args.step_seconds)
        save("done")
    except (Stop, RuntimeError) as stop:
        # SIGTERM (torchrun re-forming the group, the pod deleted; seen between steps) or a peer gone
        # mid-collective (gloo raises RuntimeError in backward or an all_reduce, never inside
        # optimizer.step): the model and optimizer hold exactly `step` steps, so rank 0 saves them.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        save("sigterm" if isinstance(stop, Stop) else "group-lost")
        print(f"stopped at step={step}: {type(stop).__name__} {stop}".rstrip(), flush=True)
        # Leave at once: tearing down a gloo group whose peers are gone can block until torchrun's
        # SIGKILL, and torchrun waits for this process before it joins the next rendezvous round.
        os._exit(143 if isinstance(stop, Stop) else 1)
    dist.destroy_process_group()
    print(f"done step={step}", flush=True)
    return 0


def _checkpoint_if_asked(handshake: CheckpointHandshake, save: Callable[[str], None], step: int) -> bool:
    """Saves and acknowledges when the operator asks (True then). requested_by_any() is a collective: every
    rank calls it at every step, rank 0 polls, and all of them save at the same step."""
    if not handshake.requested_by_any():
        return False
    save("handshake")
    dist.barrier()  # the checkpoint is on disk before anyone acknowledges it
    if os.environ.get("LOCAL_RANK", "0") == "0":  # one ack per pod
        handshake.acknowledge(step)
        print(f"checkpoint acknowledged step={step}", flush=True)
    return True


if __name__ == "__main__":
    sys.exit(train(parse_args()))
