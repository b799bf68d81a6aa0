"""A tiny learnable data set for training tests: clips made of 0.2 s tones, one of K pitches each;
the frame label (75 Hz) is the pitch index of the tone under the frame."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf

SR, HOP = 24000, 320


def make_tone_dataset(root: Path, n_clips: int = 16, seconds: float = 2.0, n_classes: int = 8,
                      label: str = "tone", seed: int = 0, splits=("train", "valid")) -> dict:
    """Write wavs, {split}.tsv, {split}.{label}, dict.{label}.txt under root; return the paths."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    audio_dir = root / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    freqs = 110.0 * 2 ** (np.arange(n_classes) * 5 / 12)  # fourths apart
    seg = int(0.2 * SR)
    n = int(seconds * SR)
    t = np.arange(seg) / SR
    env = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)
    for split in splits:
        rows, label_lines = [], []
        for i in range(n_clips if split == "train" else max(2, n_clips // 4)):
            pitches = rng.integers(0, n_classes, size=math.ceil(n / seg))
            wav = np.concatenate([0.3 * env * np.sin(2 * np.pi * freqs[p] * t) for p in pitches])[:n]
            wav = (wav + 0.01 * rng.standard_normal(n)).astype(np.float32)
            name = f"{split}_{i:03d}.wav"
            sf.write(audio_dir / name, wav, SR, subtype="FLOAT")
            frames = math.ceil(n / HOP)
            centres = np.minimum((np.arange(frames) * HOP + HOP // 2) // seg, len(pitches) - 1)
            label_lines.append(" ".join(str(int(pitches[c])) for c in centres))
            rows.append(f"{name}\t{n}")
        (root / f"{split}.tsv").write_text(str(audio_dir.resolve()) + "\n" + "\n".join(rows) + "\n")
        (root / f"{split}.{label}").write_text("\n".join(label_lines) + "\n")
    (root / f"dict.{label}.txt").write_text("".join(f"{c} 1\n" for c in range(n_classes)))
    return {"data": str(root), "label_dir": str(root), "labels": [label]}


def task_for(data: dict, **overrides):
    """The mert_pretraining task on `data` (1 s crops, seed 1), with task config `overrides`."""
    from omegaconf import OmegaConf

    from mert_fairseq.tasks.mert_pretraining import MERTPretrainingConfig, MERTPretrainingTask

    fields = dict(data=data["data"], label_dir=data["label_dir"], labels=data["labels"], label_rate=75,
                  sample_rate=24000, max_sample_size=24000, seed=1)
    cfg = OmegaConf.structured(MERTPretrainingConfig(**{**fields, **overrides}))
    return MERTPretrainingTask(cfg)
