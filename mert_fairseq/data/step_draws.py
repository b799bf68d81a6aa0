"""The random draws of one training step, made on the host before the step: span masks (with the
`mask_origin` / `mask_replace` choices), channel masks, the in-batch noise mixture's slices, layerdrop
decisions and random-codebook picks, as one typed value, `StepDraws`.

There is one place they are made: `draw_for_batch`. `MERTDataset.collater` calls it in the data-loader workers
(as fairseq's `RawAudioDataset(compute_mask=True)` draws data2vec's masks) and hands the result to the model in
`net_input["draws"]`, so the step itself draws nothing, copies nothing from the host mid-step and sees tensors of
fixed shapes (B x T masks, B x J slices, N layer flags, K codebook weights) whatever the draw. Direct calls that
mask (tests, benchmarks) make theirs with the same function; feature extraction (`mask=False`) needs none.

Seeds: the collater seeds one generator per batch from (task seed, epoch, dataset ids of the batch's clips).
A resumed run sees the same batches, so the same draws (bit-exact resume); every rank trains on other clips, so
every rank draws other masks and mixtures, and other layerdrop decisions (they are per batch, hence per rank:
not shared across ranks; a dropped layer's weights still get a (zero) gradient on every rank, so c10d DDP
needs no `find_unused_parameters`; under FSDP every rank computes every layer).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from fairseq.data.data_utils import compute_mask_indices

ConvLayers = Tuple[Tuple[int, int, int], ...]


@dataclass(frozen=True)
class DrawSpec:
    """What to draw for a model (built from its config by `MERTModel.draw_spec`)."""

    conv_layers: ConvLayers  # (channels, kernel, stride) of the CNN: frames per clip
    feat2tar_ratio: float  # label frames per CNN frame
    mask_prob: float
    mask_length: int
    mask_selection: str = "static"
    mask_other: float = 0.0
    no_mask_overlap: bool = False
    mask_min_space: int = 1
    mask_origin: float = 0.0
    mask_replace: float = 0.0
    mask_replace_type: str = "in_sample"
    mixture_prob: float = 0.0
    noise_length_range: Tuple[int, int] = (8000, 24000)
    noise_count_range: Tuple[int, int] = (1, 3)
    layerdrop: float = 0.0
    n_layers: int = 0
    random_codebook: int = 0
    n_streams: int = 0
    mask_channel_prob: float = 0.0  # channel masks (B x D): fairseq's mask_channel_* fields
    mask_channel_length: int = 10
    mask_channel_selection: str = "static"
    mask_channel_other: float = 0.0
    no_mask_channel_overlap: bool = False
    mask_channel_min_space: int = 1
    embed_dim: int = 0  # D of the encoder's input frames (channel masks)
    online_label_hop: int = 0  # > 0: labels computed by the model (online targets), one per hop samples (+1)


@dataclass(frozen=True)
class StepDraws:
    """One step's random draws (CPU tensors from `draw_for_batch`; `to(device)` before the step). A field left
    None was not drawn: no span mask (mask=False calls), no mixture, no layerdrop, all codebooks."""

    mask: Optional[torch.Tensor] = None  # B x T bool: the masked frames (never padding)
    mask_to_emb: Optional[torch.Tensor] = None  # B x T bool: masked frames that take mask_emb (BERT-style)
    mask_source: Optional[torch.Tensor] = None  # B x T long: flat B*T index of the frame each frame copies
    channel_mask: Optional[torch.Tensor] = None  # B x D bool: input channels zeroed (mask_channel_prob)
    mix_start: Optional[torch.Tensor] = None  # B x J: slice start in the other clips laid end to end
    mix_pos: Optional[torch.Tensor] = None  # B x J: slice position in the clip
    mix_len: Optional[torch.Tensor] = None  # B x J: slice length (0: no slice)
    layer_keep: Optional[torch.Tensor] = None  # N bool: layerdrop keeps layer i
    layer_keep_host: Optional[Tuple[bool, ...]] = None  # the same flags on the host (eager steps skip layers)
    codebook_weight: Optional[torch.Tensor] = None  # K float: 1 for the streams picked (random_codebook)
    masked_frames: int = 0  # host counts for fairseq's sample size (no device sync)
    valid_frames: int = 0

    def to(self, device: torch.device | str) -> "StepDraws":
        """The same draws with every tensor on `device` (non-blocking)."""
        moved = {f.name: getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)
                 if torch.is_tensor(getattr(self, f.name))}
        return replace(self, **moved)


def conv_frames(conv_layers: Sequence[Tuple[int, int, int]], n_samples: int) -> int:
    """CNN frames of a clip of `n_samples` samples (unpadded convolutions)."""
    n = n_samples
    for _, kernel, stride in conv_layers:
        n = (n - kernel) // stride + 1
    return n


def model_frames(spec: DrawSpec, n_samples: int, label_frames: Optional[int]) -> int:
    """T of the model's B x T x D frames: CNN frames, cropped so that every frame has a label (as
    `MERTModel.forward_targets`); online targets have n_samples // hop + 1 label frames."""
    T = conv_frames(spec.conv_layers, n_samples)
    if spec.online_label_hop > 0:
        label_frames = n_samples // spec.online_label_hop + 1
    if label_frames is not None and spec.feat2tar_ratio * T > label_frames:
        T = int(label_frames / spec.feat2tar_ratio)
    return T


def frame_padding(padding_mask: torch.Tensor, T: int) -> torch.Tensor:
    """Sample-level B x L mask -> frame-level B x T: a frame is padding only if all its samples are."""
    extra = padding_mask.size(1) % T
    if extra > 0:
        padding_mask = padding_mask[:, :-extra]
    return padding_mask.view(padding_mask.size(0), T, -1).all(-1)


def draw_noise_mixture(rng: np.random.Generator, B: int, L: int, prob: float, length_range: Sequence[int],
                       count_range: Sequence[int]) -> Dict[str, torch.Tensor]:
    """Slices of the other clips to add to each clip: B x J tensors (J = the most slices a clip gets) of the
    slice's start in the pool of the other B - 1 clips laid end to end, its position in the clip and its length
    (0: no slice). A clip is augmented with probability `prob`, with count_range[0..1] slices (inclusive)."""
    J = int(count_range[1])
    pool = (B - 1) * L
    augmented = rng.random(B) < prob
    count = rng.integers(int(count_range[0]), J + 1, size=B)
    length = np.minimum(rng.integers(int(length_range[0]), int(length_range[1]) + 1, size=(B, J)), min(L, pool))
    start = rng.integers(0, pool - length + 1)
    pos = rng.integers(0, L - length + 1)
    length[~augmented[:, None] | (np.arange(J)[None, :] >= count[:, None])] = 0
    return {"mix_start": torch.from_numpy(start), "mix_pos": torch.from_numpy(pos),
            "mix_len": torch.from_numpy(length)}


def _span_mask(spec: DrawSpec, rng: np.random.Generator, B: int, T: int, pad: Optional[np.ndarray]) -> np.ndarray:
    return compute_mask_indices(
        (B, T), None if pad is None else torch.from_numpy(pad), spec.mask_prob, spec.mask_length,
        spec.mask_selection, spec.mask_other, min_masks=2, no_overlap=spec.no_mask_overlap,
        min_space=spec.mask_min_space, seed=int(rng.integers(2**31 - 1)), epoch=0, indices=np.arange(B))


def _mask_fill_choices(spec: DrawSpec, rng: np.random.Generator, mask: np.ndarray,
                       valid: np.ndarray) -> Dict[str, torch.Tensor]:
    """BERT-style choices for the masked frames: `mask_to_emb` (B x T) takes `mask_emb`; every frame then takes
    the features of frame `mask_source` (B x T flat indices into B*T: itself, or for a fraction `mask_replace`
    of the masked frames a random non-padding frame of the same clip or of the batch)."""
    B, T = mask.shape
    u = rng.random((B, T))
    keep_or_replace = spec.mask_origin + spec.mask_replace
    replace = mask & (u >= spec.mask_origin) & (u < keep_or_replace)
    source = np.arange(B * T, dtype=np.int64).reshape(B, T)
    if spec.mask_replace_type == "in_sample":
        for b in np.flatnonzero(replace.any(1)):
            frames = np.flatnonzero(valid[b])
            source[b, replace[b]] = b * T + frames[rng.integers(len(frames), size=int(replace[b].sum()))]
    else:
        frames = np.flatnonzero(valid)
        source[replace] = frames[rng.integers(len(frames), size=int(replace.sum()))]
    return {"mask_to_emb": torch.from_numpy(mask & (u >= keep_or_replace)), "mask_source": torch.from_numpy(source)}


def _channel_mask(spec: DrawSpec, rng: np.random.Generator, B: int) -> torch.Tensor:
    ch = compute_mask_indices(
        (B, spec.embed_dim), None, spec.mask_channel_prob, spec.mask_channel_length, spec.mask_channel_selection,
        spec.mask_channel_other, no_overlap=spec.no_mask_channel_overlap, min_space=spec.mask_channel_min_space,
        seed=int(rng.integers(2**31 - 1)), epoch=1, indices=np.arange(B))
    return torch.from_numpy(ch)


def draw_step(spec: DrawSpec, rng: np.random.Generator, B: int, L: int, T: int,
              frame_pad: Optional[np.ndarray] = None) -> StepDraws:
    """The draws of a batch of B clips of L samples and T model frames; `frame_pad`: B x T bool (True =
    padding) or None."""
    draws: Dict[str, object] = {}
    valid = np.ones((B, T), bool) if frame_pad is None else ~frame_pad
    # all False with mask_prob 0: mask_emb still gets a (zero) gradient, as c10d DDP needs
    mask = _span_mask(spec, rng, B, T, frame_pad) & valid if spec.mask_prob > 0 else np.zeros((B, T), bool)
    draws["mask"] = torch.from_numpy(mask)
    if spec.mask_prob > 0 and spec.mask_origin + spec.mask_replace > 0:
        draws.update(_mask_fill_choices(spec, rng, mask, valid))
    if spec.mixture_prob > 0 and B >= 2:
        draws.update(draw_noise_mixture(rng, B, L, spec.mixture_prob, spec.noise_length_range,
                                        spec.noise_count_range))
    if spec.layerdrop > 0:
        keep = rng.random(spec.n_layers) >= spec.layerdrop
        draws["layer_keep"] = torch.from_numpy(keep)
        draws["layer_keep_host"] = tuple(bool(k) for k in keep)
    if spec.random_codebook > 0:
        weight = np.zeros(spec.n_streams, np.float32)
        weight[rng.choice(spec.n_streams, spec.random_codebook, replace=False)] = 1.0
        draws["codebook_weight"] = torch.from_numpy(weight)
    if spec.mask_channel_prob > 0:
        draws["channel_mask"] = _channel_mask(spec, rng, B)
    return StepDraws(**draws, masked_frames=int(mask.sum()), valid_frames=int(valid.sum()))


def draw_for_batch(spec: DrawSpec, rng: np.random.Generator, source: torch.Tensor,
                   padding_mask: Optional[torch.Tensor] = None, label_frames: Optional[int] = None) -> StepDraws:
    """The draws for a batch: source B x L, padding_mask B x L (True = padding) or None, label_frames the
    shortest label stream's length (None: no label files). CPU tensors; the one function every caller uses."""
    B, L = source.shape
    T = model_frames(spec, L, label_frames)
    pad = frame_padding(padding_mask.cpu(), T).numpy() if padding_mask is not None else None
    return draw_step(spec, rng, B, L, T, pad)
