"""The shipped YAMLs compose through fairseq's hydra schema and build models of the published sizes;
they set no field that has no effect here (no warning), while an original-style value still warns once."""
from pathlib import Path

import pytest
import yaml
from fairseq import tasks, utils
from omegaconf import OmegaConf

from mert_fairseq.models.mert_config import NO_EFFECT_FIELDS as MODEL_NO_EFFECT
from mert_fairseq.tasks.mert_pretraining_config import NO_EFFECT_FIELDS as TASK_NO_EFFECT
from step_helpers import CONFIG_DIR, compose_config, tiny_overrides, write_dicts

ROOT = Path(__file__).resolve().parents[1]
RVQ_LABELS = [f"encodec_{i}" for i in range(8)]
RECIPES = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
# tiny widths: what is checked here does not depend on the size
TINY = tiny_overrides(encoder_layers=1, encoder_attention_heads=2, conv_pos_groups=2, feature_extractor_cqt_bins=84)


def build_recipe(tmp_path: Path, name: str, config_dir: Path = CONFIG_DIR):
    """(task, model) of recipe `name` with tiny widths, as fairseq-hydra-train builds them."""
    cfg = compose_config(name, [f"common.user_dir={ROOT / 'mert_fairseq'}", f"task.data={tmp_path}",
                                f"task.label_dir={tmp_path}", "model.label_rate=75", *TINY], config_dir=config_dir)
    if OmegaConf.is_missing(cfg.task, "labels"):  # the RVQ recipes leave the stream names to the user
        cfg.task.labels = RVQ_LABELS
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    write_dicts(tmp_path, cfg.task.labels, 16)
    utils.import_user_module(cfg.common)
    task = tasks.setup_task(cfg.task)
    return task, task.build_model(cfg.model)


@pytest.mark.parametrize("name", RECIPES)
def test_shipped_recipe_sets_no_field_without_effect(tmp_path, caplog, name):
    groups = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    assert not set(groups["model"]) & set(MODEL_NO_EFFECT), name
    assert not set(groups["task"]) & set(TASK_NO_EFFECT), name
    with caplog.at_level("WARNING"):
        task, model = build_recipe(tmp_path, name)
    assert len(model.encoder.layers) == 1  # the recipe was built (tiny)
    assert "has no effect" not in caplog.text, caplog.text


def test_original_value_of_field_without_effect_warns_once(tmp_path, caplog):
    """An original-style YAML (the demo recipe plus values the original recipes set: dropout_features 0.1,
    attention_relax 32, store_labels true, the task's copy of the noise lengths) loads, and each of those
    fields warns exactly once, naming its group."""
    text = (CONFIG_DIR / "MERT_demo_cpu.yaml").read_text()
    text = text.replace("\ntask:\n", "\ntask:\n  store_labels: true\n  inbatch_noise_augment_len_range: '[12000, 24000]'\n")
    text = text.replace("\nmodel:\n", "\nmodel:\n  dropout_features: 0.1\n  attention_relax: 32.0\n")
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    (config_dir / "original_style.yaml").write_text(text)
    with caplog.at_level("WARNING"):
        task, model = build_recipe(tmp_path, "original_style", config_dir)
    assert (model.cfg.dropout_features, model.cfg.attention_relax, task.cfg.store_labels) == (0.1, 32.0, True)
    lines = [r.getMessage() for r in caplog.records if "has no effect" in r.getMessage()]
    for key in ("model.dropout_features=0.1", "model.attention_relax=32.0", "task.store_labels=True",
                "task.inbatch_noise_augment_len_range='[12000, 24000]'"):
        assert sum(line.startswith(key + " has no effect") for line in lines) == 1, (key, lines)
    assert len(lines) == 4, lines


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


def test_fields_without_effect_come_from_one_table_per_config_class():
    """The config classes' own bodies list live fields only; the accepted-only fields are those of the table,
    with the table's defaults, and the removed task switches are among them."""
    from mert_fairseq.models.mert_config import MERTConfig
    from mert_fairseq.tasks.mert_pretraining_config import MERTPretrainingConfig

    for cls, table in ((MERTConfig, MODEL_NO_EFFECT), (MERTPretrainingConfig, TASK_NO_EFFECT)):
        own = set(cls.__dict__.get("__annotations__", {}))
        assert not own & set(table), (cls.__name__, own & set(table))
        defaults = cls()
        assert all(getattr(defaults, k) == (tuple(v.default) if isinstance(v.default, tuple) else v.default)
                   for k, v in table.items()), cls.__name__
    assert {"windowed_reads", "keep_freed_memory", "draws_in_collater", "compile_encoder_layers",
            "cuda_graphs"} <= set(TASK_NO_EFFECT)
    assert "compile_step" not in TASK_NO_EFFECT and "bf16_autocast" not in TASK_NO_EFFECT


def test_stored_checkpoint_config_with_removed_fields_loads_and_warns_once(tmp_path, caplog):
    """A checkpoint of this project from before the switches went (tests/fixtures, main at 1437d81) stores
    windowed_reads, keep_freed_memory and compile_encoder_layers; with those and the later draws_in_collater /
    cuda_graphs set away from their defaults, fairseq's struct merge (tasks.setup_task, models' merge_with_parent)
    accepts the stored config, and each set field warns exactly once per task built."""
    from fairseq.dataclass.utils import merge_with_parent
    from omegaconf import open_dict

    from mert_fairseq.checkpoint.safe_load import load_checkpoint_state
    from mert_fairseq.models.mert_config import MERTConfig

    state = load_checkpoint_state(ROOT / "tests" / "fixtures" / "checkpoint_main_1437d81.pt")
    cfg = state["cfg"] if OmegaConf.is_config(state["cfg"]) else OmegaConf.create(state["cfg"])
    assert {"windowed_reads", "keep_freed_memory", "compile_encoder_layers"} <= set(cfg.task)
    assert cfg.task.store_labels is True  # the demo recipe of that time set it
    with open_dict(cfg):
        cfg.task.update(data=str(tmp_path), label_dir=str(tmp_path), windowed_reads=False, draws_in_collater=False,
                        cuda_graphs=True)
        cfg.model.dropout_features = 0.1
    write_dicts(tmp_path, cfg.task.labels, 16)
    utils.import_user_module(OmegaConf.create({"user_dir": str(ROOT / "mert_fairseq")}))
    with caplog.at_level("WARNING"):
        for from_checkpoint in (False, True):
            task = tasks.setup_task(cfg.task, from_checkpoint=from_checkpoint)
            assert (task.cfg.windowed_reads, task.cfg.draws_in_collater, task.cfg.cuda_graphs) == (False, False, True)
    model_cfg = merge_with_parent(MERTConfig(), cfg.model)
    assert model_cfg.dropout_features == 0.1
    lines = [r.getMessage() for r in caplog.records if "has no effect" in r.getMessage()]
    for key in ("task.windowed_reads=False", "task.draws_in_collater=False", "task.cuda_graphs=True",
                "task.store_labels=True"):
        assert sum(line.startswith(key + " has no effect") for line in lines) == 2, (key, lines)  # once per task
    assert len(lines) == 8, lines
