"""Tiny MERT checkpoints (fairseq layout) for the HF export and feature extraction tests."""
from __future__ import annotations

from pathlib import Path
from typing import List

import torch
from omegaconf import OmegaConf

from mert_fairseq.models.mert_model import MERTModel
from tiny_models import tiny_model

# tiny_models' widths with 48 CNN channels, dropout and layerdrop on (so that eval mode is what turns them off)
EXPORT_TINY = dict(conv_feature_layers="[(48,10,5)] + [(48,3,2)] * 4 + [(48,2,2)] * 2", dropout=0.1,
                   attention_dropout=0.1, dropout_input=0.1, encoder_layerdrop=0.05)
LAYOUTS = {"95m": "rvq_95m", "330m": "rvq_330m"}  # post-LN + group-norm CNN; pre-LN + layer-norm CNN


def build_model(layout: str = "95m", n_streams: int = 2, n_codes: int = 8, seed: int = 0, **overrides) -> MERTModel:
    """A randomly initialised tiny `mert` model (tiny_models' family of `layout`); LayerNorm/bias parameters
    are randomised too so that a wrong name mapping cannot go unnoticed."""
    torch.manual_seed(seed)
    model = tiny_model(LAYOUTS[layout], n_codes, n_streams, **{**EXPORT_TINY, **overrides})
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
