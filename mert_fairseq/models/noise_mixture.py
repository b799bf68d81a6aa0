"""In-batch noise mixture: each training clip, with probability `prob`, gets 1-3 random slices of
the OTHER clips of the batch added at random positions (no energy normalisation). Labels and CQT
targets stay those of the clean clip; the model applies this in training only.

The slices are drawn on the host (`data/step_draws.draw_noise_mixture`: B x J starts, positions,
lengths); `apply_noise_mixture` adds them in one batched gather and sum over fixed-shape B x J x L
tensors, with no Python loop over the batch and no copy of the other clips."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from mert_fairseq.data.step_draws import draw_noise_mixture


@torch.no_grad()
def apply_noise_mixture(source: torch.Tensor, start: torch.Tensor, pos: torch.Tensor, length: torch.Tensor,
                        volume: float = 1.0) -> torch.Tensor:
    """source: B x L; start, pos, length: B x J slices (start in the other clips laid end to end, position in
    the clip, length; 0 = none) -> a new B x L tensor with the slices added."""
    B, L = source.shape
    t = torch.arange(L, device=source.device) - pos.unsqueeze(-1)  # B x J x L: offset inside the slice
    inside = (t >= 0) & (t < length.unsqueeze(-1))
    src = (start.unsqueeze(-1) + t).clamp(0, (B - 1) * L - 1)  # position in the pool of the other clips
    own_row = torch.arange(B, device=source.device).view(B, 1, 1) * L
    src = src + L * (src >= own_row)  # skip the clip's own samples
    noise = (torch.take(source, src) * inside).sum(1)  # B x L
    return source + volume * noise


def mix_in_batch_noise(source: torch.Tensor, prob: float, length_range: Sequence[int], count_range: Sequence[int],
                       volume: float = 1.0, rng: np.random.Generator | None = None) -> torch.Tensor:
    """Draw (from `rng`) and apply a mixture: source B x L -> a new B x L tensor."""
    B, L = source.shape
    if B < 2 or prob <= 0:
        return source
    d = draw_noise_mixture(rng if rng is not None else np.random.default_rng(), B, L, prob, length_range, count_range)
    return apply_noise_mixture(source, *(d[k].to(source.device) for k in ("mix_start", "mix_pos", "mix_len")),
                               volume=volume)
