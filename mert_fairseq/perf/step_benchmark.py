"""Training-throughput benchmark for MERT pretraining, with the original's formulation measured in the same run.

For a pretraining config (configs/pretrain/*.yaml + dotlist overrides), a device, a batch shape and a
precision, it builds the run as `fairseq-hydra-train` does (task, model, criterion, fairseq's `Trainer` and
optimizer: `training_setup.build_trainer`) on a synthetic corpus and times the update training runs,
`trainer.train_step` (the task's step: forward and loss with the config's criterion, `mert` for the recipes, on
a batch whose random draws the collater made; backward; gradient clipping; the optimizer step), and reports:

- throughput (audio-seconds/s, updates/s) after warmup, as the median of N timed steps;
- peak memory of a step (CUDA max_memory_allocated; on CPU the process's peak RSS, reset before the step
  through /proc/self/clear_refs where Linux allows it, else the lifetime peak);
- the split of a step into phases (CQT teacher, CNN front end, encoder, rest of the forward = noise
  mixture, masking, heads and loss; backward; optimizer), with synchronised timers in separate steps;
- the cost of loading one batch from a real `MERTDataset` over synthetic files (text and .npy labels);
- data preparation throughput (EnCodec labels, MFCC k-means) in audio-hours per hour, when the
  data_prep modules are importable;
- the FLOPs of the step (forward + backward, `mert_fairseq.perf.mfu.count_step_flops`), TFLOP/s and MFU
  against the device's peak (known GPUs, or `--peak-tflops`). Both formulations are charged the
  FLOPs of ours (the useful work), so their MFU ratio is their speed ratio.

`--train-log LOG` instead reads a `fairseq-hydra-train` log and reports the run's steady-state
audio-seconds/s and MFU (the config's FLOPs per audio-second are counted once, on the CPU).

The *reference* is the straightforward formulation of the same update, as in the original MERT, run by the same
trainer on the same batches: the stock `hubert` criterion on cosine logits materialised as (1 + C) x S x F
tensors (`perf.reference.ReferenceCriterion`), nnAudio's CQT1992v2 (65536-tap conv) every step in the training
dtype, and fairseq's own `MultiheadAttention` (`reference_formulation`, on the same model instance: shared
weights). `--compile-step` adds the same update with the criterion's step compiled (`CompiledStep`, as
task.compile_step=true). Steps of all modes are interleaved, so the ratios (ours / reference, compiled / eager)
are robust to load from other processes.

    python scripts/benchmark.py --config MERT_RVQ-VAE_CQT_95M --device cpu --warmup 1 --steps 3 --out bench.json
    python scripts/benchmark.py --config MERT_RVQ-VAE_CQT_95M --train-log runs/.../hydra_train.log --gpu-name H100
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from mert_fairseq.common.recipes import recipe_path
from mert_fairseq.perf.mfu import count_step_flops, device_name, mfu, peak_tflops, read_train_log, train_log_report
from mert_fairseq.perf.reference import ReferenceCriterion, reference_formulation
from mert_fairseq.perf.report import format_table, format_train_log
from mert_fairseq.perf.side_measurements import machine_info, measure_cqt, measure_data_loading, measure_data_prep
from mert_fairseq.perf.synthetic_corpus import stream_names, write_synthetic_corpus
from mert_fairseq.perf.timing import PhaseTimer, peak_memory_mb, peak_memory_reset, profile_steps, sync
from mert_fairseq.perf.training_setup import PRECISION_OVERRIDES, batch, build_trainer, compose_config
from mert_fairseq.tasks.mert_pretraining import CompiledStep

logger = logging.getLogger("mert_fairseq.perf.step_benchmark")

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # autocast dtype (reference's CQT dtype)


def bench_trainer(cfg: DictConfig, root: Path, n_clips: int, num_samples: int, n_codes: int, seed: int,
                  device: str = "cpu"):
    """A synthetic corpus of `n_clips` clips of `num_samples` in `root`, and fairseq's Trainer for `cfg` on it
    (crops of exactly `num_samples`)."""
    streams = stream_names(cfg)
    cfg = compose_overrides(cfg, [f"task.max_sample_size={num_samples}", f"task.min_sample_size={num_samples}",
                                  "task.probe_csv=null"])
    write_synthetic_corpus(root, n_clips, num_samples, int(cfg.task.sample_rate), float(cfg.model.label_rate),
                           streams, n_codes, seed=seed)
    return build_trainer(cfg, str(root), streams, device)


def compose_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))


@contextlib.contextmanager
def compiled_step(criterion, compiled: CompiledStep):
    """The trainer's update with the criterion's step compiled, as task.compile_step=true makes it."""
    criterion.compiled_step = compiled
    try:
        yield
    finally:
        del criterion.compiled_step


@contextlib.contextmanager
def reference_step(trainer, criterion, dtype: Optional[torch.dtype], cache: dict):
    """The trainer's update in the original's formulation: its criterion swapped for `criterion` (a
    ReferenceCriterion) and the model's CQT and attention for the original's (`reference_formulation`)."""
    own = trainer._criterion, trainer._wrapped_criterion
    trainer._criterion = trainer._wrapped_criterion = criterion
    try:
        with reference_formulation(getattr(trainer.model, "module", trainer.model), dtype, cache):
            yield
    finally:
        trainer._criterion, trainer._wrapped_criterion = own


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compile_step and args.warmup < 2:
        raise SystemExit("--compile-step needs --warmup 2 or more (the first compiled-mode step runs eager, the "
                         "second compiles)")
    device = torch.device(args.device)
    amp_dtype = DTYPES[args.dtype]
    overrides = [*args.override, *PRECISION_OVERRIDES[args.dtype], "task.compile_step=false"]
    cfg = compose_config(args.config, overrides, args.config_dir)
    sr = int(cfg.task.sample_rate)
    num_samples = int(round(args.seconds * sr))

    with tempfile.TemporaryDirectory(prefix="mert_bench_") as tmp:
        t = time.perf_counter()
        trainer = bench_trainer(cfg, Path(tmp), max(args.batch_size * 2, 8), num_samples, args.codes, args.seed,
                                args.device)
        dataset = trainer.task.dataset("train")
        batches = [batch(dataset, [(b * args.batch_size + i) % len(dataset) for i in range(args.batch_size)])
                   for b in range(2)]
        data = measure_data_loading(tmp, cfg, stream_names(cfg), trainer.task.dictionaries, num_samples,
                                    args.batch_size, n_batches=3)
        logger.info("synthetic corpus, trainer and batches ready in %.1fs", time.perf_counter() - t)

    model = getattr(trainer.model, "module", trainer.model)
    n_params = sum(p.numel() for p in model.parameters())
    criterion = trainer.get_criterion()
    ref_criterion = ReferenceCriterion(trainer.task, criterion.pred_masked_weight, criterion.pred_nomask_weight,
                                       criterion.loss_weights)
    ref_cache: dict = {}
    compiled = CompiledStep(criterion.step_tensors) if args.compile_step else None
    modes = ["ours"] + ([] if args.no_reference else ["reference"]) + (["compiled"] if compiled else [])

    def step(mode: str, i: int, timer: Optional[PhaseTimer] = None) -> float:
        ctx = {"reference": lambda: reference_step(trainer, ref_criterion, amp_dtype, ref_cache),
               "compiled": lambda: compiled_step(criterion, compiled)}.get(mode, contextlib.nullcontext)
        with ctx():
            if timer is not None:
                timer.attach(trainer)
            try:
                sync(device)
                t0 = time.perf_counter()
                log = trainer.train_step([batches[i % len(batches)]])
                sync(device)
                dt = time.perf_counter() - t0
            finally:
                if timer is not None:
                    timer.detach()
        if log is None or not math.isfinite(log["loss"]):
            raise FloatingPointError(f"{mode}: non-finite loss (update skipped): {log}")
        return dt

    # FLOPs of one step of ours (forward + backward; counting slows the step, so it is not timed)
    flops = count_step_flops(lambda: step("ours", 0))
    times: Dict[str, List[float]] = {m: [] for m in modes}
    for i in range(args.warmup):
        for m in modes:
            dt = step(m, i)
            logger.info("warmup %s step %d: %.2fs", m, i, dt)
    peak, peak_source = peak_tflops(device_name(device), args.peak_tflops)
    for i in range(args.steps):  # interleaved: ours, reference, compiled, ours, ...
        for m in modes:
            times[m].append(step(m, i))
            logger.info("timed %s step %d: %.2fs", m, i, times[m][-1])

    results: Dict[str, dict] = {}
    audio_s = args.batch_size * num_samples / sr
    for m in modes:
        split: Dict[str, List[float]] = defaultdict(list)
        for i in range(0 if m == "compiled" else args.split_steps):  # hooks in a compiled step would recompile it
            timer = PhaseTimer(device)
            step(m, i, timer)
            for k, v in timer.split().items():
                split[k].append(v)
        peak_memory_reset(device)
        step(m, 0)
        step_s = statistics.median(times[m])
        results[m] = {
            "step_times_s": times[m], "step_s": step_s, "updates_per_s": 1.0 / step_s,
            "audio_seconds_per_s": audio_s / step_s, "peak_memory_mb": peak_memory_mb(device),
            "tflops_per_s": flops / step_s / 1e12, "mfu": mfu(flops / step_s, peak),
            "split_s": {k: statistics.median(v) for k, v in split.items()} if split else {},
        }
    out = {
        "config": args.config, "config_file": str(recipe_path(args.config, args.config_dir)),
        "overrides": list(args.override), "device": str(device), "dtype": args.dtype,
        "compile_step": args.compile_step, "criterion": type(criterion).__name__,
        "batch_size": args.batch_size, "seconds_per_clip": args.seconds, "streams": len(trainer.task.dictionaries),
        "classes_per_stream": [len(d) for d in trainer.task.dictionaries], "parameters": n_params,
        "warmup": args.warmup, "steps": args.steps, "split_steps": args.split_steps,
        "machine": machine_info(device), "results": results, "data_loading": data,
        "flops_per_step": flops, "flops_per_audio_second": flops / audio_s, "peak_tflops": peak,
        "peak_source": peak_source, "mfu": results["ours"]["mfu"],
    }
    for slow, fast in (("reference", "ours"), ("ours", "compiled")):
        if slow in results and fast in results:
            out[f"speedup_{fast}_vs_{slow}"] = speedup(times[fast], times[slow])
    step_s = results["ours"]["step_s"]
    out["data_loading"]["num_workers_to_keep_up"] = math.ceil(data["text_labels_s"] / step_s)
    if args.profile_steps:
        out["profile"] = profile_steps(lambda i: step("ours", i), device, args.profile_steps)
    if not args.skip_cqt:
        out["cqt"] = measure_cqt(model, batches[0]["net_input"]["source"].to(device), amp_dtype)
    if not args.skip_data_prep:
        out["data_prep"] = measure_data_prep(args.data_prep_seconds, args.device)
    return out


def speedup(fast: List[float], slow: List[float]) -> dict:
    """slow / fast from interleaved steps: the median of the per-pair ratios (robust to load that changes
    during the run) and the ratio of the medians."""
    pairs = [b / a for a, b in zip(fast, slow)]
    return {"median_of_step_ratios": statistics.median(pairs),
            "ratio_of_medians": statistics.median(slow) / statistics.median(fast), "step_ratios": pairs}


def flops_per_audio_second(cfg: DictConfig, seconds: float, n_codes: int = 1024, seed: int = 1) -> float:
    """Training FLOPs (forward + backward) per audio-second of a config: one update of fairseq's trainer on
    one synthetic clip of `seconds`, on the CPU (the count does not depend on the device)."""
    torch.manual_seed(seed)
    num_samples = int(round(seconds * int(cfg.task.sample_rate)))
    with tempfile.TemporaryDirectory(prefix="mert_flops_") as tmp:
        trainer = bench_trainer(cfg, Path(tmp), 1, num_samples, n_codes, seed)
        sample = batch(trainer.task.dataset("train"), [0])
    return count_step_flops(lambda: trainer.train_step([sample])) / seconds


def clip_seconds(cfg: DictConfig) -> Optional[float]:
    """The crop length of a config (task.max_sample_size / task.sample_rate), None if it does not crop."""
    size = cfg.task.get("max_sample_size")
    return None if size is None else float(size) / float(cfg.task.sample_rate)


def run_train_log(args: argparse.Namespace) -> dict:
    """Steady-state throughput and MFU of a fairseq-hydra-train run from its log."""
    cfg = compose_config(args.config, args.override, args.config_dir)
    seconds = args.clip_seconds or clip_seconds(cfg)
    if seconds is None:
        raise ValueError(f"{args.config}: task.max_sample_size is not set; pass --clip-seconds")
    records = read_train_log(args.train_log)
    flops = flops_per_audio_second(cfg, seconds, args.codes, args.seed)
    name = args.gpu_name or (device_name(torch.device("cuda")) if torch.cuda.is_available() else "cpu")
    peak, source = peak_tflops(name, args.peak_tflops)
    out = train_log_report(records, seconds, flops, peak, skip=args.skip_intervals)
    out.update({"train_log": str(args.train_log), "config": args.config, "overrides": list(args.override),
                "device_name": name, "peak_source": source})
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="MERT_RVQ-VAE_CQT_95M", help="recipe name (in --config-dir) or a yaml path")
    p.add_argument("--config-dir", help="folder of recipe YAMLs (default: the project's configs/pretrain)")
    p.add_argument("--override", "-o", action="append", default=[], help="dotlist override, e.g. model.encoder_layers=4")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (default: cuda when available)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                   help="precision of the step: fp32; bf16 = task.bf16_autocast=true; fp16 = common.amp=true "
                        "(autocast fp16 with fairseq's GradScaler); fp32 weights and optimizer in all three")
    p.add_argument("--batch-size", type=int, default=4, help="clips per step")
    p.add_argument("--seconds", type=float, default=5.0, help="clip length in seconds")
    p.add_argument("--codes", type=int, default=1024, help="codes per label stream (dictionary = codes + 4)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per formulation before timing")
    p.add_argument("--steps", type=int, default=5, help="timed steps per formulation (interleaved)")
    p.add_argument("--split-steps", type=int, default=2, help="extra synchronised steps for the phase split")
    p.add_argument("--no-reference", action="store_true", help="measure only our formulation")
    p.add_argument("--compile-step", action="store_true",
                   help="also time the mert criterion's step compiled as task.compile_step=true makes it "
                        "(CompiledStep, inductor), interleaved with the eager step")
    p.add_argument("--profile-steps", type=int, default=0,
                   help="also profile N steps of ours with torch.profiler (top kernels, device idle share) into the JSON")
    p.add_argument("--skip-cqt", action="store_true", help="skip the CQT teacher micro-benchmark")
    p.add_argument("--skip-data-prep", action="store_true", help="skip EnCodec / k-means label throughput")
    p.add_argument("--data-prep-seconds", type=float, default=30.0,
                   help="audio length of the EnCodec / k-means label throughput measurement")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--seed", type=int, default=1, help="seed of the weights and the synthetic corpus")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="device peak in TFLOP/s for MFU (default: a table of known GPUs; none on CPU)")
    p.add_argument("--train-log", help="instead of benchmarking, report steady-state throughput and MFU of this "
                                       "fairseq-hydra-train log (simple or json log_format) for --config")
    p.add_argument("--gpu-name", help="--train-log: the GPU the run used, for the peak table (default: this machine's)")
    p.add_argument("--clip-seconds", type=float, help="--train-log: seconds per clip (default: the config's crop)")
    p.add_argument("--skip-intervals", type=int, default=1,
                   help="--train-log: leading log intervals to leave out of the steady state")
    p.add_argument("--out", help="write the results as JSON here")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    res = run_train_log(args) if args.train_log else run(args)
    res["command"] = "python scripts/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(format_train_log(res) if args.train_log else format_table(res))
    if args.out:
        tmp = f"{args.out}.tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=2)
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
