"""The musical teacher: a constant-Q transform of the clean audio that the model regresses at masked
frames (`audio_cqt_loss_m`), and the optional CQT input front end (`feature_extractor_cqt`). The Hugging
Face export ships this very file as `cqt.py` beside its `modeling_mert.py`: keep it self-contained (the
standard library, numpy and torch only; tests/test_hf_export.py checks).

The transform is the one of nnAudio's CQT1992v2 with the original's settings (fmin 32.7 Hz, 7 octaves,
periodic hann, L1-normalised kernels scaled by sqrt(length), centred with zero padding, magnitude):

    cqt[k, j] = sqrt(l_k) * | sum_d x[hop*j + d] * kernel_k(d) |,   kernel_k = hann(l_k) * exp(2 pi i f_k d / sr) / ||.||_1

nnAudio evaluates it as a strided conv1d with 336 kernels of 65536 taps (about 66 G multiply-adds for
4 x 5 s). `SpectralCQT` evaluates the same sum in the frequency domain:

  1. X = fft(x) on a grid of N = hop * M points (N >= L + half the longest kernel: no wrap-around);
  2. kernel k's spectrum G_k (closed form: a modulated periodic hann) is a band around f_k; it is kept
     within f_k +- `band` (64) x sr / l_k, i.e. 64 of the kernel's own DFT bins to each side, where the
     hann sidelobes are ~1e-6 of the peak (negative frequencies are included where a band reaches them);
  3. sampling the correlation at hop*j folds X * G_k into M bins (sum over m = r + q*M), done as one
     real batched matmul per octave of bins, followed by an M-point inverse FFT.

Measured (tests/test_speedups.py, docs/performance.md): within 3e-6 x the batch's largest magnitude of
an fp64 evaluation of nnAudio's kernels (nnAudio's own fp32 conv: ~1e-5), and within 2e-5 of nnAudio
fp32 (6e-6 typical). For 4 x 5 s at 336 bins on one CPU core: 21 ms instead of 1.25 s, 40 MB of
kernels instead of 168 MB. Kernel spectra depend on the grid size; they are built on first use per
(grid, device) (~0.5 s) and kept in a small cache, never in the state dict. The teacher always runs in
fp32, outside autocast, without gradient.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Optional, Tuple

import numpy as np
import torch
from torch import nn

CQT_FMIN = 32.7
CQT_OCTAVES = 7


def _grid_size(min_points: int) -> int:
    """Smallest M >= min_points of the form 2^k * {1, 5/4, 3/2, 7/4}: FFT-friendly, and few distinct
    grids (so few kernel caches) across the clip lengths of a training run."""
    m = max(int(min_points), 4)
    base = 1 << max(m.bit_length() - 3, 0)  # base * 4 <= m < base * 8 ... choose among multiples of base
    candidates = [base * c for c in (4, 5, 6, 7, 8, 10, 12, 14, 16)]
    return min(c for c in candidates if c >= m)


def _fold_dtype(device: torch.device) -> torch.dtype:
    """The fold matmul needs fp32 accuracy. Where a run lets CUDA fp32 matmuls use TF32 (a global setting
    this module only reads), it runs in fp64 instead (a small matmul: well under a millisecond per batch)."""
    if device.type == "cuda" and (torch.backends.cuda.matmul.allow_tf32
                                  or torch.get_float32_matmul_precision() != "highest"):
        return torch.float64
    return torch.float32


class SpectralCQT(nn.Module):
    """nnAudio CQT1992v2 (magnitude, center=True, zero padding, librosa normalisation) computed with
    banded spectral kernels. Input B x L, 1 x L or B x 1 x L; output B x n_bins x (floor(L / hop) + 1), fp32.
    """

    def __init__(self, sr: int, hop_length: int, fmin: float, n_bins: int, bins_per_octave: int,
                 filter_scale: float = 1.0, band: float = 64.0, cache_size: int = 4, block_frames: int = 512) -> None:
        super().__init__()
        self.sr, self.hop_length, self.n_bins = int(sr), int(hop_length), int(n_bins)
        self.bins_per_octave, self.band, self.cache_size = int(bins_per_octave), float(band), cache_size
        Q = float(filter_scale) / (2 ** (1 / bins_per_octave) - 1)
        self.frequencies = fmin * 2.0 ** (np.arange(n_bins) / bins_per_octave)
        if self.frequencies[-1] > sr / 2:
            raise ValueError(f"top CQT bin {self.frequencies[-1]:.0f} Hz is above Nyquist ({sr / 2:.0f} Hz)")
        self.lengths = np.ceil(Q * sr / self.frequencies)  # kernel lengths in samples (float, as nnAudio)
        self.kernel_width = int(2 ** np.ceil(np.log2(self.lengths.max())))  # nnAudio's padded kernel width
        # kernel k occupies offsets d in [d0_k, d0_k + l_k) around the frame centre (nnAudio's placement)
        half = self.kernel_width // 2
        l_int = self.lengths.astype(np.int64)
        self._d0 = np.ceil(half - self.lengths / 2).astype(np.int64) - (l_int % 2) - half
        self._reach = int(max((-self._d0).max(), (self._d0 + l_int).max()))
        # inputs of more than block_frames frames are transformed in blocks, with margin frames of context
        self.block_frames, self.margin = int(block_frames), -(-self._reach // self.hop_length)
        # numpy, not a tensor: a module built under a meta-device context (transformers' from_pretrained)
        # holds no tensor state that would have to be materialised
        self._scale = (np.sqrt(self.lengths) / self.hop_length).astype(np.float32)
        self._cache: "OrderedDict[Tuple[int, str], tuple]" = OrderedDict()

    def extra_repr(self) -> str:
        return (f"sr={self.sr}, hop_length={self.hop_length}, n_bins={self.n_bins}, "
                f"bins_per_octave={self.bins_per_octave}, band={self.band}")

    def _spectra(self, bins: np.ndarray, m: torch.Tensor, N: int) -> torch.Tensor:
        """G_k[m] = conj(DFT_N of kernel k at its offsets)[m] for the given bins, in closed form (fp64).

        A periodic hann of length l modulated to f has DTFT at t = 2 pi (f / sr - m / N)
        0.5 D(t) - 0.25 D(t + 2pi/l) - 0.25 D(t - 2pi/l), with the Dirichlet kernel
        D(t) = e^{i t (l-1)/2} sin(l t / 2) / sin(t / 2); the three terms share sin(l t / 2) and, up to
        e^{-+ i pi / l}, the phase e^{i t (l-1)/2}.
        """
        f = torch.tensor(self.frequencies[bins], dtype=torch.float64)[:, None]
        l_int = self.lengths[bins].astype(np.int64)
        l = torch.tensor(l_int, dtype=torch.float64)[:, None]
        n0 = torch.tensor(-((l_int + 1) // 2), dtype=torch.float64)[:, None]
        d0 = torch.tensor(self._d0[bins], dtype=torch.int64)[:, None]
        t = 2 * math.pi * (f / self.sr - m[None].double() / N)
        step = 2 * math.pi / l

        def inv_sin_half(u: torch.Tensor) -> torch.Tensor:  # 1 / sin(u / 2); 0 where sin(u/2) == 0 (fixed below)
            s = torch.sin(u / 2)
            return torch.where(s == 0, torch.zeros_like(s), 1.0 / torch.where(s == 0, torch.ones_like(s), s))

        num = torch.sin(l * t / 2)
        i0, ip, im = inv_sin_half(t), inv_sin_half(t + step), inv_sin_half(t - step)
        c, s = torch.cos(math.pi / l), torch.sin(math.pi / l)
        re = num * (0.5 * i0 - 0.25 * c * (ip + im))
        im_ = num * (0.25 * s * (ip - im))
        # where sin(u/2) == 0 exactly (u = t + delta = 0): that term is l e^{i delta (l-1)/2} relative to the
        # common phase, and sin(l t / 2) = 0 zeroes the other two
        for delta, coef in ((0.0, 0.5), (step, -0.25), (-step, -0.25)):
            hit = torch.sin((t + delta) / 2) == 0
            if hit.any():
                arg = delta * (l - 1) / 2 + torch.zeros_like(t)
                re = torch.where(hit, coef * l * torch.cos(arg), re)
                im_ = torch.where(hit, coef * l * torch.sin(arg), im_)
        shift = torch.remainder(m[None] * d0, N).double() * (-2 * math.pi / N)  # e^{-2 pi i m d0 / N}, exact mod N
        phase = t * (l - 1) / 2 + shift + torch.remainder(f * n0, self.sr) * (2 * math.pi / self.sr)
        return (torch.polar(torch.ones_like(phase), phase) * torch.complex(re, im_) / (l / 2)).conj()

    @torch.no_grad()
    def _kernels(self, M: int, device: torch.device):
        """Per octave group: (block indices, M x n_blocks x 2*n_group real matrix [Re G | Im G]); block q
        holds bins m = q*M .. q*M + M - 1 of the N-point spectrum (q taken modulo hop, i.e. negative
        frequencies wrap), and the blocks cover f_k +- `band` x sr / l_k for every bin of the group."""
        key = (M, str(device))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        N = self.hop_length * M
        groups = []
        for g0 in range(0, self.n_bins, self.bins_per_octave):
            bins = np.arange(g0, min(g0 + self.bins_per_octave, self.n_bins))
            centre = self.frequencies[bins] * N / self.sr
            reach = self.band * N / self.lengths[bins]
            a = int(np.floor((centre - reach).min() / M))
            b = int(np.ceil((centre + reach).max() / M))
            b = min(b, a + self.hop_length)  # at most the whole circle
            m = torch.arange(a * M, b * M, dtype=torch.int64)
            # a few bins at a time: the closed form's fp64 temporaries stay small (~10x the kernels otherwise)
            G = torch.cat([self._spectra(bins[i: i + 8], m, N) for i in range(0, len(bins), 8)])
            G = G.reshape(len(bins), b - a, M).permute(2, 1, 0)  # M x blocks x n_g
            blocks = torch.arange(a, b) % self.hop_length
            groups.append((blocks.to(device), torch.cat([G.real, G.imag], dim=2).float().contiguous().to(device)))
        entry = (N, groups)
        self._cache[key] = entry
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return entry

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.squeeze(1)
        elif x.dim() == 1:
            x = x.unsqueeze(0)
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            frames = x.shape[1] // self.hop_length + 1
            if frames <= self.block_frames:  # one grid fitted to the input
                M = _grid_size(math.ceil((x.shape[1] + self._reach) / self.hop_length))
                return self._transform(x, frames, M)
            return self._blocked(x, frames)

    def _blocked(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """Long input B x L: `block_frames` frames at a time from a segment with `margin` frames of context on
        each side (zeros beyond the input, as a single pass sees), all on one fixed grid: kernels and work
        memory do not grow with L. Returns B x bins x frames."""
        hop, C, R = self.hop_length, self.block_frames, self.margin
        M = _grid_size(C + 2 * R)  # N = hop * M >= the segment: the kept frames' kernels never wrap around
        padded = torch.nn.functional.pad(x, (R * hop, (C + R) * hop))
        out = x.new_empty(x.shape[0], self.n_bins, frames)
        for j0 in range(0, frames, C):
            n = min(C, frames - j0)
            segment = padded[:, j0 * hop: (j0 + C + 2 * R) * hop]  # frame R + k is centred on input frame j0 + k
            out[:, :, j0: j0 + n] = self._transform(segment, R + n, M)[:, :, R:]
        return out

    def _transform(self, x: torch.Tensor, frames: int, M: int) -> torch.Tensor:
        """fp32 B x L -> B x bins x frames: frame j centred on sample hop * j, zeros beyond the input, on the
        grid N = hop * M (N >= L + the kernels' reach: no wrap-around into the frames kept)."""
        B = x.shape[0]
        N, groups = self._kernels(M, x.device)
        X = torch.fft.fft(x, n=N).reshape(B, self.hop_length, M).permute(2, 0, 1)  # M x B x hop blocks
        X = torch.cat([X.real, X.imag], dim=1)  # M x 2B x hop: rows [Re X; Im X]
        real, imag = [], []
        fold = _fold_dtype(x.device)
        X = X.to(fold)
        for blocks, G in groups:
            # M x 2B x 2n_g: [ReX ReG, ReX ImG; ImX ReG, ImX ImG]
            P = torch.bmm(X.index_select(2, blocks), G.to(fold))
            n = G.size(2) // 2
            real.append(P[:, :B, :n] - P[:, B:, n:])
            imag.append(P[:, :B, n:] + P[:, B:, :n])
        F = torch.complex(torch.cat(real, 2).float(), torch.cat(imag, 2).float()).permute(1, 2, 0)  # B x bins x M
        c = torch.fft.ifft(F, dim=-1)[..., :frames]
        return c.abs() * torch.from_numpy(self._scale).to(x.device)[:, None]


def build_cqt(sample_rate: int, hop_length: int, n_bins: int) -> SpectralCQT:
    """The original's CQT settings: fmin 32.7 Hz, n_bins // 7 bins per octave, hop `hop_length`."""
    return SpectralCQT(sample_rate, hop_length, CQT_FMIN, n_bins, n_bins // CQT_OCTAVES)


def exclude_buffers_from_state_dict(module: nn.Module) -> None:
    """Mark every buffer of `module` and its children non-persistent: rebuilt at construction, never saved."""
    for sub in module.modules():
        for name, _ in sub.named_buffers(recurse=False):
            sub._non_persistent_buffers_set.add(name)


@torch.no_grad()
def cqt_frames(cqt: nn.Module, wav: torch.Tensor, offset: int = 0,
               padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """wav: B x L -> B x (floor((L - offset) / hop) + 1) x bins, fp32; frame j centred at offset + hop*j.
    padding_mask (B x L, True = padding): padded samples count as zeros, as beyond the end of a clip alone."""
    with torch.autocast(device_type=wav.device.type, enabled=False):
        wav = wav.float()
        if padding_mask is not None:
            wav = wav.masked_fill(padding_mask, 0.0)
        return cqt(wav[:, offset:]).float().transpose(1, 2)


class CQTTeacher(nn.Module):
    """Linear head D -> bins on masked frames, MSE against the clean-audio CQT.

    Module names (`fc`, `spec_layer`) match the original's `encoder_cqt_model`.
    """

    def __init__(self, input_dim: int, n_bins: int, sample_rate: int, label_rate: float, align_to_cnn: bool,
                 cnn_receptive_field: int = 400) -> None:
        super().__init__()
        hop = int(sample_rate // label_rate)
        self.spec_layer = build_cqt(sample_rate, hop, n_bins)
        self.fc = nn.Linear(input_dim, n_bins)
        # CNN frame j covers samples [hop*j, hop*j + receptive field); centre CQT frames there if asked.
        self.offset = cnn_receptive_field // 2 if align_to_cnn else 0

    def targets(self, wav: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Clean audio B x L -> CQT magnitudes B x num_frames x bins (fp32)."""
        cqt = cqt_frames(self.spec_layer, wav, self.offset)
        if cqt.size(1) < num_frames:
            raise ValueError(f"CQT has {cqt.size(1)} frames, fewer than the {num_frames} model frames")
        return cqt[:, :num_frames]

    def frame_errors(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """x: ... x D encoder outputs, target: ... x bins -> squared error per frame, averaged over bins (fp32)."""
        return (self.fc(x).float() - target).pow(2).mean(-1)
