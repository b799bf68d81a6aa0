"""Named fault points for the fault-injection harness (scripts/fault_injection.py); inert by default.

Nothing here acts unless the environment variable `MERT_FAULT_POINT` is set (the harness and the
tests set it for the training process they start). Its value is `NAME:K`: the K-th time this process
reaches the point NAME, it kills its whole process group with SIGKILL (as a cluster pre-empting the
job would). Points:

  checkpoint_write  half-way through writing a checkpoint's temporary file (mert_fairseq.checkpoint.resume)
  checkpoint_copy   half-way through copying a checkpoint to another name (checkpoint_last.pt, ...)
  data_loading      while reading a training or validation clip (MERTDataset.__getitem__)
  validation        inside a validation step (MERTPretrainingTask.valid_step)

`MERT_FAULT_NAN_UPDATES=3,4,4` (testing only) fills the audio of a batch trained as update 3, and of
two batches trained as update 4 (a skipped update is retried with the next batch), with NaN,
to show that a corrupted batch is skipped and cannot poison the weights.
`MERT_FAULT_RANK_WEIGHTS=DIR` (testing only) makes every data-parallel rank write its model weights to
`DIR/rank{R}.pt` whenever fairseq saves a checkpoint (fairseq saves on rank 0 only), to show that all
ranks hold the same weights.
The data-loading, validation, NaN and rank-weights hooks are installed by `install()` (called by
`mert_fairseq.tasks.fairseq_patches.install` when the task is set up, and only when one of the variables
is set) by wrapping those methods.
"""
from __future__ import annotations

import collections
import os
import signal
from typing import IO, Optional, Tuple

ENV_POINT = "MERT_FAULT_POINT"
ENV_NAN_UPDATES = "MERT_FAULT_NAN_UPDATES"
ENV_RANK_WEIGHTS = "MERT_FAULT_RANK_WEIGHTS"
POINTS = ("checkpoint_write", "checkpoint_copy", "data_loading", "validation")

_hits: collections.Counter = collections.Counter()


def armed_point() -> Optional[Tuple[str, int]]:
    """(name, k) from MERT_FAULT_POINT=name:k, or None when unset."""
    value = os.environ.get(ENV_POINT)
    if not value:
        return None
    name, _, k = value.partition(":")
    if name not in POINTS:
        raise ValueError(f"{ENV_POINT}={value!r}: unknown point {name!r}; known: {', '.join(POINTS)}")
    return name, int(k or 1)


def kill_process_group() -> None:
    """SIGKILL the whole process group when this process leads it (the harness starts training in a
    new session), else only this process."""
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def fault_point(name: str) -> None:
    """Called at point `name`; kills the process group on the armed hit, otherwise returns."""
    armed = armed_point()
    if armed is None or armed[0] != name:
        return
    _hits[name] += 1
    if _hits[name] == armed[1]:
        kill_process_group()


class _HalfWayWriter:
    """A binary file wrapper that reaches a fault point after writing half of its first large chunk,
    leaving a partial file behind when the point kills."""

    def __init__(self, f: IO[bytes], name: str) -> None:
        self._f, self._name, self._done = f, name, False

    def write(self, data) -> int:
        if self._done or len(data) < 2:
            return self._f.write(data)
        view = memoryview(data).cast("B")
        half = len(view) // 2
        self._f.write(view[:half])
        self._f.flush()
        self._done = True
        fault_point(self._name)
        self._f.write(view[half:])
        return len(view)

    def __getattr__(self, attr):
        return getattr(self._f, attr)


def halfway_writer(f: IO[bytes], name: str) -> IO[bytes]:
    """`f` itself unless fault point `name` is armed."""
    armed = armed_point()
    return _HalfWayWriter(f, name) if armed and armed[0] == name else f


def install(MERTPretrainingTask: type, MERTDataset: type) -> None:
    """Wrap the task's validation and training steps and the dataset's reads (the classes are passed in by
    the task's setup) when the variables are set."""
    armed = armed_point()
    nan_updates = os.environ.get(ENV_NAN_UPDATES)
    if os.environ.get(ENV_RANK_WEIGHTS):
        _install_rank_weights(os.environ[ENV_RANK_WEIGHTS])
    if armed is None and not nan_updates:
        return

    if armed and armed[0] == "data_loading":
        read = MERTDataset.__getitem__

        def getitem(self, index):
            fault_point("data_loading")
            return read(self, index)

        MERTDataset.__getitem__ = getitem
    if armed and armed[0] == "validation":
        valid_step = MERTPretrainingTask.valid_step

        def faulty_valid_step(self, sample, model, criterion):
            fault_point("validation")
            return valid_step(self, sample, model, criterion)

        MERTPretrainingTask.valid_step = faulty_valid_step
    if nan_updates:
        todo = collections.Counter(int(u) for u in nan_updates.split(","))
        train_step = MERTPretrainingTask.train_step

        def poisoned_train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
            if todo[update_num] > 0 and sample:
                todo[update_num] -= 1
                sample["net_input"]["source"].fill_(float("nan"))
            return train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad)

        MERTPretrainingTask.train_step = poisoned_train_step


def _install_rank_weights(out_dir: str) -> None:
    from fairseq import checkpoint_utils
    import torch

    save = checkpoint_utils.save_checkpoint

    def save_with_rank_weights(cfg, trainer, epoch_itr, val_loss):
        os.makedirs(out_dir, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in trainer.get_model().state_dict().items()}
        torch.save({"num_updates": trainer.get_num_updates(), "model": state},
                   os.path.join(out_dir, f"rank{trainer.data_parallel_rank}.pt"))
        return save(cfg, trainer, epoch_itr, val_loss)

    checkpoint_utils.save_checkpoint = save_with_rank_weights
