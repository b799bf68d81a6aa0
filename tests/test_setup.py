"""environment_setup.sh on a cluster image: SYSTEM_TORCH=1 (keep the image's torch, image python that is
itself a venv), WHEELS=DIR (offline, --no-index), and scripts/download_wheels.sh.

The "image" is the interpreter running these tests: a virtual environment with torch, torchaudio and
the rest installed, like the H100 image's venv python. The default mode (plain `bash
environment_setup.sh`) is what CI runs on a fresh clone."""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP = str(ROOT / "environment_setup.sh")
IMAGE_PYTHON = sys.executable


def bash(script: str, *args: str, timeout: int = 1800, **env) -> tuple:
    start = time.monotonic()
    proc = subprocess.run(["bash", script, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **{k: str(v) for k, v in env.items()}})
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


def venv_python(venv: Path, code: str) -> str:
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def test_system_torch_offline_from_an_image_venv(tmp_path):
    """SYSTEM_TORCH=1 with an image python that is a venv, WHEELS=an empty dir (so any download would
    fail): everything comes from the image, torch is the image's, this checkout is installed editable,
    and a second run is a no-op."""
    venv, wheels = tmp_path / "venv", tmp_path / "wheels"
    wheels.mkdir()
    env = dict(SYSTEM_TORCH=1, PYTHON=IMAGE_PYTHON, VENV=venv, WHEELS=wheels)
    rc, out, seconds = bash(SETUP, **env)
    assert rc == 0, out[-4000:]
    assert "image python is a venv" in out and f"offline: installing from {wheels}" in out
    assert re.search(r"keeping the image's torch==\S+ torchaudio==\S+", out)
    image_site = venv_python(Path(sys.prefix), "import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))")
    assert venv_python(venv, "import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))") == image_site
    assert not list((venv / "lib").glob("python*/site-packages/torch"))  # nothing of torch in .venv
    where = venv_python(venv, "import mert_fairseq, fairseq; print(mert_fairseq.__file__)")
    assert where == str(ROOT / "mert_fairseq" / "__init__.py")
    rc, out2, _ = bash(SETUP, **env)
    assert rc == 0 and "up to date" in out2, out2[-2000:]
    rc, out3, _ = bash(SETUP, **{**env, "SYSTEM_TORCH": 2})
    assert rc != 0 and "SYSTEM_TORCH must be 0 or 1" in out3
    print(f"SYSTEM_TORCH=1 offline setup from the image: {seconds:.0f} s")


def test_system_torch_needs_torch_in_the_image(tmp_path):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-c", "import venv; venv.create(%r, with_pip=False)" % str(bare)], check=True)
    base_has_torch = subprocess.run([str(bare / "bin" / "python"), "-c", "import torch"], capture_output=True)
    if base_has_torch.returncode == 0:
        pytest.skip("the base interpreter itself has torch")
    rc, out, _ = bash(SETUP, SYSTEM_TORCH=1, PYTHON=bare / "bin" / "python", VENV=tmp_path / "venv",
                      WHEELS=tmp_path)
    assert rc != 0 and "SYSTEM_TORCH=1 but torch/torchaudio do not import" in out, out[-2000:]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MERT_TEST_NETWORK") != "1",
                    reason="downloads ~130 MB and builds 3 wheels (12 min on 2 cores): set MERT_TEST_NETWORK=1")
def test_download_wheels_for_python_312(tmp_path):
    """Network (PyPI): every wheel for Python 3.12 manylinux x86_64 besides torch, incl. fairseq-fixed's
    prebuilt cp312 wheel and wheels built from the source-only packages. Opt-in (MERT_TEST_NETWORK=1)."""
    wheels = tmp_path / "wheels"
    rc, out, seconds = bash(str(ROOT / "scripts" / "download_wheels.sh"), str(wheels), "3.12")
    if rc != 0 and re.search(r"(Network is unreachable|Temporary failure in name resolution|ConnectionError)", out):
        pytest.skip("no network to the package index")
    assert rc == 0, out[-4000:]
    names = {re.sub(r"[-_.]+", "_", f.name.split("-")[0].lower()) for f in wheels.glob("*.whl")}
    files = [f.name for f in wheels.iterdir()]
    assert any(re.match(r"fairseq_fixed-0\.12\.3\.1-cp312-.*manylinux.*\.whl", f) for f in files), files
    assert not names & {"torch", "torchaudio", "triton"} and not any(n.startswith("nvidia") for n in names)
    required = set()
    for line in (ROOT / "requirements" / "requirements.txt").read_text().splitlines():
        m = re.match(r"\s*([A-Za-z0-9_.-]+)", line)
        if m and not line.lstrip().startswith("#"):
            required.add(re.sub(r"[-_.]+", "_", m.group(1).lower()))
    assert required - {"torch", "torchaudio"} <= names, required - names
    assert {"antlr4_python3_runtime", "omegaconf", "numpy", "scipy", "tokenizers", "huggingface_hub"} <= names
    assert all(f.endswith(".whl") for f in files)
    print(f"download_wheels.sh 3.12: {len(files)} wheels in {seconds:.0f} s")
