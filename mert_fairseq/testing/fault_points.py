"""Named fault points and test hooks for the fault-injection harness (scripts/fault_injection.py).

Nothing here acts until `install(faults)` runs, and only the fault-injection entry point
(`python -m mert_fairseq.testing.fault_train`, the training process the harness and the tests start) calls
it, with `Faults.from_env()`: production code neither imports this module nor reads its variables.
`install` replaces attributes through the registry of `mert_fairseq.tasks.fairseq_patches` (after
installing fairseq's patches there), so `fairseq_patches.uninstall()` undoes the hooks too.

`MERT_FAULT_POINT=NAME:K`: the K-th time this process reaches the point NAME, it kills its whole process
group with SIGKILL (as a cluster pre-empting the job would). Points:

  checkpoint_write  half-way through writing a checkpoint's temporary file (fairseq_patches.checkpoint_file_hook)
  checkpoint_copy   half-way through copying a checkpoint to another name (checkpoint_last.pt, ...)
  data_loading      while reading a training or validation clip (MERTDataset.__getitem__)
  validation        inside a validation step (MERTPretrainingTask.valid_step)

`MERT_FAULT_NAN_UPDATES=3,4,4` fills the audio of a batch trained as update 3, and of two batches trained
as update 4 (a skipped update is retried with the next batch), with NaN, to show that a corrupted batch
is skipped and cannot poison the weights (MERTPretrainingTask.train_step).
`MERT_FAULT_RANK_WEIGHTS=DIR` makes every data-parallel rank write its model weights to `DIR/rank{R}.pt`
whenever fairseq saves a checkpoint (fairseq saves on rank 0 only), to show that all ranks hold the same
weights (checkpoint_utils.save_checkpoint).
"""
from __future__ import annotations

import collections
import dataclasses
import os
import signal
from typing import IO, Callable, Mapping, Optional, Tuple

from mert_fairseq.tasks import fairseq_patches

ENV_POINT = "MERT_FAULT_POINT"
ENV_NAN_UPDATES = "MERT_FAULT_NAN_UPDATES"
ENV_RANK_WEIGHTS = "MERT_FAULT_RANK_WEIGHTS"
POINTS = ("checkpoint_write", "checkpoint_copy", "data_loading", "validation")


@dataclasses.dataclass(frozen=True)
class Faults:
    """What to inject into a training process."""

    point: Optional[Tuple[str, int]] = None  # (name, k): kill at the k-th hit of point `name`
    nan_updates: Tuple[int, ...] = ()  # update numbers (fairseq's update_num) whose batch is made NaN, once each
    rank_weights: Optional[str] = None  # folder for every rank's weights at each checkpoint save

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "Faults":
        point = None
        if env.get(ENV_POINT):
            name, _, k = env[ENV_POINT].partition(":")
            if name not in POINTS:
                raise ValueError(f"{ENV_POINT}={env[ENV_POINT]!r}: unknown point {name!r}; known: {', '.join(POINTS)}")
            point = (name, int(k or 1))
        nan = tuple(int(u) for u in env[ENV_NAN_UPDATES].split(",")) if env.get(ENV_NAN_UPDATES) else ()
        return cls(point, nan, env.get(ENV_RANK_WEIGHTS) or None)


def kill_process_group() -> None:
    """SIGKILL the whole process group when this process leads it (the harness starts training in a
    new session), else only this process."""
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


class _HalfWayWriter:
    """A binary file wrapper that calls `reached` after writing half of its first large chunk, leaving a
    partial file behind when that kills."""

    def __init__(self, f: IO[bytes], reached: Callable[[], None]) -> None:
        self._f, self._reached, self._done = f, reached, False

    def write(self, data) -> int:
        if self._done or len(data) < 2:
            return self._f.write(data)
        view = memoryview(data).cast("B")
        half = len(view) // 2
        self._f.write(view[:half])
        self._f.flush()
        self._done = True
        self._reached()
        self._f.write(view[half:])
        return len(view)

    def __getattr__(self, attr):
        return getattr(self._f, attr)


def install(faults: Faults) -> None:
    """fairseq's patches (`fairseq_patches.install`), then the hooks `faults` asks for, on top of them."""
    from fairseq import checkpoint_utils

    from mert_fairseq.data.mert_dataset import MERTDataset
    from mert_fairseq.tasks.mert_pretraining import MERTPretrainingTask

    fairseq_patches.install()
    if faults.point is not None:
        name, k = faults.point
        hits = [0]

        def reached() -> None:
            hits[0] += 1
            if hits[0] == k:
                kill_process_group()

        if name in ("checkpoint_write", "checkpoint_copy"):
            file_hook = fairseq_patches.checkpoint_file_hook

            def halfway(f: IO[bytes], point: str) -> IO[bytes]:
                return _HalfWayWriter(f, reached) if point == name else file_hook(f, point)

            fairseq_patches.replace(fairseq_patches, "checkpoint_file_hook", halfway)
        if name == "data_loading":
            _before(MERTDataset, "__getitem__", reached)
        if name == "validation":
            _before(MERTPretrainingTask, "valid_step", reached)
    if faults.nan_updates:
        _poison_updates(MERTPretrainingTask, collections.Counter(faults.nan_updates))
    if faults.rank_weights:
        _save_rank_weights(checkpoint_utils, faults.rank_weights)


def _before(owner: type, method: str, reached: Callable[[], None]) -> None:
    """`owner.method` calls `reached()` first."""
    call = getattr(owner, method)

    def with_fault_point(self, *args, **kwargs):
        reached()
        return call(self, *args, **kwargs)

    fairseq_patches.replace(owner, method, with_fault_point)


def _poison_updates(task_class: type, todo: collections.Counter) -> None:
    train_step = task_class.train_step

    def poisoned_train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if todo[update_num] > 0 and sample:
            todo[update_num] -= 1
            sample["net_input"]["source"].fill_(float("nan"))
        return train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad)

    fairseq_patches.replace(task_class, "train_step", poisoned_train_step)


def _save_rank_weights(checkpoint_utils, out_dir: str) -> None:
    import torch

    save = checkpoint_utils.save_checkpoint

    def save_with_rank_weights(cfg, trainer, epoch_itr, val_loss):
        os.makedirs(out_dir, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in trainer.get_model().state_dict().items()}
        torch.save({"num_updates": trainer.get_num_updates(), "model": state},
                   os.path.join(out_dir, f"rank{trainer.data_parallel_rank}.pt"))
        return save(cfg, trainer, epoch_itr, val_loss)

    fairseq_patches.replace(checkpoint_utils, "save_checkpoint", save_with_rank_weights)
