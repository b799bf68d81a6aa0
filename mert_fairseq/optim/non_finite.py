"""Skipping updates whose loss or gradients are not finite (fp32 and bf16 training).

fairseq raises `FloatingPointError("gradients are Nan/Inf")` and stops the run when a non-fp16
update has a non-finite gradient norm; with fp16 (or AMP) its loss scaler skips the update instead.
`NonFiniteGuard` gives fp32/bf16 runs the same behaviour: after each backward it checks the loss and
the gradients; a bad update has its gradients zeroed (so fairseq's norm check passes) and the
optimizer step is not taken, so weights and optimizer state stay exactly as they were. The update
counter and the LR schedule still advance (the data iterator and resume stay aligned). Each skip is
one warning line and counts in the `bad_updates` log column; after `max_consecutive` bad updates in a
row the run stops with `NonFiniteUpdatesError`. Runs with a loss scaler are left to the scaler.
"""
from __future__ import annotations

import logging

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


class NonFiniteUpdatesError(RuntimeError):
    """Too many consecutive updates with a non-finite loss or gradient."""


def uses_loss_scaler(optimizer) -> bool:
    """fp16 (FP16Optimizer/MemoryEfficientFP16Optimizer with a scaler) or AMP: their scaler skips."""
    return getattr(optimizer, "scaler", None) is not None or type(optimizer).__name__ == "AMPOptimizer"


def all_finite(loss: torch.Tensor, model: torch.nn.Module) -> bool:
    """Loss and every gradient finite (one host sync)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    checks = [torch.isfinite(loss.detach().float()).all().reshape(1)]
    if grads:
        checks.append(torch.isfinite(torch.stack(torch._foreach_norm(grads)).float()).all().reshape(1))
    return bool(torch.cat(checks).all())


class NonFiniteGuard:
    def __init__(self, max_consecutive: int) -> None:
        self.max_consecutive = max_consecutive
        self.pending = False  # the current update had a non-finite micro-batch
        self.consecutive = 0
        self.total = 0

    def after_backward(self, loss, model, optimizer, update_num: int, logging_output: dict) -> None:
        """Check one micro-batch; on a bad one zero the gradients and mark the update to skip."""
        if uses_loss_scaler(optimizer) or all_finite(loss, model):
            return
        optimizer.zero_grad()
        logging_output["nonfinite"] = 1
        if not self.pending:
            self.pending = True
            if self.max_consecutive > 0 and self.consecutive + 1 >= self.max_consecutive:
                raise NonFiniteUpdatesError(
                    f"update {update_num + 1}: {self.consecutive + 1} consecutive updates had a non-finite loss "
                    f"or gradient (task.max_consecutive_bad_updates={self.max_consecutive}); stopping. "
                    "Check the data (NaN audio or labels), the learning rate, or resume from an earlier checkpoint.")

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
        if not skip:
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.total += 1
        return False

    def log_skip(self, update_num: int) -> None:
        logger.warning("update %d skipped: non-finite loss or gradient (%d in a row, %d in this process); "
                       "weights and optimizer state unchanged", update_num + 1, self.consecutive, self.total)


def clean_logging_outputs(logging_outputs: list) -> tuple:
    """(outputs of finite micro-batches, number of non-finite ones)."""
    good = [log for log in logging_outputs if not log.get("nonfinite")]
    return good, len(logging_outputs) - len(good)


