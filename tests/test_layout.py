"""The package layout: the plugin import loads the runtime only, README's layout section lists the real
modules, fairseq is patched only where and when the task says, and checkpoints from before the move load."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mert_fairseq"
RUNTIME = ("data", "tasks", "models", "criterions", "checkpoint", "optim", "common")
TOOLS = ("prep", "export", "evaluation", "perf", "testing")
OLD_CHECKPOINT = ROOT / "tests" / "fixtures" / "checkpoint_main_1437d81.pt"  # written by main at 1437d81


def test_nothing_but_init_at_the_package_root():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert loose == []
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders <= set(RUNTIME + TOOLS), folders - set(RUNTIME + TOOLS)
    assert set(TOOLS) <= folders


def test_plugin_import_loads_the_runtime_only():
    """What fairseq's `common.user_dir` import does: no tool module, no fairseq attribute patched."""
    code = """
import sys
from fairseq import checkpoint_utils
from fairseq.file_io import PathManager
stock = (checkpoint_utils.load_checkpoint, checkpoint_utils.load_checkpoint_to_cpu,
         checkpoint_utils.torch_persistent_save, checkpoint_utils.PathManager, PathManager.copy)
import mert_fairseq
print(sorted(m for m in sys.modules if m.startswith("mert_fairseq")))
print(stock == (checkpoint_utils.load_checkpoint, checkpoint_utils.load_checkpoint_to_cpu,
                checkpoint_utils.torch_persistent_save, checkpoint_utils.PathManager, PathManager.copy))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}).stdout.splitlines()
    loaded = eval(out[-2])  # a printed list of module names
    assert "mert_fairseq.tasks.mert_pretraining" in loaded and "mert_fairseq.models.mert_model" in loaded
    tools = [m for m in loaded if m.split(".")[1:2] and m.split(".")[1] in TOOLS]
    assert tools == [], tools
    assert out[-1] == "True", "importing the plugin patched fairseq"


def _readme_layout_modules() -> set:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Layout: from audio file to loss", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    return {m.group(1) for m in re.finditer(r"^\s{2}([\w/]+\.py)\b", block, re.M)}, \
        {m.group(1) for m in re.finditer(r"^\s{2}(\w+)/\s", block, re.M)}


def test_readme_layout_lists_every_runtime_module_and_every_tool_package():
    modules, packages = _readme_layout_modules()
    runtime_files = {str(p.relative_to(PACKAGE)) for sub in RUNTIME if (PACKAGE / sub).is_dir()
                     for p in (PACKAGE / sub).rglob("*.py") if p.name != "__init__.py"}
    assert modules - {"__init__.py"} == runtime_files, (modules ^ runtime_files)
    assert set(TOOLS) <= packages, set(TOOLS) - packages
    for name in packages:
        assert (PACKAGE / name / "__init__.py").is_file(), name


def test_fairseq_internals_the_patches_rely_on():
    """Each patch in tasks/fairseq_patches.py relies on fairseq looking the replaced name up at call time;
    this fails if fairseq changes that."""
    import inspect

    import fairseq_cli.train
    from fairseq import checkpoint_utils, trainer

    from mert_fairseq.tasks import fairseq_patches

    stock = fairseq_patches.original  # fairseq's own attribute, patched or not

    train_src = inspect.getsource(fairseq_cli.train.main)
    assert fairseq_cli.train.checkpoint_utils is checkpoint_utils
    assert "checkpoint_utils.load_checkpoint(" in train_src
    assert not hasattr(fairseq_cli.train, "load_checkpoint")  # no `from checkpoint_utils import ...` binding
    save_src = inspect.getsource(stock(checkpoint_utils, "save_checkpoint"))
    assert "PathManager.copy(" in save_src
    trainer_src = inspect.getsource(trainer.Trainer)
    assert "checkpoint_utils.torch_persistent_save(" in trainer_src
    assert "checkpoint_utils.load_checkpoint_to_cpu(" in trainer_src
    assert set(fairseq_patches.REPLACEMENTS) <= set(vars(checkpoint_utils))
    assert inspect.signature(stock(checkpoint_utils, "load_checkpoint_to_cpu")).parameters.keys() == \
        {"path", "arg_overrides", "load_on_all_ranks"}
    assert callable(checkpoint_utils._upgrade_state_dict) and callable(checkpoint_utils.overwrite_args_by_name)
    # preemption (checkpoint/preemption.py): stop through the patience check, exit after the save
    vs_src = inspect.getsource(fairseq_cli.train.validate_and_save)
    assert "should_stop |= should_stop_early(cfg, valid_losses[0])" in vs_src
    assert "if do_save or should_stop:" in vs_src and "checkpoint_utils.save_checkpoint(" in vs_src
    assert vs_src.index("should_stop_early(") < vs_src.index("checkpoint_utils.save_checkpoint(")
    assert "getattr(should_stop_early, \"best\"" in inspect.getsource(stock(fairseq_cli.train, "should_stop_early"))
    assert inspect.signature(stock(checkpoint_utils, "save_checkpoint")).parameters.keys() == \
        {"cfg", "trainer", "epoch_itr", "val_loss"}
    assert set(fairseq_patches.TRAIN_REPLACEMENTS) <= set(vars(fairseq_cli.train))
    # c10d on CPU (_DistributedDataParallel): fairseq calls the module-level name with keyword arguments,
    # device_ids and output_device among them, which the patch drops for a CPU module
    from fairseq.models import distributed_fairseq_model as dfm

    assert stock(dfm, "DistributedDataParallel") is torch.nn.parallel.DistributedDataParallel
    assert set(fairseq_patches.DDP_REPLACEMENTS) <= set(vars(dfm))
    ddp_src = inspect.getsource(dfm.DistributedFairseqModel)
    call = ddp_src[ddp_src.index("wrapped_model = DistributedDataParallel("):]
    call = call[:call.index(")\n")]
    assert "module=model.to(device)" in call and "device_ids=[args.device_id]" in call, call
    assert "output_device=args.device_id" in call, call
    ddp_params = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters
    assert {"module", "device_ids", "output_device"} <= ddp_params.keys()


def test_patches_are_scoped_to_checkpoint_utils_and_undone():
    from fairseq import checkpoint_utils
    from fairseq.file_io import PathManager

    from mert_fairseq.tasks import fairseq_patches

    fairseq_patches.uninstall()
    import fairseq_cli.train

    stock_copy, stock_load = PathManager.copy, checkpoint_utils.load_checkpoint
    stock_stop = fairseq_cli.train.should_stop_early
    fairseq_patches.install()
    try:
        assert PathManager.copy is stock_copy  # other users of fairseq's PathManager are untouched
        assert checkpoint_utils.PathManager.copy is not stock_copy
        assert checkpoint_utils.PathManager.get_local_path is PathManager.get_local_path
        assert checkpoint_utils.load_checkpoint is not stock_load
        assert fairseq_cli.train.should_stop_early is not stock_stop
    finally:
        fairseq_patches.uninstall()
        assert checkpoint_utils.load_checkpoint is stock_load and checkpoint_utils.PathManager is PathManager
        assert fairseq_cli.train.should_stop_early is stock_stop


def test_uninstall_restores_every_replaced_attribute_fault_hooks_included(tmp_path):
    """fairseq's patches and the fault-injection hooks (every kind armed) go through one registry; after
    uninstall() every attribute they replaced is the object it was before (identity), no attribute is left
    behind or missing, and nothing is recorded."""
    import fairseq_cli.train
    from fairseq import checkpoint_utils
    from fairseq.models import distributed_fairseq_model

    from mert_fairseq.data.mert_dataset import MERTDataset
    from mert_fairseq.tasks import fairseq_patches
    from mert_fairseq.tasks.mert_pretraining import MERTPretrainingTask
    from mert_fairseq.testing import fault_points

    fairseq_patches.uninstall()
    owners = {"checkpoint_utils": checkpoint_utils, "fairseq_cli.train": fairseq_cli.train,
              "distributed_fairseq_model": distributed_fairseq_model, "fairseq_patches": fairseq_patches,
              "MERTDataset": MERTDataset, "MERTPretrainingTask": MERTPretrainingTask}
    before = {name: dict(vars(owner)) for name, owner in owners.items()}
    for point in fault_points.POINTS:  # one point at a time (MERT_FAULT_POINT names one), all other hooks
        faults = fault_points.Faults.from_env({"MERT_FAULT_POINT": f"{point}:3", "MERT_FAULT_NAN_UPDATES": "2,3",
                                               "MERT_FAULT_RANK_WEIGHTS": str(tmp_path)})
        fault_points.install(faults)
        # 5 of checkpoint_utils, the stop check, DDP; NaN batches, rank weights (a 2nd save_checkpoint), the point
        assert len(fairseq_patches.installed()) == 10, fairseq_patches.installed()
        changed = {(name, attr) for name, owner in owners.items() for attr in set(vars(owner)) | set(before[name])
                   if vars(owner).get(attr) is not before[name].get(attr)}
        expected_fault = {"checkpoint_write": ("fairseq_patches", "checkpoint_file_hook"),
                          "checkpoint_copy": ("fairseq_patches", "checkpoint_file_hook"),
                          "data_loading": ("MERTDataset", "__getitem__"),
                          "validation": ("MERTPretrainingTask", "valid_step")}[point]
        assert changed == {("checkpoint_utils", n) for n in fairseq_patches.REPLACEMENTS} | {
            ("fairseq_cli.train", "should_stop_early"), ("distributed_fairseq_model", "DistributedDataParallel"),
            ("MERTPretrainingTask", "train_step"), expected_fault}, changed
        fairseq_patches.uninstall()
        assert not fairseq_patches.installed()
        for name, owner in owners.items():
            after = vars(owner)
            assert after.keys() == before[name].keys(), (name, after.keys() ^ before[name].keys())
            assert all(after[attr] is before[name][attr] for attr in after), name


def test_patched_loading_sets_no_environment_variable(monkeypatch, tmp_path):
    """weights_only is passed explicitly: a user's TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot switch it off,
    and the environment is left as it was."""
    import os

    from fairseq import checkpoint_utils

    from mert_fairseq.checkpoint.safe_load import UnsafeCheckpointError
    from mert_fairseq.tasks import fairseq_patches

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    before = dict(os.environ)
    fairseq_patches.install()
    state = checkpoint_utils.load_checkpoint_to_cpu(str(OLD_CHECKPOINT))
    assert state["cfg"].model._name == "mert" and dict(os.environ) == before

    class Payload:
        def __reduce__(self):
            return (print, ("payload ran",))

    hostile = tmp_path / "hostile.pt"
    torch.save({"model": {}, "x": Payload()}, hostile)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        checkpoint_utils.load_checkpoint_to_cpu(str(hostile))
    assert dict(os.environ) == before


def test_a_hubert_criterion_checkpoint_is_read_as_mert():
    """The loader's one criterion rule: a checkpoint written by HubertCriterion is read as written by
    MertCriterion (what the task builds for both names), so fairseq's trainer, which compares the names,
    resumes it (the resume itself: the next test)."""
    from fairseq import checkpoint_utils

    from mert_fairseq.checkpoint.safe_load import load_checkpoint_state
    from mert_fairseq.tasks import fairseq_patches

    assert load_checkpoint_state(OLD_CHECKPOINT)["optimizer_history"][-1]["criterion_name"] == "HubertCriterion"
    fairseq_patches.install()
    state = checkpoint_utils.load_checkpoint_to_cpu(str(OLD_CHECKPOINT))
    assert state["optimizer_history"][-1]["criterion_name"] == "MertCriterion"


def test_checkpoint_written_before_the_move_loads_and_resumes(tmp_path):
    """A checkpoint written by main at 1437d81 (before the layout change) builds the same model, and
    fairseq-hydra-train resumes from it."""
    from synthetic import make_tone_dataset
    from training_runs import train

    from mert_fairseq.checkpoint.model_loading import load_mert_model
    from mert_fairseq.checkpoint.safe_load import load_checkpoint_state

    state = load_checkpoint_state(OLD_CHECKPOINT)
    model, task_cfg = load_mert_model(OLD_CHECKPOINT)
    for name, value in model.state_dict().items():
        assert torch.equal(value, state["model"][name]), name
    assert list(task_cfg.labels) == ["tone"]

    data = make_tone_dataset(tmp_path / "data", n_clips=4, seconds=1.0)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint_last.pt").write_bytes(OLD_CHECKPOINT.read_bytes())
    assert data["labels"] == ["tone"]
    log = train(data, run, "optimization.max_update=3", "dataset.disable_validation=true",
                "model.encoder_embed_dim=32", "model.encoder_ffn_embed_dim=64", "model.encoder_attention_heads=4")
    assert "Loaded checkpoint" in log and "@ 2 updates" in log, log[-3000:]
    resumed = load_checkpoint_state(run / "checkpoints" / "checkpoint_last.pt")
    assert resumed["optimizer_history"][-1]["num_updates"] == 3
