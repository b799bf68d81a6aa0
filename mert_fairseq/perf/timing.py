"""Timers of the benchmark: the split of a training update into phases, peak memory, a torch.profiler summary."""
from __future__ import annotations

import contextlib
import re
import resource
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict

import torch

PHASES = ("cqt_teacher", "cnn", "encoder", "heads_loss", "backward", "optimizer")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class PhaseTimer:
    """Wall-clock per phase of fairseq's update (`Trainer.train_step`), synchronising CUDA at each boundary:
    `forward` (the criterion's call: forward and loss) with the CQT teacher, CNN and encoder nested inside it
    (`heads_loss` is the rest of the forward), `backward` (the optimizer's backward) and `optimizer`
    (gradient clipping and the task's optimizer step). `attach` wraps those calls of one trainer; `detach`
    restores them."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals: Dict[str, float] = defaultdict(float)
        self._undo: list = []
        self._starts: Dict[str, float] = {}

    def now(self) -> float:
        sync(self.device)
        return time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str):
        start = self.now()
        try:
            yield
        finally:
            self.totals[name] += self.now() - start

    def split(self) -> Dict[str, float]:
        """The phases of the timed updates; heads_loss = forward - the nested phases."""
        tot = dict(self.totals)
        nested = sum(tot.get(k, 0.0) for k in ("cqt_teacher", "cnn", "encoder"))
        tot["heads_loss"] = tot.get("forward", 0.0) - nested
        return {k: tot.get(k, 0.0) for k in PHASES}

    def attach(self, trainer) -> None:
        model = getattr(trainer.model, "module", trainer.model)
        for name, module in (("cnn", model.feature_extractor), ("encoder", model.encoder)):
            handles = (module.register_forward_pre_hook(self._pre(name)), module.register_forward_hook(self._post(name)))
            self._undo += [h.remove for h in handles]
        teacher = getattr(model, "encoder_cqt_model", None)
        if teacher is not None:
            self._wrap(teacher, "targets", "cqt_teacher")
        self._wrap(trainer.criterion, "forward", "forward")
        self._wrap(trainer.optimizer, "backward", "backward")
        self._wrap(trainer, "clip_grad_norm", "optimizer")
        self._wrap(trainer.task, "optimizer_step", "optimizer")

    def detach(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo = []

    def _wrap(self, owner, attr: str, name: str) -> None:
        """An instance attribute that times `owner.attr` (the class's method stays untouched)."""
        original = getattr(owner, attr)

        def timed(*args, **kwargs):
            with self.phase(name):
                return original(*args, **kwargs)

        setattr(owner, attr, timed)
        self._undo.append(lambda: owner.__dict__.pop(attr, None))

    def _pre(self, name):
        def hook(module, args):
            self._starts[name] = self.now()
        return hook

    def _post(self, name):
        def hook(module, args, output):
            self.totals[name] += self.now() - self._starts.pop(name)
        return hook


def peak_memory_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) on Linux
    except OSError:
        pass


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)\s+kB", status).group(1)) / 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def profile_steps(step: Callable[[int], object], device: torch.device, n_steps: int, top: int = 15) -> dict:
    """torch.profiler over `n_steps` steps: the top kernels (GPU) or ops (CPU) by self time, and the share of
    the wall time the device ran no kernel (GPU: waiting for the host)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        for i in range(n_steps):
            step(i)
    wall = time.perf_counter() - t0
    on_device = device.type == "cuda"
    attr = "self_device_time_total" if on_device else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, attr, 0.0), reverse=True)
    busy_us = 0.0
    if on_device:  # union of kernel intervals
        spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                       if getattr(e, "device_type", None) is not None and e.device_type.name == "CUDA")
        end = -1.0
        for a, b in spans:
            busy_us += max(0.0, b - max(a, end))
            end = max(end, b)
    return {"steps": n_steps, "wall_s": wall,
            "device_idle_share": (1.0 - busy_us / 1e6 / wall) if on_device else None,
            "top": [{"name": e.key, "self_ms": getattr(e, attr, 0.0) / 1e3, "calls": e.count} for e in events[:top]]}
