"""A batch that makes the loss or gradients non-finite is skipped (weights and optimizer state untouched),
counted in the log, and too many in a row stop the run (fp32 and bf16 autocast)."""
import re

import pytest
import torch

from mert_fairseq.checkpoint.safe_load import load_checkpoint_state
from mert_fairseq.testing import fault_train
from training_runs import ROOT, metric, run_training

COMMON = ["dataset.max_tokens=192000", "dataset.disable_validation=true", "lr_scheduler.warmup_updates=2",
          "checkpoint.save_interval_updates=1", "checkpoint.keep_interval_updates=-1", "optimization.max_update=5"]


def run(data, run_dir, nan_updates: str, *overrides):
    return run_training(data, run_dir, *COMMON, *overrides, program=fault_train.command(),
                        env={"PYTHONPATH": str(ROOT), "MERT_FAULT_NAN_UPDATES": nan_updates})


def _state(run_dir, updates: int) -> dict:
    epoch = 1 if updates <= 4 else 2
    return load_checkpoint_state(run_dir / "checkpoints" / f"checkpoint_{epoch}_{updates}.pt")


@pytest.mark.parametrize("precision", ["fp32", "bf16_autocast"])
def test_a_nan_batch_is_skipped_and_cannot_poison_the_weights(tone_data, tmp_path, precision):
    extra = ["task.bf16_autocast=true"] if precision == "bf16_autocast" else []
    code, log = run(tone_data, tmp_path, "2", *extra)  # the batch of update 3 (update_num 2) is all NaN
    assert code == 0, log[-3000:]
    assert "update 3 skipped: non-finite loss or gradient (1 in a row" in log, log[-3000:]
    assert sum(metric(log, "train", "bad_updates")) == 1, log[-3000:]
    before, after, end = _state(tmp_path, 2), _state(tmp_path, 3), _state(tmp_path, 5)
    for key, value in before["model"].items():
        assert torch.equal(value, after["model"][key]), key  # the skipped update changed nothing
        assert torch.isfinite(end["model"][key]).all(), key
    for i, s in before["last_optimizer_state"]["state"].items():
        for name, tensor in s.items():
            other = after["last_optimizer_state"]["state"][i][name]
            assert torch.equal(torch.as_tensor(tensor), torch.as_tensor(other)), (i, name)
    assert not torch.equal(after["model"]["final_proj.weight"], end["model"]["final_proj.weight"])  # still learns
    losses = metric(log, "train", "loss")
    assert losses and all(l == l and abs(l) < 1e6 for l in losses), losses  # no NaN in the logged loss


def test_consecutive_bad_updates_stop_the_run(tone_data, tmp_path):
    code, log = run(tone_data, tmp_path, "1,2,3", "task.max_consecutive_bad_updates=3")
    assert code != 0
    assert re.search(r"update 4: 3 consecutive updates had a non-finite loss or gradient "
                     r"\(task\.max_consecutive_bad_updates=3\); stopping", log), log[-3000:]
