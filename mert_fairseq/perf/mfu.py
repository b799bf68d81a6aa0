"""Model FLOPs utilisation (MFU): FLOPs of a training step, device peaks, and the throughput of a real
`fairseq-hydra-train` run read back from its log.

- `count_step_flops` runs one forward + backward under `torch.utils.flop_counter.FlopCounterMode`
  (matmuls, convolutions, attention; elementwise ops, FFTs and the optimizer are not counted, as is
  usual for MFU). Attention is counted through SDPA's math backend, so the count is the same on every
  device and kernel.
- `peak_tflops` knows the dense bf16/fp16 tensor-core peaks of a few GPUs; anything else needs
  `--peak-tflops`.
- `read_train_log` parses the `train_inner` lines of a fairseq log (simple or json `log_format`)
  and `train_log_report` turns them into steady-state audio-seconds/s and MFU.
"""
from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

# Dense (no sparsity) bf16/fp16 tensor-core peaks, TFLOP/s, from the vendors' data sheets (SXM parts).
PEAK_TFLOPS: Dict[str, float] = {"H200": 989.0, "H100": 989.0, "A100": 312.0}


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def peak_tflops(name: str, override: Optional[float] = None) -> tuple[Optional[float], str]:
    """(peak TFLOP/s, where it came from) for a device name such as 'NVIDIA H100 80GB HBM3'.
    None when the name is not in the table (CPUs, other GPUs) and there is no override."""
    if override:
        return float(override), "--peak-tflops"
    for key, value in PEAK_TFLOPS.items():
        if key.lower() in name.lower():
            return value, f"table: {key} dense bf16/fp16"
    return None, f"no known peak for {name!r}: pass --peak-tflops"


def count_step_flops(step: Callable[[], None]) -> int:
    """FLOPs of `step()` (a forward + backward), counted by FlopCounterMode with SDPA's math backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        step()
    return int(counter.get_total_flops())


def mfu(flops_per_s: float, peak: Optional[float]) -> Optional[float]:
    """Fraction of the peak (0..1), or None without a peak."""
    return None if not peak else flops_per_s / (peak * 1e12)


# ---------------------------------------------------------------------------------------------- fairseq logs
_SIMPLE_LINE = re.compile(r"\[train_inner\]|\| train_inner \|")
_KEY_VALUE = re.compile(r"(?:^|[\s,])([a-z_0-9]+)=([-+0-9.eE]+|inf|nan)(?=,|\s|$)")


def parse_train_inner(line: str) -> Optional[Dict[str, float]]:
    """Numbers of one `train_inner` log line (fairseq's simple or json format), else None.

    simple: `[..][train_inner][INFO] - epoch 001:     25 / 100 loss=4.1, ups=2.3, bsz=16, num_updates=25, wall=30`
    json:   `[..][train_inner][INFO] - {"epoch": 1, "loss": "4.1", "ups": "2.3", "bsz": "16", ...}`
    """
    if not _SIMPLE_LINE.search(line):
        return None
    brace = line.find("{")
    if brace >= 0:
        try:
            record = json.loads(line[brace:])
        except json.JSONDecodeError:
            return None
        out = {}
        for k, v in record.items():
            try:
                out[k] = float(v)
            except (TypeError, ValueError):
                pass
        return out
    body = line.split(" - ", 1)[-1] if " - " in line else line
    return {k: float(v) for k, v in _KEY_VALUE.findall(body)}


def read_train_log(path: str | Path) -> List[Dict[str, float]]:
    """Every `train_inner` record of a fairseq log that carries `ups` and `bsz` (needs `log_interval` lines)."""
    records = []
    with open(path, errors="replace") as f:
        for line in f:
            rec = parse_train_inner(line)
            if rec and "ups" in rec and "bsz" in rec:
                records.append(rec)
    if not records:
        raise ValueError(f"{path}: no train_inner lines with ups= and bsz= (is this a fairseq training log?)")
    return records


def train_log_report(records: List[Dict[str, float]], clip_seconds: float, flops_per_audio_second: float,
                     peak: Optional[float], skip: int = 1) -> dict:
    """Steady state of a run: medians over the `train_inner` intervals after the first `skip` ones
    (warm-up, cudnn autotuning, compilation). audio-s/s = ups x bsz x clip seconds (crops of
    `clip_seconds`; fewer when clips are shorter than the crop)."""
    steady = records[skip:] if len(records) > skip else records[-1:]
    ups = statistics.median(r["ups"] for r in steady)
    bsz = statistics.median(r["bsz"] for r in steady)
    audio_per_s = ups * bsz * clip_seconds
    flops_per_s = audio_per_s * flops_per_audio_second
    return {
        "intervals": len(records), "steady_intervals": len(steady),
        "first_update": int(steady[0].get("num_updates", 0)), "last_update": int(steady[-1].get("num_updates", 0)),
        "updates_per_s": ups, "clips_per_update": bsz, "clip_seconds": clip_seconds,
        "audio_seconds_per_s": audio_per_s, "flops_per_audio_second": flops_per_audio_second,
        "tflops_per_s": flops_per_s / 1e12, "peak_tflops": peak, "mfu": mfu(flops_per_s, peak),
    }
