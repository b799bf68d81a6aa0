"""FSDP (distributed_training.ddp_backend=fully_sharded, fairscale as fairseq integrates it) without a GPU:
what needs no FSDP run. fairscale's FSDP needs CUDA, so a CPU run stops at once with an error saying so
(instead of fairscale's 'Found no NVIDIA driver'); the config plumbing; the converter on a consolidated FSDP
checkpoint, and a clear refusal of one rank's shard. FSDP training itself: tests/test_gpu.py, gpu_check."""
import pytest
import torch

from export_helpers import build_model, checkpoint_dict
from step_helpers import compose_config
from training_runs import train


def test_fully_sharded_on_cpu_stops_at_once_with_a_clear_error(tone_data, tmp_path):
    with pytest.raises(AssertionError) as err:
        train(tone_data, tmp_path / "run", "distributed_training.ddp_backend=fully_sharded", "optimization.max_update=1")
    log = str(err.value)
    assert "ddp_backend=fully_sharded (fairscale's FullyShardedDataParallel) needs CUDA" in log
    assert "this run has common.cpu=true" in log and "ddp_backend=legacy_ddp" in log
    assert "Found no NVIDIA driver" not in log


def test_fsdp_config_reaches_fairseq_and_the_task_checks_it(tmp_path):
    from fairseq import tasks
    from fairseq.distributed import fsdp_enable_wrap
    from omegaconf import OmegaConf

    from step_helpers import write_dicts

    write_dicts(tmp_path, ["kmeans"], 100)
    cfg = compose_config("MERT_RVQ-VAE_CQT_330M", [
        f"common.user_dir={tmp_path}", f"task.data={tmp_path}", f"task.label_dir={tmp_path}", "task.labels=[kmeans]",
        "model.label_rate=75", "distributed_training.ddp_backend=fully_sharded", "distributed_training.cpu_offload=true",
        "distributed_training.distributed_world_size=1", "common.fp16=true", "model.encoder_layers=2",
        "model.encoder_embed_dim=64", "model.encoder_ffn_embed_dim=128", "model.encoder_attention_heads=4"])
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    dt = cfg.distributed_training
    assert (dt.ddp_backend, dt.cpu_offload, dt.fp16, dt.use_sharded_state) == ("fully_sharded", True, True, False)
    import mert_fairseq  # noqa: F401

    task = tasks.setup_task(cfg.task)  # loading a checkpoint's config on CPU is fine
    if not torch.cuda.is_available():  # as fairseq_cli.train builds the model for fully_sharded
        with fsdp_enable_wrap(dt), pytest.raises(ValueError, match=r"needs CUDA.*no CUDA device"):
            task.build_model(cfg.model)
    model = task.build_model(cfg.model)  # any other backend: no FSDP wrapper anywhere
    assert not any("FullySharded" in type(m).__name__ for m in model.modules())


def test_converter_reads_a_consolidated_fsdp_checkpoint_and_refuses_a_shard(tmp_path):
    from mert_fairseq.export.convert import convert_checkpoint

    model = build_model("330m", seed=5)
    state = checkpoint_dict(model, ["encodec_0", "encodec_1"])
    # what fairseq saves with ddp_backend=fully_sharded, use_sharded_state=false: rank 0 writes the full state
    state["cfg"]["distributed_training"] = {"_name": None, "ddp_backend": "fully_sharded", "cpu_offload": True,
                                            "use_sharded_state": False, "distributed_world_size": 8}
    torch.save(state, tmp_path / "checkpoint_last.pt")
    result = convert_checkpoint(tmp_path / "checkpoint_last.pt", tmp_path / "hf", verify=True)
    assert all(c["max_abs_diff"] < 1e-4 for c in result["report"]["checks"]), result["report"]
    shard = dict(state, fsdp_metadata={"param_metadata": [], "buffer_names": []})
    torch.save(shard, tmp_path / "checkpoint_last-shard0.pt")
    with pytest.raises(ValueError, match="one rank's shard of a sharded FSDP checkpoint"):
        convert_checkpoint(tmp_path / "checkpoint_last-shard0.pt", tmp_path / "hf2", verify=False)


def test_gpu_check_plans_the_330m_fsdp_comparison_and_reads_peak_memory(tmp_path):
    from mert_fairseq.perf.gpu_check import peak_memory_gb, training_runs

    for quick in (False, True):
        names = {r["name"]: r for r in training_runs(smoke=False, quick=quick)}
        assert {"330M fp16 DDP", "330M fp16 FSDP"} <= set(names)
        assert "distributed_training.ddp_backend=fully_sharded" in names["330M fp16 FSDP"]["overrides"]
        assert names["330M fp16 DDP"]["overrides"] == [o for o in names["330M fp16 FSDP"]["overrides"]
                                                        if "ddp_backend" not in o]  # same run but the backend
    log = tmp_path / "train.log"
    log.write_text("[train_inner] loss=3.1, gb_free=60.5, wall=3\n[train_inner] loss=3.0, gb_free=58.25, wall=6\n")
    assert peak_memory_gb(log, 80.0) == pytest.approx(21.75) and peak_memory_gb(log, None) is None
