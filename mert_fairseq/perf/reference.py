"""The original MERT's formulation of a training step, as the benchmark's and the tests' reference.

`reference_formulation(model)` gives a built `MERTModel` the straightforward formulation of the same step:
cosine logits materialised as (1 + C) x S x F tensors (`direct_cosine_logits`), nnAudio's CQT1992v2 (65536-tap
conv) every step in the training dtype, and fairseq's own `MultiheadAttention`. Weights are shared.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import nn

from mert_fairseq.models.teachers.cqt import CQT_FMIN, CQT_OCTAVES, exclude_buffers_from_state_dict


def build_nnaudio_cqt(sample_rate: int, hop_length: int, n_bins: int) -> nn.Module:
    """nnAudio's CQT1992v2 with the same settings (the original's implementation): the reference for
    tests and the benchmark. Its kernels (2 x n_bins x 65536) are non-persistent buffers."""
    from nnAudio.features.cqt import CQT1992v2

    cqt = CQT1992v2(
        sr=sample_rate, hop_length=hop_length, fmin=CQT_FMIN, n_bins=n_bins,
        bins_per_octave=n_bins // CQT_OCTAVES, filter_scale=1, norm=1, window="hann", center=True,
        pad_mode="constant", trainable=False, output_format="Magnitude", verbose=False,
    )
    exclude_buffers_from_state_dict(cqt)
    return cqt



class _FairseqAttention(nn.Module):
    """fairseq's `MultiheadAttention` behind our `SelfAttention` call signature, sharing its Linear modules
    (q_proj, k_proj, v_proj, out_proj), so both formulations train the same parameters."""

    def __init__(self, ours: nn.Module) -> None:
        super().__init__()
        from fairseq.modules import MultiheadAttention

        dim = ours.q_proj.in_features
        self.mha = MultiheadAttention(dim, ours.num_heads, dropout=ours.dropout, self_attention=True)
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self.mha, name, getattr(ours, name))

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        x = x.transpose(0, 1)  # T x B x D, fairseq's layout
        out, _ = self.mha(query=x, key=x, value=x, key_padding_mask=key_padding_mask, need_weights=False)
        return out.transpose(0, 1)


class CQTInDtype(nn.Module):
    """nnAudio CQT1992v2 evaluated in the training dtype (the original ran it in fp16 under fp16 training)."""

    def __init__(self, cqt: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.cqt, self.dtype = cqt.to(dtype), dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cqt(x.to(self.dtype)).float()


@contextlib.contextmanager
def reference_formulation(model: nn.Module, dtype: Optional[torch.dtype] = None, cache: Optional[dict] = None):
    """Temporarily give a built MERTModel instance the original's formulation of a training step:
    materialised cosine logits, nnAudio CQT1992v2 in `dtype` (None = fp32), fairseq MultiheadAttention.
    Weights are shared, nothing is copied back; `cache` (a dict) keeps the nnAudio kernels between uses."""
    import mert_fairseq.models.mert_model as mert_model_module
    from mert_fairseq.models.masked_prediction import direct_cosine_logits

    cache = {} if cache is None else cache
    device = next(model.parameters()).device
    cqt_dtype = dtype or torch.float32
    swaps = []  # (owner, attribute, original)

    def swap(owner, attr, value):
        swaps.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, value)

    def nnaudio_like(spec) -> nn.Module:
        key = (spec.sr, spec.hop_length, spec.n_bins, cqt_dtype)
        if key not in cache:
            cache[key] = CQTInDtype(build_nnaudio_cqt(spec.sr, spec.hop_length, spec.n_bins).to(device), cqt_dtype)
        return cache[key]

    try:
        swap(mert_model_module, "cosine_logits", direct_cosine_logits)
        if getattr(model, "encoder_cqt_model", None) is not None:
            swap(model.encoder_cqt_model, "spec_layer", nnaudio_like(model.encoder_cqt_model.spec_layer))
        if getattr(model, "feature_extractor_cqt", None) is not None:
            swap(model, "feature_extractor_cqt", nnaudio_like(model.feature_extractor_cqt))
        for layer in model.encoder.layers:
            key = ("attn", id(layer.self_attn))
            if key not in cache:
                cache[key] = _FairseqAttention(layer.self_attn)
            cache[key].train(model.training)
            swap(layer, "self_attn", cache[key])
        yield model
    finally:
        for owner, attr, value in reversed(swaps):
            setattr(owner, attr, value)
