"""The training objects of a recipe, built as `fairseq-hydra-train` builds them, for the benchmark and tests.

`compose_config` gives a recipe's full fairseq config (fairseq's `FairseqConfig` schema + the YAML + dotlist
overrides, as hydra composes it); `build_trainer` sets up its task, model and criterion through fairseq's
registries and wraps them in fairseq's `Trainer`: `trainer.train_step([sample])` is the update training runs
(the task's `train_step`: forward and loss in the task's precision, backward, the non-finite guard; the
trainer's gradient clipping, optimizer step and learning-rate schedule).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from mert_fairseq.common.recipes import PACKAGE_DIR, recipe_path

# --dtype of the benchmark -> the config's precision (the training switches that give that step)
PRECISION_OVERRIDES = {
    "fp32": ["common.fp16=false", "common.bf16=false", "common.amp=false", "task.bf16_autocast=false"],
    # forward and loss under torch.autocast(bfloat16), fp32 weights and optimizer
    "bf16": ["common.fp16=false", "common.bf16=false", "common.amp=false", "task.bf16_autocast=true"],
    # fairseq's AMP: forward under torch.autocast(float16), fp32 weights, a GradScaler
    "fp16": ["common.fp16=false", "common.bf16=false", "common.amp=true", "task.bf16_autocast=false"],
}


def compose_config(config: str, overrides: Sequence[str] = (), config_dir: Optional[str] = None) -> DictConfig:
    """The recipe `config` (a name in `config_dir`, default the project's recipes, or a yaml path) on fairseq's
    config schema, with `key=value` overrides (dotlist), resolved as fairseq-hydra-train resolves it. An unset
    `model.label_rate` defaults to 75 (EnCodec at 24 kHz)."""
    from fairseq.dataclass.configs import FairseqConfig

    recipe = OmegaConf.load(recipe_path(config, config_dir))
    recipe.pop("hydra", None)
    cfg = OmegaConf.merge(OmegaConf.structured(FairseqConfig), recipe,
                          OmegaConf.from_dotlist([o.lstrip("+") for o in overrides]))
    if OmegaConf.is_missing(cfg.model, "label_rate"):
        cfg.model.label_rate = 75
    return cfg


def build_trainer(cfg: DictConfig, data_dir: str, streams: Sequence[str], device: str = "cpu",
                  label_dir: Optional[str] = None):
    """fairseq's Trainer for `cfg` on the corpus in `data_dir` (train.tsv; train.{stream} and dict.{stream}.txt
    there or in `label_dir`) with the train split loaded; on `device` (cpu or cuda)."""
    from fairseq import tasks, utils
    from fairseq.trainer import Trainer

    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([
        f"common.user_dir={PACKAGE_DIR}", f"common.cpu={str(device == 'cpu').lower()}",
        f"task.data={data_dir}", f"task.label_dir={label_dir or data_dir}"]))
    cfg.task.labels = list(streams)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))  # as hydra_train.py
    OmegaConf.set_struct(cfg, True)
    utils.import_user_module(cfg.common)
    if device != "cpu" and not torch.cuda.is_available():
        raise ValueError(f"device {device}: CUDA is not available")
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    task.load_dataset("train")
    trainer = Trainer(cfg, task, model, criterion)
    trainer.lr_step(epoch=1)  # the schedule's first value, as fairseq-train's checkpoint loading sets it
    return trainer


def batch(dataset, ids: Sequence[int]) -> dict:
    """The collater's batch of clips `ids` (with the step's draws), as a loader worker makes it."""
    return dataset.collater([dataset[i] for i in ids])
