"""Feature extraction: same features from a fairseq checkpoint and from its HF export, shapes, layers and
reduction, any rate / channel count, windowing of long files, folder / manifest / file inputs."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from export_helpers import build_model, save_checkpoint
from mert_fairseq.data.audio import load_mono
from mert_fairseq.evaluation.features import (FeatureExtractionError, collect_inputs, conv_output_length, extract_to_folder,
                                   load_feature_extractor, parse_layers)

ROOT = Path(__file__).resolve().parents[1]
SR = 24000
N_LAYERS, DIM = 2, 32


def tone(seconds: float, sr: int = SR, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    mono = 0.3 * np.sin(2 * np.pi * 220 * t * (1 + 0.1 * np.sin(t))) + 0.02 * rng.standard_normal(len(t))
    if channels == 1:
        return mono.astype(np.float32)
    return np.stack([mono * (0.5 + 0.5 * c / channels) for c in range(channels)], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from mert_fairseq.export.convert import convert_checkpoint

    root = tmp_path_factory.mktemp("features")
    # layer-norm CNN (330M layout): its CNN frames do not depend on the window boundaries
    ckpt = save_checkpoint(build_model("330m", seed=3), root / "ckpt.pt")
    hf = root / "hf"
    convert_checkpoint(ckpt, hf, verify=False)
    audio = root / "audio"
    (audio / "sub").mkdir(parents=True)
    sf.write(audio / "a.wav", tone(2.0), SR, subtype="FLOAT")
    sf.write(audio / "sub" / "b.flac", tone(1.5, sr=44100, channels=2, seed=1), 44100)  # other rate, stereo
    sf.write(audio / "sub" / "c.wav", tone(0.7, sr=16000, channels=3, seed=2), 16000, subtype="PCM_16")
    return {"root": root, "ckpt": ckpt, "hf": hf, "audio": audio,
            "fs": load_feature_extractor(checkpoint=str(ckpt)), "hfx": load_feature_extractor(hf_model=str(hf))}


def test_same_features_from_checkpoint_and_hf_folder(setup):
    for name in ("a.wav", "sub/b.flac", "sub/c.wav"):
        path = setup["audio"] / name
        a = setup["fs"].extract_file(path)
        b = setup["hfx"].extract_file(path)
        n = len(load_mono(path, SR))
        assert a.shape == b.shape == (N_LAYERS + 1, conv_output_length(n, [10, 3, 3, 3, 3, 2, 2], [5] + [2] * 6), DIM)
        assert a.dtype == np.float32
        assert np.abs(a - b).max() < 1e-4, (name, np.abs(a - b).max())


def test_layers_and_mean_reduction(setup):
    fx = setup["fs"]
    path = setup["audio"] / "a.wav"
    full = fx.extract_file(path)
    sel = fx.extract_file(path, layers=[0, 2])
    assert sel.shape == (2,) + full.shape[1:]
    assert np.array_equal(sel, full[[0, 2]])
    mean = fx.extract_file(path, layers=[2], reduce="mean")
    assert mean.shape == (1, DIM)
    assert np.allclose(mean[0], full[2].mean(0), atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        fx.extract_file(path, layers=[3])
    assert parse_layers("all") is None and parse_layers("0,6,12") == [0, 6, 12] and parse_layers("1-3") == [1, 2, 3]


def test_other_rate_and_multichannel_input(setup):
    fx = setup["fs"]
    path = setup["audio"] / "sub" / "b.flac"  # 44.1 kHz stereo
    data, sr = sf.read(path, dtype="float32", always_2d=True)
    assert sr == 44100 and data.shape[1] == 2
    feats = fx.extract_file(path)
    mono = torch.from_numpy(data.mean(axis=1))
    import torchaudio.functional as AF

    resampled = AF.resample(mono, 44100, SR).numpy()
    direct = fx.extract(resampled)
    assert feats.shape[1] == conv_output_length(len(resampled), [10, 3, 3, 3, 3, 2, 2], [5] + [2] * 6)
    assert np.abs(feats - direct).max() < 1e-5


def test_windowing_keeps_frames_and_matches_full_processing_away_from_seams(setup):
    fx = setup["fs"]
    wav = tone(10.0, seed=5)
    full = fx.extract(wav, window_seconds=0)
    windowed = fx.extract(wav, window_seconds=3.0)
    assert fx.windows(len(wav), 3.0) == [(0, 72080), (72000, 144080), (144000, 240000)]  # 1 s tail merged
    assert windowed.shape == full.shape  # same frames at the same positions
    # hidden state 0 = CNN -> projection -> + positional conv (kernel 8): local, so equal away from the seams
    seams = [225, 450]
    far = np.ones(full.shape[1], dtype=bool)
    for s in seams:
        far[max(0, s - 8): s + 8] = False
    assert np.abs(windowed[0][far] - full[0][far]).max() < 1e-4
    assert np.abs(windowed[0][~far] - full[0][~far]).max() > 1e-4  # the seams are where the context differs
    # a window longer than the file is exactly the whole-file pass
    assert np.array_equal(fx.extract(wav, window_seconds=20.0), full)
    # each window is an independent pass over its samples
    first = fx.extract(wav[:72080], window_seconds=0)
    assert np.abs(windowed[:, :225] - first).max() < 1e-5


def test_normalize_follows_the_training_task(tmp_path):
    ckpt = save_checkpoint(build_model("95m", seed=4), tmp_path / "norm.pt", normalize=True)
    fx = load_feature_extractor(checkpoint=str(ckpt))
    assert fx.normalize
    wav = tone(1.0)
    a = fx.extract(wav)
    b = fx.extract(3.0 * wav + 0.01)  # normalisation removes gain and offset
    assert np.abs(a - b).max() < 1e-3


def _script_main():
    spec = importlib.util.spec_from_file_location("extract_features_script", ROOT / "scripts/extract_features.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_folder_manifest_and_file_inputs_mirror_names(setup, tmp_path):
    audio = setup["audio"]
    main = _script_main()
    out = tmp_path / "from_folder"
    # one file per call here: batches (tests/test_batched_extraction.py) agree within 1e-5, not 1e-6
    assert main([str(audio), "--output-dir", str(out), "--hf-model", str(setup["hf"]), "--layers", "0,2",
                 "--batch-size", "1"]) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.npy")) == ["a.npy", "sub/b.npy", "sub/c.npy"]
    assert not list(out.rglob("*.tmp"))
    b = np.load(out / "sub" / "b.npy")
    assert np.abs(b - setup["hfx"].extract_file(audio / "sub" / "b.flac", layers=[0, 2])).max() < 1e-6

    manifest = tmp_path / "train.tsv"
    manifest.write_text(f"{audio}\nsub/c.wav\t11200\na.wav\t48000\n")
    out2 = tmp_path / "from_manifest"
    summary = extract_to_folder(setup["fs"], [str(manifest)], out2, reduce="mean", progress=False)
    assert summary == {"written": 2, "skipped": 0, "failed": []}
    assert np.load(out2 / "a.npy").shape == (N_LAYERS + 1, DIM)
    assert (out2 / "sub" / "c.npy").exists()
    # rerun: existing outputs are kept (resumable)
    assert extract_to_folder(setup["fs"], [str(manifest)], out2, progress=False)["skipped"] == 2

    out3 = tmp_path / "from_file"
    assert main([str(audio / "sub" / "c.wav"), "--output-dir", str(out3), "--checkpoint", str(setup["ckpt"]),
                 "--reduce", "mean"]) == 0
    assert np.load(out3 / "c.npy").shape == (N_LAYERS + 1, DIM)


def test_errors_name_the_file(setup, tmp_path):
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "broken.wav").write_bytes(b"not audio at all")
    sf.write(bad / "tiny.wav", tone(0.01), SR)  # 240 samples < receptive field (400)
    sf.write(bad / "ok.wav", tone(0.5), SR)
    with pytest.raises(FeatureExtractionError, match=r"broken\.wav"):
        extract_to_folder(setup["fs"], [str(bad)], tmp_path / "out", progress=False)
    summary = extract_to_folder(setup["fs"], [str(bad)], tmp_path / "out2", skip_errors=True, progress=False)
    assert summary["written"] == 1 and len(summary["failed"]) == 2
    assert any("tiny.wav" in m and "receptive field" in m for m in summary["failed"])
    with pytest.raises(FeatureExtractionError, match="no such file"):
        collect_inputs([str(tmp_path / "missing.wav")])
    (tmp_path / "dup").mkdir()
    sf.write(tmp_path / "dup" / "x.wav", tone(0.5), SR)
    sf.write(tmp_path / "dup" / "x.flac", tone(0.5), SR)
    with pytest.raises(FeatureExtractionError, match="would both be written"):
        collect_inputs([str(tmp_path / "dup")])
    main = _script_main()
    assert main([str(tmp_path / "missing.wav"), "--output-dir", str(tmp_path / "o"),
                 "--checkpoint", str(setup["ckpt"])]) == 2
