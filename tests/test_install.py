"""The package works installed (not editable, not from the checkout): tools find the shipped recipes."""
import json
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_script_runs_from_a_non_editable_install(tmp_path):
    """A wheel of the project in a fresh venv (the pinned stack reached through a .pth file, the checkout's
    editable install not), and scripts/benchmark.py copied away from the checkout: --config finds the
    recipe that the wheel carries."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                    "-w", str(wheels)], check=True, capture_output=True, timeout=300, cwd=tmp_path)
    wheel = next(wheels.glob("mert_fairseq-*.whl"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    stack = sysconfig.get_paths()["purelib"]  # this interpreter's packages (torch, fairseq, ...)
    (site / "stack.pth").write_text(stack + "\n")  # a path line: the .pth files in it are not run
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(ROOT / "scripts" / "benchmark.py", elsewhere / "benchmark.py")
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)}

    where = subprocess.run([str(python), "-c", "import mert_fairseq; print(mert_fairseq.__file__)"], check=True,
                           capture_output=True, text=True, env=env, cwd=elsewhere).stdout.strip()
    assert where.startswith(str(site)), where

    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [str(python), str(elsewhere / "benchmark.py"), "--config", "MERT_demo_cpu", "--device", "cpu",
         "--batch-size", "1", "--seconds", "1", "--warmup", "0", "--steps", "1", "--split-steps", "0", "--skip-cqt",
         "--skip-data-prep", "--no-reference", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, env=env, cwd=elsewhere, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["config_file"].endswith("mert_fairseq/recipes/MERT_demo_cpu.yaml"), result["config_file"]
    assert result["results"]["ours"]["audio_seconds_per_s"] > 0
