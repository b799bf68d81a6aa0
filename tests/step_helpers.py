"""A recipe YAML (tiny widths) built as fairseq-hydra-train builds it: task, model, criterion, and batches
from the task's own dataset and collater (with the step's draws), on the tone data."""
from __future__ import annotations

from pathlib import Path

from fairseq import tasks, utils
from omegaconf import OmegaConf

from test_configs import compose_config
from training_runs import TONE_DEMO_OVERRIDES

ROOT = Path(__file__).resolve().parents[1]
TINY_WIDTHS = ["++model.encoder_layers=2", "++model.encoder_embed_dim=32", "++model.encoder_ffn_embed_dim=64",
               "++model.encoder_attention_heads=4", "++model.conv_feature_layers='[(32,10,5)]+[(32,3,2)]*4+[(32,2,2)]*2'",
               "++model.conv_pos=8", "++model.conv_pos_groups=4", "++model.final_dim=16", "++model.audio_cqt_bins=84"]


def build_recipe(name: str, data: dict, n_streams: int = 8, extra=()):
    """(task, model, criterion, train dataset) of recipe `name` with tiny widths, 1 s crops of the tone data;
    every label stream reads the tone labels."""
    cfg = compose_config(name, [f"common.user_dir={ROOT / 'mert_fairseq'}", f"task.data={data['data']}",
                                f"task.label_dir={data['label_dir']}",
                                f"task.labels=[{','.join(data['labels'] * n_streams)}]", "model.label_rate=75",
                                "task.max_sample_size=24000", "task.min_sample_size=1000", *TINY_WIDTHS,
                                *(TONE_DEMO_OVERRIDES if name == "MERT_demo_cpu" else ()), *extra])
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    utils.import_user_module(cfg.common)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    task.load_dataset("train")
    return task, model, criterion, task.dataset("train")


def batch(dataset, ids):
    return dataset.collater([dataset[i] for i in ids])
