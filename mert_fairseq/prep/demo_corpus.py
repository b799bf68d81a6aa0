"""A seeded synthetic music corpus: chords, bass, melody and an optional click track.

Each clip draws (from ``numpy.random.default_rng([seed, index])``) a key, a mode (major or minor),
a tempo, a chord progression, a melody timbre and a chord timbre among sine, square (additive odd
harmonics), pluck (Karplus-Strong), organ (additive drawbar-like) and bell (FM). Clips are 16-bit
mono wavs under ``{out_dir}/wav/``; ``{out_dir}/metadata.csv`` (written last) describes them. The
same arguments give byte-identical files, and a complete corpus is not generated again.
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from mert_fairseq.data.audio import write_audio_atomic
from mert_fairseq.prep.common import setup_logging
from mert_fairseq.common.atomic_files import atomic_write_text

log = logging.getLogger(__name__)

KEYS = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
PROGRESSIONS = {  # scale degrees (0 = tonic), one chord per bar
    "major": ((0, 4, 5, 3), (0, 3, 4, 0), (0, 5, 3, 4), (1, 4, 0, 0)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 4), (0, 3, 6, 2)),
}
TIMBRES = ("sine", "square", "pluck", "organ", "bell")


@dataclass(frozen=True)
class ClipSpec:
    """One clip's musical choices; a row of metadata.csv."""

    file: str
    key: str
    mode: str
    timbre: str  # melody timbre
    chord_timbre: str
    tempo_bpm: int
    progression: str
    percussion: int
    seconds: float
    sample_rate: int
    seed: int
    index: int


def clip_spec(index: int, seconds: float, sample_rate: int, seed: int) -> ClipSpec:
    rng = np.random.default_rng([seed, index])
    mode = str(rng.choice(list(SCALES)))
    progression = PROGRESSIONS[mode][rng.integers(len(PROGRESSIONS[mode]))]
    return ClipSpec(
        file=f"wav/clip_{index:05d}.wav",
        key=KEYS[rng.integers(12)],
        mode=mode,
        timbre=str(rng.choice(TIMBRES)),
        chord_timbre=str(rng.choice(TIMBRES)),
        tempo_bpm=int(rng.integers(70, 161)),
        progression="-".join(str(d + 1) for d in progression),
        percussion=int(rng.random() < 0.6),
        seconds=float(seconds),
        sample_rate=int(sample_rate),
        seed=int(seed),
        index=int(index),
    )


# ----------------------------------------------------------------------------- instruments


def midi_to_hz(note: float) -> float:
    return 440.0 * 2.0 ** ((note - 69) / 12)


def _angle(cycles: np.ndarray) -> np.ndarray:
    """2 pi cycles as float32 radians in [0, 2 pi): reduced in float64, so long notes keep their pitch."""
    return (2 * np.pi) * (cycles - np.floor(cycles)).astype(np.float32)


def _sin(cycles: np.ndarray) -> np.ndarray:
    """sin(2 pi cycles) in float32 (several times faster than a float64 sine)."""
    return np.sin(_angle(cycles))


def _additive(freq: float, t: np.ndarray, sr: int, ratios: Sequence[float], weights: Sequence[float]) -> np.ndarray:
    """sum_k weight_k sin(2 pi ratio_k freq t) / sum(weights); ratios are multiples of 1/2.

    Harmonic k/2 of freq is the k-th power of one float32 phasor (one complex multiply per step
    instead of one sine per harmonic)."""
    angle = _angle(0.5 * freq * t)
    half = np.empty(len(t), np.complex64)  # exp(i 2 pi (freq / 2) t)
    half.real, half.imag = np.cos(angle), np.sin(angle)
    out, power, k = np.zeros(len(t), np.float32), np.ones(len(t), np.complex64), 0
    for ratio, weight in sorted(zip(ratios, weights)):
        if ratio * freq >= sr / 2:
            break
        target = int(round(2 * ratio))
        if abs(target - 2 * ratio) > 1e-9:
            raise ValueError(f"harmonic ratio {ratio} is not a multiple of 1/2")
        for _ in range(target - k):
            power *= half
        k = target
        out += weight * power.imag
    return out / sum(weights)


def _pluck(freq: float, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Karplus-Strong, vectorised one period at a time (each period only reads the previous one)."""
    period = max(2, int(round(sr / freq)))
    size = max(n, period) + 1  # z[0] = 0 stands for the sample before the start
    z = np.zeros(size)
    z[1 : period + 1] = rng.uniform(-1, 1, period)
    for start in range(period + 1, size, period):
        end = min(start + period, size)
        z[start:end] = 0.996 * 0.5 * (z[start - period : end - period] + z[start - period - 1 : end - period - 1])
    return z[1 : n + 1]


def _envelope(n: int, sr: int, attack: float, release: float, decay: float | None) -> np.ndarray:
    t = np.arange(n) / sr
    env = np.minimum(1.0, t / attack) * np.minimum(1.0, (n / sr - t) / release)
    return env * np.exp(-t / decay) if decay else env


def note(timbre: str, freq: float, seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One note of `timbre` at `freq` Hz with its envelope."""
    n = max(1, int(seconds * sr))
    t = np.arange(n) / sr
    if timbre == "sine":
        wave, env = _sin(freq * t), _envelope(n, sr, 0.01, 0.05, None)
    elif timbre == "square":
        odd = range(1, 16, 2)
        wave, env = _additive(freq, t, sr, odd, [1 / k for k in odd]), _envelope(n, sr, 0.01, 0.05, 0.8)
    elif timbre == "organ":
        wave = _additive(freq, t, sr, (0.5, 1, 2, 3, 4, 6, 8), (0.5, 1, 0.7, 0.5, 0.4, 0.25, 0.15))
        env = _envelope(n, sr, 0.03, 0.06, None)
    elif timbre == "bell":
        index = 4.0 * np.exp(-t / 0.4)
        wave = _sin(freq * t + index * _sin(1.4 * freq * t) / (2 * np.pi))
        env = _envelope(n, sr, 0.002, 0.05, 0.6)
    elif timbre == "pluck":
        wave, env = _pluck(freq, n, sr, rng), _envelope(n, sr, 0.002, 0.03, None)
    else:
        raise ValueError(f"unknown timbre {timbre!r}; choose from {', '.join(TIMBRES)}")
    return wave * env


def _add(mix: np.ndarray, start_s: float, sound: np.ndarray, gain: float, sr: int) -> None:
    start = int(start_s * sr)
    if start < len(mix):
        piece = sound[: len(mix) - start]
        mix[start : start + len(piece)] += gain * piece


def _click(sr: int, rng: np.random.Generator, accent: bool) -> np.ndarray:
    n = int(0.06 * sr)
    t = np.arange(n) / sr
    body = np.sin(2 * np.pi * (150 if accent else 2500) * t) * np.exp(-t / (0.03 if accent else 0.01))
    return body + 0.3 * rng.uniform(-1, 1, n) * np.exp(-t / 0.005)


# ----------------------------------------------------------------------------- clip rendering


def render_clip(spec: ClipSpec) -> np.ndarray:
    """Render the clip described by `spec` -> float32 mono [seconds * sample_rate]."""
    rng = np.random.default_rng([spec.seed, spec.index, 1])
    sr, beat = spec.sample_rate, 60.0 / spec.tempo_bpm
    mix = np.zeros(int(round(spec.seconds * sr)))
    scale, tonic = SCALES[spec.mode], 48 + KEYS.index(spec.key)
    degrees = [int(d) - 1 for d in spec.progression.split("-")]

    def pitch(degree: int, octave: int) -> float:
        return midi_to_hz(tonic + 12 * (octave + degree // 7) + scale[degree % 7])

    n_bars = int(np.ceil(spec.seconds / (4 * beat)))
    for bar in range(n_bars):
        root, start = degrees[bar % len(degrees)], bar * 4 * beat
        for step in (0, 2, 4):  # triad
            _add(mix, start, note(spec.chord_timbre, pitch(root + step, 0), 4 * beat, sr, rng), 0.12, sr)
        for b in range(4):  # bass on each beat
            _add(mix, start + b * beat, note("pluck", pitch(root, -1), beat, sr, rng), 0.25, sr)
        _melody(mix, spec, rng, start, beat, root, pitch)
        if spec.percussion:
            for b in range(8):
                _add(mix, start + b * beat / 2, _click(sr, rng, accent=b % 4 == 0), 0.15, sr)
    peak = np.abs(mix).max() or 1.0
    return (mix * (rng.uniform(0.5, 0.9) / peak)).astype(np.float32)


def _melody(
    mix: np.ndarray, spec: ClipSpec, rng: np.random.Generator, start: float, beat: float, root: int,
    pitch: Callable[[int, int], float],
) -> None:
    """One bar of a random-walk melody that lands on chord tones at beat starts."""
    position, degree = 0.0, root + 7
    while position < 4 * beat - 1e-9:
        length = beat * float(rng.choice([0.5, 0.5, 1.0, 1.5]))
        on_beat = abs(position / beat - round(position / beat)) < 1e-6
        degree = root + 7 + int(rng.choice([0, 2, 4])) if on_beat else degree + int(rng.choice([-2, -1, 1, 2]))
        degree = int(np.clip(degree, root + 3, root + 13))
        if rng.random() > 0.1:  # some rests
            sound = note(spec.timbre, pitch(degree, 1), length * 0.95, spec.sample_rate, rng)
            _add(mix, start + position, sound, 0.3, spec.sample_rate)
        position += length


# ----------------------------------------------------------------------------- corpus


def _metadata_text(specs: Sequence[ClipSpec]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[f.name for f in fields(ClipSpec)], lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(s) for s in specs)
    return buf.getvalue()


def corpus_is_complete(out_dir: Path, specs: Sequence[ClipSpec]) -> bool:
    """True when metadata.csv matches `specs` exactly and every clip exists with the right length."""
    meta = out_dir / "metadata.csv"
    if not meta.is_file() or meta.read_text() != _metadata_text(specs):
        return False
    for spec in specs:
        try:
            info = sf.info(str(out_dir / spec.file))
        except Exception:
            return False
        if info.frames != int(round(spec.seconds * spec.sample_rate)) or info.samplerate != spec.sample_rate:
            return False
    return True


def make_demo_corpus(
    out_dir: str | os.PathLike, num_clips: int = 200, seconds: float = 6.0, sample_rate: int = 24_000, seed: int = 0
) -> list[ClipSpec]:
    """Write the corpus (unless already complete) and return the clip specs."""
    out_dir = Path(out_dir)
    specs = [clip_spec(i, seconds, sample_rate, seed) for i in range(num_clips)]
    if corpus_is_complete(out_dir, specs):
        log.info("%s: demo corpus already complete (%d clips), nothing to do", out_dir, num_clips)
        return specs
    for spec in tqdm(specs, desc="synthesise", unit="clip"):
        write_audio_atomic(out_dir / spec.file, render_clip(spec), sample_rate)
    atomic_write_text(out_dir / "metadata.csv", _metadata_text(specs))
    return specs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default="data/demo", help="corpus folder: wav/ and metadata.csv")
    p.add_argument("--num-clips", type=int, default=200, help="clips to synthesise")
    p.add_argument("--seconds", type=float, default=6.0, help="length of each clip")
    p.add_argument("--sample-rate", type=int, default=24_000, help="sampling rate of the wavs (Hz)")
    p.add_argument("--seed", type=int, default=0, help="corpus seed: clip i draws from default_rng([seed, i])")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.num_clips <= 0 or args.seconds <= 0:
        log.error("--num-clips and --seconds must be positive")
        return 2
    make_demo_corpus(args.out_dir, args.num_clips, args.seconds, args.sample_rate, args.seed)
    log.info("demo corpus: %d clips of %g s in %s", args.num_clips, args.seconds, args.out_dir)
    return 0
