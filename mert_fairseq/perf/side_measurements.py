"""Measurements the benchmark reports beside the training step: the CQT teacher against nnAudio, the cost of
loading a batch (text vs .npy labels), data-preparation throughput (EnCodec, MFCC k-means), the machine."""
from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from mert_fairseq.perf.reference import CQTInDtype, build_nnaudio_cqt
from mert_fairseq.perf.synthetic_corpus import make_dataset, music_like
from mert_fairseq.perf.timing import sync


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
            sync(device)
            t = time.perf_counter()
            with torch.no_grad():
                out = fn()
            sync(device)
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
            sync(torch.device(device))
            t = time.perf_counter()
            codes = encodec_labels.encode_waveform(model, wav, settings, device=device)
            sync(torch.device(device))
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
