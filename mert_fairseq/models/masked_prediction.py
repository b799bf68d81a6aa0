"""Masked-prediction logits: cosine similarity between projected frames and every label embedding.

The original builds a [C+1, S, F] tensor of (target, all classes) embeddings per codebook and takes
`cosine_similarity` along F. The same numbers come from one normalised matmul [S, F] x [F, C]. The
output keeps the original layout, so fairseq's stock `hubert` criterion works unchanged:
column 0 is the target class, columns 1..C are all classes with the target's own column at -inf.
`batched_cosine_logits` computes every codebook's logits over all frames in one batched matmul (the
`mert` criterion's form: plain class logits, one cross-entropy over K x N rows).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_logits(proj: torch.Tensor, label_embs: torch.Tensor, targets: torch.Tensor,
                  scale: torch.Tensor | float) -> torch.Tensor:
    """proj: S x F, label_embs: C x F, targets: S (class indices) -> logits S x (1 + C), fp32.

    `scale` multiplies the cosines (1 / logit_temp, or the learned logit scale).
    """
    proj = F.normalize(proj.float(), dim=-1, eps=1e-8)
    embs = F.normalize(label_embs.float(), dim=-1, eps=1e-8)
    cos = (proj @ embs.t()) * scale  # S x C; scaled before the -inf goes in (else a learned scale's grad is NaN)
    index = targets.long().unsqueeze(1)  # S x 1
    pos = cos.gather(1, index)
    negs = cos.scatter(1, index, float("-inf"))
    return torch.cat([pos, negs], dim=1)


def direct_cosine_logits(proj: torch.Tensor, label_embs: torch.Tensor, targets: torch.Tensor,
                         scale: torch.Tensor | float) -> torch.Tensor:
    """The original's formulation (reference path for tests and the benchmark): materialises
    (1 + C) x S x F and masks negatives equal to the positive."""
    pos = label_embs.index_select(0, targets.long())  # S x F
    negs = label_embs.unsqueeze(1).expand(-1, proj.size(0), -1)  # C x S x F
    neg_is_pos = (pos == negs).all(-1)  # C x S
    cand = torch.cat([pos.unsqueeze(0), negs], dim=0)  # (1+C) x S x F
    logits = torch.cosine_similarity(proj.float(), cand.float(), dim=-1) * scale
    logits[1:][neg_is_pos] = float("-inf")
    return logits.transpose(0, 1)


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
