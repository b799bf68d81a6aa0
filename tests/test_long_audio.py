"""Any length in bounded memory (issue 30, item 2): the CQT front end transforms long inputs in blocks on one
fixed grid (kernels built once, equal to one pass), a 10-minute file goes through the CQT-input export's
AutoModel and through scripts/extract_features.py in one call under 3 GB (peak RSS of a fresh process), and
windowed extraction of a group-norm model uses the whole file's CNN statistics. Before: 2.2 GB for 30 s, a
10-minute file passed 6 GB; windows changed every frame (correlation 0.83-0.86 for 10 s windows)."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from export_helpers import build_model, save_checkpoint
from mert_fairseq.evaluation.features import load_feature_extractor
from mert_fairseq.export.convert import write_hf_folder
from mert_fairseq.models.teachers.cqt import build_cqt
from mert_fairseq.prep.demo_corpus import clip_spec, render_clip

SR = 24000
LIMIT_MB = 3 * 1024
CQT = {"feature_extractor_cqt": True, "feature_extractor_cqt_bins": 84}


def music(seconds: float, seed: int = 0) -> np.ndarray:
    """Demo-corpus music: a 30 s piece repeated (with a different gain each time) up to `seconds`."""
    piece = render_clip(clip_spec(seed, min(seconds, 30.0), SR, seed=seed)).astype(np.float32)
    reps = int(np.ceil(seconds / 30.0))
    out = np.concatenate([piece * (0.6 + 0.4 * ((r * 7) % 5) / 4) for r in range(reps)])
    return out[: int(seconds * SR)]


def test_blocked_cqt_equals_one_pass_and_keeps_one_grid():
    cqt = build_cqt(SR, 320, 84)
    x = torch.from_numpy(np.stack([music(20.0), music(20.0, seed=1)]))
    blocked = cqt(x)  # 1501 frames: blocks of 512
    assert list(cqt._cache) == [(640, "cpu")] and cqt.block_frames == 512
    cqt(x[:, : 13 * SR])  # another length over one block: the same grid, no new kernels
    assert list(cqt._cache) == [(640, "cpu")]
    one_pass = build_cqt(SR, 320, 84)
    one_pass.block_frames = 10 ** 9
    reference = one_pass(x)
    assert blocked.shape == reference.shape == (2, 84, 1501)
    rel = float((blocked - reference).abs().max() / reference.abs().max())
    assert rel < 2e-6, rel  # measured 2.8e-7


_TEN_MINUTES = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np, soundfile as sf, torch
    mode, folder, wav_path = sys.argv[1:4]
    start = time.time()
    if mode == "automodel":
        from transformers import AutoModel
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        wav = torch.from_numpy(sf.read(wav_path, dtype="float32")[0])[None]
        with torch.no_grad():
            frames = model(wav, output_hidden_states=True).hidden_states[-1].shape[1]
    else:
        sys.argv = ["extract_features.py", wav_path, "--out-dir", sys.argv[4], "--hf-model", folder,
                    "--reduce", "mean"]
        from mert_fairseq.evaluation.features import main
        assert main() == 0
        frames = None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mb": peak, "seconds": time.time() - start, "frames": frames}))
""")


@pytest.fixture(scope="module")
def ten_minutes(tmp_path_factory):
    root = tmp_path_factory.mktemp("ten_minutes")
    model = build_model("95m", seed=2, **CQT)
    write_hf_folder(model, OmegaConf.create({"sample_rate": SR, "normalize": False}), root / "hf")
    sf.write(root / "ten_minutes.wav", music(600.0), SR, subtype="FLOAT")
    (root / "run.py").write_text(_TEN_MINUTES)
    return root


def _run(root, mode, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="2", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(root / "run.py"), mode, str(root / "hf"),
                           str(root / "ten_minutes.wav"), *map(str, extra)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_ten_minutes_through_the_cqt_input_automodel_in_one_call_under_3_gb(ten_minutes):
    result = _run(ten_minutes, "automodel")
    assert result["frames"] == 600 * 75 - 1
    assert result["peak_mb"] < LIMIT_MB, result


@pytest.mark.slow
def test_ten_minutes_through_extract_features_under_3_gb(ten_minutes, tmp_path):
    result = _run(ten_minutes, "script", tmp_path)
    feats = np.load(tmp_path / "ten_minutes.npy")
    assert feats.shape == (3, 32) and np.isfinite(feats).all()
    assert result["peak_mb"] < LIMIT_MB, result


def test_windows_of_a_group_norm_model_use_the_whole_file_statistics(tmp_path):
    ckpt = save_checkpoint(build_model("95m", seed=6), tmp_path / "gn.pt")
    fx = load_feature_extractor(checkpoint=str(ckpt))
    wav = music(30.0, seed=4)
    windows = fx.windows(len(wav), 10.0)
    assert len(windows) == 3 and fx.windows(len(wav)) == [(0, len(wav))]  # the default: the whole file fits
    cnn = fx.model.feature_extractor
    with torch.no_grad():
        whole = cnn(torch.from_numpy(wav)[None])[0]
        with fx.whole_file_statistics(wav):
            parts = torch.cat([cnn(torch.from_numpy(wav[s:e])[None])[0] for s, e in windows], dim=1)
        alone = torch.cat([cnn(torch.from_numpy(wav[s:e])[None])[0] for s, e in windows], dim=1)
    assert parts.shape == whole.shape
    assert float((parts - whole).abs().max()) <= 1e-5  # the CNN output is the whole-file pass's
    assert float((alone - whole).abs().max()) > 0.1  # per-window statistics (before): every frame off
    assert type(fx.model.feature_extractor.conv_layers[0][2]).__name__ == "Fp32GroupNorm"  # restored

    full = fx.extract(wav, window_seconds=0)
    windowed = fx.extract(wav, window_seconds=10.0)
    assert windowed.shape == full.shape
    far = np.ones(full.shape[1], dtype=bool)  # frames more than 1 s from a seam
    for seam in (750, 1500):
        far[seam - 75: seam + 75] = False
    # hidden state 0 (CNN, projection, positional convolution of 8 frames) away from the seams: equal
    assert np.abs(windowed[0][far] - full[0][far]).max() <= 1e-4
    # deeper layers differ only by the attention context
    corr = [np.corrcoef(windowed[i].ravel(), full[i].ravel())[0, 1] for i in range(full.shape[0])]
    assert min(corr) > 0.9, corr
