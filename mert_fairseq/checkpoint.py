"""Loading fairseq/MERT checkpoints under torch >= 2.6 (`torch.load(weights_only=True)` by default).

Instead of a global unsafe switch, the plain-data classes that fairseq checkpoints pickle
(configs, dictionaries, meters, numpy scalars) are allow-listed with
`torch.serialization.add_safe_globals`; everything else still refuses to unpickle.
"""
from __future__ import annotations

import argparse
import collections
import logging
import os
import typing
from typing import List, Optional, Tuple

import numpy as np
import torch
from fairseq.data.dictionary import Dictionary

logger = logging.getLogger(__name__)


def _safe_classes() -> list:
    import omegaconf
    from fairseq.logging import meters
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode, BooleanNode, EnumNode, FloatNode, IntegerNode, StringNode

    classes = [
        Dictionary, argparse.Namespace, collections.OrderedDict, collections.defaultdict, typing.Any,
        dict, list, tuple, set, int, float, str, bool,
        omegaconf.DictConfig, omegaconf.ListConfig, ContainerMetadata, Metadata,
        AnyNode, BooleanNode, EnumNode, FloatNode, IntegerNode, StringNode,
        meters.AverageMeter, meters.SumMeter, meters.TimeMeter, meters.StopwatchMeter, meters.MetersDict,
        np.dtype, np.ndarray, np.core.multiarray._reconstruct, np.core.multiarray.scalar,
        np.float64, np.float32, np.int64, np.int32, np.bool_,
    ]
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"):
        if hasattr(np.dtypes, name):
            classes.append(getattr(np.dtypes, name))
    for name in ("ConcatMeter", "GroupMeter"):
        if hasattr(meters, name):
            classes.append(getattr(meters, name))
    return classes


def allow_fairseq_checkpoints() -> None:
    """Allow-list the classes fairseq checkpoints contain (idempotent)."""
    torch.serialization.add_safe_globals(_safe_classes())


def load_checkpoint_state(path: str | os.PathLike) -> dict:
    """torch.load a fairseq checkpoint on CPU with the allow-list; errors name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: checkpoint not found")
    allow_fairseq_checkpoints()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"{path}: cannot load checkpoint ({exc})") from exc


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
    from omegaconf import OmegaConf, open_dict

    from mert_fairseq.models.mert_config import MERTConfig
    from mert_fairseq.models.mert_model import MERTModel

    state = load_checkpoint_state(path)
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
