"""scripts/run_training.sh: the demo form (no arguments) and the original positional call form."""
import os
import re
import subprocess
from pathlib import Path

from synthetic import make_tone_dataset

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "scripts" / "run_training.sh")


def run(*args, **env):
    proc = subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=1200,
                          env={**os.environ, **{k: str(v) for k, v in env.items()}})
    return proc.returncode, proc.stdout + proc.stderr


def test_demo_runs_end_to_end_then_resumes(tmp_path):
    env = dict(DEMO_DIR=tmp_path / "demo", SAVE_DIR=tmp_path / "run", DEMO_CLIPS=12, DEMO_PROBE_CLIPS=10)
    rc, out = run("optimization.max_update=4", "dataset.validate_interval_updates=2", "task.probe_interval_updates=2",
                  **env)
    assert rc == 0, out[-4000:]
    ckpt = tmp_path / "run" / "checkpoints" / "checkpoint_last.pt"
    assert ckpt.is_file()
    assert "final validation masked accuracy" in out and "n/a" not in out.split("final validation")[-1]
    for step in ("demo corpus", "manifest", "K-means labels", "probes on the held-out clips"):
        assert step in out
    # the probe table (demo model vs random init vs MFCC) and the pictures
    assert "| task | metric | chance | demo | random-init | mfcc |" in out and "| key | accuracy |" in out
    assert re.search(r"probe_timbre[ =][0-9.]+", out), out[-4000:]  # online probes in the training log lines
    for png in ("probe/probe_layers.png", "training.png"):
        assert (tmp_path / "run" / png).stat().st_size > 5000, png
    rc, out = run("optimization.max_update=6", **env)
    assert rc == 0, out[-4000:]
    assert "manifest: already in" in out and "K-means labels: already in" in out
    assert "Loaded checkpoint" in out and "@ 4 updates" in out  # resumed, not restarted


def test_demo_with_mfcc_and_chroma_streams(tmp_path):
    from mert_fairseq.checkpoint.safe_load import load_checkpoint_state

    demo, save = tmp_path / "demo", tmp_path / "run"
    rc, out = run("optimization.max_update=2", "dataset.validate_interval_updates=2", "task.probe_interval_updates=100",
                  DEMO_DIR=demo, SAVE_DIR=save, DEMO_CLIPS=12, DEMO_PROBE_CLIPS=10, DEMO_KMEANS_FEATURE="mfcc+chroma")
    assert rc == 0, out[-4000:]
    labels = demo / "labels_mfcc+chroma"
    for name in ("train.kmeans", "train.chroma", "dict.kmeans.txt", "dict.chroma.txt"):
        assert (labels / name).stat().st_size > 0, name
    assert (labels / "train.kmeans").read_text() != (labels / "train.chroma").read_text()
    state = load_checkpoint_state(save / "checkpoints" / "checkpoint_last.pt")
    assert list(state["cfg"]["task"]["labels"]) == ["kmeans", "chroma"]
    assert state["cfg"]["model"]["untie_final_proj"] is True
    assert "| key | accuracy |" in out


def test_original_call_form_single_node_cpu(tmp_path):
    data = make_tone_dataset(tmp_path / "data", n_clips=8)
    rc, out = run("0", "local", "MERT_demo_cpu", "mysetting", "127.0.0.1", "39999",
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
