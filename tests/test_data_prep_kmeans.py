"""k-means labels: MFCC frame rule, fit/apply, saved-model reuse, MERT-layer features."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from data_prep_helpers import TINY_LENGTHS, make_prepared_dataset, read_label_lines, run_script, tone
from mert_fairseq.prep.kmeans_features import FeatureSpec, MertFeatures, MfccFeatures
from mert_fairseq.prep.kmeans_model import fit_kmeans, load_model
from mert_fairseq.prep.kmeans_labels import apply_kmeans, sample_fit_frames
from mert_fairseq.data.manifest import read_manifest

SR = 24000


@pytest.fixture(scope="module")
def manifest_dir(tmp_path_factory):
    return make_prepared_dataset(tmp_path_factory.mktemp("kmeans_data"))


def test_mfcc_frames_follow_the_label_rule():
    extract = MfccFeatures(FeatureSpec(n_mfcc=13))
    for n in (300, 3200, 3201, SR + 17, 2 * SR):
        feats = extract(tone(n))
        assert feats.shape == (math.ceil(n / 320), 39) and np.isfinite(feats).all()


def test_fit_sample_is_bounded_and_seeded(manifest_dir):
    manifest = read_manifest(manifest_dir / "train.tsv")
    extract = MfccFeatures(FeatureSpec())
    a = sample_fit_frames(manifest, extract, max_frames=300, seed=1)
    assert a.shape == (300, 39)
    assert np.array_equal(a, sample_fit_frames(manifest, extract, max_frames=300, seed=1))
    assert not np.array_equal(a, sample_fit_frames(manifest, extract, max_frames=300, seed=2))
    total = sum(math.ceil(r.num_samples / 320) for r in manifest.rows)
    assert len(sample_fit_frames(manifest, extract, max_frames=10**9, seed=0)) == total


def test_cli_fit_apply_and_reuse_of_saved_model(manifest_dir, tmp_path):
    labels, model_path = tmp_path / "labels", tmp_path / "km.joblib"
    result = run_script("prepare_kmeans_labels", "all", "--manifest-dir", manifest_dir, "--kmeans-model", model_path,
                        "--label-dir", labels, "--n-clusters", 8, "--max-fit-frames", 2000, "--name", "km8")
    assert result.returncode == 0, result.stderr
    for split in ("train", "valid"):
        rows = read_manifest(manifest_dir / f"{split}.tsv").rows
        lines = read_label_lines(labels / f"{split}.km8")
        assert [len(line) for line in lines] == [math.ceil(r.num_samples / 320) for r in rows]
        assert all(0 <= c < 8 for line in lines for c in line)
    used = {c for line in read_label_lines(labels / "train.km8") for c in line}
    assert len(used) >= 4
    entries = [line.split() for line in (labels / "dict.km8.txt").read_text().splitlines()]
    assert [int(c) for c, _ in entries] == list(range(8))
    assert sum(int(n) for _, n in entries) == sum(math.ceil(n / 320) for n in TINY_LENGTHS[:2])  # valid ran last

    km, spec = load_model(model_path)
    assert spec == FeatureSpec() and km.n_clusters == 8
    again = tmp_path / "again"
    apply_kmeans(read_manifest(manifest_dir / "train.tsv"), MfccFeatures(spec), km, again, "km8", "train")
    assert (again / "train.km8").read_bytes() == (labels / "train.km8").read_bytes()


def test_fit_is_deterministic_and_rejects_too_few_frames(manifest_dir):
    frames = sample_fit_frames(read_manifest(manifest_dir / "train.tsv"), MfccFeatures(FeatureSpec()), 1000, 0)
    a, b = fit_kmeans(frames, 8, seed=0), fit_kmeans(frames, 8, seed=0)
    assert np.array_equal(a.cluster_centers_, b.cluster_centers_)
    with pytest.raises(ValueError, match=f"only {len(frames)} frames"):
        fit_kmeans(frames, 2000)


def test_apply_rejects_a_file_that_is_not_a_model(tmp_path, manifest_dir, capsys):
    from mert_fairseq.prep.kmeans_labels import main

    (tmp_path / "x.joblib").write_bytes(b"nonsense")
    argv = ["apply", "--manifest-dir", str(manifest_dir), "--kmeans-model", str(tmp_path / "x.joblib"),
            "--label-dir", str(tmp_path)]
    assert main(argv) == 1
    assert "x.joblib: cannot load k-means model" in capsys.readouterr().err


# ----------------------------------------------------------------------------- MERT-layer features


def _tiny_mert(**overrides):
    tiny_models = pytest.importorskip("tiny_models", reason="tests/tiny_models.py (tiny MERT configs) not present")
    if not hasattr(tiny_models, "tiny_model"):
        pytest.skip("tests/tiny_models.py has no tiny_model()")
    torch.manual_seed(0)
    return tiny_models.tiny_model("kmeans", **overrides).eval()


def test_mert_features_are_frame_aligned_across_chunks():
    # layer-norm CNN: the layer-0 features are local, so chunking may only change frames near seams
    model = _tiny_mert(extractor_mode="layer_norm")
    wav = tone(3 * SR - 319)
    whole = MertFeatures(FeatureSpec("mert", layer=0, max_chunk_seconds=60), model=model, normalize=False)(wav)
    chunked = MertFeatures(FeatureSpec("mert", layer=0, max_chunk_seconds=0.5), model=model, normalize=False)(wav)
    assert whole.shape == chunked.shape == (math.ceil(len(wav) / 320), 32)
    step = int(0.5 * SR) // 320  # frames per chunk
    interior = [f for f in range(len(whole) - 2) if 8 <= f % step < step - 8]
    assert np.allclose(whole[interior], chunked[interior], atol=1e-4)
    assert not np.allclose(whole[interior][1:], chunked[interior][:-1], atol=1e-4)  # a shift would show


def test_mert_checkpoint_path_end_to_end(tmp_path, manifest_dir):
    checkpoint = pytest.importorskip("mert_fairseq.checkpoint.model_loading")
    if not hasattr(checkpoint, "load_mert_model"):
        pytest.skip("mert_fairseq.checkpoint.model_loading.load_mert_model not available yet")
    from omegaconf import OmegaConf

    model = _tiny_mert()
    cfg = {"model": {**OmegaConf.to_container(model.cfg, resolve=True, enum_to_str=True), "_name": "mert"},
           "task": {"_name": "mert_pretraining", "sample_rate": SR, "label_rate": 75, "labels": ["kmeans"],
                    "normalize": False}}
    torch.save({"cfg": cfg, "model": model.state_dict()}, tmp_path / "tiny.pt")
    labels = tmp_path / "labels"
    result = run_script("prepare_kmeans_labels", "all", "--manifest-dir", manifest_dir, "--kmeans-model",
                        tmp_path / "mert.joblib", "--label-dir", labels, "--feature", "mert", "--checkpoint",
                        tmp_path / "tiny.pt", "--layer", 2, "--n-clusters", 4, "--name", "mert_l2", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    rows = read_manifest(manifest_dir / "train.tsv").rows
    lines = read_label_lines(labels / "train.mert_l2")
    assert [len(line) for line in lines] == [math.ceil(r.num_samples / 320) for r in rows]
    assert all(0 <= c < 4 for line in lines for c in line)
    assert load_model(tmp_path / "mert.joblib")[1].layer == 2


# ----------------------------------------------------------------------------- chroma features


def test_chroma_frames_follow_the_label_rule_and_peak_at_the_pitch_class():
    from mert_fairseq.prep.kmeans_features import ChromaFeatures

    chroma, mfcc = ChromaFeatures(FeatureSpec("chroma")), MfccFeatures(FeatureSpec())
    t = np.arange(SR) / SR
    for n in (300, 3201, SR):
        wav = (0.3 * np.sin(2 * np.pi * 440.0 * t[:n])).astype(np.float32)
        feats = chroma(wav)
        assert feats.shape == (len(mfcc(wav)), 12) == (math.ceil(n / 320), 12) and np.isfinite(feats).all()
    for midi in (57, 60, 66, 71):  # A3, C4, F#4, B4: pitch classes 9, 0, 6, 11
        wav = (0.3 * np.sin(2 * np.pi * 440.0 * 2 ** ((midi - 69) / 12) * t)).astype(np.float32)
        middle = chroma(wav)[20:-20]
        assert (middle.argmax(1) == midi % 12).all()
        np.testing.assert_allclose(np.linalg.norm(middle, axis=1), 1.0, rtol=1e-5)  # per-frame L2 norm
    assert np.abs(chroma(np.zeros(SR, np.float32))).max() == 0.0  # silence stays at the origin


def test_cqt_frames_keep_the_octave_that_chroma_folds_away():
    from mert_fairseq.prep.kmeans_features import ChromaFeatures, make_extractor

    cqt, chroma = make_extractor(FeatureSpec("cqt")), ChromaFeatures(FeatureSpec("chroma"))
    assert isinstance(cqt, ChromaFeatures) and cqt.kind == "cqt"
    t = np.arange(SR) / SR
    assert cqt(np.zeros(3201, np.float32)).shape == (math.ceil(3201 / 320), 84)
    for midi in (45, 57, 60, 71):  # A2, A3 (same pitch class, an octave apart), C4, B4; bin 0 = C1 = MIDI 24
        wav = (0.3 * np.sin(2 * np.pi * 440.0 * 2 ** ((midi - 69) / 12) * t)).astype(np.float32)
        middle = cqt(wav)[20:-20]
        assert (middle.argmax(1) == midi - 24).all() and (chroma(wav)[20:-20].argmax(1) == midi % 12).all()
        np.testing.assert_allclose(np.linalg.norm(middle, axis=1), 1.0, rtol=1e-5)
    assert np.abs(cqt(np.zeros(SR, np.float32))).max() == 0.0


def _triad(bass_midi: int, intervals: tuple[int, ...], seconds: float = 1.0) -> np.ndarray:
    """A bass note (louder) and the chord an octave above it, as sines."""
    from mert_fairseq.prep.demo_corpus import midi_to_hz

    t = np.arange(int(seconds * SR)) / SR
    wav = 0.4 * np.sin(2 * np.pi * midi_to_hz(bass_midi) * t)
    for i in intervals:
        wav += 0.15 * np.sin(2 * np.pi * midi_to_hz(bass_midi + 12 + i) * t)
    return wav.astype(np.float32)


def test_chord_frames_are_the_chroma_relative_to_the_bass():
    from mert_fairseq.prep.kmeans_features import ChromaFeatures, make_extractor

    chord, chroma = make_extractor(FeatureSpec("chord", chord_smooth_frames=1)), ChromaFeatures(FeatureSpec("chroma"))
    assert isinstance(chord, ChromaFeatures) and chord.kind == "chord"
    assert chord(np.zeros(3201, np.float32)).shape == (math.ceil(3201 / 320), 12)
    major, minor = (0, 4, 7), (0, 3, 7)
    for bass in (36, 38, 45, 47):  # C2, D2, A2, B2: the same chord quality in four keys
        for quality in (major, minor):
            feats, plain = chord(_triad(bass, quality))[20:-20], chroma(_triad(bass, quality))[20:-20]
            third, other = quality[1], 7 - quality[1]  # 4 / 3 (major) or 3 / 4 (minor) semitones above the bass
            assert (feats.argmax(1) == 0).all(), (bass, quality)  # bin 0 = the bass
            assert (feats[:, third] > feats[:, other] + 0.02).all() and (feats[:, 7] > feats[:, 6] + 0.02).all()
            # the same pitch classes as the chroma, rotated by the bass's pitch class
            np.testing.assert_allclose(feats, np.roll(plain, -(bass % 12), axis=1), atol=1e-6)
            np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)
    # transposition invariance: C major and A major give the same frames (within the CQT's ripple)
    np.testing.assert_allclose(chord(_triad(36, major))[20:-20].mean(0), chord(_triad(45, major))[20:-20].mean(0),
                               atol=0.05)
    assert np.abs(chord(np.zeros(SR, np.float32))).max() == 0.0


def test_chord_smoothing_averages_over_centred_frames():
    from mert_fairseq.prep.kmeans_features import ChromaFeatures, moving_average

    x = torch.arange(10.0)[:, None].repeat(1, 2)  # [T=10, D=2]
    torch.testing.assert_close(moving_average(x, 3)[:, 0], torch.tensor([0.5, 1, 2, 3, 4, 5, 6, 7, 8, 8.5]))
    torch.testing.assert_close(moving_average(x, 1), x)
    # C major, then A minor (bass C2, then A2): smoothing blurs only the frames near the change
    wav = np.concatenate([_triad(36, (0, 4, 7)), _triad(45, (0, 3, 7))])
    plain = ChromaFeatures(FeatureSpec("chord", chord_smooth_frames=1))(wav)
    smooth = ChromaFeatures(FeatureSpec("chord"))(wav)  # 37 frames by default
    assert plain.shape == smooth.shape == (math.ceil(len(wav) / 320), 12)
    change = len(plain) // 2
    for near in (change - 10, change + 10):  # within half a window of the change: a blend of both chords
        assert np.abs(smooth[near] - plain[near]).sum() > 0.2
    np.testing.assert_allclose(smooth[40 : change - 40], plain[40 : change - 40], atol=0.05)
    np.testing.assert_allclose(smooth[change + 40 : -40], plain[change + 40 : -40], atol=0.05)
    # chroma and cqt are never smoothed
    chroma = ChromaFeatures(FeatureSpec("chroma", chord_smooth_frames=37))(wav)
    np.testing.assert_array_equal(chroma, ChromaFeatures(FeatureSpec("chroma", chord_smooth_frames=1))(wav))
    with pytest.raises(ValueError, match="chord_smooth_frames must be >= 1"):
        ChromaFeatures(FeatureSpec("chord", chord_smooth_frames=0))


def test_onset_frames_rise_where_a_click_starts_and_stay_zero_on_steady_sound():
    from mert_fairseq.prep.kmeans_features import OnsetFeatures, make_extractor

    onset = make_extractor(FeatureSpec("onset"))
    assert isinstance(onset, OnsetFeatures)
    t = np.arange(SR) / SR
    steady = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    clicked = steady.copy()
    at = 16000  # a 5 ms noise burst at sample 16000 = label frame 50
    clicked[at : at + 120] += np.random.default_rng(0).uniform(-0.5, 0.5, 120).astype(np.float32)
    plain, feats = onset(steady), onset(clicked)
    assert plain.shape == feats.shape == (math.ceil(SR / 320), 40) and (feats >= 0).all()
    assert np.abs(plain[5:-5]).max() < 0.05  # a steady tone has no flux once it has started
    assert np.abs(onset(np.zeros(SR, np.float32))).max() == 0.0  # silence: none (the power floor)
    per_frame = feats.sum(1)
    assert abs(int(per_frame.argmax()) - at / 320) <= 2  # the burst's frame (the STFT window is 600 samples)
    assert per_frame[45:56].max() > 20 * per_frame[5:40].max() + 1.0
    assert feats[per_frame.argmax(), 20:].sum() > feats[per_frame.argmax(), :20].sum()  # broadband: high bands too


def test_onset_smoothing_spreads_a_click_over_its_window_and_keeps_the_total():
    from mert_fairseq.prep.kmeans_features import OnsetFeatures

    t = np.arange(SR) / SR
    wav = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    wav[16000 : 16120] += np.random.default_rng(0).uniform(-0.5, 0.5, 120).astype(np.float32)  # frame 50
    plain = OnsetFeatures(FeatureSpec("onset"))(wav)
    smooth = OnsetFeatures(FeatureSpec("onset", onset_smooth_frames=21))(wav)
    assert smooth.shape == plain.shape
    near, spread = plain[30:65].sum(1), smooth[30:65].sum(1)  # frames 30-64 hold the click's window
    assert abs(spread.sum() - near.sum()) < 0.01 * near.sum()  # a mean over 21 frames keeps the total
    np.testing.assert_allclose(spread[10:31], near.max() / 21, rtol=0.02)  # frames 40-60: 1/21 of the click each
    assert spread[:10].max() < 0.01 and spread[31:].max() < 0.05  # beyond half a window: the steady tone's flux
    with pytest.raises(ValueError, match="onset_smooth_frames must be >= 1"):
        OnsetFeatures(FeatureSpec("onset", onset_smooth_frames=0))


def test_onset_min_hz_keeps_only_high_bands_so_a_bass_attack_gives_no_flux():
    from mert_fairseq.prep.kmeans_features import OnsetFeatures

    t = np.arange(SR) / SR
    bass = (0.5 * np.sin(2 * np.pi * 110 * t) * (t >= 0.5)).astype(np.float32)  # a 110 Hz note starting at frame 37
    hiss = bass.copy()
    hiss[16000 : 16120] += np.random.default_rng(0).uniform(-0.5, 0.5, 120).astype(np.float32)  # a click at frame 50
    every, high = OnsetFeatures(FeatureSpec("onset")), OnsetFeatures(FeatureSpec("onset", onset_min_hz=2000))
    assert every(bass).shape == (75, 40) and high(bass).shape == (75, 21)  # 21 of 40 bands peak at >= 2 kHz
    assert every(bass)[35:40].sum() > 1.0  # the note's attack, in the low bands
    assert high(bass)[5:70].max() < 0.05  # ... which the high bands do not see
    np.testing.assert_allclose(high(hiss), every(hiss)[:, 19:], rtol=1e-5, atol=1e-6)  # the same flux, band for band
    assert high(hiss)[48:53].sum() > 10.0
    with pytest.raises(ValueError, match=r"onset_min_hz=20000: no mel band is centred that high \(highest 11133 Hz\)"):
        OnsetFeatures(FeatureSpec("onset", onset_min_hz=20000))


def test_cli_fit_with_chroma_saves_its_feature_settings(manifest_dir, tmp_path):
    model_path = tmp_path / "chroma.joblib"
    result = run_script("prepare_kmeans_labels", "all", "--manifest-dir", manifest_dir, "--kmeans-model", model_path,
                        "--label-dir", tmp_path / "labels", "--n-clusters", 4, "--max-fit-frames", 1000,
                        "--feature", "chroma", "--chroma-gain", 5)
    assert result.returncode == 0, result.stderr
    km, spec = load_model(model_path)
    assert spec == FeatureSpec("chroma", chroma_gain=5.0) and km.cluster_centers_.shape == (4, 12)
    lines = read_label_lines(tmp_path / "labels" / "train.kmeans")
    assert [len(line) for line in lines] == [math.ceil(r.num_samples / 320) for r in read_manifest(manifest_dir / "train.tsv").rows]


def test_cli_two_streams_in_one_call_equal_two_single_calls(manifest_dir, tmp_path, capsys):
    """The script with two streams once (a fresh interpreter), then its main() in this process."""
    from mert_fairseq.prep.kmeans_labels import main

    common = ("--manifest-dir", manifest_dir, "--n-clusters", 4, "--max-fit-frames", 1000)
    both = tmp_path / "both"
    result = run_script("prepare_kmeans_labels", "all", *common, "--label-dir", both, "--feature", "mfcc+chroma",
                        "--kmeans-model", both / "{name}.npz")
    assert result.returncode == 0, result.stderr

    def run(*args) -> tuple[int, str]:
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse errors
            code = exc.code
        return code, capsys.readouterr().err

    for name, feature in (("kmeans", "mfcc"), ("chroma", "chroma")):
        single = tmp_path / name
        code, err = run("all", *common, "--label-dir", single, "--feature", feature, "--kmeans-model",
                        single / "km.npz", "--name", name)
        assert code == 0, err
        assert load_model(both / f"{name}.npz")[1] == FeatureSpec(feature)
        for f in (f"train.{name}", f"valid.{name}", f"dict.{name}.txt"):
            assert (both / f).read_bytes() == (single / f).read_bytes(), f
    code, err = run("apply", "--manifest-dir", manifest_dir, "--label-dir", tmp_path / "re",
                    "--kmeans-model", both / "{name}.npz", "--name", "kmeans,chroma", "--splits", "valid")
    assert code == 0, err
    assert (tmp_path / "re" / "valid.chroma").read_bytes() == (both / "valid.chroma").read_bytes()
    for extra, message in ((("--kmeans-model", tmp_path / "one.npz"), "needs a {name} placeholder"),
                           (("--kmeans-model", both / "{name}.npz", "--name", "a"), "2 streams but --name a has 1"),
                           (("--kmeans-model", both / "{name}.npz", "--name", "a,a"), "stream names must differ")):
        code, err = run("all", *common, "--label-dir", tmp_path / "bad", "--feature", "mfcc+chroma", *extra)
        assert code == 1 and message in err, err
    code, err = run("fit", *common, "--kmeans-model", both / "x", "--feature", "mfcc+pitch")
    assert code == 2 and "unknown feature 'pitch'" in err


# ----------------------------------------------------------------------------- model files without pickle


class _Payload:
    """Unpickling this creates a marker file (as a hostile model file could run anything)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _old_format_file(path, km, payload=None):
    """A model file as earlier versions wrote it (joblib pickle of a dict), optionally with a payload."""
    import joblib

    saved = {"format": "mert-fairseq-kmeans/1", "kmeans": km, "feature": {"kind": "mfcc", "n_mfcc": 13, "n_mels": 40,
             "checkpoint": None, "layer": None, "max_chunk_seconds": 30.0, "chroma_gain": 10.0},
             "fitted_on": "train.tsv", "identity": None}
    if payload is not None:
        saved["extra"] = _Payload(payload)
    joblib.dump(saved, path)
    return path


def test_saved_model_is_data_only_npz(manifest_dir, tmp_path):
    import zipfile

    from mert_fairseq.prep.kmeans_model import KMeansModel, nearest_center, save_model

    frames = sample_fit_frames(read_manifest(manifest_dir / "train.tsv"), MfccFeatures(FeatureSpec()), 1000, 0)
    km = fit_kmeans(frames, 8, seed=0)
    save_model(tmp_path / "km.npz", km, FeatureSpec("chroma", chroma_gain=3.0), "x.tsv", {"a": 1})
    with zipfile.ZipFile(tmp_path / "km.npz") as zf:
        assert sorted(zf.namelist()) == ["cluster_centers.npy", "feature.npy", "fitted_on.npy", "format.npy",
                                         "identity.npy"]
    with np.load(tmp_path / "km.npz", allow_pickle=False) as z:  # every member a plain array
        assert z["cluster_centers"].shape == (8, 39) and str(z["format"]) == "mert-fairseq-kmeans/2"
    loaded, spec = load_model(tmp_path / "km.npz")
    assert isinstance(loaded, KMeansModel) and spec == FeatureSpec("chroma", chroma_gain=3.0)
    assert np.array_equal(loaded.cluster_centers_, km.cluster_centers_) and loaded.n_clusters == 8
    assert np.array_equal(nearest_center(loaded.cluster_centers_, frames), km.predict(frames))  # sklearn's labels
    save_model(tmp_path / "again.npz", loaded, spec, "x.tsv", {"a": 1})
    assert (tmp_path / "again.npz").read_bytes() == (tmp_path / "km.npz").read_bytes()  # reproducible bytes


def test_pickled_model_is_refused_unloaded_then_converted_when_trusted(manifest_dir, tmp_path, capsys):
    from mert_fairseq.prep.kmeans_model import saved_identity
    from mert_fairseq.prep.kmeans_labels import main

    frames = sample_fit_frames(read_manifest(manifest_dir / "train.tsv"), MfccFeatures(FeatureSpec()), 1000, 0)
    km = fit_kmeans(frames, 8, seed=0)
    marker = tmp_path / "code_ran"
    hostile = _old_format_file(tmp_path / "hostile.joblib", km, payload=marker)
    for name in ("hostile.joblib", "renamed.npz", "renamed.bin"):  # refused whatever it is called
        path = tmp_path / name
        if not path.exists():
            path.write_bytes(hostile.read_bytes())
        with pytest.raises(ValueError) as err:
            load_model(path)
        assert f"{path}: cannot load k-means model: this is a pickle (joblib) file" in str(err.value)
        assert f"convert --trust-pickle {path} {path.with_suffix('.npz')}" in str(err.value)
        assert saved_identity(path) is None
    argv = ["apply", "--manifest-dir", str(manifest_dir), "--kmeans-model", str(hostile), "--label-dir", str(tmp_path)]
    assert main(argv) == 1 and "--trust-pickle" in capsys.readouterr().err
    assert main(["convert", str(hostile), str(tmp_path / "h.npz")]) == 1  # no flag: not loaded either
    assert "pass --trust-pickle if you trust" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "h.npz").exists()
    assert main(["convert", str(hostile), str(tmp_path / "h.npz"), "--trust-pickle"]) == 0
    assert marker.exists()  # the payload ran: only ever with the explicit flag

    # a trusted old model: same centroids, saved feature settings, same labels as sklearn's predict
    old = _old_format_file(tmp_path / "old.joblib", km)
    assert main(["convert", str(old), str(tmp_path / "new.npz"), "--trust-pickle"]) == 0
    new, spec = load_model(tmp_path / "new.npz")
    assert spec == FeatureSpec() and np.array_equal(new.cluster_centers_, km.cluster_centers_)
    import joblib

    joblib.dump(km, tmp_path / "bare.pkl")  # a bare sklearn estimator (HuBERT's learn_kmeans.py)
    assert main(["convert", str(tmp_path / "bare.pkl"), str(tmp_path / "bare.npz"), "--trust-pickle",
                 "--feature", "chroma"]) == 0
    assert load_model(tmp_path / "bare.npz")[1] == FeatureSpec("chroma")


def test_model_file_with_an_object_array_is_refused(tmp_path):
    np.savez(tmp_path / "obj.npz", format=np.array("mert-fairseq-kmeans/2"),
             cluster_centers=np.array([{"a": 1}], dtype=object), feature=np.array("{}"))
    with pytest.raises(ValueError, match="obj.npz: cannot load k-means model"):
        load_model(tmp_path / "obj.npz")
