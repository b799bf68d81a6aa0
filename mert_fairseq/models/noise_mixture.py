"""In-batch noise mixture: each training clip, with probability `prob`, gets 1-3 random slices of
the OTHER clips of the batch added at random positions (no energy normalisation). Labels and CQT
targets stay those of the clean clip; the model applies this in training only."""
from __future__ import annotations

from typing import Sequence

import torch


@torch.no_grad()
def mix_in_batch_noise(
    source: torch.Tensor,
    prob: float,
    length_range: Sequence[int],
    count_range: Sequence[int],
    volume: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """source: B x L -> a new B x L tensor with noise mixed into about `prob` of the clips."""
    B, L = source.shape
    if B < 2 or prob <= 0:
        return source
    mixed = source.clone()

    def randint(low: int, high: int) -> int:  # inclusive bounds
        return int(torch.randint(low, high + 1, (1,), generator=generator))

    for i in range(B):
        if torch.rand(1, generator=generator).item() >= prob:
            continue
        pool = torch.cat([source[:i], source[i + 1 :]]).flatten()  # the other clips, end to end
        for _ in range(randint(*count_range)):
            dur = min(randint(*length_range), L, pool.numel())
            start = randint(0, pool.numel() - dur)
            pos = randint(0, L - dur)
            mixed[i, pos : pos + dur] += volume * pool[start : start + dur]
    return mixed
