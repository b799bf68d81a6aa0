"""Tiny MERT models for fast CPU tests, built in one place: `tiny_model` (a MERTModel of one config family),
`tiny_overrides` (the same widths as hydra overrides, for a recipe YAML composed as fairseq-hydra-train
does), and a batch and criterion for a step of one (`tiny_sample`, `music_sample`, `tiny_criterion`)."""
from __future__ import annotations

import math
from typing import List, Mapping, Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from mert_fairseq.criterions.mert_criterion import MertCriterion
from mert_fairseq.data.step_draws import draw_for_batch
from mert_fairseq.models.mert_config import MERTConfig
from mert_fairseq.models.mert_model import MERTModel
from mert_fairseq.models.teachers.random_projection import code_dictionary
from mert_fairseq.perf.synthetic_corpus import music_like

SR = 24000
TINY = dict(
    label_rate=75, encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
    conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2", conv_pos=8, conv_pos_groups=4,
    final_dim=16, mask_prob=0.8, mask_length=5, skip_nomask=True, audio_cqt_loss_m=True, audio_cqt_bins=84,
    dropout=0.0, attention_dropout=0.0, dropout_input=0.0, encoder_layerdrop=0.0,
)
# the fields of TINY that size the model (what a recipe YAML is shrunk by)
WIDTHS = ("encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_attention_heads",
          "conv_feature_layers", "conv_pos", "conv_pos_groups", "final_dim", "audio_cqt_bins")
FAMILIES = {
    # 95M-style: post-LN, group-norm CNN, 8 untied EnCodec codebooks, noise mixture
    "rvq_95m": dict(untie_final_proj=True, mixture_prob=0.5, inbatch_noise_augment_len_range="[2400, 4800]",
                    feature_grad_mult=0.1),
    # 330M-style: pre-LN, layer-norm CNN
    "rvq_330m": dict(untie_final_proj=True, layer_norm_first=True, extractor_mode="layer_norm", attention_relax=32.0),
    # K-means: one stream, tied projection
    "kmeans": dict(untie_final_proj=False),
}
STREAMS = {"rvq_95m": 8, "rvq_330m": 8, "kmeans": 1}


def tiny_model(family: str = "rvq_95m", n_codes: int = 16, n_streams: Optional[int] = None,
               task: Optional[Mapping] = None, **overrides) -> MERTModel:
    """A randomly initialised tiny `mert` model of `family` (FAMILIES), `n_streams` label streams (default: the
    family's) of `n_codes` codes each, with MERTConfig `overrides` (and task config fields `task`)."""
    cfg = OmegaConf.merge(OmegaConf.structured(MERTConfig), TINY, FAMILIES[family], overrides)
    task_cfg = OmegaConf.create({"sample_rate": SR, "label_rate": 75, **(task or {})})
    streams = STREAMS[family] if n_streams is None else n_streams
    return MERTModel(cfg, task_cfg, [code_dictionary(n_codes) for _ in range(streams)])


def tiny_overrides(**changes) -> List[str]:
    """TINY's widths, with `changes`, as hydra overrides of a recipe: ["++model.encoder_layers=2", ...]."""
    widths = {**{k: TINY[k] for k in WIDTHS}, **changes}
    return [f"++model.{k}='{v}'" if isinstance(v, str) else f"++model.{k}={v}" for k, v in widths.items()]


def tiny_sample(model: MERTModel, source: torch.Tensor, targets: List[torch.Tensor], seed: int = 0,
                padding_mask: Optional[torch.Tensor] = None) -> dict:
    """A batch as MERTDataset's collater makes it: `net_input` with the step's draws (`draw_for_batch`, seeded)."""
    label_frames = min(t.size(1) for t in targets) if targets else None
    draws = draw_for_batch(model.draw_spec(), np.random.default_rng(seed), source, padding_mask, label_frames)
    return {"net_input": {"source": source, "padding_mask": padding_mask, "draws": draws}, "target_list": targets,
            "id": torch.arange(len(source))}


def music_sample(model: MERTModel, B: int = 2, L: int = SR, seed: int = 0) -> dict:
    """`tiny_sample` of B music-like clips of L samples with random targets for every stream of `model`."""
    rng = np.random.default_rng(seed)
    source = torch.from_numpy(np.stack([music_like(L, SR, rng) for _ in range(B)]))
    targets = [torch.randint(4, n, (B, math.ceil(L / 320)), generator=torch.Generator().manual_seed(k))
               for k, n in enumerate(model.num_classes)]
    return tiny_sample(model, source, targets, seed=seed)  # with the step's draws, as the collater makes them


WEIGHTS = dict(pred_masked_weight=1.0, pred_nomask_weight=0.0, loss_weights=[10.0, 1.0])  # the recipes'


def tiny_criterion() -> MertCriterion:
    """The mert criterion with the recipes' weights (masked frames only, CQT loss weight 10)."""
    return MertCriterion(None, **WEIGHTS)
