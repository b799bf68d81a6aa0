"""Shared fixtures (session-scoped: built once per pytest session, shared by every module; treat them as
read-only and copy before changing anything):

- `repo_root`: the checkout's root folder.
- `tone_data`: a make_tone_dataset corpus (16 train + 4 valid clips of 2 s tones, frame labels, 8 classes):
  a dict with `data`, `label_dir`, `labels`, as `task.data`, `task.label_dir`, `task.labels` take them.
- `trained_run`: one fairseq-hydra-train run of the demo recipe on `tone_data`, trained once per session
  (training_runs.TrainedRun: `run_dir`, `save_dir`, `log`, `data`, `overrides`, `copy_to(dst)`). 6 updates
  (mid-epoch 2), interval checkpoints checkpoint_1_2.pt and checkpoint_2_6.pt plus checkpoint_last.pt, every
  update logged, the online probe logged at updates 0, 2, 4 (overrides: training_runs.TRAINED_RUN_OVERRIDES
  and PROBE_OVERRIDES). Use it where a test needs *a* trained tiny run or checkpoint; to continue training or
  to damage files, `trained_run.copy_to(tmp_path / "run")` and pass the same TRAINED_RUN_OVERRIDES.
"""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def tone_data(tmp_path_factory) -> dict:
    """16 train + 4 valid clips of 2 s tones with frame labels (8 classes)."""
    from synthetic import make_tone_dataset

    return make_tone_dataset(tmp_path_factory.mktemp("tones"))


@pytest.fixture(scope="session")
def trained_run(tone_data, tmp_path_factory):
    """The session's one shared tiny training run (see the module docstring); read-only."""
    from training_runs import make_trained_run

    return make_trained_run(tone_data, tmp_path_factory.mktemp("trained_run"))


@pytest.fixture(autouse=True)
def no_patch_left_behind():
    """Every test starts and ends with fairseq unpatched: what a test (or a task it set up) installed through
    fairseq_patches' registry, fault hooks included, is undone after it."""
    yield
    patches = sys.modules.get("mert_fairseq.tasks.fairseq_patches")
    if patches is not None:
        patches.uninstall()
