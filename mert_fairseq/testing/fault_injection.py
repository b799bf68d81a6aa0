"""Fault-injection harness: SIGKILL the demo training at seeded moments and check it resumes exactly.

1. Prepares a small demo corpus, manifest and K-means labels once (the launcher's scripts).
2. Trains an uninterrupted reference run of the demo config, shortened (`--max-update`, frequent
   checkpoints and validation, batches of two 1 s crops).
3. Trains the same command again, killing its whole process group with SIGKILL N times: at random
   times and at forced moments (half-way through a checkpoint write or copy, while reading a clip,
   inside a validation step; see `fault_points`, armed in the training process by the entry point
   `fault_train`), or sending it SIGUSR1 / SIGTERM at a random time
   (a Slurm time limit or preemption: the run must save and exit with code 75,
   `checkpoint.preemption`, losing no update). After each fault the same command is started again
   until the run reaches `--max-update`.
4. Compares every weight, the optimizer state, the LR-scheduler state and the data-iterator position
   of the two final `checkpoint_last.pt` files, and prints kills, resumes that succeeded, updates
   redone and max |weight diff|; `--markdown` writes the table of faults for docs/reliability.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from mert_fairseq.checkpoint.preemption import EXIT_PREEMPTED
from mert_fairseq.checkpoint.safe_load import checkpoint_num_updates, load_checkpoint_state
from mert_fairseq.common.recipes import PACKAGE_DIR, child_pythonpath, recipe_dir
from mert_fairseq.testing import fault_train

POINT_KINDS = ("checkpoint_write", "checkpoint_copy", "data_loading", "validation")
SIGNAL_KINDS = {"sigusr1": signal.SIGUSR1, "sigterm": signal.SIGTERM}  # graceful stop at a random time
KINDS = POINT_KINDS + ("time", "startup") + tuple(SIGNAL_KINDS)  # timed kills: after the 1st update / in start-up


@dataclasses.dataclass
class Fault:
    kind: str  # a fault point name, "time", "startup", "sigusr1" or "sigterm"
    at: float  # hit number for a fault point; seconds after the first update ("time", signals) or the start
    killed: bool = False
    exit_code: Optional[int] = None
    last_update: Optional[int] = None  # last update logged before the kill
    resumed_from: Optional[int] = None  # update the next start loaded (0: from scratch)
    resume_ok: Optional[bool] = None
    partial_files: int = 0  # temporary checkpoint files this start left half-written
    damaged_reported: bool = False

    @property
    def redone(self) -> int:
        if self.last_update is None or self.resumed_from is None:
            return 0
        return max(self.last_update - self.resumed_from, 0)

    @property
    def timed(self) -> bool:
        """Fired at a time after the first update (a SIGKILL or a signal), not at a fault point."""
        return self.kind == "time" or self.kind in SIGNAL_KINDS

    def describe(self) -> str:
        if self.kind in SIGNAL_KINDS:
            return f"{self.kind.upper()}, {self.at:.1f} s after 1st update"
        if self.kind == "time":
            return f"timed, {self.at:.1f} s after 1st update"
        if self.kind == "startup":
            return f"timed, {self.at:.1f} s after start"
        return f"{self.kind} (hit {int(self.at)})"


# ---------------------------------------------------------------- data and command
def prepare_demo_data(work: Path, num_clips: int = 32, seconds: float = 4.0) -> dict:
    """Demo corpus -> 24 kHz manifest -> MFCC K-means labels under `work/data` (skipped when present)."""
    data = work / "data"
    manifest, labels = data / "manifest", data / "labels"
    if not (labels / "dict.kmeans.txt").exists():
        steps = [
            ("mert_fairseq.prep.demo_corpus", ["--out-dir", data / "corpus", "--num-clips", num_clips,
                                               "--seconds", seconds]),
            ("mert_fairseq.prep.manifest", ["--root-dir", data / "corpus", "--converted-root-dir", data / "audio24k",
                                            "--out-dir", manifest, "--target-rate", 24000, "--valid-percent", 0.1,
                                            "--seed", 1]),
            ("mert_fairseq.prep.kmeans_labels", ["all", "--manifest-dir", manifest, "--label-dir", labels,
                                                 "--kmeans-model", labels / "kmeans.npz", "--name", "kmeans",
                                                 "--n-clusters", 50]),
        ]
        for module, args in steps:  # each in its own process, as the scripts run them
            code = f"import sys; from {module} import main; sys.exit(main(sys.argv[1:]))"
            subprocess.run([sys.executable, "-c", code, *map(str, args)], check=True, env=_child_env(),
                           stdout=subprocess.DEVNULL)
    return {"data": str(manifest), "label_dir": str(labels), "labels": ["kmeans"]}


def train_command(data: dict, run_dir: Path, max_update: int, save_every: int, validate_every: int,
                  extra: Sequence[str] = ()) -> List[str]:
    """The demo training command, shortened, through the fault-injection entry point (`fault_train`); identical
    for the reference and the faulted run (a fault point is armed by the environment, `_child_env`)."""
    return [
        *fault_train.command(),
        "--config-dir", str(recipe_dir()), "--config-name", "MERT_demo_cpu",
        f"common.user_dir={PACKAGE_DIR}", f"task.data={data['data']}", f"task.label_dir={data['label_dir']}",
        f"task.labels=[{','.join(data['labels'])}]",
        f"hydra.run.dir={run_dir}", f"checkpoint.save_dir={run_dir / 'checkpoints'}",
        f"optimization.max_update={max_update}", f"checkpoint.save_interval_updates={save_every}",
        f"dataset.validate_interval_updates={validate_every}", "dataset.max_tokens=48000", "task.max_sample_size=24000",
        "lr_scheduler.warmup_updates=20", "common.log_interval=1", *extra,
    ]


def _child_env(fault: Optional[Fault] = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERT_FAULT_")}
    env["PYTHONPATH"] = child_pythonpath(env)
    env.setdefault("OMP_NUM_THREADS", "2")
    if fault is not None and fault.kind in POINT_KINDS:
        env["MERT_FAULT_POINT"] = f"{fault.kind}:{int(fault.at)}"
    return env


# ---------------------------------------------------------------- running
def interrupted(fault: Fault, code: int) -> bool:
    """The fault took effect: SIGKILLed, or (a signal fault) saved and exited with EXIT_PREEMPTED."""
    return code == -signal.SIGKILL or (fault.kind in SIGNAL_KINDS and code == EXIT_PREEMPTED)


def _wait_for(proc: subprocess.Popen, log_path: Path, deadline: float, last_update: Optional[int]) -> bool:
    """Wait until `deadline`, or until the log shows update `last_update` (the fault then fires early, so that
    a run faster than the one its time was planned on is still interrupted); False if the process ended."""
    while proc.poll() is None:
        if time.time() >= deadline or (last_update is not None
                                       and (last_logged_update(log_path.read_text(errors="replace")) or 0)
                                       >= last_update):
            return True
        time.sleep(0.1)
    return False


def run_once(cmd: Sequence[str], log_path: Path, fault: Optional[Fault], timeout: float,
             last_update: Optional[int] = None) -> int:
    """Start `cmd` in a new process group; SIGKILL the group at the time of a timed fault, or send it the
    signal of a signal fault (as Slurm signals every process of a job step) and wait for the exit. A timed
    or signal fault fires at the latest once update `last_update` is logged."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_child_env(fault),
                                start_new_session=True)
        deadline = time.time() + timeout
        if fault is not None and fault.kind == "startup":
            deadline = time.time() + fault.at
        elif fault is not None and fault.timed:
            while proc.poll() is None and "num_updates=" not in log_path.read_text(errors="replace"):
                time.sleep(0.02)
            if _wait_for(proc, log_path, time.time() + fault.at, last_update):
                deadline = time.time()
        try:
            return proc.wait(timeout=max(deadline - time.time(), 0.01))
        except subprocess.TimeoutExpired:
            if fault is not None and fault.kind in SIGNAL_KINDS:
                os.killpg(proc.pid, SIGNAL_KINDS[fault.kind])
                try:
                    return proc.wait(timeout=120)  # one update and a save (Slurm's KillWait is 30 s by default)
                except subprocess.TimeoutExpired:
                    pass
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()


def last_logged_update(log: str) -> Optional[int]:
    found = re.findall(r"num_updates=(\d+)", log)
    return int(found[-1]) if found else None


def loaded_update(log: str) -> Optional[int]:
    """Update the run resumed from: 0 when it started from scratch, None when it did not get that far."""
    found = re.search(r"Loaded checkpoint \S+ \(epoch \d+ @ (\d+) updates\)", log)
    if found:
        return int(found.group(1))
    return 0 if "No existing checkpoint found" in log else None


def plan_faults(n: int, seed: int, kinds: Optional[Sequence[str]], save_every: int,
                startup_s: float, update_s: float) -> List[Fault]:
    """Seeded faults: with no `kinds`, n // 6 (at least 1) of each fault point, n // 10 during start-up
    (loading the checkpoint, building the model), n // 10 of each signal, the rest SIGKILLs at a random
    time after the first update.

    Hit numbers and times are drawn so that most starts make progress before they are killed: a
    timed kill lands up to 3 save intervals after the first update."""
    rng = np.random.default_rng(seed)
    if kinds is None:
        each = max(1, n // 6)
        kinds = [k for k in POINT_KINDS for _ in range(each)][:n] + ["startup"] * (n // 10)
        kinds += [k for k in SIGNAL_KINDS for _ in range(n // 10)][: max(n - len(kinds), 0)]
        kinds += ["time"] * (n - len(kinds))
        kinds = [kinds[i] for i in rng.permutation(len(kinds))]
    at = {
        "checkpoint_write": lambda: rng.integers(2, 4),  # 2nd/3rd save of a start: some progress first
        "checkpoint_copy": lambda: rng.integers(2, 4),
        # fairseq's loader prefetches 10 batches (20 clips) at start-up; later hits are mid-training
        "data_loading": lambda: rng.integers(24, 24 + 4 * save_every),
        "validation": lambda: rng.integers(1, 4),
        "time": lambda: rng.uniform(0, 3 * save_every) * update_s,
        "sigusr1": lambda: rng.uniform(0, 3 * save_every) * update_s,
        "sigterm": lambda: rng.uniform(0, 3 * save_every) * update_s,
        "startup": lambda: rng.uniform(0.3, 1.0) * startup_s,
    }
    return [Fault(kind, float(at[kind]())) for kind in kinds]


def log_timing(log: str, started: float) -> tuple:
    """(seconds from process start to the first update, seconds per update) from a run's log."""
    stamps = [time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
              for m in re.finditer(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\]\[train_inner\]", log, re.M)]
    if len(stamps) < 2:
        return 20.0, 1.0
    return stamps[0] - started, (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def _saved_update(run_dir: Path) -> int:
    last = run_dir / "checkpoints" / "checkpoint_last.pt"
    return checkpoint_num_updates(last) if last.exists() else 0


def _temp_files(run_dir: Path) -> set:
    return set((run_dir / "checkpoints").glob(".checkpoint*.tmp"))


def run_with_faults(cmd: Sequence[str], run_dir: Path, faults: List[Fault], max_update: int = 0,
                    update_s: float = 0.0, timeout: float = 600) -> int:
    """Start `cmd` once per fault (then once more, to finish); returns the exit code of the last start.

    A kill before the next start has loaded its checkpoint leaves the resume of the earlier faults
    pending: they are settled by the first start that gets that far."""
    run_dir.mkdir(parents=True, exist_ok=True)
    pending: List[Fault] = []
    for i, fault in enumerate(faults + [None]):
        log_path = run_dir / f"start_{i:02d}.log"
        temp_before = _temp_files(run_dir)
        timed = fault is not None and fault.timed
        if timed:  # before the run finishes
            fault.at = min(fault.at, 0.6 * (max_update - _saved_update(run_dir)) * update_s)
        code = run_once(cmd, log_path, fault, timeout, last_update=max_update - 2 if timed and max_update else None)
        log = log_path.read_text(errors="replace")
        resumed = loaded_update(log)
        if pending and (resumed is not None or code not in (0, -signal.SIGKILL, EXIT_PREEMPTED)):
            for earlier in pending:
                earlier.resumed_from, earlier.resume_ok = resumed, resumed is not None
                earlier.damaged_reported = "damaged checkpoint" in log
            pending = []
        if fault is None:
            return code
        fault.exit_code, fault.killed = code, interrupted(fault, code)
        fault.last_update = last_logged_update(log)
        fault.partial_files = len(_temp_files(run_dir) - temp_before)
        print(f"  start {i + 1:2d}: {fault.describe():32s} -> "
              f"{('stopped, exit %d' % code if code > 0 else 'killed') if fault.killed else f'exit {code}'} "
              f"at update {fault.last_update}"
              f"{f', {fault.partial_files} partial checkpoint file(s) left' if fault.partial_files else ''}",
              flush=True)
        if not fault.killed:  # finished before the fault fired, or failed
            if code != 0:
                print(log[-3000:], file=sys.stderr)
            return code
        pending.append(fault)
    return 1


# ---------------------------------------------------------------- comparison
def _max_diff(a, b, path: str = "") -> float:
    """Max |a - b| over matching tensors of two nested states; inf when their structure differs."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return float("inf")
        return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return float("inf")
        return max([_max_diff(a[k], b[k], f"{path}.{k}") for k in a] or [0.0])
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return float("inf")
        return max([_max_diff(x, y, path) for x, y in zip(a, b)] or [0.0])
    return 0.0 if a == b else float("inf")


def schedule_state(state: dict) -> dict:
    """The LR scheduler state that decides learning rates. Without `best` unless the scheduler reads it
    (reduce_lr_on_plateau): fairseq sets `best` only at an epoch's end, from a validation run in the same
    process, so any resume after a mid-epoch validation (killed or not) leaves it different, while
    polynomial_decay, inverse_sqrt, ... never read it."""
    history = dict(state["optimizer_history"][-1]["lr_scheduler_state"])
    if state["cfg"]["lr_scheduler"]["_name"] != "reduce_lr_on_plateau":
        history.pop("best", None)
    return history


def compare_checkpoints(reference: Path, other: Path) -> dict:
    a, b = load_checkpoint_state(reference), load_checkpoint_state(other)
    history_a, history_b = a["optimizer_history"][-1], b["optimizer_history"][-1]
    return {
        "updates": (history_a["num_updates"], history_b["num_updates"]),
        "max_weight_diff": _max_diff(a["model"], b["model"]),
        "optimizer_diff": _max_diff(a["last_optimizer_state"], b["last_optimizer_state"]),
        "lr_scheduler_equal": schedule_state(a) == schedule_state(b),
        "iterator_equal": a["extra_state"]["train_iterator"] == b["extra_state"]["train_iterator"],
        "iterator": b["extra_state"]["train_iterator"],
    }


# ---------------------------------------------------------------- report
def summary(faults: List[Fault], cmp: dict, seconds: float) -> str:
    killed = [f for f in faults if f.killed]
    survived = [f for f in killed if f.resume_ok]
    identical = cmp["max_weight_diff"] == 0 and cmp["optimizer_diff"] == 0 and cmp["iterator_equal"] \
        and cmp["lr_scheduler_equal"] and cmp["updates"][0] == cmp["updates"][1]
    stopped = [f for f in killed if f.kind in SIGNAL_KINDS]
    return "\n".join([
        f"kills: {len(killed)} of {len(faults)} planned",
        f"SIGUSR1/SIGTERM stops (exit {EXIT_PREEMPTED}, checkpoint saved): {len(stopped)}, "
        f"updates lost by them: {sum(f.redone for f in stopped)}",
        f"resumes that succeeded: {len(survived)}/{len(killed)}",
        f"updates redone: {sum(f.redone for f in killed)}",
        f"final update: {cmp['updates'][1]} (uninterrupted run: {cmp['updates'][0]})",
        f"max |weight diff|: {cmp['max_weight_diff']:g}",
        f"max |optimizer state diff|: {cmp['optimizer_diff']:g}",
        f"iterator position identical: {cmp['iterator_equal']} ({cmp['iterator']})",
        f"LR scheduler state identical: {cmp['lr_scheduler_equal']}",
        f"result: {len(survived)}/{len(killed)} survived, final state "
        f"{'bit-identical' if identical else 'DIFFERENT'} ({seconds:.0f} s wall)",
    ])


def markdown_table(faults: List[Fault]) -> str:
    rows = ["| # | fault | killed after update | partial .tmp left | resumed from update | updates redone | "
            "damaged checkpoint found | resume |", "|---|---|---|---|---|---|---|---|"]
    for i, f in enumerate(faults, 1):
        rows.append(f"| {i} | {f.describe()} | {f.last_update if f.last_update is not None else '- (start-up)'} | "
                    f"{f.partial_files} | {f.resumed_from} | {f.redone} | {'yes' if f.damaged_reported else 'no'} | "
                    f"{'ok' if f.resume_ok else ('not killed: run finished' if f.exit_code == 0 else 'FAILED')} |")
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs of the training (ignored with --kinds)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault plan (kinds and times)")
    p.add_argument("--kinds", default=None, help="comma-separated fault kinds instead of the seeded mix: "
                                                 + ", ".join(KINDS))
    p.add_argument("--max-update", type=int, default=None, help="default: 8 per kill + 40")
    p.add_argument("--save-every", type=int, default=5, help="checkpoint.save_interval_updates")
    p.add_argument("--validate-every", type=int, default=10, help="dataset.validate_interval_updates")
    p.add_argument("--work-dir", default="runs/fault_injection",
                   help="working folder: demo data and the runs (killed and uninterrupted)")
    p.add_argument("--data", default=None, help="train on this manifest directory instead of preparing the demo data")
    p.add_argument("--label-dir", default=None, help="with --data: labels and dict.{label}.txt (default: --data)")
    p.add_argument("--labels", default="kmeans", help="with --data: comma-separated label streams")
    p.add_argument("--markdown", default=None, help="write the summary and the table of faults here")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="hydra overrides for both runs, e.g. model.encoder_layerdrop=0.3")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    kinds = args.kinds.split(",") if args.kinds else None
    unknown = set(kinds or []) - set(KINDS)
    if unknown:
        raise SystemExit(f"--kinds: unknown {sorted(unknown)}; known: {', '.join(KINDS)}")
    n = len(kinds) if kinds else args.kills
    max_update = args.max_update or 8 * n + 40
    work = Path(args.work_dir).resolve()
    start = time.time()
    data = ({"data": args.data, "label_dir": args.label_dir or args.data, "labels": args.labels.split(",")}
            if args.data else prepare_demo_data(work))
    results, faults, update_s = {}, [], 0.0
    for name in ("reference", "faulted"):
        run_dir = work / name
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
        cmd = train_command(data, run_dir, max_update, args.save_every, args.validate_every, args.overrides)
        print(f"{name} run ({max_update} updates)", flush=True)
        started = time.time()
        code = run_with_faults(cmd, run_dir, faults, max_update, update_s)
        if code != 0:
            print(f"{name} run failed (exit {code}); logs in {run_dir}", file=sys.stderr)
            return 1
        if name == "reference":
            startup_s, update_s = log_timing((run_dir / "start_00.log").read_text(), started)
            print(f"  start-up {startup_s:.1f} s, {update_s:.2f} s per update", flush=True)
            faults = plan_faults(n, args.seed, kinds, args.save_every, startup_s, update_s)
        results[name] = run_dir / "checkpoints" / "checkpoint_last.pt"
    cmp = compare_checkpoints(results["reference"], results["faulted"])
    text = summary(faults, cmp, time.time() - start)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(f"```\n{text}\n```\n\n{markdown_table(faults)}\n")
    ok = all(f.resume_ok for f in faults if f.killed) and "bit-identical" in text
    return 0 if ok else 1
