"""`MERTDataset`: 24 kHz audio clips from a fairseq manifest + one or more frame-level label streams.

Manifest `{split}.tsv`: first line the root directory, then `relpath<TAB>num_samples`; a relpath may be
a packed member `shard.zip:BYTE_OFFSET:BYTE_LENGTH` (`scripts/pack_audio.py`).
Labels `{label_dir}/{split}.{label}`: one line of space-separated integer codes per manifest row,
or `{split}.{label}.npy` (int array [rows, max_len], padded with -1) with `numpy_memmap_label`.
Batches crop every clip to the shortest clip (at most `max_sample_size`) or, with `pad_audio`,
zero-pad to the longest and set `padding_mask`; labels are cropped consistently.

Windowed reads: a clip longer than `max_sample_size` is not read whole. `__getitem__` draws the crop
start from the generator seeded by (seed, epoch, index), exactly the draw the collater made when it
cropped whole clips, and reads only that window of audio (soundfile seek) and of labels. The batch
therefore equals the whole-file batch, except when a shorter clip in the batch makes the collater
crop further: then the window is cropped again (start drawn from (seed, epoch, index, 1)).
`normalize` layer-normalises exactly the samples the model sees (each cropped clip, padding excluded);
feature extraction and the exported HF preprocessor normalise each waveform given to the model alike.
Augmentations apply to the window read.

Opening a split builds no Python object per row (`manifest_index`, `labels`), so splits of millions of
rows cost tens of MB, shared by forked data-loader workers.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from fairseq.data import FairseqDataset
from fairseq.data.dictionary import Dictionary

from mert_fairseq.data.audio import AudioError
from mert_fairseq.data.audio_reader import read_window
from mert_fairseq.data.labels import DataError, LabelStream
from mert_fairseq.data.manifest_index import ManifestIndex, read_manifest_index
from mert_fairseq.data.seeded_draw import seeded_integer
from mert_fairseq.data.step_draws import DrawSpec, draw_for_batch

logger = logging.getLogger(__name__)

__all__ = ["AUGMENTATIONS", "DataError", "MERTDataset", "load_manifest"]


def load_manifest(path: str, min_keep: Optional[int], max_keep: Optional[int]) -> tuple[ManifestIndex, np.ndarray, int]:
    """-> (index of the kept rows, their manifest row numbers (int64), total rows), dropping clips shorter
    than `min_keep` or longer than `max_keep` samples. Malformed or empty manifests raise `ManifestError`
    naming the file and line."""
    full = read_manifest_index(path)
    if not os.path.isdir(full.root):
        raise DataError(f"{path}:1: audio root {full.root} is not a directory (moved? line 1 of the manifest "
                        "must be the directory the audio paths are relative to)")
    short = full.sizes < min_keep if min_keep is not None else np.zeros(len(full), bool)
    long = full.sizes > max_keep if max_keep is not None else np.zeros(len(full), bool)
    kept = np.flatnonzero(~(short | long)).astype(np.int64)
    if not len(kept):
        raise DataError(f"{path}: no usable rows ({len(full)} rows, {int(short.sum())} shorter than "
                        f"min_sample_size={min_keep}, {int(long.sum())} longer than max_keep_size={max_keep})")
    logger.info("%s: kept %d of %d clips (%d too short, %d too long)", path, len(kept), len(full),
                int(short.sum()), int(long.sum()))
    return (full if len(kept) == len(full) else full.select(kept)), kept, len(full)


AUGMENTATIONS: Dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    # Mute a random 10-50% stretch of the clip.
    "random_mute": lambda w, rng: _mute(w, rng),
    # Add white noise at 20-40 dB below the clip's RMS.
    "random_Gaussian": lambda w, rng: w + rng.standard_normal(len(w)).astype(np.float32)
    * np.sqrt(np.mean(w**2) + 1e-12) * 10 ** (-rng.uniform(20, 40) / 20),
    "reverse_polarity": lambda w, rng: -w,
}


def _mute(wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = int(len(wav) * rng.uniform(0.1, 0.5))
    start = rng.integers(0, len(wav) - n + 1)
    out = wav.copy()
    out[start : start + n] = 0.0
    return out


def _long_tensor(values: List[int]) -> torch.Tensor:
    """torch.LongTensor(values), through numpy (4x cheaper for a batch's few ints)."""
    return torch.from_numpy(np.array(values, dtype=np.int64))


class MERTDataset(FairseqDataset):
    def __init__(
        self,
        manifest_path: str,
        sample_rate: int,
        label_paths: Sequence[str],
        label_rate: float,
        dictionaries: Sequence[Dictionary],
        max_keep_sample_size: Optional[int] = None,
        min_keep_sample_size: Optional[int] = None,
        max_sample_size: Optional[int] = None,
        pad_audio: bool = False,
        normalize: bool = False,
        store_labels: bool = True,
        numpy_memmap_label: bool = False,
        random_crop: bool = True,
        single_target: bool = False,
        augmentation_effects: Sequence[str] = (),
        augmentation_probs: Sequence[float] = (),
        skip_bad_audio: bool = False,
        seed: int = 1,
        windowed_reads: bool = True,
        max_bad_audio_fraction: float = 1.0,
        draw_spec: Optional[DrawSpec] = None,
    ) -> None:
        """`store_labels` has no effect any more (labels are read by byte offset or from a memmap);
        `windowed_reads=False` reads every clip whole (the original behaviour; for comparisons);
        `draw_spec`: what the collater draws for the model (`net_input["draws"]`, a `StepDraws`; see
        `step_draws`); the task sets it once the model is built."""
        self.manifest_path = manifest_path
        self.manifest, self.kept_rows, num_rows = load_manifest(manifest_path, min_keep_sample_size,
                                                                max_keep_sample_size)
        self.root, self.sizes = self.manifest.root, self.manifest.sizes
        self.sample_rate, self.label_rate = sample_rate, label_rate
        self.dictionaries = list(dictionaries)
        self.labels = [LabelStream(p, d, self.kept_rows, num_rows, numpy_memmap_label)
                       for p, d in zip(label_paths, dictionaries)]
        self.max_sample_size = max_sample_size if max_sample_size is not None else int(1e12)
        self.pad_audio, self.normalize, self.random_crop = pad_audio, normalize, random_crop
        self.single_target, self.windowed_reads = single_target, windowed_reads
        unknown = set(augmentation_effects) - set(AUGMENTATIONS)
        if unknown:
            raise ValueError(f"unknown augmentation_effects {sorted(unknown)}; known: {sorted(AUGMENTATIONS)}")
        if len(augmentation_effects) != len(augmentation_probs):
            raise ValueError("augmentation_effects and augmentation_probs need the same length")
        self.augmentations = list(zip(augmentation_effects, augmentation_probs))
        self.skip_bad_audio = skip_bad_audio
        self.max_bad_audio_fraction = max_bad_audio_fraction
        self.num_skipped = 0
        self.skipped_this_epoch: set = set()
        self.seed, self.epoch = seed, 1
        self.draw_spec = draw_spec
        self._check_label_lengths()

    def _check_label_lengths(self) -> None:
        """Every label stream must cover its clip: len >= samples * label_rate / sample_rate - 1, and not
        run past it: len <= ceil(samples * label_rate / sample_rate) + 1 (else labels and audio disagree)."""
        need = self.sizes * self.label_rate / self.sample_rate - 1
        for stream in self.labels:
            long = np.nonzero(stream.lengths > np.ceil(need + 1) + 1)[0]
            if len(long):
                i = long[0]
                raise DataError(
                    f"{stream.where(i)}: {stream.lengths[i]} labels for {self.name(i)} "
                    f"({self.sizes[i]} samples needs about {need[i] + 1:.0f}); {len(long)} rows are too long "
                    "(wrong label_rate, or labels of other audio?)")
            short = np.nonzero(stream.lengths < np.floor(need))[0]
            if len(short):
                i = short[0]
                raise DataError(
                    f"{stream.where(i)}: {stream.lengths[i]} labels for {self.name(i)} "
                    f"({self.sizes[i]} samples needs about {need[i] + 1:.0f}); {len(short)} rows are short")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.skipped_this_epoch = set()

    def __len__(self) -> int:
        return len(self.sizes)

    def name(self, index: int) -> str:
        """The manifest relpath of item `index`."""
        return self.manifest.name(index)

    def where(self, index: int) -> str:
        """'manifest:line' of item `index`, for error messages."""
        return f"{self.manifest_path}:{int(self.kept_rows[index]) + 2}"

    def _rng(self, index: int, *stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index, *stream])

    def _draw(self, high: int, index: int, *stream: int) -> int:
        """`self._rng(index, *stream).integers(0, high)`, computed without building the generator."""
        return seeded_integer((self.seed, self.epoch, index, *stream), high)

    def window(self, index: int) -> tuple[int, int]:
        """(start, frames) of the audio to read for item `index`: the whole clip (frames -1) when it fits
        max_sample_size, else the crop the collater would have drawn from the whole clip."""
        size = int(self.sizes[index])
        if not self.windowed_reads or size <= self.max_sample_size:
            return 0, -1
        start = self._draw(size - self.max_sample_size + 1, index) if self.random_crop else 0
        return start, self.max_sample_size

    def load_audio(self, index: int, start: int = 0, frames: int = -1) -> np.ndarray:
        """Mono float32 frames [start, start + frames) of item `index` (multi-channel files are downmixed
        by averaging the channels, documented); errors name the manifest line and the file."""
        path = os.path.join(self.root, self.name(index))
        try:
            wav, _ = read_window(path, start, frames, expected_rate=self.sample_rate,
                                 expected_frames=int(self.sizes[index]))
        except AudioError as exc:
            raise AudioError(f"{self.where(index)}: {exc}") from exc
        return wav

    def _count_skip(self, index: int) -> None:
        """Log a skipped clip; fail when more than `max_bad_audio_fraction` of the split is bad this epoch."""
        self.num_skipped += 1
        self.skipped_this_epoch.add(index)
        logger.warning("skipping unreadable audio %s (%d skipped so far in this process)",
                       os.path.join(self.root, self.name(index)), self.num_skipped, exc_info=True)
        if len(self.skipped_this_epoch) > self.max_bad_audio_fraction * len(self):
            raise DataError(f"{self.manifest_path}: {len(self.skipped_this_epoch)} of {len(self)} clips unreadable in "
                            f"epoch {self.epoch} (more than max_bad_audio_fraction={self.max_bad_audio_fraction}); "
                            "see the warnings above for each file")

    def __getitem__(self, index: int) -> Optional[dict]:
        start, frames = self.window(index)
        try:
            wav = self.load_audio(index, start, frames)
        except AudioError:
            if not self.skip_bad_audio:
                raise
            self._count_skip(index)
            return None
        if self.augmentations:
            rng = self._rng(index)
            for name, prob in self.augmentations:
                if rng.random() < prob:
                    wav = AUGMENTATIONS[name](wav, rng)
        s2f = self.label_rate / self.sample_rate
        label_start = int(round(start * s2f))
        label_count = None if frames < 0 else math.ceil(frames * s2f) + 2
        return {
            "id": index,
            "source": torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)),
            "offset": start,  # first sample of `source` in the clip
            "windowed": frames >= 0,
            "label_offset": label_start,  # first frame of each label_list tensor in the full label row
            "label_lengths": [int(s.lengths[index]) for s in self.labels],
            "label_list": [s.read(index, label_start, label_count) for s in self.labels],
        }

    # ------------------------------------------------------------------ batching
    def collater(self, samples: List[Optional[dict]]) -> dict:
        samples = [s for s in samples if s is not None and s["source"].shape[0] > 0]
        if not samples:
            return {}
        sizes = [s["source"].shape[0] for s in samples]
        audio_size = min(max(sizes) if self.pad_audio else min(sizes), self.max_sample_size)
        audios, padding_mask, starts = self._collate_audio(samples, audio_size)
        targets, lengths, ntokens = self._collate_labels(samples, audio_size, starts)
        batch = {
            "id": _long_tensor([s["id"] for s in samples]),
            "net_input": {"source": audios, "padding_mask": padding_mask},
        }
        if self.single_target:
            batch.update(target_lengths=lengths[0], ntokens=ntokens[0], target=targets[0])
        else:
            batch.update(target_lengths_list=lengths, ntokens_list=ntokens, target_list=targets)
        if self.draw_spec is not None:
            self._add_draws(batch, targets)
        return batch

    def _add_draws(self, batch: dict, targets: List[torch.Tensor]) -> None:
        """The step's random draws (`net_input["draws"]`, a `StepDraws`), from one generator seeded by (seed,
        epoch, ids of the batch's clips): the same on resume, different on every rank (each rank trains on other
        clips)."""
        rng = np.random.default_rng([self.seed, self.epoch, *batch["id"].tolist()])
        net_input = batch["net_input"]
        net_input["draws"] = draw_for_batch(self.draw_spec, rng, net_input["source"], net_input["padding_mask"],
                                            min(t.size(1) for t in targets) if targets else None)

    def _crop_start(self, sample: dict, diff: int) -> int:
        """Start of the batch crop inside `source` (diff = len(source) - crop size > 0)."""
        if not self.random_crop:
            return 0
        stream = (1,) if sample.get("windowed") else ()
        return self._draw(diff + 1, sample["id"], *stream)

    def _collate_audio(self, samples: List[dict], size: int):
        """-> (audio B x size, padding mask B x size, crop start of each row in its full clip).
        Crops and copies go through numpy views (cheaper per call than torch indexing)."""
        crops, starts = [], []
        for s in samples:
            wav = s["source"].numpy()
            diff = len(wav) - size
            start = self._crop_start(s, diff) if diff > 0 else 0
            crops.append(wav[start: start + size])
            starts.append(s.get("offset", 0) + start)
        lengths = [len(c) for c in crops]
        if min(lengths) == size:  # no padding: one stacked copy
            out = torch.from_numpy(np.stack(crops))
            if self.normalize:
                out = F.layer_norm(out, (size,))
            return out, torch.zeros(len(samples), size, dtype=torch.bool) if self.pad_audio else None, starts
        out = torch.zeros(len(samples), size)
        padding_mask = torch.zeros(len(samples), size, dtype=torch.bool)
        for i, crop in enumerate(crops):
            crop = torch.from_numpy(crop)
            out[i, : len(crop)] = F.layer_norm(crop, crop.shape) if self.normalize else crop
            padding_mask[i, len(crop):] = True
        return out, padding_mask, starts

    def _collate_labels(self, samples: List[dict], audio_size: int, audio_starts: List[int]):
        s2f = self.label_rate / self.sample_rate
        frame_starts = [int(round(s * s2f)) for s in audio_starts]  # in the full label rows
        targets, lengths, ntokens = [], [], []
        for k, dictionary in enumerate(self.dictionaries):
            full_lengths = [s["label_lengths"][k] if "label_lengths" in s else len(s["label_list"][k])
                            for s in samples]
            frame_size = int(round(audio_size * s2f))
            if not self.pad_audio:
                frame_size = min([frame_size] + [n - f for n, f in zip(full_lengths, frame_starts)])
            cropped = []
            for s, f in zip(samples, frame_starts):
                local = f - s.get("label_offset", 0)
                cropped.append(s["label_list"][k].numpy()[local: local + frame_size])
            length = [len(t) for t in cropped]
            if min(length) == max(length):
                padded = torch.from_numpy(np.stack(cropped))
            else:
                padded = torch.full((len(cropped), max(length)), dictionary.pad(), dtype=torch.long)
                for i, t in enumerate(cropped):
                    padded[i, : len(t)] = torch.from_numpy(t)
            targets.append(padded)
            lengths.append(_long_tensor(length))
            ntokens.append(sum(length))
        return targets, lengths, ntokens

    def num_tokens(self, index: int) -> int:
        return self.size(index)

    def size(self, index: int) -> int:
        return int(self.sizes[index]) if self.pad_audio else int(min(self.sizes[index], self.max_sample_size))

    def batch_by_size(self, indices: np.ndarray, max_tokens: Optional[int] = None,
                      max_sentences: Optional[int] = None, required_batch_size_multiple: int = 1) -> List[np.ndarray]:
        """Greedy batches of `indices` with (batch size x longest clip) <= max_tokens.

        Replaces fairseq-fixed 0.12.3.1's compiled version, which silently drops the last clips of
        an epoch when fewer than `required_batch_size_multiple` remain (a 4-clip valid set gives no batch).
        """
        mult = max(required_batch_size_multiple, 1)
        batches: List[np.ndarray] = []
        batch: List[int] = []
        lengths: List[int] = []
        for idx in indices:
            n = self.num_tokens(int(idx))
            if max_tokens is not None and n > max_tokens:
                raise ValueError(f"{self.manifest_path}: clip {self.name(int(idx))} has {n} samples > max_tokens={max_tokens}")
            full = (max_tokens is not None and (len(batch) + 1) * max(lengths + [n]) > max_tokens) or (
                max_sentences is not None and len(batch) + 1 > max_sentences)
            if batch and full:
                keep = max(mult * (len(batch) // mult), len(batch) % mult)
                batches.append(np.array(batch[:keep], dtype=np.int64))
                batch, lengths = batch[keep:], lengths[keep:]
            batch.append(int(idx))
            lengths.append(n)
        if batch:
            batches.append(np.array(batch, dtype=np.int64))
        return batches

    def ordered_indices(self) -> np.ndarray:
        """Longest first, ties broken by a shuffle seeded by `seed` alone.

        Not by epoch: fairseq builds batches once and reuses them (shuffling their order per epoch), so
        an epoch-dependent order would give a run resumed in epoch k different batches than a run
        that never stopped.
        """
        tiebreak = np.random.default_rng(self.seed).permutation(len(self))
        return np.lexsort([tiebreak, -self.sizes])

