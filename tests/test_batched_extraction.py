"""Batched extraction over a folder (issue 30, item 3): files sorted by duration, run as padded batches with
their mask, give the same .npy files as one file at a time (1e-5; 5e-5 with the CQT input), for a fairseq
checkpoint and an HF export; groups respect the batch size and the memory bound."""
import numpy as np
import pytest
import soundfile as sf

from export_helpers import build_model, save_checkpoint
from mert_fairseq.evaluation import features
from mert_fairseq.evaluation.features import _length_groups, extract_to_folder, load_feature_extractor
from mert_fairseq.export.convert import convert_checkpoint
from mert_fairseq.prep.demo_corpus import clip_spec, render_clip

SR = 24000
SECONDS = (2.5, 1.0, 3.7, 0.8, 2.0, 3.1)  # unsorted, odd lengths


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("batched")
    audio = root / "audio"
    audio.mkdir()
    for i, s in enumerate(SECONDS):
        clip = render_clip(clip_spec(i, np.ceil(s), SR, seed=7))[: int(s * SR) + 2 * i + 1]
        sf.write(audio / f"clip{i}.wav", clip, SR, subtype="FLOAT")
    ckpt = save_checkpoint(build_model("95m", seed=8, feature_extractor_cqt=True, feature_extractor_cqt_bins=84),
                           root / "cqt.pt")
    convert_checkpoint(ckpt, root / "hf", verify=False)
    gn = save_checkpoint(build_model("95m", seed=9), root / "gn.pt")
    return {"root": root, "audio": audio, "extractors": {
        "fairseq group norm": (load_feature_extractor(checkpoint=str(gn)), 1e-5),
        "HF group norm + CQT input": (load_feature_extractor(hf_model=str(root / "hf")), 5e-5)}}


@pytest.mark.parametrize("name", ["fairseq group norm", "HF group norm + CQT input"])
def test_batches_give_the_same_files_as_one_at_a_time(corpus, name, tmp_path):
    fx, tol = corpus["extractors"][name]
    one = extract_to_folder(fx, [str(corpus["audio"])], tmp_path / "one", batch_size=1, progress=False)
    many = extract_to_folder(fx, [str(corpus["audio"])], tmp_path / "many", batch_size=4, progress=False)
    assert one["written"] == many["written"] == len(SECONDS)
    for i, s in enumerate(SECONDS):
        a, b = np.load(tmp_path / "one" / f"clip{i}.npy"), np.load(tmp_path / "many" / f"clip{i}.npy")
        assert a.shape == b.shape == (3, fx.num_frames(int(s * SR) + 2 * i + 1), 32)
        diff = float(np.abs(a - b).max())
        assert diff <= tol, f"{name}: clip{i} ({s} s) differs by {diff:.3g} in a batch"
    mean = extract_to_folder(fx, [str(corpus["audio"])], tmp_path / "mean", batch_size=3, reduce="mean",
                             progress=False)
    assert mean["written"] == len(SECONDS)
    assert np.abs(np.load(tmp_path / "mean" / "clip2.npy") - np.load(tmp_path / "one" / "clip2.npy").mean(1)
                  ).max() <= tol


def test_groups_are_sorted_by_duration_and_bounded(corpus, monkeypatch):
    fx, _ = corpus["extractors"]["fairseq group norm"]
    items = [(corpus["audio"] / f"clip{i}.wav", f"clip{i}.npy") for i in range(len(SECONDS))]
    groups = [[rel for _, rel in g] for g in _length_groups(fx, items, 4)]
    order = [f"clip{i}.npy" for i in np.argsort(SECONDS)]
    assert groups == [order[:4], order[4:]]
    # a memory bound of two 3.7 s clips' first CNN block: the longest clips go in smaller groups
    monkeypatch.setattr(features, "WHOLE_FILE_BYTES", fx.first_block_bytes(int(3.7 * SR) + 10) * 2)
    groups = [[rel for _, rel in g] for g in _length_groups(fx, items, 4)]
    assert [len(g) for g in groups] == [3, 2, 1]  # 3 x 2.0 s, 2 x 3.1 s fit; 4 x 2.5 s, 3 x 3.7 s do not
    assert sum(groups, []) == order


def test_cli_batch_size(corpus, tmp_path):
    code = features.main([str(corpus["audio"]), "--out-dir", str(tmp_path / "cli"), "--hf-model",
                          str(corpus["root"] / "hf"), "--batch-size", "3", "--reduce", "mean"])
    assert code == 0 and len(list((tmp_path / "cli").glob("*.npy"))) == len(SECONDS)
    assert features.main([str(corpus["audio"]), "--out-dir", str(tmp_path / "x"), "--hf-model",
                          str(corpus["root"] / "hf"), "--batch-size", "0"]) == 2
