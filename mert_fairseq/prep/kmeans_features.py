"""Frame features for k-means labels, one vector per label frame (75 Hz at 24 kHz; a file of n samples has
``ceil(n / 320)`` frames, frame j centred on sample 320 j), by ``FeatureSpec.kind``:


- ``mfcc`` (first iteration): ``n_mfcc`` MFCCs of log-mel energies (window 600 samples = 25 ms,
  hop 320, centred frames) with deltas and delta-deltas (3 x 13 = 39 dims by default). Centred
  STFT frames number ``n // 320 + 1``; the last is dropped when 320 divides n.
- ``chroma``: 12 pitch classes of the CQT teacher's transform (``models/teachers/cqt.build_cqt``: 7
  octaves from C1 at 12 bins per octave, hop 320, frames centred on 320 j): magnitudes summed over
  octaves, ``log(1 + chroma_gain x)``, L2-normalised per frame (frames quieter than the norm floor
  stay small: silence clusters at the origin). MFCC codes are nearly pitch-blind; chroma codes carry
  pitch class (key, chords), and the CQT loss still carries timbre.
- ``cqt``: the same 84 log-CQT bins without the octave sum (``log(1 + chroma_gain x)``, L2-normalised
  per frame): pitch with its octave, chord shape and register; codes close to the CQT input and teacher.
- ``chord``: the chroma rotated so that the frame's bass pitch class (the loudest bin of the lowest
  three octaves, C1-B3) is bin 0, averaged over ``chord_smooth_frames`` frames (0.5 s) before the
  compression: intervals above the bass, i.e. chord quality (major / minor, sevenths, inversions)
  whatever the key. Codes of transposition-invariant harmony (mode), which absolute-pitch chroma or
  CQT codes give a linear probe only through a per-key combination.
- ``onset``: half-wave rectified spectral flux, ``max(0, logmel_t - logmel_{t-1})`` per mel band
  (``n_mels`` bands of the MFCC's STFT, ``log(power + 1)``: bands 43 dB under full scale count as silent;
  the first frame has none): where in the spectrum energy rises at
  this frame. Steady notes and silence cluster at the origin; note attacks, bass plucks and percussive
  clicks (broadband, high bands) get codes of their own: targets of rhythm and percussion, which
  spectra averaged over a frame's neighbourhood leave to a small share of the clusters. With
  ``onset_smooth_frames`` > 1 the flux is averaged over that many centred frames: onset density per band,
  so every frame of a percussive passage (not only its attacks) gets a code that says so.
- ``mert`` (later iterations): hidden states of layer N of a trained MERT checkpoint
  (``mert_fairseq.checkpoint.model_loading.load_mert_model``). Long files are cut in chunks of whole frames;
  the conv front end yields ``floor((n - 400) / 320) + 1`` frames, one fewer than the rule, so the
  last frame is repeated (or extra frames cut) to give ``ceil(n / 320)``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from mert_fairseq.prep.common import LABEL_HOP, SAMPLE_RATE, num_label_frames

FEATURE_KINDS = ("mfcc", "chroma", "cqt", "chord", "onset", "mert")
Extractor = Callable[[np.ndarray], np.ndarray]  # mono 24 kHz [n] -> [ceil(n / 320), dims]


@dataclass(frozen=True)
class FeatureSpec:
    """Which features to cluster; saved with the k-means model and reused when applying it."""

    kind: str = "mfcc"  # one of FEATURE_KINDS
    n_mfcc: int = 13
    n_mels: int = 40
    checkpoint: str | None = None
    layer: int | None = None
    max_chunk_seconds: float = 30.0
    chroma_gain: float = 10.0  # chroma, cqt, chord: log(1 + gain x) of the (octave-summed) CQT magnitudes
    chord_smooth_frames: int = 37  # chord: centred moving average over this many frames (37 = 0.5 s: the chord,
    # not the passing melody notes)
    onset_smooth_frames: int = 1  # onset: centred moving average of the flux over this many frames (1: none;
    # 37 = 0.5 s: onset density, a frame's share of its neighbourhood's rhythm)
    onset_min_hz: float = 0.0  # onset: only the mel bands centred at or above this frequency (e.g. 2000: hi-hats,
    # snares, clicks; not the bass and melody attacks)


def fit_to_frames(features: np.ndarray, num_samples: int) -> np.ndarray:
    """Cut or pad (repeating the last frame) [T, D] features to ``ceil(num_samples / 320)`` frames."""
    target = num_label_frames(num_samples)
    if len(features) >= target:
        return features[:target]
    return np.concatenate([features, np.repeat(features[-1:], target - len(features), axis=0)])


class MfccFeatures:
    """MFCC + deltas + delta-deltas at 75 Hz."""

    def __init__(self, spec: FeatureSpec):
        import torchaudio

        self.transform = torchaudio.transforms.MFCC(
            sample_rate=SAMPLE_RATE, n_mfcc=spec.n_mfcc, log_mels=True,
            melkwargs=dict(n_fft=1024, win_length=600, hop_length=LABEL_HOP, n_mels=spec.n_mels, center=True),
        )

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        import torchaudio.functional as AF

        x = torch.from_numpy(np.pad(wav, (0, max(0, 1024 - len(wav)))))  # reflect padding needs > n_fft/2
        with torch.inference_mode():
            mfcc = self.transform(x)  # [n_mfcc, T]
            delta = AF.compute_deltas(mfcc)
            feats = torch.cat([mfcc, delta, AF.compute_deltas(delta)]).T
        return fit_to_frames(feats.numpy().astype(np.float32), len(wav))


class OnsetFeatures:
    """Half-wave rectified spectral flux of log-mel energies at 75 Hz: [frames, bands] (the mel bands
    centred at or above ``onset_min_hz``: all ``n_mels`` by default)."""

    POWER_FLOOR = 1.0  # log(mel + floor): about 43 dB under a full-scale sine's band power (~2e4), so the noise of
    # near-silent bands gives no flux

    def __init__(self, spec: FeatureSpec):
        import torchaudio

        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=1024, win_length=600, hop_length=LABEL_HOP, n_mels=spec.n_mels, center=True,
        )
        if spec.onset_smooth_frames < 1:
            raise ValueError(f"onset_smooth_frames must be >= 1, got {spec.onset_smooth_frames}")
        self.smooth = spec.onset_smooth_frames
        centres = self.mel.mel_scale.fb.argmax(0) * SAMPLE_RATE / 1024  # [n_mels] peak frequency of each band, Hz
        self.bands = torch.nonzero(centres >= spec.onset_min_hz).flatten()
        if len(self.bands) == 0:
            raise ValueError(f"onset_min_hz={spec.onset_min_hz}: no mel band is centred that high "
                             f"(highest {float(centres.max()):.0f} Hz)")

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.pad(wav, (0, max(0, 1024 - len(wav))))).float()  # reflect padding needs > n_fft/2
        with torch.inference_mode():
            logmel = torch.log(self.mel(x)[self.bands] + self.POWER_FLOOR).T  # [T, bands]
            flux = torch.zeros_like(logmel)
            flux[1:] = (logmel[1:] - logmel[:-1]).clamp_min(0)
            if self.smooth > 1:
                flux = moving_average(flux, self.smooth)
        return fit_to_frames(flux.numpy().astype(np.float32), len(wav))


class ChromaFeatures:
    """Pitch features at 75 Hz from the CQT teacher's transform (bin k of the 84 is pitch class k % 12),
    by ``spec.kind``: ``chroma``: 12 pitch classes (0 = C); ``cqt``: the 84 log-CQT bins themselves (pitch
    and octave, chord shape, register); ``chord``: the chroma relative to the bass pitch class."""

    OCTAVES, BINS_PER_OCTAVE, NORM_FLOOR, BASS_OCTAVES = 7, 12, 0.1, 3

    def __init__(self, spec: FeatureSpec):
        from mert_fairseq.models.teachers.cqt import build_cqt  # fmin 32.7 Hz = C1, so bin k is pitch class k % 12

        kind = spec.kind
        if kind not in ("chroma", "cqt", "chord"):
            raise ValueError(f"ChromaFeatures: unknown kind {kind!r} (chroma, cqt or chord)")
        self.cqt = build_cqt(SAMPLE_RATE, LABEL_HOP, self.OCTAVES * self.BINS_PER_OCTAVE)
        if spec.chord_smooth_frames < 1:
            raise ValueError(f"chord_smooth_frames must be >= 1, got {spec.chord_smooth_frames}")
        self.gain, self.kind = spec.chroma_gain, kind
        self.smooth = spec.chord_smooth_frames if kind == "chord" else 1

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        from mert_fairseq.models.teachers.cqt import cqt_frames

        mag = cqt_frames(self.cqt, torch.from_numpy(wav).float()[None])[0]  # [T, 84], T = n // 320 + 1
        if self.kind != "cqt":
            chroma = mag.reshape(len(mag), self.OCTAVES, self.BINS_PER_OCTAVE).sum(1)  # [T, 12]
            mag = chroma if self.kind == "chroma" else rotate_to_bass(chroma, mag, self.BASS_OCTAVES * self.BINS_PER_OCTAVE)
        if self.smooth > 1:
            mag = moving_average(mag, self.smooth)
        feats = torch.log1p(self.gain * mag)
        feats = feats / feats.norm(dim=1, keepdim=True).clamp_min(self.NORM_FLOOR)
        return fit_to_frames(feats.numpy().astype(np.float32), len(wav))


def moving_average(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Centred mean over ``frames`` frames of [T, D] (the edges average what they have): [T, D]."""
    kernel = torch.ones(1, 1, frames, dtype=x.dtype)
    pad = (frames // 2, frames - 1 - frames // 2)
    rows = x.T[:, None]  # [D, 1, T]
    total = torch.nn.functional.conv1d(torch.nn.functional.pad(rows, pad), kernel)
    count = torch.nn.functional.conv1d(torch.nn.functional.pad(torch.ones_like(rows[:1]), pad), kernel)
    return (total / count)[:, 0].T


def rotate_to_bass(chroma: torch.Tensor, cqt: torch.Tensor, bass_bins: int) -> torch.Tensor:
    """[T, 12] chroma -> [T, 12] with bin i = pitch class (bass + i) % 12, where the bass is the loudest of
    the lowest ``bass_bins`` CQT bins ([T, >= bass_bins], 12 per octave from a C) of each frame."""
    bass = cqt[:, :bass_bins].argmax(1) % 12  # [T]
    index = (bass[:, None] + torch.arange(12)) % 12  # [T, 12]
    return chroma.gather(1, index)


class MertFeatures:
    """Hidden states of one layer of a MERT model (``model.extract_hidden_states``)."""

    def __init__(self, spec: FeatureSpec, device: str = "cpu", model=None, normalize: bool | None = None):
        if model is None:
            from mert_fairseq.checkpoint.model_loading import load_mert_model  # heavy (fairseq); only on this path

            model, task_cfg = load_mert_model(spec.checkpoint, device=device)
            normalize = bool(getattr(task_cfg, "normalize", False)) if normalize is None else normalize
        self.model, self.layer, self.device = model, spec.layer, device
        self.normalize = bool(normalize)
        self.chunk = max(1, int(spec.max_chunk_seconds * SAMPLE_RATE) // LABEL_HOP) * LABEL_HOP

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(wav).float()
        if self.normalize:  # as the training task does with task.normalize
            x = torch.nn.functional.layer_norm(x, x.shape)
        # Each chunk also gets the 80 samples that complete its last 400-sample conv window, so
        # chunk c yields exactly the frames starting at c * chunk / 320 ... (whole frames only).
        parts = [self._layer(x[s : s + self.chunk + 80]) for s in range(0, len(x), self.chunk)]
        return fit_to_frames(np.concatenate([p for p in parts if len(p)]), len(wav))

    def _layer(self, x: torch.Tensor) -> np.ndarray:
        if len(x) < 400:  # shorter than one conv window: zero-pad to one frame
            x = torch.nn.functional.pad(x, (0, 400 - len(x)))
        with torch.inference_mode():
            hidden, _ = self.model.extract_hidden_states(x[None].to(self.device))
        return hidden[self.layer][0].float().cpu().numpy()


def make_extractor(spec: FeatureSpec, device: str = "cpu") -> Extractor:
    if spec.kind == "mfcc":
        return MfccFeatures(spec)
    if spec.kind in ("chroma", "cqt", "chord"):
        return ChromaFeatures(spec)
    if spec.kind == "onset":
        return OnsetFeatures(spec)
    if spec.kind == "mert":
        if not spec.checkpoint or spec.layer is None:
            raise ValueError("--feature mert needs --checkpoint and --layer")
        return MertFeatures(spec, device)
    raise ValueError(f"unknown feature kind {spec.kind!r} ({', '.join(FEATURE_KINDS)})")
