"""Masked-prediction logits: cosine similarity between projected frames and every label embedding.

The original builds a [C+1, S, F] tensor of (target, all classes) embeddings per codebook and takes
`cosine_similarity` along F, on the S masked frames (kept as the benchmark's reference, `perf/reference.py`).
The same numbers come from one normalised matmul: `batched_cosine_logits` computes every codebook's logits
over all frames in one batched matmul (the `mert` criterion's form: plain class logits, one cross-entropy over
K x N rows, weighted by the mask).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def batched_cosine_logits(proj: torch.Tensor, label_embs: torch.Tensor, scale: torch.Tensor | float,
                          class_valid: torch.Tensor | None = None) -> torch.Tensor:
    """proj: K x N x F, label_embs: K x C x F (codebooks padded to the largest C) -> K x N x C fp32 logits,
    `scale` (K, or a number) times the cosines; classes where `class_valid` (K x C) is False are -inf."""
    proj = F.normalize(proj.float(), dim=-1, eps=1e-8)
    proj = proj * (scale.view(-1, 1, 1) if torch.is_tensor(scale) else scale)  # scaled here: K x N x F, not K x N x C
    embs = F.normalize(label_embs.float(), dim=-1, eps=1e-8)
    logits = torch.bmm(proj, embs.transpose(1, 2))  # K x N x C
    if class_valid is not None:
        logits = logits.masked_fill(~class_valid.unsqueeze(1), float("-inf"))
    return logits
