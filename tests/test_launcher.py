"""scripts/run_training.sh: the demo form (no arguments) and the original positional call form."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from synthetic import make_tone_dataset
from training_runs import TONE_DEMO_OVERRIDES

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "scripts" / "run_training.sh")
FAULT_TRAIN = "mert_fairseq.testing.fault_train"  # TRAIN_MODULE: the entry point that arms MERT_FAULT_* hooks


def run(*args, **env):
    proc = subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=1200,
                          env={**os.environ, **{k: str(v) for k, v in env.items()}})
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo (no arguments: four K-means streams) of 12 clips to 4 updates, validated and probed every 2:
    (its environment, its output); shared by the tests below (read-only: copy before running it again)."""
    root = tmp_path_factory.mktemp("demo")
    env = dict(DEMO_DIR=root / "demo", SAVE_DIR=root / "run", DEMO_CLIPS=12, DEMO_PROBE_CLIPS=10)
    rc, out = run("optimization.max_update=4", "dataset.validate_interval_updates=2", "task.probe_interval_updates=2",
                  **env)
    assert rc == 0, out[-4000:]
    return env, out


def test_demo_runs_end_to_end_then_resumes(demo, tmp_path):
    env, out = demo
    ckpt = env["SAVE_DIR"] / "checkpoints" / "checkpoint_last.pt"
    assert ckpt.is_file()
    assert "final validation masked accuracy" in out and "n/a" not in out.split("final validation")[-1]
    for step in ("demo corpus", "manifest", "K-means labels", "probes on the held-out clips"):
        assert step in out
    # the probe table (demo model vs random init vs MFCC) and the pictures
    assert "| task | metric | chance | demo | random-init | mfcc |" in out and "| key | accuracy |" in out
    assert re.search(r"probe_timbre[ =][0-9.]+", out), out[-4000:]  # online probes in the training log lines
    for png in ("probe/probe_layers.png", "training.png"):
        assert (env["SAVE_DIR"] / png).stat().st_size > 5000, png
    env = {**env, "DEMO_DIR": tmp_path / "demo", "SAVE_DIR": tmp_path / "run"}  # a copy of the shared run
    shutil.copytree(demo[0]["DEMO_DIR"], env["DEMO_DIR"])
    shutil.copytree(demo[0]["SAVE_DIR"], env["SAVE_DIR"])
    rc, out = run("optimization.max_update=6", **env)
    assert rc == 0, out[-4000:]
    assert "manifest: already in" in out and "K-means labels: already in" in out
    assert "Loaded checkpoint" in out and "@ 4 updates" in out  # resumed, not restarted


def check_stream_recipe(labels: Path, save: Path, out: str, streams: list, max_update: int) -> None:
    """The demo's several-stream run: label files and codes of every stream (the second differs from the
    first), the onset codes' settings, and the recipe in the checkpoint (docs/probing.md)."""
    from mert_fairseq.checkpoint.safe_load import load_checkpoint_state
    from mert_fairseq.prep.kmeans_model import load_model

    for name in [f"train.{s}" for s in streams] + [f"dict.{s}.txt" for s in streams]:
        assert (labels / name).stat().st_size > 0, name
    assert (labels / "train.kmeans").read_text() != (labels / f"train.{streams[1]}").read_text()
    onset = load_model(labels / "onset.npz")[1]  # the demo's onset codes: density over 1 s of the bands >= 2 kHz
    assert (onset.kind, onset.onset_smooth_frames, onset.onset_min_hz) == ("onset", 75, 2000.0)
    state = load_checkpoint_state(save / "checkpoints" / "checkpoint_last.pt")
    assert list(state["cfg"]["task"]["labels"]) == streams
    model = state["cfg"]["model"]
    assert model["untie_final_proj"] is True and model["mixture_prob"] == 0
    # the several-stream demo recipe (docs/probing.md): unmasked frames in the loss, half masked, CNN frozen
    assert (model["skip_nomask"], model["mask_prob"], model["feature_grad_mult"]) == (False, 0.5, 0.0)
    assert state["cfg"]["criterion"]["pred_nomask_weight"] == 1.0
    assert state["cfg"]["optimization"]["max_update"] == max_update  # the caller's override wins over the recipe's
    assert "| key | accuracy |" in out


def test_demo_with_mfcc_cqt_chord_and_onset_streams(demo):
    env, out = demo
    check_stream_recipe(env["DEMO_DIR"] / "labels", env["SAVE_DIR"], out, ["kmeans", "cqt", "chord", "onset"], 4)


def test_demo_with_mfcc_chroma_and_onset_streams(tmp_path):
    demo, save = tmp_path / "demo", tmp_path / "run"
    rc, out = run("optimization.max_update=2", "dataset.validate_interval_updates=2", "task.probe_interval_updates=100",
                  DEMO_DIR=demo, SAVE_DIR=save, DEMO_CLIPS=12, DEMO_PROBE_CLIPS=10, DEMO_KMEANS_FEATURE="mfcc+chroma+onset")
    assert rc == 0, out[-4000:]
    check_stream_recipe(demo / "labels_mfcc+chroma+onset", save, out, ["kmeans", "chroma", "onset"], 2)


def test_original_call_form_single_node_cpu(tmp_path):
    data = make_tone_dataset(tmp_path / "data", n_clips=8)
    rc, out = run("0", "local", "MERT_demo_cpu", "mysetting", "127.0.0.1", "39999", *TONE_DEMO_OVERRIDES,
                  "common.cpu=true", "optimization.max_update=2", "dataset.disable_validation=true",
                  DATA_DIR=data["data"], LABEL_DIR=data["label_dir"], LABELS="[tone]", SAVE_DIR=tmp_path / "save")
    assert rc == 0, out[-4000:]
    assert "MERT_demo_cpu on local: node 0, 1 procs/node, world 1" in out
    assert (tmp_path / "save" / "ckpt_mysetting" / "MERT_demo_cpu" / "checkpoint_last.pt").is_file()


def test_call_form_errors_are_clear(tmp_path):
    rc, out = run("0", "local", "NoSuchConfig", DATA_DIR=tmp_path, LABEL_DIR=tmp_path)
    assert rc == 2 and "unknown config NoSuchConfig" in out
    rc, out = run("0", "cloud", "MERT_demo_cpu", DATA_DIR=tmp_path, LABEL_DIR=tmp_path)
    assert rc == 2 and "PLATFORM must be local, slurm or torchrun" in out
    env = {k: v for k, v in os.environ.items() if k not in ("DATA_DIR", "LABEL_DIR")}
    proc = subprocess.run(["bash", SCRIPT, "0", "local", "MERT_demo_cpu"], capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "set DATA_DIR" in proc.stderr


def test_help_and_an_override_in_a_positional_slot():
    rc, out = run("--help")
    assert rc == 0 and "WORKER_RANK PLATFORM CONFIG_NAME" in out and "Exit code 75" in out
    assert "set -euo" not in out and not any(line.startswith("#") for line in out.splitlines())
    rc, out = run("0", "local", "MERT_demo_cpu", "run1", "optimization.max_update=10", DATA_DIR="/d", LABEL_DIR="/l")
    assert rc == 2 and "argument 5 ('optimization.max_update=10') is a hydra override, but position 5 is MASTER_ADDR" in out
    rc, out = run("node0", "local", "MERT_demo_cpu", DATA_DIR="/d", LABEL_DIR="/l")
    assert rc == 2 and "WORKER_RANK must be a node index" in out


FAKE_SCONTROL = """#!/bin/bash
[[ "$1 $2" == "show hostnames" ]] && printf 'gpu-a17\\ngpu-a18\\n'
"""


def _dry_run(tmp_path, platform, **env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "scontrol").write_text(FAKE_SCONTROL)
    (bin_dir / "scontrol").chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in ("WORLD_SIZE", "RANK")}
    env = {**clean, "PATH": f"{bin_dir}:{os.environ['PATH']}", "DATA_DIR": "/d", "LABEL_DIR": "/l", "DRY_RUN": "1",
           **{k: str(v) for k, v in env.items()}}
    proc = subprocess.run(["bash", SCRIPT, "0", platform, "MERT_demo_cpu"], capture_output=True, text=True, env=env)
    return proc.returncode, proc.stdout + proc.stderr


def _setting(out, key):
    found = re.findall(rf"distributed_training\.{key}=(\S+)", out)
    return found[-1] if found else None


def test_slurm_ranks_from_slurm_variables(tmp_path):
    # one srun task per node, 4 GPUs each: node 1 of 2 -> fairseq spawns ranks 4..7
    rc, out = _dry_run(tmp_path, "slurm", SLURM_NNODES=2, SLURM_NODEID=1, SLURM_NTASKS=2, SLURM_NTASKS_PER_NODE=1,
                       SLURM_PROCID=1, SLURM_LOCALID=0, SLURM_JOB_NODELIST="gpu-a[17-18]", NPROCS_PER_NODE=4)
    assert rc == 0, out
    assert [_setting(out, k) for k in ("distributed_rank", "distributed_world_size", "nprocs_per_node",
                                       "distributed_init_method")] == ["4", "8", "4", "tcp://gpu-a17:39683"], out
    assert _setting(out, "distributed_no_spawn") is None
    # one task per GPU: global rank SLURM_PROCID on local device SLURM_LOCALID, no spawning
    rc, out = _dry_run(tmp_path, "slurm", SLURM_NNODES=2, SLURM_NODEID=1, SLURM_NTASKS=8, SLURM_NTASKS_PER_NODE="4(x2)",
                       SLURM_PROCID=5, SLURM_LOCALID=1, SLURM_JOB_NODELIST="gpu-a[17-18]", NPROCS_PER_NODE=4)
    assert rc == 0, out
    assert [_setting(out, k) for k in ("distributed_rank", "device_id", "distributed_world_size",
                                       "distributed_no_spawn", "distributed_init_method")] == \
        ["5", "1", "8", "true", "tcp://gpu-a17:39683"], out
    rc, out = _dry_run(tmp_path, "slurm", SLURM_NNODES=2, SLURM_NODEID=0, SLURM_NTASKS=8, SLURM_PROCID=0,
                       SLURM_LOCALID=0, SLURM_JOB_NODELIST="gpu-a[17-18]", NPROCS_PER_NODE=4, WORLD_SIZE=16)
    assert rc == 2 and "WORLD_SIZE=16 but the Slurm allocation gives 8 ranks" in out
    rc, out = _dry_run(tmp_path, "torchrun", RANK=3, LOCAL_RANK=1, WORLD_SIZE=4, MASTER_ADDR="10.0.0.1")
    assert rc == 0 and [_setting(out, k) for k in ("distributed_rank", "device_id", "distributed_world_size",
                                                    "distributed_init_method")] == ["3", "1", "4", "env://"], out


TWO_NODE = [*TONE_DEMO_OVERRIDES, "common.cpu=true", "optimization.max_update=3", "dataset.disable_validation=true",
            "dataset.max_tokens=96000", "common.log_interval=1"]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _two_processes(commands, envs):
    import time

    start = time.monotonic()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for cmd, env in zip(commands, envs)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    return [p.returncode for p in procs], outs, time.monotonic() - start


def _same_weights_on_both_ranks(weights_dir, ckpt):
    import torch

    from mert_fairseq.checkpoint.safe_load import load_checkpoint_state

    r0, r1 = (torch.load(weights_dir / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["num_updates"] == r1["num_updates"] == 3
    assert r0["model"].keys() == r1["model"].keys()
    assert all(torch.equal(r0["model"][k], r1["model"][k]) for k in r0["model"])  # bit-identical on both ranks
    saved = load_checkpoint_state(ckpt)["model"]
    assert all(torch.equal(saved[k], r0["model"][k]) for k in saved)


def test_two_nodes_on_loopback_train_to_the_same_weights(tmp_path):
    data = make_tone_dataset(tmp_path / "data", n_clips=8)
    port = _free_port()
    base = {**os.environ, "DATA_DIR": data["data"], "LABEL_DIR": data["label_dir"], "LABELS": "[tone]",
            "NPROCS_PER_NODE": "1", "WORLD_SIZE": "2",
            "TRAIN_MODULE": FAULT_TRAIN, "MERT_FAULT_RANK_WEIGHTS": str(tmp_path / "weights")}
    cmds = [["bash", SCRIPT, str(node), "local", "MERT_demo_cpu", "two", "127.0.0.1", str(port), *TWO_NODE]
            for node in (0, 1)]
    codes, outs, seconds = _two_processes(cmds, [{**base, "SAVE_DIR": str(tmp_path / f"node{n}")} for n in (0, 1)])
    assert codes == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert "node 1, 1 procs/node, world 2, master 127.0.0.1" in outs[1]
    print(f"two local nodes: {seconds:.1f} s")
    _same_weights_on_both_ranks(tmp_path / "weights", tmp_path / "node0" / "ckpt_two" / "MERT_demo_cpu" / "checkpoint_last.pt")


def test_torchrun_two_nodes_train_to_the_same_weights(tmp_path):
    import sys
    from pathlib import Path

    data = make_tone_dataset(tmp_path / "data", n_clips=8)
    port = _free_port()
    torchrun = str(Path(sys.executable).parent / "torchrun")
    base = {**os.environ, "DATA_DIR": data["data"], "LABEL_DIR": data["label_dir"], "LABELS": "[tone]",
            "TRAIN_MODULE": FAULT_TRAIN, "MERT_FAULT_RANK_WEIGHTS": str(tmp_path / "weights"), "OMP_NUM_THREADS": "1"}
    cmds = [[torchrun, "--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
             "--master_port", str(port), "--no-python", "bash", SCRIPT, "0", "torchrun", "MERT_demo_cpu", "tr",
             "127.0.0.1", str(port), *TWO_NODE] for node in (0, 1)]
    codes, outs, seconds = _two_processes(cmds, [{**base, "SAVE_DIR": str(tmp_path / f"node{n}")} for n in (0, 1)])
    assert codes == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    print(f"torchrun, two nodes: {seconds:.1f} s")
    _same_weights_on_both_ranks(tmp_path / "weights", tmp_path / "node0" / "ckpt_tr" / "MERT_demo_cpu" / "checkpoint_last.pt")
