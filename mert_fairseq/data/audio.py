"""Audio input/output shared by data preparation, the training dataset and feature extraction.

Everything reads through soundfile (torchaudio 2.9's loader needs torchcodec) and resamples with
torchaudio's band-limited sinc resampler. Errors always name the file.
"""
from __future__ import annotations

import os

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from mert_fairseq.common.atomic_files import atomic_open


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the problem."""


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read any soundfile-supported file -> (float32 array [frames, channels], sample rate)."""
    try:
        wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types (LibsndfileError, RuntimeError, ...)
        raise AudioError(f"{path}: cannot read audio ({exc})") from exc
    if wav.shape[0] == 0:
        raise AudioError(f"{path}: audio file is empty (0 samples)")
    if not np.isfinite(wav).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    return wav, int(sr)


def to_mono(wav: np.ndarray) -> np.ndarray:
    """[frames, channels] or [frames] -> [frames] by averaging channels."""
    return wav.mean(axis=1) if wav.ndim == 2 else wav


def resample(wav: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited (windowed sinc) resampling of a mono float32 signal [frames]."""
    if orig_sr == target_sr:
        return wav.astype(np.float32, copy=False)
    out = AF.resample(torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)), orig_sr, target_sr)
    return out.numpy()


def load_mono(path: str | os.PathLike, target_sr: int | None = None) -> np.ndarray:
    """Read a file as mono float32 [frames], resampled to `target_sr` when given."""
    wav, sr = read_audio(path)
    mono = to_mono(wav)
    return mono if target_sr is None else resample(mono, sr, target_sr)


def write_audio_atomic(path: str | os.PathLike, wav: np.ndarray, sr: int, subtype: str = "PCM_16") -> None:
    """Write a wav file atomically (temporary file + rename), so a killed job never leaves half a file."""
    with atomic_open(path, "wb") as f:
        sf.write(f, wav, sr, subtype=subtype, format="WAV")
