"""The waveform CNN on a right-padded batch, as if each clip ran alone.

The group-norm CNN (fairseq `extractor_mode=default`, HF `feat_extract_norm="group"`) normalises every
channel of its first block over time. Over a padded batch, those statistics would include the padding and
change every frame of the shorter clips; here they are taken over each clip's real frames only:

    lengths_0 = real samples per clip                                    B
    block i:  x = conv_i(x)                                              B x C x T_i
              lengths_i = (lengths_{i-1} - kernel_i) // stride_i + 1     real frames of block i
              x = GroupNorm over t < lengths_i only (block 0, group mode)
              x = GELU(x)

A real frame of block i only reads real frames of block i - 1 (a frame is real when its whole receptive
field is), so the real frames equal those of the clip alone; the padded frames hold values nobody reads.
The per-frame LayerNorm CNN (`layer_norm` mode) needs no mask. `wav_normalize` takes its statistics over
the real samples too.

The Hugging Face export ships this very file next to its `modeling_mert.py` (as `cqt.py`): keep it
self-contained (torch only).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def conv_output_length(length, kernels: Sequence[int], strides: Sequence[int]):
    """Frames a stack of unpadded 1-D convolutions produces from `length` samples (int or LongTensor)."""
    for kernel, stride in zip(kernels, strides):
        length = (length - kernel) // stride + 1
    return length


def receptive_field(kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Samples one output frame of the stack reads."""
    field, jump = 1, 1
    for kernel, stride in zip(kernels, strides):
        field += (kernel - 1) * jump
        jump *= stride
    return field


def real_lengths(padding_mask: torch.Tensor) -> torch.Tensor:
    """B x L right-padding mask (True = padding) -> real samples per clip (B, long). Raises if a clip's
    padding is not a suffix (left or interleaved padding cannot be handled frame-exactly)."""
    lengths = (~padding_mask).sum(-1)
    positions = torch.arange(padding_mask.size(-1), device=padding_mask.device)
    if not torch.equal(positions[None, :] >= lengths[:, None], padding_mask.bool()):
        raise ValueError("padding mask: padding must be at the end of each clip (right padding), "
                         "1/True = real sample in an attention mask, True = padding in a padding mask")
    return lengths


def frame_padding_mask(padding_mask: torch.Tensor, conv_layers: Sequence[Tuple[int, int, int]],
                       num_frames: int) -> torch.Tensor:
    """B x L sample padding mask (True = padding), CNN blocks (dim, kernel, stride) -> B x num_frames bool,
    True where the frame reads any padding (so each clip keeps exactly the frames it has alone)."""
    frames = conv_output_length(real_lengths(padding_mask), [k for _, k, _ in conv_layers],
                                [s for _, _, s in conv_layers])
    return torch.arange(num_frames, device=padding_mask.device)[None, :] >= frames[:, None]


def masked_group_norm(x: torch.Tensor, norm: nn.GroupNorm, lengths: torch.Tensor) -> torch.Tensor:
    """GroupNorm of B x C x T with each clip's statistics over its first lengths[b] frames (computed in fp32,
    as fairseq's Fp32GroupNorm), returned in x's dtype."""
    B, C, T = x.shape
    G = norm.num_groups
    valid = (torch.arange(T, device=x.device)[None, :] < lengths[:, None]).float()  # B x T
    count = valid.sum(-1).clamp(min=1.0)[:, None, None] * (C // G)  # B x 1 x 1
    y = x.float().view(B, G, C // G, T)
    w = valid[:, None, None, :]
    mean = (y * w).sum((2, 3), keepdim=True) / count[..., None]
    var = ((y - mean).pow(2) * w).sum((2, 3), keepdim=True) / count[..., None]
    y = ((y - mean) * torch.rsqrt(var + norm.eps)).view(B, C, T)
    if norm.affine:
        y = y * norm.weight.float()[None, :, None] + norm.bias.float()[None, :, None]
    return y.to(x.dtype)


def normalize_waveform(source: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`wav_normalize`: zero mean, unit variance per clip (LayerNorm over time, eps 1e-5), over the real
    samples of a padded batch (padding set to 0)."""
    if lengths is None:
        return F.layer_norm(source, source.shape[-1:])
    valid = (torch.arange(source.size(-1), device=source.device)[None, :] < lengths[:, None]).to(source.dtype)
    count = lengths.clamp(min=1)[:, None].to(source.dtype)
    mean = (source * valid).sum(-1, keepdim=True) / count
    var = ((source - mean).pow(2) * valid).sum(-1, keepdim=True) / count
    return (source - mean) * torch.rsqrt(var + 1e-5) * valid


def run_conv_blocks(blocks: Sequence[nn.Module], x: torch.Tensor,
                    lengths: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """x: B x 1 x L through CNN blocks (each an iterable of modules: Conv1d, dropout, norm, activation, as
    fairseq's ConvFeatureExtractionModel and the HF export build them); GroupNorms use each clip's real frames
    when `lengths` (real samples, B) is given. Returns (B x C x T, real frames per clip or None)."""
    for block in blocks:
        for module in block:
            if lengths is not None and isinstance(module, nn.GroupNorm):
                x = masked_group_norm(x, module, lengths)
            else:
                x = module(x)
            if lengths is not None and isinstance(module, nn.Conv1d):
                lengths = conv_output_length(lengths, module.kernel_size, module.stride)
    return x, lengths


def cnn_features(extractor: nn.Module, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
                 wav_normalize: bool = False) -> torch.Tensor:
    """[wav_normalize, then] fairseq ConvFeatureExtractionModel on B x L (padding_mask B x L, True = padding)
    -> B x C x T; every clip's real frames as if it ran alone."""
    if padding_mask is None or not bool(padding_mask.any()):
        return extractor(normalize_waveform(source) if wav_normalize else source)
    lengths = real_lengths(padding_mask)
    if wav_normalize:
        source = normalize_waveform(source, lengths)
    features, _ = run_conv_blocks(extractor.conv_layers, source[:, None], lengths)
    return features
