"""HuBERT-recipe k-means labels: frame features -> MiniBatchKMeans -> one label line per audio.

Features, one vector per label frame (75 Hz at 24 kHz; a file of n samples has ``ceil(n / 320)``
frames, frame j centred on sample 320 j):

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

Several label streams in one call (one k-means model per feature, e.g. the demo's pitch-bearing
pair): ``--feature mfcc+chroma`` with ``--kmeans-model DIR/{name}.npz`` fits and applies one model
per feature; ``--name`` gives the stream names (default: ``kmeans`` for the first feature, the feature
kind for the others, so ``mfcc+chroma`` -> ``kmeans`` and ``chroma``). Train on them with
``task.labels=[kmeans,chroma] model.untie_final_proj=true`` (``split_streams``).

``fit`` samples at most ``--max-fit-frames`` frames uniformly at random from a split (memory:
frames x dims x 4 bytes), fits k-means and saves its centroids with the feature settings as a data-only
``.npz`` (numeric and string arrays, read with ``allow_pickle=False``: nothing in a model file runs;
written atomically). Models of earlier versions were joblib pickles: they are refused, and ``convert
--trust-pickle OLD NEW.npz`` converts one the user trusts. ``apply`` labels splits with a saved model: ``{label_dir}/{split}.{name}`` and
``dict.{name}.txt`` (every cluster id with its count in that split). ``all`` does both.

Resuming after a kill (same command): ``fit`` saves the sampled frames of every ~``--shard-seconds``
of audio in ``.{model}.fit.partial/`` and extracts only the rest; the fit itself is seeded and
deterministic, so the model file is the one an uninterrupted run writes (a model already saved
for the same inputs and settings is kept). ``apply`` saves the labels of each shard in
``{label_dir}/.{split}.{name}.partial/`` and writes the final files at the end. ``apply`` also
runs as job i of n (``--shard-id/--num-shards``, a Slurm array or torchrun rank): it labels rows
``[i * N // n, (i + 1) * N // n)`` into ``{split}.{name}.part{i}of{n}`` for
``scripts/merge_label_parts.py --name {name}`` (see ``merge_parts``).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import MiniBatchKMeans
from tqdm import tqdm

from mert_fairseq.data.audio import AudioError, load_mono
from mert_fairseq.prep.common import (
    LABEL_HOP, SAMPLE_RATE, OutputError, Part, PartialWork, add_shard_args, file_sha256, num_label_frames,
    output_file, parse_list, plan_blocks, resolve_part, setup_logging,
)
from mert_fairseq.data.manifest import Manifest, ManifestError, check_audio, read_manifest
from mert_fairseq.prep.merge_parts import LabelOutputs, write_labels

log = logging.getLogger(__name__)

FEATURE_KINDS = ("mfcc", "chroma", "cqt", "chord", "onset", "mert")
MODEL_FORMAT = "mert-fairseq-kmeans/2"  # .npz of centroids + settings (/1: the joblib pickle of earlier versions)
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


# ----------------------------------------------------------------------------- fit and apply


def sample_fit_frames(
    manifest: Manifest, extractor: Extractor, max_frames: int, seed: int, work: PartialWork | None = None,
    shard_samples: int = 600 * SAMPLE_RATE, on_shard_done: Callable[[int], None] | None = None,
) -> np.ndarray:
    """A uniform random sample of at most `max_frames` frames of the split -> [N, D] float32.

    With `work`, the frames picked from each shard of about `shard_samples` of audio are saved
    there and a re-run extracts only the shards not saved yet (same sample either way).
    """
    counts = np.array([num_label_frames(r.num_samples) for r in manifest.rows])
    offsets = np.concatenate([[0], np.cumsum(counts)])
    chosen = np.sort(np.random.default_rng(seed).choice(offsets[-1], min(max_frames, offsets[-1]), replace=False))
    bounds = np.searchsorted(chosen, offsets)  # chosen[bounds[i]:bounds[i+1]] fall in row i
    rows = [i for i in range(len(counts)) if bounds[i + 1] > bounds[i]]
    bar = tqdm(total=len(rows), desc="features (fit)", unit="file")

    def pick(shard: range) -> list[np.ndarray]:  # [D, frames picked] per row of the shard
        picked = []
        for i in (rows[s] for s in shard):
            feats = extractor(load_mono(manifest.audio_path(manifest.rows[i])))
            picked.append(np.ascontiguousarray(feats[chosen[bounds[i] : bounds[i + 1]] - offsets[i]].T, np.float32))
            bar.update()
        return picked

    shards = plan_blocks([manifest.rows[i].num_samples for i in rows], shard_samples)
    with bar:
        if work is None:
            picked = [p for shard in shards for p in pick(shard)]
        else:
            bar.update(sum(len(shards[k]) for k in range(len(shards)) if work.done(k)))
            work.run(shards, pick, on_shard_done)
            picked = [p for k in range(len(shards)) for p in work.load(k)]
    return np.ascontiguousarray(np.concatenate(picked, axis=1).T, dtype=np.float32)


def fit_kmeans(
    frames: np.ndarray, n_clusters: int, seed: int = 0, batch_size: int = 10_000, n_init: int = 3
) -> MiniBatchKMeans:
    if len(frames) < n_clusters:
        raise ValueError(f"only {len(frames)} frames to fit {n_clusters} clusters; lower --n-clusters")
    km = MiniBatchKMeans(
        n_clusters=n_clusters, init="k-means++", batch_size=batch_size, n_init=n_init, max_iter=100,
        max_no_improvement=100, reassignment_ratio=0.0, random_state=seed,
    )
    return km.fit(frames)


@dataclass(frozen=True)
class KMeansModel:
    """A saved k-means model: the centroids (K x D; named as sklearn's fitted attribute) and nothing else."""

    cluster_centers_: np.ndarray

    @property
    def n_clusters(self) -> int:
        return len(self.cluster_centers_)


def nearest_center(centers: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (Euclidean) of every row of feats [T, D], in the centroids' dtype."""
    from sklearn.metrics import pairwise_distances_argmin

    centers = np.asarray(centers)
    return pairwise_distances_argmin(np.asarray(feats, dtype=centers.dtype), centers).astype(np.int32)


def _npz_bytes(arrays: dict) -> bytes:
    """An .npz archive of `arrays` with fixed timestamps, so the same model gives the same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, value in arrays.items():
            with zf.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w") as member:
                np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
    return buf.getvalue()


def save_model(path: str | Path, km, spec: FeatureSpec, fitted_on: str, identity: dict | None = None) -> None:
    """Write `km`'s centroids (a fitted sklearn model or a KMeansModel) and the settings as a data-only .npz."""
    if Path(path).suffix == ".joblib":
        log.warning("%s: k-means models are saved as data-only .npz (not joblib) whatever the name; "
                    "name the file .npz", path)
    arrays = {"format": MODEL_FORMAT, "cluster_centers": np.ascontiguousarray(km.cluster_centers_),
              "feature": json.dumps(asdict(spec), sort_keys=True), "fitted_on": fitted_on,
              "identity": json.dumps(identity, sort_keys=True)}
    with output_file(path, "wb") as f:
        f.write(_npz_bytes(arrays))


PICKLE_CONTAINERS = (b"x", b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x5d\x00")  # joblib: zlib, gzip, bz2, xz, lzma


def _pickle_refusal(path: str | Path) -> str:
    return (f"{path}: cannot load k-means model: this is a pickle (joblib) file, the format of earlier versions; "
            "loading it would run whatever code it holds, so it is refused. If you trust the file, convert it once "
            f"to the data-only format: python scripts/prepare_kmeans_labels.py convert --trust-pickle {path} "
            f"{Path(path).with_suffix('.npz')}")


def _read_model_npz(path: str | Path) -> dict:
    """The arrays of a model file, read without pickle; ValueError naming the file otherwise."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise ValueError(f"{path}: cannot load k-means model ({exc.strerror or exc})") from exc
    if head != b"PK\x03\x04":  # not a zip (.npz) archive
        if head[:1] == b"\x80" or head.startswith(PICKLE_CONTAINERS):
            raise ValueError(_pickle_refusal(path))
        raise ValueError(f"{path}: cannot load k-means model (not an .npz model written by prepare_kmeans_labels.py)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except Exception as exc:  # a damaged archive, or an object array (which would need pickle)
        raise ValueError(f"{path}: cannot load k-means model ({exc})") from exc
    if str(arrays.get("format", "")) != MODEL_FORMAT:
        raise ValueError(f"{path}: cannot load k-means model (format {str(arrays.get('format'))!r}, "
                         f"expected {MODEL_FORMAT!r})")
    return arrays


def _spec_from_json(path: str | Path, text: str) -> FeatureSpec:
    fields = json.loads(text)
    unknown = set(fields) - set(FeatureSpec.__dataclass_fields__)
    if unknown:
        raise ValueError(f"{path}: unknown feature settings {sorted(unknown)}")
    return FeatureSpec(**fields)


def saved_identity(path: str | Path) -> dict | None:
    """The inputs and settings a saved model was fitted with (None when unknown or unreadable)."""
    try:
        return json.loads(str(_read_model_npz(path)["identity"]))
    except (ValueError, KeyError):
        return None


def load_model(path: str | Path) -> tuple[KMeansModel, FeatureSpec]:
    arrays = _read_model_npz(path)
    try:
        centers = np.asarray(arrays["cluster_centers"])
        spec = _spec_from_json(path, str(arrays["feature"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: cannot load k-means model ({exc})") from exc
    if centers.ndim != 2 or centers.dtype.kind != "f" or not len(centers) or not np.isfinite(centers).all():
        raise ValueError(f"{path}: cannot load k-means model (centroids must be a finite K x D float array, "
                         f"got {centers.dtype} {centers.shape})")
    return KMeansModel(centers), spec


def convert_pickled_model(src: str | Path, dst: str | Path, trust_pickle: bool, spec: FeatureSpec) -> None:
    """A joblib model of earlier versions (or a bare sklearn KMeans, saved with `spec`) -> data-only .npz.
    Unpickling runs code from the file: only with `trust_pickle`."""
    if not trust_pickle:
        raise ValueError(f"{src}: converting a pickle file loads it, which runs any code it holds; "
                         "pass --trust-pickle if you trust where it comes from")
    import joblib  # only here: nothing else in mert-fairseq unpickles

    try:
        saved = joblib.load(src)
    except Exception as exc:
        raise ValueError(f"{src}: cannot load the pickle ({type(exc).__name__}: {exc})") from exc
    if isinstance(saved, dict) and saved.get("format") == "mert-fairseq-kmeans/1":
        km, spec, fitted_on, identity = saved["kmeans"], FeatureSpec(**saved["feature"]), saved["fitted_on"], None
    elif hasattr(saved, "cluster_centers_"):
        km, fitted_on, identity = saved, str(src), None
        log.info("%s: a bare k-means estimator; saved with feature settings %s", src, asdict(spec))
    else:
        raise ValueError(f"{src}: not a k-means model (neither prepare_kmeans_labels.py's nor an sklearn KMeans)")
    save_model(dst, km, spec, fitted_on, identity)
    log.info("converted %s -> %s (%d clusters)", src, dst, len(km.cluster_centers_))


def kmeans_outputs(label_dir: str | Path, split: str, name: str, n_clusters: int, part: Part = Part()) -> LabelOutputs:
    return LabelOutputs(Path(label_dir), split, name, (name,), n_clusters, part)


def apply_kmeans(
    manifest: Manifest, extractor: Extractor, km: KMeansModel | MiniBatchKMeans, label_dir: str | Path, name: str,
    split: str,
    part: Part = Part(), shard_samples: int = 600 * SAMPLE_RATE, spec: FeatureSpec | None = None,
    on_shard_done: Callable[[int], None] | None = None,
) -> list[int] | None:
    """Write ``{label_dir}/{split}.{name}`` and ``dict.{name}.txt`` (or job `part`'s part files),
    resuming the shards saved by a killed run; returns the shards labelled now (None: complete)."""
    rows = part.slice(len(manifest.rows))
    centers = np.ascontiguousarray(km.cluster_centers_)
    identity = {"manifest": str(manifest.path.resolve()), "manifest_sha256": file_sha256(manifest.path),
                "centers_sha256": hashlib.sha256(centers.tobytes()).hexdigest(), "n_clusters": len(centers),
                "feature": asdict(spec) if spec else None, "shard_samples": int(shard_samples)}
    out = kmeans_outputs(label_dir, split, name, len(centers), part)
    if out.finished(identity):
        log.info("%s: k-means labels %s.%s%s are complete; nothing to do", label_dir, split, name, part.suffix)
        return None
    part_rows = manifest.rows[rows.start : rows.stop]
    check_audio(Manifest(manifest.path, manifest.root, part_rows), SAMPLE_RATE)
    shards = [range(rows.start + s.start, rows.start + s.stop)
              for s in plan_blocks([r.num_samples for r in part_rows], shard_samples)]
    bar = tqdm(total=len(rows), desc=f"k-means labels {split}{part.suffix}", unit="file")

    def label(shard: range) -> list[np.ndarray]:  # [1, frames] cluster ids per row
        out = []
        for j in shard:
            feats = extractor(load_mono(manifest.audio_path(manifest.rows[j])))
            out.append(nearest_center(centers, feats)[None])
            bar.update()
        return out

    with bar:
        return write_labels(out, identity, manifest, rows, shards, label, on_shard_done)


# ----------------------------------------------------------------------------- command line


def load_split(manifest_dir: str | Path, split: str) -> Manifest:
    manifest = read_manifest(Path(manifest_dir) / f"{split}.tsv")
    check_audio(manifest, SAMPLE_RATE)
    return manifest


def fit_partial_dir(model_path: str | Path) -> Path:
    model_path = Path(model_path)
    return model_path.parent / f".{model_path.name}.fit.partial"


def run_fit(args: argparse.Namespace, on_shard_done: Callable[[int], None] | None = None) -> None:
    spec = feature_spec(args)
    manifest = load_split(args.manifest_dir, args.split)
    shard_samples = max(1, int(args.shard_seconds * SAMPLE_RATE))
    identity = {"manifest": str(manifest.path.resolve()), "manifest_sha256": file_sha256(manifest.path),
                "feature": asdict(spec), "n_clusters": args.n_clusters, "max_fit_frames": args.max_fit_frames,
                "seed": args.seed, "shard_samples": shard_samples}
    if Path(args.kmeans_model).is_file() and saved_identity(args.kmeans_model) == identity:
        log.info("%s: already fitted on these inputs with these settings; kept", args.kmeans_model)
        return
    start = time.perf_counter()
    work = PartialWork(fit_partial_dir(args.kmeans_model), identity)
    extractor = make_extractor(spec, args.device)
    frames = sample_fit_frames(manifest, extractor, args.max_fit_frames, args.seed, work, shard_samples, on_shard_done)
    log.info("fitting %d clusters on %d frames x %d dims", args.n_clusters, *frames.shape)
    km = fit_kmeans(frames, args.n_clusters, args.seed)
    save_model(args.kmeans_model, km, spec, str(manifest.path.resolve()), identity)
    work.remove()
    log.info("saved %s (inertia %.4g, %.1f s)", args.kmeans_model, km.inertia_, time.perf_counter() - start)


def run_apply(args: argparse.Namespace, on_shard_done: Callable[[int], None] | None = None) -> None:
    km, spec = load_model(args.kmeans_model)
    if args.checkpoint and spec.kind == "mert":
        spec = FeatureSpec(**{**asdict(spec), "checkpoint": args.checkpoint})
    part = resolve_part(args.shard_id, args.num_shards)
    extractor = make_extractor(spec, args.device)
    for split in parse_list(args.splits):
        apply_kmeans(read_manifest(Path(args.manifest_dir) / f"{split}.tsv"), extractor, km, args.label_dir, args.name, split, part,
                     max(1, int(args.shard_seconds * SAMPLE_RATE)), spec, on_shard_done)
        log.info("wrote %s/%s.%s%s", args.label_dir, split, args.name, part.suffix)


def split_streams(args: argparse.Namespace) -> list[argparse.Namespace]:
    """One namespace per label stream: ``--feature a+b`` and/or ``--name x,y`` (same count) with a
    ``{name}`` placeholder in ``--kmeans-model``; a single stream is returned unchanged."""
    features = getattr(args, "feature", None)
    features = features.split("+") if features else None
    names = args.name.split(",") if getattr(args, "name", None) else None
    count = len(features or names or [None])
    if names is None:
        names = ["kmeans"] + (features[1:] if features else [])
    if count == 1 and len(names) == 1:  # "{name}" in --kmeans-model is allowed here too
        return [argparse.Namespace(**{**vars(args), "kmeans_model": args.kmeans_model.replace("{name}", names[0]),
                                      **({"name": names[0]} if hasattr(args, "name") else {})})]
    if features is not None and len(features) != len(names):
        raise ValueError(f"--feature {args.feature} has {len(features)} streams but --name {args.name} has {len(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"--name {','.join(names)}: stream names must differ")
    if "{name}" not in args.kmeans_model:
        raise ValueError(f"--kmeans-model {args.kmeans_model}: with several streams it needs a {{name}} placeholder, "
                         "e.g. labels/{name}.npz (one model per stream)")
    return [argparse.Namespace(**{**vars(args), "name": name, "kmeans_model": args.kmeans_model.format(name=name),
                                  **({"feature": features[i]} if features else {})}) for i, name in enumerate(names)]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest-dir", required=True, help="folder holding {split}.tsv")
    p.add_argument("--kmeans-model", required=True, help="fitted model file (data-only .npz); with several "
                   "streams a pattern with {name}, e.g. labels/{name}.npz")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device of the feature extractor (default: cuda when available)")
    p.add_argument("--checkpoint", help="MERT checkpoint for --feature mert (apply: overrides the saved path)")
    p.add_argument("--shard-seconds", type=float, default=600.0, help="audio per resumable shard")


def _fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default="train", help="split to fit on")
    _feature_args(p, several=True)
    p.add_argument("--n-clusters", type=int, default=500, help="k-means clusters = label codes")
    p.add_argument("--max-fit-frames", type=int, default=500_000, help="frames sampled for fitting")
    p.add_argument("--seed", type=int, default=0, help="seed of the frame sampling and of k-means")


def _feature_args(p: argparse.ArgumentParser, several: bool = False) -> None:
    if several:
        p.add_argument("--feature", type=_feature_list, default="mfcc",
                       help="frame features: mfcc, chroma (CQT pitch class), cqt (84 log-CQT bins), chord (chroma relative to "
                       "the bass), onset (spectral flux per mel band) or mert (a MERT layer); several joined by '+' (e.g. mfcc+chroma) fit one model and write one label stream each")
    else:
        p.add_argument("--feature", choices=FEATURE_KINDS, default="mfcc",
                       help="frame features: MFCCs, CQT chroma (pitch class), 84 log-CQT bins, chroma relative to the "
                       "bass (chord), spectral flux (onset) or a MERT layer")
    p.add_argument("--layer", type=int, help="MERT layer for --feature mert (0 = CNN/input projection)")
    p.add_argument("--n-mfcc", type=int, default=13, help="MFCCs per frame for --feature mfcc")
    p.add_argument("--n-mels", type=int, default=40, help="mel bands the MFCCs are computed from")
    p.add_argument("--chroma-gain", type=float, default=10.0, help="chroma, cqt, chord: log(1 + gain x) compression")
    p.add_argument("--chord-smooth-frames", type=int, default=37,
                   help="chord: average the bass-relative chroma over this many frames (75 per second; 1: none)")
    p.add_argument("--onset-smooth-frames", type=int, default=1,
                   help="onset: average the flux over this many frames (onset density; 1: none)")
    p.add_argument("--onset-min-hz", type=float, default=0.0,
                   help="onset: only the mel bands centred at or above this frequency (e.g. 2000: percussion)")
    p.add_argument("--max-chunk-seconds", type=float, default=30.0, help="MERT input chunk length")


def _convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="joblib model of an earlier version (or a bare sklearn KMeans pickle)")
    p.add_argument("dst", help="data-only .npz model to write")
    p.add_argument("--trust-pickle", action="store_true",
                   help="required: loading a pickle runs code stored in it; pass only for files you trust")
    p.add_argument("--checkpoint", help="MERT checkpoint for --feature mert (bare estimators only)")
    _feature_args(p)


def _apply_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--splits", default="train,valid", help="splits to label")
    p.add_argument("--label-dir", required=True, help="label folder written: {split}.{name} and dict.{name}.txt")
    p.add_argument("--name", default=None, help="label name: files {split}.{name}, dict.{name}.txt (default "
                   "kmeans); several streams: a comma list, one per feature (default kmeans, then the feature kinds)")
    add_shard_args(p)




def _feature_list(text: str) -> str:
    bad = [k for k in text.split("+") if k not in FEATURE_KINDS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown feature {bad[0]!r} (choose from {', '.join(FEATURE_KINDS)}, "
                                         "several joined by '+')")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for command, adders, text in (
        ("fit", (_common, _fit_args), "fit k-means on a split and save it"),
        ("apply", (_common, _apply_args), "label splits with a saved model"),
        ("all", (_common, _fit_args, _apply_args), "fit, then label"),
        ("convert", (_convert_args,), "convert a trusted joblib model of an earlier version to .npz "
                                      "(feature settings: the saved ones, or the flags for a bare estimator)"),
    ):
        sp = sub.add_parser(command, help=text)
        for add in adders:
            add(sp)
    return p


def feature_spec(args: argparse.Namespace) -> FeatureSpec:
    return FeatureSpec(args.feature, args.n_mfcc, args.n_mels, args.checkpoint, args.layer, args.max_chunk_seconds,
                       args.chroma_gain, args.chord_smooth_frames, args.onset_smooth_frames,
                       args.onset_min_hz)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        if args.command == "convert":
            convert_pickled_model(args.src, args.dst, args.trust_pickle, feature_spec(args))
            return 0
        for stream in split_streams(args):
            if args.command in ("fit", "all"):
                run_fit(stream)
            if args.command in ("apply", "all"):
                run_apply(stream)
    except (ManifestError, AudioError, ValueError, FileNotFoundError, OutputError) as exc:
        log.error("%s", exc)
        return 1
    return 0
