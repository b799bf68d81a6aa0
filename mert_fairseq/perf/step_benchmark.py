"""Training-throughput benchmark for MERT pretraining, with the original's formulation measured in the same run.

For a pretraining config (configs/pretrain/*.yaml + dotlist overrides), a device, a batch shape and a
dtype, it measures one full training update (forward with the config's criterion, `mert` for the recipes, on a
batch whose random draws the collater made, backward, gradient clipping and fairseq's Adam step):

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

The *reference* is the straightforward formulation of the same step, as in the original MERT: the stock
`hubert` criterion on a batch without draws (masks and mixture drawn on the host inside the forward), cosine
logits materialised as (1 + C) x S x F tensors (`direct_cosine_logits`), nnAudio's CQT1992v2 (65536-tap
conv) every step in the training dtype, and fairseq's own `MultiheadAttention`. It is applied to the
same model instance by `reference_formulation` (shared weights), and steps of both are interleaved, so
the ratio ours / reference is robust to load from other processes.

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
import platform
import re
import resource
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
from torch import nn

from mert_fairseq.common.recipes import recipe_path
from mert_fairseq.perf.reference import CQTInDtype, build_nnaudio_cqt, reference_formulation
from mert_fairseq.perf.mfu import count_step_flops, device_name, mfu, peak_tflops, read_train_log, train_log_report

logger = logging.getLogger("mert_fairseq.perf.step_benchmark")

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
RVQ_STREAMS = [f"encodec_{i}" for i in range(8)]
PHASES = ("cqt_teacher", "cnn", "encoder", "heads_loss", "backward", "optimizer")


# ---------------------------------------------------------------------------------------------- config
def compose_config(config: str, overrides: Sequence[str] = (), config_dir: Optional[str] = None) -> DictConfig:
    """Load the recipe `config` (a name in `config_dir`, default the project's recipes, or a yaml path) and
    apply `key=value` overrides (OmegaConf dotlist, as hydra does). Unset `model.label_rate` defaults to 75
    (EnCodec at 24 kHz)."""
    cfg = OmegaConf.load(recipe_path(config, config_dir))
    cfg.pop("hydra", None)
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    if OmegaConf.is_missing(cfg.model, "label_rate"):
        cfg.model.label_rate = 75
    return cfg


def stream_names(cfg: DictConfig) -> List[str]:
    """Label streams: task.labels when the config sets them, else the 8 EnCodec codebooks (RVQ configs)."""
    if OmegaConf.is_missing(cfg.task, "labels") or cfg.task.get("labels") is None:
        return list(RVQ_STREAMS)
    labels = cfg.task.labels
    return [labels] if isinstance(labels, str) else list(labels)


def build_model(cfg: DictConfig, dictionaries) -> nn.Module:
    from mert_fairseq.models.mert_config import MERTConfig
    from mert_fairseq.models.mert_model import MERTModel

    model_cfg = OmegaConf.merge(OmegaConf.structured(MERTConfig), cfg.model)
    task_cfg = OmegaConf.create({"sample_rate": int(cfg.task.sample_rate), "label_rate": float(cfg.model.label_rate)})
    return MERTModel(model_cfg, task_cfg, dictionaries)


def build_optimizer(cfg: DictConfig, params):
    """fairseq's Adam (the trainer's optimizer) with the config's betas, eps, weight decay and lr."""
    from fairseq.optim.adam import FairseqAdam

    opt = cfg.get("optimizer", {}) or {}
    lr = cfg.get("optimization", {}).get("lr", [5e-4])
    adam_cfg = OmegaConf.create({
        "adam_betas": str(opt.get("adam_betas", "(0.9, 0.98)")), "adam_eps": float(opt.get("adam_eps", 1e-6)),
        "weight_decay": float(opt.get("weight_decay", 0.01)), "use_old_adam": False, "fp16_adam_stats": False,
        "tpu": False, "lr": [float(x) for x in (lr if isinstance(lr, (list, tuple)) or OmegaConf.is_list(lr) else [lr])],
    })
    return FairseqAdam(adam_cfg, params)


def build_criterion(cfg: DictConfig, name: Optional[str] = None):
    """The config's criterion (`mert`, or the stock fairseq `hubert`: sum of masked CE per codebook +
    w_i * extra_i * N); `name` overrides it (the reference formulation uses `hubert`)."""
    from fairseq.criterions.hubert_criterion import HubertCriterion

    from mert_fairseq.criterions.mert_criterion import MertCriterion

    crit = cfg.get("criterion", {}) or {}
    weights = crit.get("loss_weights", [10, 1])
    cls = MertCriterion if (name or crit.get("_name", "hubert")) == "mert" else HubertCriterion
    return cls(
        task=None, pred_masked_weight=float(crit.get("pred_masked_weight", 1.0)),
        pred_nomask_weight=float(crit.get("pred_nomask_weight", 0.0)),
        loss_weights=[float(w) for w in weights] if weights is not None else None,
    )


# ---------------------------------------------------------------------------------------------- data
def music_like(num_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Notes with harmonics, a decaying envelope per note and a little noise (float32, peak ~0.5)."""
    out = np.zeros(num_samples, np.float32)
    note = int(0.25 * sample_rate)
    t = np.arange(note) / sample_rate
    env = np.exp(-4 * t) * np.minimum(1.0, t / 0.005)
    for start in range(0, num_samples, note):
        f0 = 55.0 * 2 ** (rng.integers(0, 48) / 12)
        tone = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.3)) / h for h in range(1, 6) if f0 * h < sample_rate / 2)
        seg = (0.25 * env * tone)[: num_samples - start]
        out[start : start + len(seg)] += seg.astype(np.float32)
    return out + 0.01 * rng.standard_normal(num_samples).astype(np.float32)


def write_synthetic_corpus(root: Path, n_clips: int, num_samples: int, sample_rate: int, label_rate: float,
                           streams: Sequence[str], n_codes: int, seed: int = 0) -> Dict[str, str]:
    """Wavs + train.tsv + text labels train.{stream} + .npy labels (rows padded with -1) + dict files."""
    import soundfile as sf

    from mert_fairseq.prep.labels_npy import labels_to_npy

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    n_labels = math.ceil(num_samples * label_rate / sample_rate)
    labels = {s: [] for s in streams}
    for i in range(n_clips):
        name = f"clip_{i:04d}.wav"
        sf.write(root / name, music_like(num_samples, sample_rate, rng), sample_rate, subtype="FLOAT")
        rows.append(f"{name}\t{num_samples}")
        for s in streams:
            labels[s].append(" ".join(map(str, rng.integers(0, n_codes, n_labels))))
    (root / "train.tsv").write_text(f"{root.resolve()}\n" + "\n".join(rows) + "\n")
    for s in streams:
        (root / f"train.{s}").write_text("\n".join(labels[s]) + "\n")
        (root / f"dict.{s}.txt").write_text("".join(f"{c} 1\n" for c in range(n_codes)))
        labels_to_npy(root / f"train.{s}", root / f"train.{s}.npy")
    return {"data": str(root), "manifest": str(root / "train.tsv")}


def make_dataset(root: str, cfg: DictConfig, streams: Sequence[str], dictionaries, max_sample_size: int,
                 numpy_memmap_label: bool):
    from mert_fairseq.data.mert_dataset import MERTDataset

    return MERTDataset(
        os.path.join(root, "train.tsv"), int(cfg.task.sample_rate),
        [os.path.join(root, f"train.{s}") for s in streams], float(cfg.model.label_rate), dictionaries,
        max_sample_size=max_sample_size, pad_audio=False, normalize=bool(cfg.task.get("normalize", False)),
        store_labels=bool(cfg.task.get("store_labels", False)), numpy_memmap_label=numpy_memmap_label,
        random_crop=True,
    )


def to_device(sample, device: torch.device):
    if torch.is_tensor(sample):
        return sample.to(device, non_blocking=True)
    if isinstance(sample, dict):
        return {k: to_device(v, device) for k, v in sample.items()}
    if isinstance(sample, list):
        return [to_device(v, device) for v in sample]
    return sample


# ---------------------------------------------------------------------------------------------- timing
class PhaseTimer:
    """Wall-clock per phase, synchronising CUDA at each boundary. Nested phases (CQT, CNN, encoder) are
    timed by hooks inside the forward; `heads_loss` is the rest of the forward."""

    def __init__(self, device: torch.device, enabled: bool = True) -> None:
        self.cuda = device.type == "cuda"
        self.enabled = enabled
        self.totals: Dict[str, float] = defaultdict(float)
        self._handles = []
        self._starts: Dict[str, float] = {}

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str):
        if not self.enabled:
            yield
            return
        start = self.now()
        try:
            yield
        finally:
            self.totals[name] += self.now() - start

    def attach(self, model: nn.Module) -> None:
        """Hooks on the CNN and encoder, and a timed wrapper around the CQT teacher's targets."""
        for name, module in (("cnn", model.feature_extractor), ("encoder", model.encoder)):
            self._handles.append(module.register_forward_pre_hook(self._pre(name)))
            self._handles.append(module.register_forward_hook(self._post(name)))
        teacher = getattr(model, "encoder_cqt_model", None)
        if teacher is not None:
            original = teacher.targets

            def timed_targets(wav, num_frames):
                with self.phase("cqt_teacher"):
                    return original(wav, num_frames)

            teacher.targets = timed_targets
            self._handles.append(_Restore(teacher, "targets"))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _pre(self, name):
        def hook(module, args):
            self._starts[name] = self.now()
        return hook

    def _post(self, name):
        def hook(module, args, output):
            self.totals[name] += self.now() - self._starts.pop(name)
        return hook


class _Restore:
    def __init__(self, owner, attr) -> None:
        self.owner, self.attr = owner, attr

    def remove(self) -> None:
        self.owner.__dict__.pop(self.attr, None)


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


def train_step(model, criterion, optimizer, sample, amp_dtype: Optional[torch.dtype], scaler, clip_norm: float,
               timer: Optional[PhaseTimer] = None) -> float:
    """One update as fairseq does it: forward + hubert loss (autocast if amp_dtype), backward of the
    loss / sample_size, gradient clipping, Adam step. Returns the loss per masked frame."""
    timer = timer or PhaseTimer(torch.device("cpu"), enabled=False)
    device_type = next(model.parameters()).device.type
    with timer.phase("forward"):
        with torch.autocast(device_type=device_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss, sample_size, _ = criterion(model, sample)
        loss = loss / max(sample_size, 1)
    with timer.phase("backward"):
        (scaler.scale(loss) if scaler is not None else loss).backward()
    with timer.phase("optimizer"):
        if scaler is not None:
            scaler.unscale_(optimizer._optimizer)
        if clip_norm > 0:
            optimizer.clip_grad_norm(clip_norm)
        if scaler is not None:
            scaler.step(optimizer._optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad()
    return float(loss.detach())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------- benchmarks
def measure_cqt(model, audio: torch.Tensor, dtype: Optional[torch.dtype], repeats: int = 3) -> dict:
    """Time the CQT teacher (ours) and nnAudio CQT1992v2 (fp32 and, if different, the training dtype) on
    the batch audio; max abs difference relative to the largest magnitude."""

    teacher = getattr(model, "encoder_cqt_model", None)
    if teacher is None:
        return {"skipped": "config has no CQT teacher (model.audio_cqt_loss_m false)"}
    from mert_fairseq.models.teachers.cqt import build_cqt

    model_spec = teacher.spec_layer
    spec = build_cqt(model_spec.sr, model_spec.hop_length, model_spec.n_bins)  # fresh: first call builds kernels
    ref = build_nnaudio_cqt(spec.sr, spec.hop_length, spec.n_bins).to(audio.device)
    device = audio.device

    def timed(fn):
        times, out = [], None
        for _ in range(repeats + 1):  # first call builds kernels / warms up
            _sync(device)
            t = time.perf_counter()
            with torch.no_grad():
                out = fn()
            _sync(device)
            times.append(time.perf_counter() - t)
        return statistics.median(times[1:]), times[0], out

    ours_t, ours_first, ours = timed(lambda: spec(audio))
    ref_t, _, ref_out = timed(lambda: ref(audio.float()))
    scale = float(ref_out.abs().max())
    result = {
        "n_bins": spec.n_bins, "batch": list(audio.shape), "ours_s": ours_t, "ours_first_call_s": ours_first,
        "nnaudio_fp32_s": ref_t, "speedup_vs_nnaudio_fp32": ref_t / ours_t,
        "max_abs_diff_rel_to_max": float((ours - ref_out).abs().max()) / scale,
        "kernel_mb_ours": _cqt_cache_mb(spec), "kernel_mb_nnaudio": 2 * spec.n_bins * spec.kernel_width * 4 / 2**20,
    }
    if dtype is not None:
        half = CQTInDtype(ref, dtype)
        t_half, _, out_half = timed(lambda: half(audio))
        result.update({f"nnaudio_{_dtype_name(dtype)}_s": t_half,
                       f"nnaudio_{_dtype_name(dtype)}_max_abs_diff_rel_to_max": float((out_half - ref_out).abs().max()) / scale})
    return result


def _cqt_cache_mb(spec) -> float:
    cache = getattr(spec, "_cache", {})
    return sum(G.numel() * G.element_size() for _, groups in cache.values() for _, G in groups) / 2**20


def _dtype_name(dtype: Optional[torch.dtype]) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def measure_data_loading(root: str, cfg, streams, dictionaries, max_sample_size: int, batch_size: int,
                         n_batches: int) -> dict:
    """Seconds to read + collate one batch in one process, with text and with .npy (memmap) labels."""
    out = {}
    for memmap in (False, True):
        ds = make_dataset(root, cfg, streams, dictionaries, max_sample_size, memmap)
        times = []
        for b in range(n_batches):
            ids = [(b * batch_size + i) % len(ds) for i in range(batch_size)]
            t = time.perf_counter()
            ds.collater([ds[i] for i in ids])
            times.append(time.perf_counter() - t)
        out["npy_labels_s" if memmap else "text_labels_s"] = statistics.median(times)
    return out


def measure_data_prep(seconds: float, device: str) -> dict:
    """EnCodec labels (random-weight model: same cost as the real one) and MFCC k-means, audio-hours/hour."""
    out: dict = {"audio_seconds": seconds}
    rng = np.random.default_rng(0)
    wav = music_like(int(seconds * 24000), 24000, rng)
    try:
        from mert_fairseq.prep import encodec_labels
    except ImportError as exc:
        out["encodec"] = {"skipped": f"mert_fairseq.prep.encodec_labels not importable ({exc})"}
    else:
        try:
            model = encodec_labels.load_encodec(random_init=True, device=device)
            settings = encodec_labels.EncodecSettings()
            encodec_labels.encode_waveform(model, wav[: 24000 * 2], settings, device=device)  # warm up
            _sync(torch.device(device))
            t = time.perf_counter()
            codes = encodec_labels.encode_waveform(model, wav, settings, device=device)
            _sync(torch.device(device))
            dt = time.perf_counter() - t
            out["encodec"] = {"seconds": dt, "audio_hours_per_hour": seconds / dt, "codes_shape": list(codes.shape),
                              "chunk_s": settings.chunk_samples / 24000, "context_s": settings.context_samples / 24000}
        except Exception as exc:  # report, don't fail the training benchmark
            out["encodec"] = {"skipped": f"{type(exc).__name__}: {exc}"}
    try:
        from mert_fairseq.prep.kmeans_features import FeatureSpec, MfccFeatures
        from mert_fairseq.prep.kmeans_model import fit_kmeans, nearest_center
    except ImportError as exc:
        out["kmeans"] = {"skipped": f"mert_fairseq.prep.kmeans_features/kmeans_model not importable ({exc})"}
    else:
        try:
            extractor = MfccFeatures(FeatureSpec())
            t = time.perf_counter()
            feats = extractor(wav)
            t_feat = time.perf_counter() - t
            n_clusters = min(100, len(feats) // 4)
            t = time.perf_counter()
            km = fit_kmeans(feats, n_clusters, seed=0, n_init=1)
            t_fit = time.perf_counter() - t
            t = time.perf_counter()
            nearest_center(km.cluster_centers_, feats)
            t_pred = time.perf_counter() - t
            out["kmeans"] = {
                "mfcc_s": t_feat, "predict_s": t_pred, "fit_s": t_fit, "fit_clusters": n_clusters,
                "fit_frames": len(feats), "apply_audio_hours_per_hour": seconds / (t_feat + t_pred),
            }
        except Exception as exc:
            out["kmeans"] = {"skipped": f"{type(exc).__name__}: {exc}"}
    return out


def machine_info(device: torch.device) -> dict:
    info = {
        "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "processor": _cpu_name(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def run(args: argparse.Namespace) -> dict:
    from fairseq.data.dictionary import Dictionary

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp_dtype = DTYPES[args.dtype]
    cfg = compose_config(args.config, args.override, args.config_dir)
    streams = stream_names(cfg)
    sr = int(cfg.task.sample_rate)
    num_samples = int(round(args.seconds * sr))
    n_clips = max(args.batch_size * 2, 8)

    with tempfile.TemporaryDirectory(prefix="mert_bench_") as tmp:
        t = time.perf_counter()
        corpus = write_synthetic_corpus(Path(tmp), n_clips, num_samples, sr, float(cfg.model.label_rate), streams,
                                        args.codes, seed=args.seed)
        dictionaries = [Dictionary.load(os.path.join(tmp, f"dict.{s}.txt")) for s in streams]
        dataset = make_dataset(tmp, cfg, streams, dictionaries, num_samples, numpy_memmap_label=False)
        model = build_model(cfg, dictionaries).to(device)
        dataset.draw_spec = model.draw_spec()  # ours: the step's draws made by the collater, as in training
        batches = [to_device(dataset.collater([dataset[(b * args.batch_size + i) % len(dataset)]
                                               for i in range(args.batch_size)]), device) for b in range(2)]
        # the reference: the original's step, drawing on the host inside the forward
        ref_batches = [{**b, "net_input": {k: v for k, v in b["net_input"].items() if k != "draws"}} for b in batches]
        data = measure_data_loading(tmp, cfg, streams, dictionaries, num_samples, args.batch_size, n_batches=3)
        logger.info("synthetic corpus and batches ready in %.1fs", time.perf_counter() - t)

    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    criterion = build_criterion(cfg)
    ref_criterion = build_criterion(cfg, "hubert")
    if args.compile_step or args.cuda_graphs:
        from mert_fairseq.tasks.mert_pretraining import compile_step

        compile_step(criterion, cuda_graphs=args.cuda_graphs)  # as task.compile_step(/cuda_graphs)=true
    optimizer = build_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    clip_norm = float(cfg.get("optimization", {}).get("clip_norm", 0.0) or 0.0)
    ref_cache: dict = {}
    modes = ["ours"] if args.no_reference else ["ours", "reference"]
    if (args.compile or args.compile_step or args.cuda_graphs) and not args.no_reference:
        raise SystemExit("--compile / --compile-step / --cuda-graphs measure our formulation only: add --no-reference")

    def step(mode: str, i: int, timer: Optional[PhaseTimer] = None) -> float:
        sample = (ref_batches if mode == "reference" else batches)[i % len(batches)]
        ctx = reference_formulation(model, amp_dtype, ref_cache) if mode == "reference" else contextlib.nullcontext()
        crit = ref_criterion if mode == "reference" else criterion
        with ctx:
            if timer is not None:
                timer.attach(model)
            try:
                _sync(device)
                t0 = time.perf_counter()
                loss = train_step(model, crit, optimizer, sample, amp_dtype, scaler, clip_norm, timer)
                _sync(device)
                dt = time.perf_counter() - t0
            finally:
                if timer is not None:
                    timer.detach()
        if not math.isfinite(loss):
            raise FloatingPointError(f"{mode}: non-finite loss {loss}")
        return dt

    # FLOPs of one step of ours (forward + backward; counting slows the step, so it is not timed)
    flops = count_step_flops(lambda: step("ours", 0))
    if args.compile:
        from mert_fairseq.tasks.mert_pretraining import compile_encoder_layers

        compile_encoder_layers(model)  # as task.compile_encoder_layers=true does in training
    times: Dict[str, List[float]] = {m: [] for m in modes}
    for i in range(args.warmup):
        for m in modes:
            dt = step(m, i)
            logger.info("warmup %s step %d: %.2fs", m, i, dt)
    peak, peak_source = peak_tflops(device_name(device), args.peak_tflops)
    for i in range(args.steps):  # interleaved: ours, reference, ours, ...
        for m in modes:
            times[m].append(step(m, i))
            logger.info("timed %s step %d: %.2fs", m, i, times[m][-1])

    results: Dict[str, dict] = {}
    audio_s = args.batch_size * num_samples / sr
    for m in modes:
        split: Dict[str, List[float]] = defaultdict(list)
        for i in range(args.split_steps):
            timer = PhaseTimer(device)
            step(m, i, timer)
            tot = dict(timer.totals)
            nested = sum(tot.get(k, 0.0) for k in ("cqt_teacher", "cnn", "encoder"))
            tot["heads_loss"] = tot.get("forward", 0.0) - nested
            for k in PHASES:
                split[k].append(tot.get(k, 0.0))
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
        "compile_encoder_layers": args.compile, "compile_step": args.compile_step, "cuda_graphs": args.cuda_graphs,
        "criterion": type(criterion).__name__,
        "batch_size": args.batch_size, "seconds_per_clip": args.seconds, "streams": len(streams),
        "classes_per_stream": [len(d) for d in dictionaries], "parameters": n_params,
        "warmup": args.warmup, "steps": args.steps, "split_steps": args.split_steps,
        "machine": machine_info(device), "results": results, "data_loading": data,
        "flops_per_step": flops, "flops_per_audio_second": flops / audio_s, "peak_tflops": peak,
        "peak_source": peak_source, "mfu": results["ours"]["mfu"],
    }
    if "reference" in results:
        # per-pair ratios are robust to load that changes during the run
        pairs = [r / o for o, r in zip(times["ours"], times["reference"])]
        out["speedup_ours_vs_reference"] = {"median_of_step_ratios": statistics.median(pairs),
                                            "ratio_of_medians": results["reference"]["step_s"] / results["ours"]["step_s"],
                                            "step_ratios": pairs}
    step_s = results["ours"]["step_s"]
    out["data_loading"]["num_workers_to_keep_up"] = math.ceil(data["text_labels_s"] / step_s)
    if args.profile_steps:
        out["profile"] = profile_steps(lambda i: step("ours", i), device, args.profile_steps)
    if not args.skip_cqt:
        out["cqt"] = measure_cqt(model, batches[0]["net_input"]["source"], amp_dtype)
    if not args.skip_data_prep:
        out["data_prep"] = measure_data_prep(args.data_prep_seconds, args.device)
    return out


def profile_steps(step, device: torch.device, n_steps: int, top: int = 15) -> dict:
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


# ---------------------------------------------------------------------------------------------- report
def format_table(res: dict) -> str:
    r = res["results"]
    modes = list(r)
    lines = [
        f"config {res['config']} {' '.join(res['overrides'])} | {res['device']} {res['dtype']} | "
        f"batch {res['batch_size']} x {res['seconds_per_clip']} s | {res['parameters'] / 1e6:.1f}M params | "
        f"torch {res['machine']['torch']}, {res['machine']['torch_threads']} threads, {res['machine']['processor']}",
        "",
        "| | " + " | ".join(modes) + " |",
        "|---|" + "---|" * len(modes),
        "| step (median) s | " + " | ".join(f"{r[m]['step_s']:.3f}" for m in modes) + " |",
        "| updates/s | " + " | ".join(f"{r[m]['updates_per_s']:.3f}" for m in modes) + " |",
        "| audio-seconds/s | " + " | ".join(f"{r[m]['audio_seconds_per_s']:.2f}" for m in modes) + " |",
        "| peak memory MB | " + " | ".join(f"{r[m]['peak_memory_mb']:.0f}" for m in modes) + " |",
        "| TFLOP/s | " + " | ".join(f"{r[m]['tflops_per_s']:.3f}" for m in modes) + " |",
        "| MFU | " + " | ".join(_percent(r[m]["mfu"]) for m in modes) + " |",
    ]
    for k in PHASES:
        if all(k in r[m]["split_s"] for m in modes):
            lines.append(f"| {k} s | " + " | ".join(f"{r[m]['split_s'][k]:.3f}" for m in modes) + " |")
    lines += ["", f"FLOPs per step (forward + backward): {res['flops_per_step'] / 1e9:.1f} GFLOP = "
                  f"{res['flops_per_audio_second'] / 1e9:.2f} GFLOP per audio-second; peak: "
                  + (f"{res['peak_tflops']:.0f} TFLOP/s ({res['peak_source']})" if res["peak_tflops"] else res["peak_source"])]
    if "speedup_ours_vs_reference" in res:
        s = res["speedup_ours_vs_reference"]
        lines += ["", f"ours vs reference: {s['median_of_step_ratios']:.2f}x (median of interleaved step ratios), "
                      f"{s['ratio_of_medians']:.2f}x (ratio of medians)"]
    d = res["data_loading"]
    lines.append(f"data loading (1 process): {d['text_labels_s'] * 1e3:.1f} ms/batch text labels, "
                 f"{d['npy_labels_s'] * 1e3:.1f} ms/batch .npy labels; workers to keep up: {d['num_workers_to_keep_up']}")
    if "cqt" in res and "ours_s" in res["cqt"]:
        c = res["cqt"]
        lines.append(f"CQT teacher ({c['n_bins']} bins, batch {c['batch']}): ours {c['ours_s'] * 1e3:.1f} ms "
                     f"(first call {c['ours_first_call_s']:.2f} s builds kernels), nnAudio fp32 {c['nnaudio_fp32_s'] * 1e3:.0f} ms "
                     f"-> {c['speedup_vs_nnaudio_fp32']:.0f}x; max |diff| = {c['max_abs_diff_rel_to_max']:.1e} x max magnitude")
    if "data_prep" in res:
        p = res["data_prep"]
        if "audio_hours_per_hour" in p.get("encodec", {}):
            lines.append(f"EnCodec labels: {p['encodec']['audio_hours_per_hour']:.1f} audio-hours/hour "
                         f"({p['audio_seconds']:.0f} s audio in {p['encodec']['seconds']:.1f} s)")
        else:
            lines.append(f"EnCodec labels: {p.get('encodec', {}).get('skipped', 'n/a')}")
        if "apply_audio_hours_per_hour" in p.get("kmeans", {}):
            k = p["kmeans"]
            lines.append(f"MFCC k-means labels (apply): {k['apply_audio_hours_per_hour']:.0f} audio-hours/hour; "
                         f"fit {k['fit_clusters']} clusters on {k['fit_frames']} frames: {k['fit_s']:.1f} s")
        else:
            lines.append(f"k-means labels: {p.get('kmeans', {}).get('skipped', 'n/a')}")
    return "\n".join(lines)


def _percent(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"


def flops_per_audio_second(cfg: DictConfig, seconds: float, n_codes: int = 1024, seed: int = 1) -> float:
    """Training FLOPs (forward + backward) per audio-second of a config, on one synthetic clip of
    `seconds` on the CPU (the count does not depend on the device)."""
    from fairseq.data.dictionary import Dictionary

    torch.manual_seed(seed)
    streams = stream_names(cfg)
    sr = int(cfg.task.sample_rate)
    num_samples = int(round(seconds * sr))
    with tempfile.TemporaryDirectory(prefix="mert_flops_") as tmp:
        write_synthetic_corpus(Path(tmp), 1, num_samples, sr, float(cfg.model.label_rate), streams, n_codes, seed)
        dictionaries = [Dictionary.load(os.path.join(tmp, f"dict.{s}.txt")) for s in streams]
        dataset = make_dataset(tmp, cfg, streams, dictionaries, num_samples, numpy_memmap_label=False)
        sample = dataset.collater([dataset[0]])
    model = build_model(cfg, dictionaries).train()
    criterion = build_criterion(cfg)

    def step() -> None:
        loss, sample_size, _ = criterion(model, sample)
        (loss / max(sample_size, 1)).backward()

    return count_step_flops(step) / seconds


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


def format_train_log(res: dict) -> str:
    return (f"{res['train_log']}: updates {res['first_update']}-{res['last_update']} "
            f"({res['steady_intervals']} of {res['intervals']} log intervals), "
            f"{res['updates_per_s']:.3f} updates/s x {res['clips_per_update']:.0f} clips x {res['clip_seconds']:.2f} s = "
            f"{res['audio_seconds_per_s']:.1f} audio-s/s; {res['flops_per_audio_second'] / 1e9:.2f} GFLOP per audio-s "
            f"-> {res['tflops_per_s']:.2f} TFLOP/s, MFU {_percent(res['mfu'])} "
            f"(peak: {res['peak_tflops'] or 'unknown'}, {res['peak_source']}, device {res['device_name']})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="MERT_RVQ-VAE_CQT_95M", help="recipe name (in --config-dir) or a yaml path")
    p.add_argument("--config-dir", help="folder of recipe YAMLs (default: the project's configs/pretrain)")
    p.add_argument("--override", "-o", action="append", default=[], help="dotlist override, e.g. model.encoder_layers=4")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (default: cuda when available)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="autocast dtype (fp16 adds a GradScaler)")
    p.add_argument("--batch-size", type=int, default=4, help="clips per step")
    p.add_argument("--seconds", type=float, default=5.0, help="clip length in seconds")
    p.add_argument("--codes", type=int, default=1024, help="codes per label stream (dictionary = codes + 4)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per formulation before timing")
    p.add_argument("--steps", type=int, default=5, help="timed steps per formulation (interleaved)")
    p.add_argument("--split-steps", type=int, default=2, help="extra synchronised steps for the phase split")
    p.add_argument("--no-reference", action="store_true", help="measure only our formulation")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the encoder layers as task.compile_encoder_layers=true (needs --no-reference)")
    p.add_argument("--compile-step", action="store_true",
                   help="torch.compile the mert criterion's whole step as task.compile_step=true (needs --no-reference)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="--compile-step captured in CUDA graphs, as task.cuda_graphs=true (GPU; needs --no-reference)")
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
