"""`MERTDataset`: 24 kHz audio clips from a fairseq manifest + one or more frame-level label streams.

Manifest `{split}.tsv`: first line the root directory, then `relpath<TAB>num_samples`.
Labels `{label_dir}/{split}.{label}`: one line of space-separated integer codes per manifest row,
or `{split}.{label}.npy` (int array [rows, max_len], padded with -1) with `numpy_memmap_label`.
Batches crop every clip to the shortest clip (at most `max_sample_size`) or, with `pad_audio`,
zero-pad to the longest and set `padding_mask`; labels are cropped consistently.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from fairseq.data import FairseqDataset
from fairseq.data.dictionary import Dictionary

from mert_fairseq.audio import AudioError, read_audio, to_mono
from mert_fairseq.data_prep.manifest import read_manifest

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad manifest or label data; the message names the file (and line)."""


def load_manifest(path: str, min_keep: Optional[int], max_keep: Optional[int]):
    """-> (root, relpaths, sizes, kept manifest row indices, total rows) after dropping too short/long clips.

    Malformed or empty manifests raise `ManifestError` naming the file and line."""
    manifest = read_manifest(path)
    if not os.path.isdir(manifest.root):
        raise DataError(f"{path}:1: audio root {manifest.root} is not a directory (moved? line 1 of the manifest "
                        "must be the directory the audio paths are relative to)")
    names, sizes, kept = [], [], []
    n_short = n_long = 0
    for index, row in enumerate(manifest.rows):
        if min_keep is not None and row.num_samples < min_keep:
            n_short += 1
        elif max_keep is not None and row.num_samples > max_keep:
            n_long += 1
        else:
            names.append(row.relpath)
            sizes.append(row.num_samples)
            kept.append(index)
    total = len(manifest.rows)
    if not names:
        raise DataError(f"{path}: no usable rows ({total} rows, {n_short} shorter than "
                        f"min_sample_size={min_keep}, {n_long} longer than max_keep_size={max_keep})")
    logger.info("%s: kept %d of %d clips (%d too short, %d too long)", path, len(names), total, n_short, n_long)
    return str(manifest.root), names, np.array(sizes, dtype=np.int64), kept, total


class LabelStream:
    """One label stream, read as text lines (in memory or by byte offset) or from a .npy memmap."""

    def __init__(self, path: str, dictionary: Dictionary, kept_rows: List[int], num_rows: int,
                 store_in_memory: bool, numpy_memmap: bool) -> None:
        self.path, self.dictionary = path, dictionary
        if numpy_memmap:
            self.path = path if path.endswith(".npy") else f"{path}.npy"
            self._check_exists(self.path)
            array = np.load(self.path, mmap_mode="r")
            if not np.issubdtype(array.dtype, np.integer):
                raise DataError(f"{self.path}: label codes must be integers (padded with -1), "
                                f"found dtype {array.dtype}")
            self._check_rows(array.shape[0], num_rows)
            self.array = array
            self.rows = kept_rows
            self.lengths = (array[kept_rows] >= 0).sum(axis=1)
            self.lut = self._code_lookup(dictionary)
            return
        self.array = None
        self._check_exists(path)
        with open(path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        self._check_rows(len(lines), num_rows)
        offsets = np.cumsum([0] + [len(line) + 1 for line in lines])
        self.lengths = np.array([len(lines[r].split()) for r in kept_rows], dtype=np.int64)
        self.rows = kept_rows
        self.offsets = offsets
        self.lines = [lines[r].decode() for r in kept_rows] if store_in_memory else None

    def _check_exists(self, path: str) -> None:
        if not os.path.isfile(path):
            raise DataError(f"{path}: label file not found")

    def _check_rows(self, found: int, expected: int) -> None:
        if found != expected:
            raise DataError(f"{self.path}: {found} label lines but the manifest has {expected} rows "
                            "(one line per manifest row, same order)")

    @staticmethod
    def _code_lookup(dictionary: Dictionary) -> np.ndarray:
        codes = [int(s) for s in dictionary.symbols[dictionary.nspecial:]]
        lut = np.full(max(codes) + 1, dictionary.unk(), dtype=np.int64)
        lut[codes] = np.arange(dictionary.nspecial, dictionary.nspecial + len(codes))
        return lut

    def __getitem__(self, i: int) -> torch.Tensor:
        """Dictionary indices of kept item i (int64 tensor)."""
        if self.array is not None:
            codes = np.asarray(self.array[self.rows[i]])
            codes = codes[codes >= 0]
            ids = self.lut[np.minimum(codes, len(self.lut) - 1)]
            bad = (codes >= len(self.lut)) | (ids == self.dictionary.unk())
            if bad.any():
                raise DataError(f"{self.path}: row {self.rows[i]}: code {codes[bad][0]} is not in the dictionary")
            return torch.from_numpy(ids)
        if self.lines is not None:
            line = self.lines[i]
        else:
            row = self.rows[i]
            with open(self.path, "rb") as f:
                f.seek(self.offsets[row])
                line = f.read(self.offsets[row + 1] - self.offsets[row]).decode()
        ids = self.dictionary.encode_line(line, append_eos=False, add_if_not_exist=False).long()
        if (ids == self.dictionary.unk()).any():
            bad = next(tok for tok in line.split() if self.dictionary.index(tok) == self.dictionary.unk())
            raise DataError(f"{self.path}:{self.rows[i] + 1}: code {bad!r} is not in the dictionary")
        return ids


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
        max_bad_audio_fraction: float = 1.0,
    ) -> None:
        self.manifest_path = manifest_path
        self.root, self.names, self.sizes, kept, num_rows = load_manifest(
            manifest_path, min_keep_sample_size, max_keep_sample_size)
        self.sample_rate, self.label_rate = sample_rate, label_rate
        self.dictionaries = list(dictionaries)
        self.labels = [LabelStream(p, d, kept, num_rows, store_labels, numpy_memmap_label)
                       for p, d in zip(label_paths, dictionaries)]
        self.max_sample_size = max_sample_size if max_sample_size is not None else int(1e12)
        self.pad_audio, self.normalize, self.random_crop = pad_audio, normalize, random_crop
        self.single_target = single_target
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
                    f"{stream.path}:{stream.rows[i] + 1}: {stream.lengths[i]} labels for {self.names[i]} "
                    f"({self.sizes[i]} samples needs about {need[i] + 1:.0f}); {len(long)} rows are too long "
                    "(wrong label_rate, or labels of other audio?)")
            short = np.nonzero(stream.lengths < np.floor(need))[0]
            if len(short):
                i = short[0]
                raise DataError(
                    f"{stream.path}:{stream.rows[i] + 1}: {stream.lengths[i]} labels for {self.names[i]} "
                    f"({self.sizes[i]} samples needs about {need[i] + 1:.0f}); {len(short)} rows are short")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.skipped_this_epoch = set()

    def __len__(self) -> int:
        return len(self.sizes)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def load_audio(self, index: int) -> np.ndarray:
        path = os.path.join(self.root, self.names[index])
        wav, sr = read_audio(path)
        if sr != self.sample_rate:
            raise AudioError(f"{path}: sample rate {sr} Hz, the task expects {self.sample_rate} Hz "
                             "(convert with scripts/prepare_manifest.py)")
        if len(wav) != self.sizes[index]:
            raise AudioError(f"{path}: {len(wav)} samples but {self.manifest_path} says {self.sizes[index]} "
                             "(file changed after the manifest was written?)")
        return to_mono(wav)  # multi-channel files are downmixed by averaging the channels (documented)

    def _count_skip(self, index: int) -> None:
        """Log a skipped clip; fail when more than `max_bad_audio_fraction` of the split is bad this epoch."""
        self.num_skipped += 1
        self.skipped_this_epoch.add(index)
        logger.warning("skipping unreadable audio %s (%d skipped so far in this process)",
                       os.path.join(self.root, self.names[index]), self.num_skipped, exc_info=True)
        if len(self.skipped_this_epoch) > self.max_bad_audio_fraction * len(self):
            raise DataError(f"{self.manifest_path}: {len(self.skipped_this_epoch)} of {len(self)} clips unreadable in "
                            f"epoch {self.epoch} (more than max_bad_audio_fraction={self.max_bad_audio_fraction}); "
                            "see the warnings above for each file")

    def __getitem__(self, index: int) -> Optional[dict]:
        try:
            wav = self.load_audio(index)
        except AudioError:
            if not self.skip_bad_audio:
                raise
            self._count_skip(index)
            return None
        rng = self._rng(index)
        for name, prob in self.augmentations:
            if rng.random() < prob:
                wav = AUGMENTATIONS[name](wav, rng)
        source = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
        if self.normalize:
            source = F.layer_norm(source, source.shape)
        return {"id": index, "source": source, "label_list": [s[index] for s in self.labels]}

    # ------------------------------------------------------------------ batching
    def collater(self, samples: List[Optional[dict]]) -> dict:
        samples = [s for s in samples if s is not None and len(s["source"]) > 0]
        if not samples:
            return {}
        sizes = [len(s["source"]) for s in samples]
        audio_size = min(max(sizes) if self.pad_audio else min(sizes), self.max_sample_size)
        audios, padding_mask, starts = self._collate_audio([s["source"] for s in samples], audio_size, samples)
        targets, lengths, ntokens = self._collate_labels(samples, audio_size, starts)
        batch = {
            "id": torch.LongTensor([s["id"] for s in samples]),
            "net_input": {"source": audios, "padding_mask": padding_mask if self.pad_audio else None},
        }
        if self.single_target:
            batch.update(target_lengths=lengths[0], ntokens=ntokens[0], target=targets[0])
        else:
            batch.update(target_lengths_list=lengths, ntokens_list=ntokens, target_list=targets)
        return batch

    def _collate_audio(self, audios: List[torch.Tensor], size: int, samples: List[dict]):
        out = audios[0].new_zeros(len(audios), size)
        padding_mask = torch.zeros(len(audios), size, dtype=torch.bool)
        starts = []
        for i, (wav, s) in enumerate(zip(audios, samples)):
            diff = len(wav) - size
            if diff <= 0:
                out[i, : len(wav)] = wav
                padding_mask[i, len(wav):] = True
                starts.append(0)
            else:
                start = int(self._rng(s["id"]).integers(0, diff + 1)) if self.random_crop else 0
                out[i] = wav[start : start + size]
                starts.append(start)
        return out, padding_mask, starts

    def _collate_labels(self, samples: List[dict], audio_size: int, audio_starts: List[int]):
        s2f = self.label_rate / self.sample_rate
        frame_starts = [int(round(s * s2f)) for s in audio_starts]
        targets, lengths, ntokens = [], [], []
        for k, dictionary in enumerate(self.dictionaries):
            labels = [s["label_list"][k] for s in samples]
            frame_size = int(round(audio_size * s2f))
            if not self.pad_audio:
                frame_size = min([frame_size] + [len(t) - f for t, f in zip(labels, frame_starts)])
            cropped = [t[f : f + frame_size] for t, f in zip(labels, frame_starts)]
            length = torch.LongTensor([len(t) for t in cropped])
            padded = torch.full((len(cropped), int(length.max())), dictionary.pad(), dtype=torch.long)
            for i, t in enumerate(cropped):
                padded[i, : len(t)] = t
            targets.append(padded)
            lengths.append(length)
            ntokens.append(int(length.sum()))
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
                raise ValueError(f"{self.manifest_path}: clip {self.names[idx]} has {n} samples > max_tokens={max_tokens}")
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

