"""fairseq-hydra-train runs for the tests: `train_command` (the one place the command line is built),
`run_training` (exit code and log), `train` (a run that must succeed), `metric` (numbers from the log),
`load_params` (the run's checkpoint_last.pt) and `TrainedRun`, the session's shared tiny run (the
`trained_run` fixture of conftest.py)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(Path(sys.executable).parent / "fairseq-hydra-train")


# MERT_demo_cpu on the tests' one-stream tone corpus: the single-stream settings the demo recipe had before it
# became the four-stream recipe (tied head, in-batch noise, loss on masked frames only, 0.8 masked, CNN
# trained, 500 updates), which the tests' assertions were written for; the caller's overrides come after
TONE_DEMO_OVERRIDES: Tuple[str, ...] = (
    "model.untie_final_proj=false", "model.mixture_prob=0.5", "model.skip_nomask=true",
    "criterion.pred_nomask_weight=0.0", "model.mask_prob=0.8", "model.feature_grad_mult=0.1",
    "optimization.max_update=500",
)


def train_command(data: dict, run_dir: Path, *overrides: str, config: str = "MERT_demo_cpu",
                  program: Sequence[str] = (TRAIN,)) -> List[str]:
    """The command line that trains recipe `config` on `data` (a make_tone_dataset dict: `data`, `label_dir`,
    `labels`) into run_dir (checkpoints in run_dir/checkpoints), then TONE_DEMO_OVERRIDES (MERT_demo_cpu) and
    `overrides`; `program` runs it (fairseq-hydra-train; e.g. (python, "-m", "fairseq_cli.hydra_train") or
    (python, a wrapper script))."""
    recipe = TONE_DEMO_OVERRIDES if config == "MERT_demo_cpu" else ()
    return [*program, "--config-dir", str(ROOT / "configs/pretrain"), "--config-name", config,
            f"common.user_dir={ROOT / 'mert_fairseq'}", f"task.data={data['data']}",
            f"task.label_dir={data['label_dir']}", f"task.labels=[{','.join(data['labels'])}]",
            f"hydra.run.dir={run_dir}", f"checkpoint.save_dir={run_dir / 'checkpoints'}", *recipe, *overrides]


def run_training(data: dict, run_dir: Path, *overrides: str, config: str = "MERT_demo_cpu",
                 program: Sequence[str] = (TRAIN,), env: Optional[Dict[str, str]] = None,
                 timeout: float = 900) -> Tuple[int, str]:
    """Run `train_command` (with `env` added to the environment): (exit code, stdout + stderr)."""
    proc = subprocess.run(train_command(data, run_dir, *overrides, config=config, program=program),
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **env} if env else None)
    return proc.returncode, proc.stdout + proc.stderr


def train(data: dict, run_dir: Path, *overrides: str, config: str = "MERT_demo_cpu") -> str:
    """Train recipe `config` on `data` into run_dir; the log (asserts exit 0)."""
    code, log = run_training(data, run_dir, *overrides, config=config)
    assert code == 0, log[-5000:]
    return log


# a short run with 2 DataLoader workers, validated after every update (the exit tests: test_exit.py, test_gpu.py)
WORKER_RUN_OVERRIDES: Tuple[str, ...] = (
    "optimization.max_update=2", "dataset.max_tokens=96000", "dataset.num_workers=2",
    "dataset.validate_interval_updates=1", "common.log_interval=1",
)


def run_and_time_exit(cmd, timeout: float = 600) -> tuple:
    """(return code, output, seconds between the last output line and the process exit)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines, last = [], [time.monotonic()]

    def read():
        for line in proc.stdout:
            lines.append(line)
            last[0] = time.monotonic()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    rc = proc.wait(timeout=timeout)
    exited = time.monotonic()
    reader.join(5)
    return rc, "".join(lines), exited - last[0]


def metric(log: str, kind: str, name: str) -> list:
    """Values of `name` in the '[kind]' summary lines of a fairseq simple-format log."""
    return [float(m) for line in log.splitlines() if f"][{kind}][" in line
            for m in re.findall(rf"\b{name}[ =]([-0-9.e]+)", line)]


def load_params(run_dir: Path) -> dict:
    from mert_fairseq.checkpoint.safe_load import load_checkpoint_state

    return load_checkpoint_state(run_dir / "checkpoints" / "checkpoint_last.pt")


# The shared run: 4 clips per batch = 4 updates per epoch, stopped at update 6 (mid-epoch 2), interval
# checkpoints every 2 updates (kept: checkpoint_1_2.pt, checkpoint_2_6.pt; none at the epoch end, update 4),
# a polynomial schedule over 14 updates (so it can be continued to 14), every update logged.
TRAINED_RUN_UPDATES = 6
TRAINED_RUN_OVERRIDES: Tuple[str, ...] = (
    "dataset.max_tokens=192000", "dataset.disable_validation=true", "checkpoint.save_interval_updates=2",
    "lr_scheduler.warmup_updates=2", "+lr_scheduler.total_num_update=14", "common.log_interval=1",
)
# ... with the online probe on 12 training clips (two CSV columns) at updates 0, 2 and 4
PROBE_OVERRIDES: Tuple[str, ...] = ("task.probe_interval_updates=2", "++task.probe_folds=2", "task.probe_tasks=null")


def write_probe_csv(data: dict, path: Path) -> Path:
    """12 training clips of a make_tone_dataset with two label columns (parity, quarter)."""
    audio = Path(data["data"]) / "audio"
    rows = [f"{audio / f'train_{i:03d}.wav'},{'ab'[i % 2]},{i % 4}\n" for i in range(12)]
    path.write_text("file,parity,quarter\n" + "".join(rows))
    return path


@dataclass(frozen=True)
class TrainedRun:
    """A finished run: `run_dir` (checkpoints/ inside), its `log`, the `data` it trained on and the
    `overrides` it was started with. Shared by the whole session: never change its files, `copy_to` first."""
    run_dir: Path
    log: str
    data: dict
    overrides: Tuple[str, ...]

    @property
    def save_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def copy_to(self, dst: Path) -> Path:
        """A private copy of the run folder (to continue training or damage files); returns dst."""
        shutil.copytree(self.run_dir, dst)
        return dst

    def checkpoints(self) -> List[str]:
        return sorted(p.name for p in self.save_dir.glob("*.pt"))


def make_trained_run(data: dict, root: Path) -> TrainedRun:
    """Train the shared run (TRAINED_RUN_OVERRIDES, PROBE_OVERRIDES, TRAINED_RUN_UPDATES updates) under root."""
    overrides = (*TRAINED_RUN_OVERRIDES, f"optimization.max_update={TRAINED_RUN_UPDATES}",
                 f"task.probe_csv={write_probe_csv(data, root / 'probe.csv')}", *PROBE_OVERRIDES)
    run_dir = root / "run"
    return TrainedRun(run_dir, train(data, run_dir, *overrides), data, overrides)
