"""Building a MERT model from a fairseq/MERT checkpoint (ours or an original one).

Files are read by `mert_fairseq.checkpoint.safe_load.load_checkpoint_state` (`weights_only=True` with an
allow-list of fairseq's plain classes: a pickle payload is refused, never run).
"""
from __future__ import annotations

import logging
import os
from typing import List, Optional, Tuple

import torch
from fairseq.data.dictionary import Dictionary
from omegaconf import OmegaConf, open_dict

from mert_fairseq.checkpoint.safe_load import load_checkpoint_state
from mert_fairseq.models.mert_config import MERTConfig
from mert_fairseq.models.mert_model import MERTModel

logger = logging.getLogger(__name__)


def _dictionaries_from_state(state: dict, n_streams: int, n_label_rows: int) -> List[Dictionary]:
    """The task's dictionaries as saved in the checkpoint, else `n_streams` equal-sized code dictionaries."""
    saved = (state.get("task_state") or {}).get("dictionaries")
    if saved:
        return list(saved)
    per_stream = n_label_rows // max(n_streams, 1)
    dictionaries = []
    for _ in range(n_streams):
        d = Dictionary()
        for code in range(per_stream - d.nspecial):
            d.add_symbol(str(code))
        dictionaries.append(d)
    return dictionaries


def load_mert_model(path: str | os.PathLike, device: str | torch.device = "cpu",
                    model_overrides: Optional[dict] = None, random_init: bool = False) -> Tuple[torch.nn.Module, object]:
    """Build the `mert` model from a checkpoint (ours or an original MERT one) in eval mode.

    No data or label files are needed: dictionaries come from the checkpoint. Returns (model, task cfg).
    `random_init`: same architecture, weights initialised from the run's seed (`common.seed`, as training
    starts) instead of loaded: the random-init baseline of probing.
    """
    state = load_checkpoint_state(path)
    if "fsdp_metadata" in state:
        raise ValueError(f"{path}: one rank's shard of a sharded FSDP checkpoint (distributed_training."
                         "use_sharded_state=true): it holds a slice of the weights. Convert, probe or extract from a "
                         "consolidated checkpoint: train with use_sharded_state=false (the default)")
    if state.get("cfg") is None:
        raise ValueError(f"{path}: no 'cfg' in checkpoint (not a fairseq hydra checkpoint)")
    cfg = OmegaConf.create(state["cfg"]) if not OmegaConf.is_config(state["cfg"]) else state["cfg"]
    if cfg.model.get("_name") != "mert":
        raise ValueError(f"{path}: model is {cfg.model.get('_name')!r}, expected 'mert'")
    model_cfg = OmegaConf.merge(OmegaConf.structured(MERTConfig), {k: v for k, v in cfg.model.items() if k != "_name"})
    with open_dict(model_cfg):
        model_cfg.label_rate = cfg.task.label_rate
        model_cfg.pretrained_weights = ""  # all weights come from this checkpoint (the path may not exist here)
        for k, v in (model_overrides or {}).items():
            model_cfg[k] = v
    weights = state["model"]
    n_rows = weights["label_embs_concat"].shape[0] if "label_embs_concat" in weights else 0
    dictionaries = (_dictionaries_from_state(state, len(cfg.task.labels), n_rows) if n_rows
                    else [None] * len(cfg.task.labels))
    if random_init:
        torch.manual_seed(int((cfg.get("common") or {}).get("seed", 1) or 1))
    model = MERTModel(model_cfg, cfg.task, dictionaries)
    if not random_init:
        model.load_state_dict(weights, strict=True)
    return model.to(device).eval(), cfg.task
