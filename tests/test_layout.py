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

    def stock(module, name: str, key: str = ""):  # fairseq's own attribute, also after another test installed
        return fairseq_patches._stock.get(key or name, getattr(module, name))

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
    assert "getattr(should_stop_early, \"best\"" in inspect.getsource(
        stock(fairseq_cli.train, "should_stop_early", "fairseq_cli.train.should_stop_early"))
    assert inspect.signature(stock(checkpoint_utils, "save_checkpoint")).parameters.keys() == \
        {"cfg", "trainer", "epoch_itr", "val_loss"}
    assert set(fairseq_patches.TRAIN_REPLACEMENTS) <= set(vars(fairseq_cli.train))


def test_patches_are_scoped_to_checkpoint_utils_and_undone():
    from fairseq import checkpoint_utils
    from fairseq.file_io import PathManager

    from mert_fairseq.tasks import fairseq_patches

    was_installed = fairseq_patches.installed()
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
        assert checkpoint_utils.load_checkpoint is stock_load and checkpoint_utils.PathManager is PathManager and fairseq_cli.train.should_stop_early is stock_stop
        if was_installed:
            fairseq_patches.install()


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
