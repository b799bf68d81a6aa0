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


def _agree(rank: int, port: int, out_dir: str) -> None:
    """One rank of test_ranks_agree_one_update_later: 6 stop checks; rank 1 gets SIGUSR1 during update 3."""
    import json
    import os
    import signal
    import time

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    preemption.reset()
    preemption.install_handlers()
    answers, first_call_s = [], None
    for update in range(1, 7):
        if rank == 1 and update == 1:
            time.sleep(2.0)  # rank 0's first check must not wait for this rank
        if rank == 1 and update == 3:
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.1)
        start = time.monotonic()
        answers.append(preemption.stop_requested())
        first_call_s = time.monotonic() - start if first_call_s is None else first_call_s
        if answers[-1]:
            break
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"answers": answers, "first_call_s": first_call_s}, f)
    dist.destroy_process_group()


def test_ranks_agree_one_update_later_without_blocking(tmp_path):
    """2 gloo processes: the flag raised on rank 1 during update 3 is agreed by both ranks at update 4's check
    (its own rank too reads it only then), and a check does not wait for the other rank's."""
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_agree, args=(port, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["answers"] for r in ranks] == [[False, False, False, True]] * 2, ranks
    assert ranks[0]["first_call_s"] < 1.0, ranks  # launched without waiting for rank 1 (asleep 2 s)
