"""Skipping updates whose loss or gradients are not finite (fp32 and bf16 training).

fairseq raises `FloatingPointError("gradients are Nan/Inf")` and stops the run when a non-fp16
update has a non-finite gradient norm; with fp16 (or AMP) its loss scaler skips the update instead.
`NonFiniteGuard` gives fp32/bf16 runs the same behaviour, checked once per update and reusing the norm
that gradient clipping computes anyway: after each backward it only folds `isfinite(loss)` into a device
flag (no host sync per micro-batch); the optimizer's `clip_grad_norm` is wrapped so that, once per update,
the clip norm and that flag are read in one host copy (fairseq's trainer reads the same norm right after,
so this adds no wait). A bad update has its gradients zeroed and a zero norm returned (so fairseq's norm
check passes), and the optimizer step is not taken, so weights and optimizer state stay exactly as they
were. The update counter and the LR schedule still advance (the data iterator and resume stay aligned).
Each skip is one warning line and counts in the `bad_updates` log column; its logged losses are left out;
after `max_consecutive` bad updates in a row the run stops with `NonFiniteUpdatesError`. Runs with a loss
scaler are left to the scaler.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


class NonFiniteUpdatesError(RuntimeError):
    """Too many consecutive updates with a non-finite loss or gradient."""


def uses_loss_scaler(optimizer) -> bool:
    """fp16 (FP16Optimizer/MemoryEfficientFP16Optimizer with a scaler) or AMP: their scaler skips."""
    return getattr(optimizer, "scaler", None) is not None or type(optimizer).__name__ == "AMPOptimizer"


class NonFiniteGuard:
    def __init__(self, max_consecutive: int) -> None:
        self.max_consecutive = max_consecutive
        self.pending = False  # the current update had a non-finite loss or gradient
        self.last_skipped = False  # the update just stepped (or not) was skipped: its logs are left out
        self.consecutive = 0
        self.total = 0
        self._loss_ok: Optional[torch.Tensor] = None  # device flag: every micro-batch loss of the update finite
        self._update_num = 0

    def after_backward(self, loss, optimizer, update_num: int) -> None:
        """One micro-batch: fold `isfinite(loss)` into the update's device flag (no sync); make sure the
        optimizer's clip_grad_norm checks the update."""
        if uses_loss_scaler(optimizer):
            return
        self._wrap_clip(optimizer)
        finite = torch.isfinite(loss.detach().float()).all()
        self._loss_ok = finite if self._loss_ok is None else self._loss_ok & finite
        self._update_num = update_num

    def _wrap_clip(self, optimizer) -> None:
        if getattr(optimizer, "_mert_nonfinite_guard", None) is self:
            return
        clip = optimizer.clip_grad_norm

        def clip_grad_norm(max_norm, *args, **kwargs):
            return self.check_update(optimizer, clip(max_norm, *args, **kwargs))

        optimizer.clip_grad_norm = clip_grad_norm
        optimizer._mert_nonfinite_guard = self

    def check_update(self, optimizer, grad_norm: torch.Tensor) -> torch.Tensor:
        """Once per update, on the clip norm: one host read of (norm finite and every loss finite)."""
        ok = torch.isfinite(grad_norm.detach().float()).all()
        if self._loss_ok is not None:
            ok = ok & self._loss_ok.to(ok.device)
        self._loss_ok = None
        if bool(ok):
            return grad_norm
        optimizer.zero_grad()
        self.pending = True
        if self.max_consecutive > 0 and self.consecutive + 1 >= self.max_consecutive:
            raise NonFiniteUpdatesError(
                f"update {self._update_num + 1}: {self.consecutive + 1} consecutive updates had a non-finite loss "
                f"or gradient (task.max_consecutive_bad_updates={self.max_consecutive}); stopping. "
                "Check the data (NaN audio or labels), the learning rate, or resume from an earlier checkpoint.")
        return torch.zeros_like(grad_norm)

    def take_step(self) -> bool:
        """Called instead of deciding blindly to step: False for an update to skip (agreed by all ranks)."""
        skip = self.pending
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flag = torch.tensor([float(skip)])
            if dist.get_backend() == "nccl":
                flag = flag.cuda()
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            skip = bool(flag.item())
        self.pending = False
        self.last_skipped = skip
        if not skip:
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.total += 1
        return False

    def log_skip(self, update_num: int) -> None:
        logger.warning("update %d skipped: non-finite loss or gradient (%d in a row, %d in this process); "
                       "weights and optimizer state unchanged", update_num + 1, self.consecutive, self.total)

    def take_skipped_logs(self) -> bool:
        """True (once) when the update just taken was skipped: its logging outputs are left out."""
        skipped, self.last_skipped = self.last_skipped, False
        return skipped
