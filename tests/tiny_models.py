"""Tiny MERT configurations for fast CPU tests (one per config family)."""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch
from fairseq.data.dictionary import Dictionary
from omegaconf import OmegaConf

from mert_fairseq.models.mert_config import MERTConfig
from mert_fairseq.data.step_draws import draw_for_batch
from mert_fairseq.models.mert_model import MERTModel

TINY = dict(
    label_rate=75, encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
    conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2", conv_pos=8, conv_pos_groups=4,
    final_dim=16, mask_prob=0.8, mask_length=5, skip_nomask=True, audio_cqt_loss_m=True, audio_cqt_bins=84,
    dropout=0.0, attention_dropout=0.0, dropout_input=0.0, encoder_layerdrop=0.0,
)
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


def code_dictionary(n_codes: int) -> Dictionary:
    d = Dictionary()
    for c in range(n_codes):
        d.add_symbol(str(c))
    return d


def tiny_model(family: str = "rvq_95m", n_codes: int = 16, **overrides) -> MERTModel:
    cfg = OmegaConf.merge(OmegaConf.structured(MERTConfig), TINY, FAMILIES[family], overrides)
    task_cfg = OmegaConf.create({"sample_rate": 24000, "label_rate": 75})
    dicts: List[Dictionary] = [code_dictionary(n_codes) for _ in range(STREAMS[family])]
    return MERTModel(cfg, task_cfg, dicts)


def tiny_sample(model: MERTModel, source: torch.Tensor, targets: List[torch.Tensor], seed: int = 0,
                padding_mask: Optional[torch.Tensor] = None) -> dict:
    """A batch as MERTDataset's collater makes it: `net_input` with the step's draws (`draw_for_batch`, seeded)."""
    label_frames = min(t.size(1) for t in targets) if targets else None
    draws = draw_for_batch(model.draw_spec(), np.random.default_rng(seed), source, padding_mask, label_frames)
    return {"net_input": {"source": source, "padding_mask": padding_mask, "draws": draws}, "target_list": targets,
            "id": torch.arange(len(source))}
