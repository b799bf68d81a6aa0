"""A training run exits within 10 s of its last log line, with DataLoader worker processes.

fairseq keeps persistent DataLoader workers; on a GPU torch joins each of them with a 5 s timeout at
exit unless they were shut down (see mert_fairseq/data/loader_shutdown.py). tests/cuda_loader_exit.py
switches that CUDA-only exit path on, so CPU runs test it; tests/test_gpu.py repeats it on a GPU."""
import sys
from pathlib import Path

import pytest

from training_runs import WORKER_RUN_OVERRIDES, run_and_time_exit, train_command

WRAPPER = str(Path(__file__).parent / "cuda_loader_exit.py")


def train_cmd(data: dict, run_dir: Path, *extra: str, python_args=(WRAPPER,)) -> list:
    return train_command(data, run_dir, *WORKER_RUN_OVERRIDES, *extra, program=(sys.executable, *python_args))


def test_exits_within_10s_of_last_log_line_with_workers(tone_data, tmp_path):
    # 2 clips per batch: 8 batches per epoch, so training stops mid-epoch with live workers
    rc, out, delay = run_and_time_exit(train_cmd(tone_data, tmp_path / "run"))
    assert rc == 0, out[-3000:]
    assert "done training" in out
    assert "shut down 2 data loader(s)" in out  # train and valid iterators
    assert delay < 10.0, f"exited {delay:.1f}s after the last log line"


def test_without_the_shutdown_the_exit_waits_5s_per_worker(tone_data, tmp_path):
    cmd = train_cmd(tone_data, tmp_path / "run", "dataset.disable_validation=true", "--without-plugin-shutdown")
    rc, out, delay = run_and_time_exit(cmd)
    assert rc == 0, out[-3000:]
    assert delay >= 2 * 5.0 - 0.5, f"{delay:.1f}s: expected 2 train workers x 5 s"
