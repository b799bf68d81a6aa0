"""Preemption without loss: SIGUSR1 (Slurm's `--signal=USR1@T` before the time limit) or SIGTERM
(preemption, `scancel`) finishes the current update, saves `checkpoint_last.pt` and exits with
`EXIT_PREEMPTED` (75, EX_TEMPFAIL: "try again"), so a rerun continues bit-identically.

- `install_handlers()` (from the patched `load_checkpoint`, i.e. in a training process once its model and
  data are built) sets a flag on the first signal; a second one of the same kind acts as if unhandled.
- `stop_requested()` is asked once per update by fairseq's stop check (`fairseq_cli.train.should_stop_early`,
  patched in `tasks.fairseq_patches`). Under data parallelism the ranks agree without the step waiting for
  the device: each update launches a non-blocking all-reduce (max) of this rank's flag on a gloo group of
  CPU tensors and reads the one launched at the previous update, finished by then. Every rank reads the
  same reduced value at the same update, so all stop after the same update (the one after the update in
  which the first signal came), however many of them got the signal. fairseq then saves (no validation).
- `after_save(trainer)` (the patched `save_checkpoint`) waits for every rank, asks Slurm to requeue the job
  (rank 0; only when `SLURM_JOB_ID` is set and the job allows requeueing, i.e. was submitted with
  `--requeue`) and exits with `EXIT_PREEMPTED`. A run already at `max_update` finishes normally instead.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from typing import Optional

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

_received: dict = {"signal": None, "agreed": False}
_flags: dict = {"group": None, "pending": None}  # gloo group of the flags; (work, tensor) launched last update


def _handler(signum, frame) -> None:
    if _received["signal"] == signum:  # asked twice: behave as without the handler
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _received["signal"] = _received["signal"] or signum


def install_handlers() -> None:
    """Catch SIGUSR1/SIGTERM in this (main-thread) training process; idempotent."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in SIGNALS:
        if signal.getsignal(sig) is not _handler:
            signal.signal(sig, _handler)


def reset() -> None:
    """Forget a received signal and any flag in flight (tests)."""
    _received.update(signal=None, agreed=False)
    _flags.update(group=None, pending=None)


def _data_parallel() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _agreed_last_update(flag: bool) -> bool:
    """Any rank's flag as launched at the previous call (False at the first), and this call's flag launched:
    an all-reduce on CPU tensors of a gloo group (the default group under gloo, a new one under nccl, so no
    CUDA stream is involved), `async_op`; one update later it has finished (the wait returns at once unless
    another rank's host is a whole update behind)."""
    if _flags["group"] is None:  # created by every rank at its first update (a collective call)
        _flags["group"] = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    agreed = False
    if _flags["pending"] is not None:
        work, reduced = _flags["pending"]
        work.wait()
        agreed = bool(reduced.item())
    if not agreed:
        local = torch.tensor([float(flag)])
        _flags["pending"] = (dist.all_reduce(local, op=dist.ReduceOp.MAX, group=_flags["group"], async_op=True),
                             local)
    return agreed


def stop_requested() -> bool:
    """True on every rank once any rank got a signal: at once in a single process, one update later under data
    parallelism (all ranks at the same update; no wait on the device)."""
    if _received["agreed"]:
        return True
    flag = _received["signal"] is not None
    if _data_parallel():
        flag = _agreed_last_update(flag)
    if flag:
        _received["agreed"] = True
        name = signal.Signals(_received["signal"]).name if _received["signal"] else "another rank's signal"
        logger.warning("preemption (%s): saving checkpoint_last.pt after this update, then exiting with code %d",
                       name, EXIT_PREEMPTED)
    return flag


def requeue_slurm_job() -> Optional[str]:
    """`scontrol requeue $SLURM_JOB_ID` when under Slurm and the job allows it; returns what was done."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        shown = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=60)
        if "Requeue=1" not in shown.stdout.split():
            logger.warning("Slurm job %s is not requeued: it was not submitted with --requeue", job)
            return "not requeueable"
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.warning("Slurm job %s: scontrol failed (%s); not requeued", job, exc)
        return "scontrol failed"
    if done.returncode != 0:
        logger.warning("Slurm job %s: scontrol requeue failed: %s", job, done.stderr.strip())
        return "scontrol failed"
    logger.info("Slurm job %s requeued", job)
    return "requeued"


def after_save(trainer) -> None:
    """Once the checkpoint of a preempted run is saved: every rank waits for the others, rank 0 requeues a
    Slurm job, and the process exits with EXIT_PREEMPTED (unless training is complete anyway)."""
    if not _received["agreed"]:
        return
    max_update = trainer.cfg.optimization.max_update or float("inf")
    if trainer.get_num_updates() >= max_update:
        logger.info("preemption signal at the last update: finishing normally")
        return
    if _data_parallel():
        dist.barrier()  # the checkpoint is complete on disk before any rank exits
    if trainer.is_data_parallel_master:
        requeue_slurm_job()
    logger.warning("preempted: checkpoint_last.pt saved at update %d; exiting with code %d (rerun to continue)",
                   trainer.get_num_updates(), EXIT_PREEMPTED)
    raise SystemExit(EXIT_PREEMPTED)
