"""Checkpoint files appear atomically (a kill mid-write or mid-copy leaves the old file intact), and a
damaged checkpoint_last.pt is reported and skipped for the newest intact checkpoint, or stops the run."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mert_fairseq.checkpoint.safe_load import CheckpointError, checkpoint_damage, checkpoint_num_updates
from mert_fairseq.checkpoint.resume import remove_stale_temp_files, resume_checkpoint
from training_runs import ROOT, TRAINED_RUN_OVERRIDES, run_training, train

# 4 clips per batch, 4 updates per epoch, checkpoints every 2 updates (the session's trained_run: conftest.py)
COMMON = [*TRAINED_RUN_OVERRIDES, "task.probe_csv=null"]


@pytest.fixture()
def save_dir(trained_run, tmp_path) -> Path:
    """A copy of the session run's checkpoints, stopped at update 6: checkpoint_1_2.pt, checkpoint_2_6.pt,
    checkpoint_last.pt (6)."""
    copy = tmp_path / "checkpoints"
    shutil.copytree(trained_run.save_dir, copy)
    return copy


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated": _truncate,
    "zero_bytes": lambda p: p.write_bytes(b""),
    "garbage": lambda p: p.write_bytes(os.urandom(4096)),
    "bit_flip": _flip_a_byte,
}


def test_fixture_has_the_expected_checkpoints(save_dir):
    names = sorted(p.name for p in save_dir.glob("*.pt"))
    assert names == ["checkpoint_1_2.pt", "checkpoint_2_6.pt", "checkpoint_last.pt"], names
    assert checkpoint_num_updates(save_dir / "checkpoint_last.pt") == 6
    assert all(checkpoint_damage(save_dir / n) is None for n in names)


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_last_falls_back_to_newest_intact(save_dir, kind, caplog):
    last = save_dir / "checkpoint_last.pt"
    DAMAGE[kind](last)
    assert checkpoint_damage(last) is not None
    assert resume_checkpoint(str(last), str(save_dir)) == str(save_dir / "checkpoint_2_6.pt")
    assert f"{last}: damaged checkpoint" in caplog.text


def test_skips_damaged_interval_checkpoints_too(save_dir):
    _truncate(save_dir / "checkpoint_last.pt")
    _flip_a_byte(save_dir / "checkpoint_2_6.pt")
    assert resume_checkpoint(str(save_dir / "checkpoint_last.pt"), str(save_dir)) == str(save_dir / "checkpoint_1_2.pt")


def test_none_intact_stops_with_a_clear_message(save_dir):
    for path in save_dir.glob("*.pt"):
        _truncate(path)
    with pytest.raises(CheckpointError, match=r"checkpoint_last\.pt: damaged checkpoint: .*no intact checkpoint"):
        resume_checkpoint(str(save_dir / "checkpoint_last.pt"), str(save_dir))


def test_option_off_or_explicit_restore_file_stops(save_dir):
    last = save_dir / "checkpoint_last.pt"
    DAMAGE["zero_bytes"](last)
    with pytest.raises(CheckpointError, match=r"checkpoint_last\.pt: damaged .*resume_from_intact_checkpoint=false"):
        resume_checkpoint(str(last), str(save_dir), fall_back=False)
    with pytest.raises(CheckpointError, match=r"checkpoint_last\.pt: checkpoint\.restore_file is damaged"):
        resume_checkpoint(str(last), str(save_dir), explicit=True)


def test_intact_last_is_used_as_is(save_dir):
    last = str(save_dir / "checkpoint_last.pt")
    assert resume_checkpoint(last, str(save_dir)) == last


def test_training_resumes_past_a_torn_checkpoint_last(tone_data, trained_run, tmp_path):
    """End to end with fairseq-hydra-train: the torn file is named, the run continues from update 6."""
    run = trained_run.copy_to(tmp_path / "run")
    last = run / "checkpoints" / "checkpoint_last.pt"
    _truncate(last)
    log = train(tone_data, run, "optimization.max_update=8", *COMMON)
    assert f"{last}: damaged checkpoint: not a complete checkpoint archive" in log, log[-3000:]
    assert re.search(r"Loaded checkpoint \S+checkpoint_2_6\.pt \(epoch 2 @ 6 updates\)", log), log[-3000:]
    assert checkpoint_num_updates(last) == 8 and checkpoint_damage(last) is None
    # option off: the same damage stops the run and names the file
    _truncate(last)
    code, log = run_training(tone_data, run, "optimization.max_update=10", *COMMON,
                             "task.resume_from_intact_checkpoint=false")
    assert code != 0
    assert f"{last}: damaged checkpoint" in log


def test_restart_after_the_final_checkpoint_trains_nothing(tone_data, trained_run, tmp_path):
    """A job killed after writing its last checkpoint (update 6 = max_update, mid-epoch) and started
    again must not train: stock fairseq would do a 7th update before checking max_update."""
    run = trained_run.copy_to(tmp_path / "run")
    last = run / "checkpoints" / "checkpoint_last.pt"
    before = last.read_bytes()
    log = train(tone_data, run, "optimization.max_update=6", *COMMON)
    assert re.search(r"checkpoint_last\.pt is at update 6 >= optimization\.max_update=6: training is already "
                     r"complete", log), log[-3000:]
    assert last.read_bytes() == before and checkpoint_num_updates(last) == 6


# ---------------------------------------------------------------- atomic writes under SIGKILL
# a process that does `_write_or_copy` (below) with the fault point of MERT_FAULT_POINT armed as the
# fault-injection entry point arms it (fault_points.install): it is killed there
KILLED_WRITER = """
import sys
sys.path.insert(0, sys.argv[4])
from mert_fairseq.testing import fault_points
fault_points.install(fault_points.Faults.from_env())
from test_checkpoint_recovery import _write_or_copy
_write_or_copy(*sys.argv[1:4])
print("not killed")
"""


def _write_or_copy(mode: str, src, dst) -> None:
    """Copy src to dst (as fairseq's save_checkpoint copies checkpoint_N to checkpoint_last) or write a
    checkpoint to dst, through checkpoint_utils with the task's patches installed (atomic writers)."""
    from fairseq import checkpoint_utils

    from mert_fairseq.tasks import fairseq_patches

    was_installed = fairseq_patches.installed()
    fairseq_patches.install()
    try:
        if mode == "copy":
            checkpoint_utils.PathManager.copy(str(src), str(dst), overwrite=True)
        else:
            checkpoint_utils.torch_persistent_save({"w": torch.arange(300_000.0)}, str(dst))
    finally:
        if not was_installed:
            fairseq_patches.uninstall()


@pytest.mark.parametrize("mode", ["copy", "write"])
def test_kill_half_way_through_a_checkpoint_copy_or_write_keeps_the_old_file(mode, tmp_path, monkeypatch):
    src, dst = tmp_path / "checkpoint_1_10.pt", tmp_path / "checkpoint_last.pt"
    torch.save({"w": torch.arange(300_000.0) + 1}, src)
    torch.save({"w": torch.zeros(3)}, dst)
    old = dst.read_bytes()
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "MERT_FAULT_POINT": f"checkpoint_{'copy' if mode == 'copy' else 'write'}:1"}
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, mode, str(src), str(dst), str(Path(__file__).parent)],
                          env=env, capture_output=True, text=True, timeout=300, start_new_session=True)
    assert proc.returncode == -9 and "not killed" not in proc.stdout, proc.stderr[-2000:]
    assert dst.read_bytes() == old  # the old checkpoint_last is untouched
    partial = list(tmp_path.glob(".checkpoint_last.pt.*.tmp"))
    assert len(partial) == 1 and 0 < partial[0].stat().st_size < src.stat().st_size
    assert remove_stale_temp_files(str(tmp_path)) == 1 and not list(tmp_path.glob("*.tmp"))
    # without the entry point's hooks the same call replaces the file completely (here, in this process): the
    # variable alone arms nothing, production code does not read it
    monkeypatch.setenv("MERT_FAULT_POINT", env["MERT_FAULT_POINT"])
    _write_or_copy(mode, src, dst)
    assert checkpoint_damage(dst) is None
    assert torch.equal(torch.load(dst)["w"], torch.arange(300_000.0) + (1 if mode == "copy" else 0))
