"""`optimizer._name=adamw_torch`: torch's own AdamW (fused CUDA kernel or multi-tensor foreach) as a
fairseq optimizer, a drop-in for fairseq's `adam` with the same config fields.

fairseq's `adam` loops over parameters one at a time (a handful of kernels per tensor and step): on
a GPU, for the 95M model's ~200 tensors, that is a quarter of the update when the weights are fp32
(`task.bf16_autocast`). `torch.optim.AdamW(fused=True)` does the whole update in a few kernels.

Same update as fairseq's `adam`: decoupled weight decay p <- p * (1 - lr * wd), then the Adam step.
fairseq divides by (sqrt(v) + eps) / sqrt(1 - beta2^t), torch by sqrt(v) / sqrt(1 - beta2^t) + eps; so
each step hands torch eps / sqrt(1 - beta2^t), which makes the two updates the same formula (equal to
float rounding: tests/test_speedups.py). Works under fairseq's fp16/bf16 wrappers (flat fp32 master
weights: `supports_flat_params`) and with fp32 weights (`task.bf16_autocast`, fp32).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

import math

import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II

from mert_fairseq.common.config_values import parse_list_literal


@dataclass
class AdamWTorchConfig(FairseqDataclass):
    adam_betas: Any = field(default=(0.9, 0.999), metadata={"help": "betas for Adam, e.g. (0.9,0.98)"})
    adam_eps: float = field(default=1e-8, metadata={"help": "epsilon for Adam"})
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled weight decay (as fairseq's adam)"})
    implementation: str = field(
        default="auto",
        metadata={"help": "auto: fused on CUDA, foreach elsewhere; or fused / foreach / for_loop"},
    )
    lr: List[float] = II("optimization.lr")


def _betas(value: Any) -> tuple:
    betas = parse_list_literal(value, "optimizer.adam_betas") if isinstance(value, str) else value
    if len(betas) != 2:
        raise ValueError(f"optimizer.adam_betas={value!r}: expected two numbers, e.g. (0.9,0.98)")
    return float(betas[0]), float(betas[1])


def _kernel_flags(implementation: str, params: List[torch.Tensor]) -> Dict[str, bool]:
    """torch.optim keyword arguments for the chosen implementation."""
    on_cuda = all(p.is_cuda for p in params)
    if implementation == "auto":
        implementation = "fused" if on_cuda else "foreach"
    flags = {"fused": {"fused": True, "foreach": False}, "foreach": {"fused": False, "foreach": True},
             "for_loop": {"fused": False, "foreach": False}}
    if implementation not in flags:
        raise ValueError(f"optimizer.implementation={implementation!r}: use auto, fused, foreach or for_loop")
    return flags[implementation]


@register_optimizer("adamw_torch", dataclass=AdamWTorchConfig)
class AdamWTorch(FairseqOptimizer):
    def __init__(self, cfg: AdamWTorchConfig, params) -> None:
        super().__init__(cfg)
        params = list(params)
        tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
        self._optimizer = torch.optim.AdamW(params, **self.optimizer_config,
                                            **_kernel_flags(cfg.implementation, tensors))
        self._num_steps = 0  # host-side copy of the step count (torch keeps it per tensor, maybe on the GPU)

    def step(self, closure=None, scale: float = 1.0, groups=None):
        """One Adam step with fairseq's placement of eps (see the module docstring)."""
        t = self._num_steps + 1
        for group in self.optimizer.param_groups:
            group["eps"] = self.cfg.adam_eps / math.sqrt(1.0 - group["betas"][1] ** t)
        super().step(closure, scale=scale, groups=groups)
        self._num_steps = t

    def load_state_dict(self, state_dict, optimizer_overrides=None):
        super().load_state_dict(state_dict, optimizer_overrides)
        steps = [s["step"] for s in self.optimizer.state.values() if "step" in s]
        self._num_steps = int(max(float(s) for s in steps)) if steps else 0

    @property
    def optimizer_config(self) -> Dict[str, Any]:
        """Keys that fairseq may override when a checkpoint's optimizer state is loaded."""
        return {
            "lr": self.cfg.lr[0],
            "betas": _betas(self.cfg.adam_betas),
            "eps": self.cfg.adam_eps,
            "weight_decay": self.cfg.weight_decay,
        }

    @property
    def supports_flat_params(self) -> bool:
        return True  # elementwise update: one flat fp32 master tensor is fine

    @property
    def supports_memory_efficient_fp16(self) -> bool:
        return True
