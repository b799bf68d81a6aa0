"""Preemption without loss: SIGUSR1 / SIGTERM at random moments of the demo training finish the update,
save checkpoint_last.pt and exit with code 75; the reruns end bit-identical to an uninterrupted run.
Under Slurm the stopped run requeues its job when the job allows it (a fake `scontrol` records the calls)."""
import os
import stat

import pytest

from mert_fairseq.checkpoint import preemption

FAKE_SCONTROL = """#!/bin/bash
echo "$@" >> "$FAKE_SCONTROL_LOG"
if [[ "$1" == show ]]; then echo "JobId=$4 JobName=mert UserId=u(1) Requeue=${FAKE_REQUEUE:-1} Restarts=0"; fi
"""


@pytest.fixture
def fake_scontrol(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(FAKE_SCONTROL)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "scontrol.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SCONTROL_LOG", str(log))
    return log


def test_sigusr1_and_sigterm_stop_save_and_resume_bit_identically(tone_data, tmp_path, capsys, monkeypatch,
                                                                  fake_scontrol):
    from mert_fairseq.testing.fault_injection import main

    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # every start thinks it is Slurm job 4242 (submitted --requeue)
    code = main(["--kinds", "sigusr1,sigterm", "--max-update", "16", "--save-every", "4", "--validate-every", "6",
                 "--seed", "3", "--work-dir", str(tmp_path / "work"), "--data", tone_data["data"],
                 "--labels", ",".join(tone_data["labels"])])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "stopped, exit 75" in out and out.count("stopped, exit 75") == 2, out
    assert "SIGUSR1/SIGTERM stops (exit 75, checkpoint saved): 2, updates lost by them: 0" in out, out
    assert "resumes that succeeded: 2/2" in out and "updates redone: 0\n" in out, out
    assert "max |weight diff|: 0\n" in out and "max |optimizer state diff|: 0\n" in out, out
    assert "iterator position identical: True" in out and "final update: 16 (uninterrupted run: 16)" in out, out
    calls = fake_scontrol.read_text().splitlines()
    assert calls == ["show job -o 4242", "requeue 4242"] * 2, calls  # once per stop, none in the other runs


def test_requeue_decision(fake_scontrol, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert preemption.requeue_slurm_job() is None and not fake_scontrol.exists()  # not under Slurm
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("FAKE_REQUEUE", "0")  # submitted without --requeue
    assert preemption.requeue_slurm_job() == "not requeueable"
    assert fake_scontrol.read_text().splitlines() == ["show job -o 77"]
    monkeypatch.setenv("FAKE_REQUEUE", "1")
    assert preemption.requeue_slurm_job() == "requeued"
    assert fake_scontrol.read_text().splitlines()[-1] == "requeue 77"
    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol at all: logged, no exception
    assert preemption.requeue_slurm_job() == "scontrol failed"


def test_signal_sets_the_flag_and_a_second_one_is_not_swallowed():
    import signal
    import subprocess
    import sys

    code = ("import os, signal, time\n"
            "from mert_fairseq.checkpoint import preemption as p\n"
            "p.install_handlers(); os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.1)\n"
            "assert p.stop_requested()\n"
            "print('flag set', flush=True); os.kill(os.getpid(), signal.SIGTERM); time.sleep(5); print('alive')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "flag set" and proc.returncode == -signal.SIGTERM, proc.stderr[-2000:]
