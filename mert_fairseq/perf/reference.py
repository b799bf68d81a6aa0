"""The original MERT's formulation of a training step, as the benchmark's and the tests' reference.

The loss: fairseq's stock `hubert` criterion (`ReferenceCriterion`) on the original's logits
(`reference_logits`): per label stream the S masked frames gathered by boolean indexing and their cosine
logits materialised as (1 + C) x S x F tensors (`direct_cosine_logits`), column 0 the target.
`reference_formulation(model)` gives a built `MERTModel` the rest of the original's step: nnAudio's CQT1992v2
(65536-tap conv) every step in the training dtype, and fairseq's own `MultiheadAttention`. Weights are shared.
"""
from __future__ import annotations

import contextlib
from typing import List, Optional

import torch
from fairseq.criterions.hubert_criterion import HubertCriterion
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


# ------------------------------------------------------------------------------------------ the loss
def direct_cosine_logits(proj: torch.Tensor, label_embs: torch.Tensor, targets: torch.Tensor,
                         scale: torch.Tensor | float) -> torch.Tensor:
    """The original's logits: proj S x F, label_embs C x F, targets S -> S x (1 + C), column 0 the target's
    cosine and columns 1..C every class's, the target's own at -inf; materialises (1 + C) x S x F."""
    pos = label_embs.index_select(0, targets.long())  # S x F
    negs = label_embs.unsqueeze(1).expand(-1, proj.size(0), -1)  # C x S x F
    neg_is_pos = (pos == negs).all(-1)  # C x S
    cand = torch.cat([pos.unsqueeze(0), negs], dim=0)  # (1+C) x S x F
    logits = torch.cosine_similarity(proj.float(), cand.float(), dim=-1) * scale
    logits[1:][neg_is_pos] = float("-inf")
    return logits.transpose(0, 1)


def reference_logits(model: nn.Module, net_output: dict, is_masked: bool = True) -> List[torch.Tensor]:
    """The original's `get_logits` for a MERTModel's net_output (proj K x B x T x F, targets K x B x T,
    masked / unmasked B x T): per label stream (those picked, with random_codebook) the S x (1 + C_k) fp32
    logits of the masked (or unmasked) frames, scaled by the model's `_logit_scales()`."""
    if (model.opts.skip_masked if is_masked else model.opts.skip_nomask) or net_output["proj"] is None:
        return []
    where = net_output["masked" if is_masked else "unmasked"]  # B x T bool
    weight = net_output.get("codebook_weight")
    streams = range(len(model.num_classes)) if weight is None else [k for k, w in enumerate(weight.tolist()) if w > 0]
    scales, embs = model._logit_scales(), model._label_embeddings()
    return [direct_cosine_logits(net_output["proj"][k][where], embs[k], net_output["targets"][k][where],
                                 scales[k] if torch.is_tensor(scales) else scales).float() for k in streams]


class _OriginalHeads:
    """A MERTModel as fairseq's hubert criterion sees the original: `get_logits` / `get_targets` in the
    S x (1 + C) layout (the target in column 0), `get_extra_losses` the model's."""

    def __init__(self, model: nn.Module) -> None:
        self.wrapped, self.model = model, getattr(model, "module", model)  # called as given (DDP), read unwrapped

    def __call__(self, **kwargs) -> dict:
        return self.wrapped(**kwargs)

    def get_logits(self, net_output: dict, is_masked: bool = True) -> List[torch.Tensor]:
        key = "_reference_logits_m" if is_masked else "_reference_logits_u"  # once per output, as the original
        if key not in net_output:
            net_output[key] = reference_logits(self.model, net_output, is_masked)
        return net_output[key]

    def get_targets(self, net_output: dict, is_masked: bool = True) -> List[torch.Tensor]:
        return [x.new_zeros(x.size(0), dtype=torch.long) for x in self.get_logits(net_output, is_masked)]

    def get_extra_losses(self, net_output: dict):
        return self.model.get_extra_losses(net_output)


class ReferenceCriterion(HubertCriterion):
    """fairseq's `hubert` criterion (loss, logs, metrics) on the original's logits (`reference_logits`)."""

    def forward(self, model, sample, reduce: bool = True):
        return super().forward(_OriginalHeads(model), sample, reduce)


# ------------------------------------------------------------------------------------------ the step
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
    """Temporarily give a built MERTModel instance the original's CQT and attention: nnAudio CQT1992v2 in
    `dtype` (None = fp32), fairseq MultiheadAttention (the loss: `ReferenceCriterion`). Weights are shared,
    nothing is copied back; `cache` (a dict) keeps the nnAudio kernels between uses."""
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
