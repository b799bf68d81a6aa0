"""Tiny MERT checkpoints (fairseq layout) for the HF export and feature extraction tests."""
from __future__ import annotations

from pathlib import Path
from typing import List

import torch
from fairseq.data.dictionary import Dictionary
from omegaconf import OmegaConf

from mert_fairseq.models.mert_config import MERTConfig
from mert_fairseq.models.mert_model import MERTModel

TINY = dict(
    label_rate=75, encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
    conv_feature_layers="[(48,10,5)] + [(48,3,2)] * 4 + [(48,2,2)] * 2", conv_pos=8, conv_pos_groups=4,
    final_dim=16, mask_prob=0.8, mask_length=5, skip_nomask=True, audio_cqt_loss_m=True, audio_cqt_bins=84,
    untie_final_proj=True, dropout=0.1, attention_dropout=0.1, dropout_input=0.1, encoder_layerdrop=0.05,
)
LAYOUTS = {
    # 95M-style: post-LN, group-norm CNN
    "95m": dict(extractor_mode="default", layer_norm_first=False, feature_grad_mult=0.1, mixture_prob=0.5),
    # 330M-style: pre-LN, layer-norm CNN
    "330m": dict(extractor_mode="layer_norm", layer_norm_first=True, attention_relax=32.0, mixture_prob=0.5),
}


def code_dictionary(n_codes: int) -> Dictionary:
    d = Dictionary()
    for c in range(n_codes):
        d.add_symbol(str(c))
    return d


def build_model(layout: str = "95m", n_streams: int = 2, n_codes: int = 8, seed: int = 0, **overrides) -> MERTModel:
    """A randomly initialised tiny `mert` model; LayerNorm/bias parameters are randomised too so that a
    wrong name mapping cannot go unnoticed."""
    torch.manual_seed(seed)
    cfg = OmegaConf.merge(OmegaConf.structured(MERTConfig), TINY, LAYOUTS[layout], overrides)
    task_cfg = OmegaConf.create({"sample_rate": 24000, "label_rate": 75})
    model = MERTModel(cfg, task_cfg, [code_dictionary(n_codes) for _ in range(n_streams)])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def checkpoint_dict(model: MERTModel, labels: List[str], normalize: bool = False, half: bool = False,
                    user_dir: str = "/nonexistent/MERT/mert_fairseq") -> dict:
    """A fairseq hydra checkpoint dict {"cfg", "model", ...} for `model`."""
    model_cfg = OmegaConf.to_container(model.cfg, resolve=True, enum_to_str=True)
    model_cfg["_name"] = "mert"
    state = {k: (v.half() if half and v.is_floating_point() else v.clone()) for k, v in model.state_dict().items()}
    return {
        "cfg": {
            "_name": None,
            "common": {"_name": None, "fp16": half, "user_dir": user_dir, "seed": 1},
            "model": model_cfg,
            "task": {"_name": "mert_pretraining", "data": "/nonexistent/data", "label_dir": "/nonexistent/labels",
                     "labels": list(labels), "label_rate": 75.0, "sample_rate": 24000, "normalize": normalize,
                     "max_sample_size": 120000, "min_sample_size": 72000, "pad_audio": False, "random_crop": True},
            "criterion": {"_name": "hubert", "pred_masked_weight": 1.0, "pred_nomask_weight": 0.0,
                          "loss_weights": [10, 1]},
        },
        "model": state,
        "criterion": None,
        "optimizer_history": [{"criterion_name": "HubertCriterion", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": None}, "num_updates": 1000}],
        "extra_state": {"epoch": 3, "train_iterator": {"epoch": 3, "iterations_in_epoch": 0, "shuffle": True},
                        "metrics": {}, "previous_training_time": 0.0},
        "last_optimizer_state": None,
    }


def save_checkpoint(model: MERTModel, path: Path, labels=("encodec_0", "encodec_1"), **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint_dict(model, list(labels), **kwargs), path)
    return path
