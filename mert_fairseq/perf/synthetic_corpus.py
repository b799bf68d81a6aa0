"""Synthetic music-like clips and label files for the benchmark: a corpus on disk that the task loads as it
loads a real one (manifest, text and .npy labels, dictionaries)."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

RVQ_STREAMS = [f"encodec_{i}" for i in range(8)]


def stream_names(cfg: DictConfig) -> List[str]:
    """Label streams: task.labels when the config sets them, else the 8 EnCodec codebooks (RVQ configs)."""
    if OmegaConf.is_missing(cfg.task, "labels") or cfg.task.get("labels") is None:
        return list(RVQ_STREAMS)
    labels = cfg.task.labels
    return [labels] if isinstance(labels, str) else list(labels)


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
    """A MERTDataset over the corpus in `root` (for the data-loading measurement: text vs .npy labels)."""
    from mert_fairseq.data.mert_dataset import MERTDataset

    return MERTDataset(
        os.path.join(root, "train.tsv"), int(cfg.task.sample_rate),
        [os.path.join(root, f"train.{s}") for s in streams], float(cfg.model.label_rate), dictionaries,
        max_sample_size=max_sample_size, pad_audio=False, normalize=bool(cfg.task.get("normalize", False)),
        store_labels=bool(cfg.task.get("store_labels", False)), numpy_memmap_label=numpy_memmap_label,
        random_crop=True,
    )
