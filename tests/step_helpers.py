"""A recipe YAML built as fairseq-hydra-train builds it: `compose_config` (hydra compose against fairseq's
schema), and `build_recipe`: task, model (tiny widths), criterion, and batches from the task's own dataset
and collater (with the step's draws), on the tone data."""
from __future__ import annotations

from pathlib import Path

from fairseq import tasks, utils
from fairseq.dataclass.initialize import hydra_init
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tiny_models import tiny_overrides
from training_runs import TONE_DEMO_OVERRIDES

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs" / "pretrain"


def compose_config(name: str, overrides=(), return_hydra_config=False, config_dir: Path = CONFIG_DIR):
    hydra_init(name)  # registers fairseq's structured schema under this config name, like fairseq-hydra-train
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.1"):  # as fairseq-hydra-train
        cfg = compose(name, overrides=list(overrides), return_hydra_config=return_hydra_config)
    return cfg


def write_dicts(label_dir: Path, labels, n_codes: int) -> None:
    label_dir.mkdir(parents=True, exist_ok=True)
    for label in labels:
        (label_dir / f"dict.{label}.txt").write_text("".join(f"{c} 1\n" for c in range(n_codes)))


def build_recipe(name: str, data: dict, n_streams: int = 8, extra=()):
    """(task, model, criterion, train dataset) of recipe `name` with tiny widths, 1 s crops of the tone data;
    every label stream reads the tone labels."""
    cfg = compose_config(name, [f"common.user_dir={ROOT / 'mert_fairseq'}", f"task.data={data['data']}",
                                f"task.label_dir={data['label_dir']}",
                                f"task.labels=[{','.join(data['labels'] * n_streams)}]", "model.label_rate=75",
                                "task.max_sample_size=24000", "task.min_sample_size=1000", *tiny_overrides(),
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
