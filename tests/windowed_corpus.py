"""A small corpus for MERTDataset tests (clips of noise and tones with text and .npy labels) and a dataset
over it: shared by the windowed-read, packed and PCM-packing tests."""
import math
from pathlib import Path

import numpy as np
import soundfile as sf
from fairseq.data.dictionary import Dictionary

from mert_fairseq.data.mert_dataset import MERTDataset
from mert_fairseq.prep.labels_npy import labels_to_npy

SR, RATE, CROP = 24000, 75, 24000


def write_corpus(root: Path, lengths, streams=("a", "b"), subtype="PCM_16", seed=0) -> dict:
    """Clips of the given lengths (noise + tones), text and .npy labels with ceil(n / 320) frames."""
    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    rows, labels = [], {s: [] for s in streams}
    for i, n in enumerate(lengths):
        t = np.arange(n) / SR
        wav = 0.3 * np.sin(2 * np.pi * (110 + 40 * i) * t) + 0.05 * rng.standard_normal(n)
        sf.write(root / "audio" / f"c{i}.wav", wav.astype(np.float32), SR, subtype=subtype)
        rows.append(f"c{i}.wav\t{n}")
        for s in streams:
            labels[s].append(" ".join(map(str, rng.integers(0, 30, math.ceil(n / 320)))))
    (root / "train.tsv").write_text(f"{root / 'audio'}\n" + "\n".join(rows) + "\n")
    for s in streams:
        (root / f"train.{s}").write_text("\n".join(labels[s]) + "\n")
        (root / f"dict.{s}.txt").write_text("".join(f"{c} 1\n" for c in range(30)))
        labels_to_npy(root / f"train.{s}")
    return {"root": root, "streams": list(streams), "labels": labels}


def dataset(data, manifest=None, **kw):
    root = data["root"]
    dicts = [Dictionary.load(str(root / f"dict.{s}.txt")) for s in data["streams"]]
    kw = {"max_sample_size": CROP, "seed": 3, **kw}
    return MERTDataset(str(manifest or root / "train.tsv"), SR, [str(root / f"train.{s}") for s in data["streams"]],
                       RATE, dicts, **kw)


LENGTHS = [60000, 24000, 50000, 31000, 77000, 45000]  # 2.5 s, 1 s, ... > CROP except clip 1
