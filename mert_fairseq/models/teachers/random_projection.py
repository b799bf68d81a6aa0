"""Targets without a labelling pass: a frozen random-projection quantizer (BEST-RQ, as in MusicFM).

`task.online_targets=random_projection` replaces label files: for every clean training clip the model
computes, at the label rate, spectral frames (log-mel or log-CQT), normalises each frame (zero mean,
unit variance over its bins), projects it with a frozen random matrix per codebook and takes the
nearest code (cosine) of a frozen random codebook:

    frames B x T x F --normalise--> @ projection_k F x d --l2--> argmax . codebook_k^T (C x d, unit rows) -> B x T

The projections and codebooks are drawn from `online_targets_seed` only (so targets are a pure function
of audio and seed) and are persistent buffers: they travel with the checkpoint, and a resumed or
exported run keeps them. Codes are returned as dictionary indices (code + `offset`, the dictionary's
special symbols) so they drop into the hubert criterion like file labels.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torchaudio
from torch import nn

from mert_fairseq.models.teachers.cqt import build_cqt, exclude_buffers_from_state_dict

FEATURES = ("mel", "cqt")


class RandomProjectionTargets(nn.Module):
    def __init__(self, sample_rate: int, label_rate: float, n_codebooks: int = 1, codebook_size: int = 1024,
                 code_dim: int = 16, feature: str = "mel", n_bins: int = 80, seed: int = 0, offset: int = 0) -> None:
        super().__init__()
        if feature not in FEATURES:
            raise ValueError(f"online_targets_feature={feature!r}: choose from {', '.join(FEATURES)}")
        if n_codebooks < 1 or codebook_size < 2 or code_dim < 1:
            raise ValueError("online targets need >= 1 codebook, >= 2 codes and code_dim >= 1")
        hop = int(round(sample_rate / label_rate))
        self.feature, self.offset, self.hop = feature, int(offset), hop
        if feature == "mel":
            self.spec = torchaudio.transforms.MelSpectrogram(
                sample_rate=sample_rate, n_fft=2048 if hop > 256 else 1024, hop_length=hop, n_mels=n_bins,
                f_min=30.0, center=True, pad_mode="constant", power=2.0)
        else:
            self.spec = build_cqt(sample_rate, hop, n_bins)  # n_bins // 7 bins per octave from 32.7 Hz
        exclude_buffers_from_state_dict(self.spec)  # rebuilt at construction; only the quantizer is saved
        g = torch.Generator().manual_seed(int(seed))
        projection = torch.randn(n_codebooks, n_bins, code_dim, generator=g) / n_bins ** 0.5  # Xavier-like
        codebooks = nn.functional.normalize(torch.randn(n_codebooks, codebook_size, code_dim, generator=g), dim=-1)
        self.register_buffer("projection", projection)  # K x F x d
        self.register_buffer("codebooks", codebooks)  # K x C x d

    @property
    def n_codebooks(self) -> int:
        return self.codebooks.size(0)

    @torch.no_grad()
    def frames(self, wav: torch.Tensor) -> torch.Tensor:
        """Clean audio B x L -> per-frame normalised log spectra B x (L // hop + 1) x F (fp32)."""
        with torch.autocast(device_type=wav.device.type, enabled=False):
            spec = self.spec(wav.float())  # B x F x T
            x = torch.log(spec.clamp_min(0) + 1e-6).transpose(1, 2)
        return (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-5)

    @torch.no_grad()
    def forward(self, wav: torch.Tensor) -> List[torch.Tensor]:
        """Clean audio B x L -> one B x T tensor of dictionary indices per codebook."""
        x = self.frames(wav)
        proj = nn.functional.normalize(torch.einsum("btf,kfd->kbtd", x, self.projection.float()), dim=-1)
        codes = torch.einsum("kbtd,kcd->kbtc", proj, self.codebooks.float()).argmax(-1)  # K x B x T
        return [c + self.offset for c in codes]


def build_online_targets(task_cfg, sample_rate: int, label_rate: float, offset: int) -> Optional[RandomProjectionTargets]:
    """The quantizer asked for by the task's `online_targets*` fields (None when off)."""
    kind = getattr(task_cfg, "online_targets", None)
    if not kind:
        return None
    if kind != "random_projection":
        raise ValueError(f"task.online_targets={kind!r}: only 'random_projection' is available")
    return RandomProjectionTargets(
        sample_rate, label_rate, n_codebooks=int(task_cfg.online_targets_codebooks),
        codebook_size=int(task_cfg.online_targets_codebook_size), code_dim=int(task_cfg.online_targets_dim),
        feature=str(task_cfg.online_targets_feature), n_bins=int(task_cfg.online_targets_bins),
        seed=int(task_cfg.online_targets_seed), offset=offset)


def code_dictionary(n_codes: int):
    """A fairseq Dictionary of the symbols "0" .. "n_codes - 1" (after its special symbols)."""
    from fairseq.data.dictionary import Dictionary

    d = Dictionary()
    for code in range(n_codes):
        d.add_symbol(str(code))
    return d
