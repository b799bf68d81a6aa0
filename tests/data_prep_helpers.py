"""Shared helpers for the data-preparation tests: tiny audio files and a tiny prepared data set."""
from __future__ import annotations

import builtins
import errno
import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
SR = 24_000
# Lengths that exercise the ceil(n / 320) rule: exact multiples, +1, -1 and odd remainders.
TINY_LENGTHS = (SR + 17, 2 * SR, 40 * 320 + 1, 3 * SR - 319, 30_000, 36_800)


def tone(num_samples: int, sr: int = SR, freq: float = 220.0, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A decaying harmonic tone plus a little noise, [n] or [n, channels]."""
    t = np.arange(num_samples) / sr
    wav = 0.3 * np.sin(2 * np.pi * freq * t) + 0.1 * np.sin(2 * np.pi * 3 * freq * t) * np.exp(-t)
    wav += 0.02 * np.random.default_rng(seed).standard_normal(num_samples)
    wav = wav.astype(np.float32)
    return wav if channels == 1 else np.stack([wav * (c + 1) / channels for c in range(channels)], axis=1)


def write_wav(path: Path, wav: np.ndarray, sr: int = SR, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wav, sr, **kwargs)
    return path


def make_prepared_dataset(root: Path, lengths=TINY_LENGTHS, valid_rows: int = 2) -> Path:
    """24 kHz mono wavs under root/audio and root/manifest/{train,valid}.tsv; returns the manifest dir."""
    from mert_fairseq.data.manifest import ManifestRow
    from mert_fairseq.prep.manifest import write_manifest

    rows = []
    for i, n in enumerate(lengths):
        write_wav(root / "audio" / f"clip{i}.wav", tone(n, freq=110.0 * (i + 2), seed=i), subtype="PCM_16")
        rows.append(ManifestRow(f"clip{i}.wav", n))
    write_manifest(root / "manifest" / "train.tsv", root / "audio", rows[valid_rows:])
    write_manifest(root / "manifest" / "valid.tsv", root / "audio", rows[:valid_rows])
    return root / "manifest"


def run_script(name: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run scripts/{name}.py in a fresh interpreter (CLI smoke tests)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(REPO / "scripts" / f"{name}.py"), *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def read_label_lines(path: Path) -> list[list[int]]:
    return [[int(c) for c in line.split()] for line in path.read_text().splitlines()]


class _FullDiskFile:
    """A writable file that raises ENOSPC once the shared byte budget is spent."""

    def __init__(self, f, budget: list[int]):
        self._f, self._budget = f, budget

    def write(self, data):
        if len(data) > self._budget[0]:
            self._budget[0] = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._budget[0] -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


def full_disk(monkeypatch, name_contains: str, free_bytes: int = 0) -> None:
    """Simulate a full disk for atomically written files (mert_fairseq.common.atomic_files.atomic_open) whose
    temporary name contains `name_contains`: writes beyond `free_bytes` raise ENOSPC."""
    from mert_fairseq.common import atomic_files as fileio

    real_open, budget = builtins.open, [free_bytes]

    def open_on_full_disk(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        writing = any(m in mode for m in "wax+")
        return _FullDiskFile(f, budget) if writing and name_contains in os.path.basename(str(file)) else f

    monkeypatch.setattr(fileio, "open", open_on_full_disk, raising=False)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """{relative path: bytes} of every file under root (hidden ones included)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@functools.lru_cache(maxsize=None)
def random_encodec(seed: int = 0):
    """The seeded random-weight EnCodec model, built once per test process (it takes seconds)."""
    from mert_fairseq.prep.encodec_labels import load_encodec

    return load_encodec(random_init=True, seed=seed)
