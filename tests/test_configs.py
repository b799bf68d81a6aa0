"""The shipped YAMLs compose through fairseq's hydra schema and build models of the published sizes."""
from pathlib import Path

import pytest
from fairseq import tasks, utils
from fairseq.dataclass.initialize import hydra_init
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs" / "pretrain"
RVQ_LABELS = [f"encodec_{i}" for i in range(8)]


def compose_config(name: str, overrides=(), return_hydra_config=False):
    hydra_init(name)  # registers fairseq's structured schema under this config name, like fairseq-hydra-train
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.1"):  # as fairseq-hydra-train
        cfg = compose(name, overrides=list(overrides), return_hydra_config=return_hydra_config)
    return cfg


def write_dicts(label_dir: Path, labels, n_codes: int) -> None:
    label_dir.mkdir(parents=True, exist_ok=True)
    for label in labels:
        (label_dir / f"dict.{label}.txt").write_text("".join(f"{c} 1\n" for c in range(n_codes)))


@pytest.mark.parametrize("name,labels,n_codes,low,high", [
    ("MERT_RVQ-VAE_CQT_95M", RVQ_LABELS, 1024, 94e6, 97e6),
    ("MERT_RVQ-VAE_CQT_330M", RVQ_LABELS, 1024, 313e6, 335e6),
    ("MERT_KMeans_CQT_95M", ["kmeans"], 500, 94e6, 97e6),
    ("MERT_demo_cpu", ["kmeans"], 100, 0.05e6, 1e6),
])
def test_config_composes_and_builds_expected_size(tmp_path, name, labels, n_codes, low, high):
    write_dicts(tmp_path, labels, n_codes)
    cfg = compose_config(name, [f"common.user_dir={ROOT / 'mert_fairseq'}", f"task.data={tmp_path}",
                                f"task.label_dir={tmp_path}", f"task.labels=[{','.join(labels)}]",
                                "model.label_rate=75"])
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    utils.import_user_module(cfg.common)  # what fairseq-hydra-train does with common.user_dir
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    n_params = sum(p.numel() for p in model.parameters())
    encoder_and_cnn = n_params - sum(p.numel() for n, p in model.named_parameters()
                                     if n.startswith(("final_proj", "label_embs_concat", "encoder_cqt_model")))
    assert low <= encoder_and_cnn <= high, f"{name}: {encoder_and_cnn / 1e6:.1f}M backbone parameters"
    assert model.label_embs_concat.shape[0] == len(labels) * (n_codes + 4)
    if "330M" in name:
        assert model.cfg.layer_norm_first and len(model.encoder.layers) == 24
        assert cfg.optimization.update_freq == [8]
    if "RVQ" in name or "KMeans" in name:
        assert cfg.task.max_sample_size in (120000, 123200) and cfg.model.audio_cqt_bins == 336


def test_slurm_launcher_config_composes():
    cfg = compose_config("MERT_RVQ-VAE_CQT_95M", ["hydra/launcher=mert_slurm", "hydra.launcher.partition=gpu"],
                         return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.gpus_per_node, launcher.partition) == (8, 8, "gpu")
