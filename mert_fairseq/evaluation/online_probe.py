"""Probing during pretraining: every `task.probe_interval_updates` updates the main process runs the
model (eval mode, no gradient) on a small labelled set, probes every layer with cross-validation
(`mert_fairseq.evaluation.probe`) and logs the best layer's score per task as `probe_<task>`.

The clips are read once (first `probe_max_clips` rows, first `probe_clip_seconds` seconds each) and
batched by length. The hook leaves training untouched: the model draws nothing (the step's draws come from the
data loader), its train/eval mode is restored, and the global RNGs are not used.
"""
from __future__ import annotations

import logging
import time
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from mert_fairseq.data.audio import load_mono
from mert_fairseq.evaluation.probe import probe_all, read_probe_csv

logger = logging.getLogger(__name__)


class OnlineProbe:
    def __init__(self, csv_path: str, sample_rate: int, normalize: bool = False, tasks: Optional[str] = None,
                 max_clips: int = 100, clip_seconds: float = 4.0, folds: int = 3, batch_size: int = 16) -> None:
        full = read_probe_csv(csv_path, tasks.split(",") if tasks else None)
        n = min(max_clips, len(full.files))
        self.probe_set = full.subset(np.arange(n))
        self.folds, self.batch_size = folds, batch_size
        limit = int(clip_seconds * sample_rate) if clip_seconds and clip_seconds > 0 else None
        self.wavs: List[torch.Tensor] = []
        for path in self.probe_set.files:
            wav = torch.from_numpy(load_mono(path, sample_rate)[:limit].astype(np.float32))
            self.wavs.append(F.layer_norm(wav, wav.shape) if normalize else wav)
        logger.info("online probe: %d clips from %s, tasks %s", n, csv_path, [t.name for t in self.probe_set.tasks])

    @torch.no_grad()
    def features(self, model: torch.nn.Module) -> np.ndarray:
        """Mean-pooled hidden states N x (layers + 1) x D of the probe clips (fp32), the audio fed in the
        model's dtype (fairseq casts the model to fp16/bf16 under common.fp16/bf16)."""
        param = next(model.parameters())
        by_length: Dict[int, List[int]] = {}
        for i, wav in enumerate(self.wavs):
            by_length.setdefault(len(wav), []).append(i)
        out: List[Optional[np.ndarray]] = [None] * len(self.wavs)
        for idx in by_length.values():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                batch = torch.stack([self.wavs[i] for i in chunk]).to(param.device, param.dtype)
                states, _ = model.extract_hidden_states(batch)  # (layers + 1) x [B x T x D]
                pooled = torch.stack([s.float().mean(1) for s in states], dim=1).cpu().numpy()  # B x L x D
                for j, i in enumerate(chunk):
                    out[i] = pooled[j]
        return np.stack(out)

    def run(self, model: torch.nn.Module) -> Dict[str, float]:
        """{task: best-layer cross-validated score}; the model's train/eval mode is kept."""
        was_training = model.training
        start, cpu = time.perf_counter(), time.process_time()
        model.eval()
        try:
            feats = self.features(model)
        finally:
            model.train(was_training)
        results = probe_all(feats, self.probe_set, folds=self.folds)
        scores = {r["task"]: float(r["score"]) for r in results}
        self.seconds = (time.perf_counter() - start, time.process_time() - cpu)
        logger.info("online probe (%.1f s wall, %.1f s CPU): %s", *self.seconds,
                    ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
        return scores
