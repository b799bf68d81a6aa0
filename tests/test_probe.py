"""Probing: known answers on synthetic features (class, multi-label, regression; split and k-fold), CSV
errors, and the feature sources (checkpoint == HF folder, random init, MFCC, cache, CLI outputs)."""
import json

import numpy as np
import pytest
import soundfile as sf

from mert_fairseq.evaluation.probe import (ProbeError, make_task, parse_rows, probe_all, probe_task,
                                           read_probe_csv)
from mert_fairseq.evaluation.probe_features import extract_pooled, feature_source
from mert_fairseq.evaluation.probe_report import format_table, main

SR = 24000


def clustered(n=240, k=4, d=16, seed=0):
    """Labels 0..k-1 and features N x 3 x D: layer 0 noise, layer 1 well separated by class, layer 2 weakly."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centres = rng.standard_normal((k, d)) * 4
    feats = rng.standard_normal((n, 3, d))
    feats[:, 1] += centres[y]
    feats[:, 2] += 0.15 * centres[y]
    return feats, y


def class_task(y):
    return make_task("t", [f"c{v}" for v in y], "class")


def test_separable_class_task_scores_high_on_its_layer_and_noise_scores_chance():
    feats, y = clustered()
    res = probe_task(feats, class_task(y), folds=5)
    scores = [e["score"] for e in res["layers"]]
    assert res["best_layer"] == 1 and res["score"] > 0.95, scores
    assert abs(scores[0] - 0.25) < 0.1, scores  # 4 balanced classes: chance 0.25
    assert res["metric"] == "accuracy" and len(res["layers"]) == 3


def test_shuffled_labels_score_chance():
    feats, y = clustered(seed=1)
    shuffled = np.random.default_rng(5).permutation(y)
    res = probe_task(feats, class_task(shuffled), folds=5)
    assert all(abs(e["score"] - 0.25) < 0.1 for e in res["layers"]), res["layers"]


def test_multilabel_path_roc_auc():
    rng = np.random.default_rng(2)
    n, d = 300, 12
    feats = rng.standard_normal((n, 2, d))
    tags = ["a", "b", "c"]
    rows = [";".join(t for j, t in enumerate(tags) if feats[i, 1, j] > 0) or "none" for i in range(n)]
    task = make_task("tags", rows)  # inferred from the ';'
    assert task.kind == "multilabel" and task.y.shape == (n, 4) and task.classes == ["a", "b", "c", "none"]
    res = probe_task(feats, task, folds=4)
    assert res["metric"] == "roc_auc" and res["best_layer"] == 1
    assert res["layers"][1]["score"] > 0.95 and res["layers"][1]["ap"] > 0.8, res["layers"]
    assert abs(res["layers"][0]["score"] - 0.5) < 0.1, res["layers"]


def test_regression_path_r2():
    rng = np.random.default_rng(3)
    n, d = 200, 10
    feats = rng.standard_normal((n, 2, d))
    tempo = 120 + 20 * feats[:, 1] @ rng.standard_normal(d) + rng.standard_normal(n)
    task = make_task("tempo", [f"{v:.3f}" for v in tempo])
    assert task.kind == "regression"
    res = probe_task(feats, task, folds=5)
    assert res["metric"] == "r2" and res["best_layer"] == 1 and res["score"] > 0.95
    assert res["layers"][0]["score"] < 0.1


def test_split_column_selects_on_valid_and_reports_test(tmp_path):
    feats, y = clustered(n=200)
    split = np.array(["train"] * 120 + ["valid"] * 40 + ["test"] * 40)
    csv = tmp_path / "labels.csv"
    csv.write_text("file,cls,split\n" + "".join(f"x{i}.wav,c{v},{s}\n" for i, (v, s) in enumerate(zip(y, split))))
    probe_set = read_probe_csv(csv, ["cls"], split_column="split")
    assert probe_set.files[3] == tmp_path / "x3.wav" and list(probe_set.split) == list(split)
    (res,) = probe_all(feats, probe_set)
    assert res["best_layer"] == 1 and res["score"] > 0.95 and "valid" in res["layers"][0]


def test_rows_subset_and_fold_spread_in_the_table(tmp_path):
    feats, y = clustered(n=200)
    csv = tmp_path / "labels.csv"
    csv.write_text("file,cls\n" + "".join(f"x{i}.wav,c{v}\n" for i, v in enumerate(y)))
    full = read_probe_csv(csv)
    assert list(parse_rows(":100", 200)) == list(range(100)) and list(parse_rows("100:", 200)) == list(range(100, 200))
    assert list(parse_rows(" 5 : 8 ", 200)) == [5, 6, 7]
    for bad, message in (("100", "expected START:END"), ("150:120", "need 0 <= START < END <= 200"),
                         ("0:201", "need 0 <= START < END <= 200"), ("-1:5", "expected START:END")):
        with pytest.raises(ProbeError, match=message):
            parse_rows(bad, 200)
    rows = parse_rows("100:", 200)
    held_out = full.subset(rows)
    assert held_out.files[0] == tmp_path / "x100.wav" and len(held_out.files) == 100
    assert np.array_equal(held_out.tasks[0].y, full.tasks[0].y[100:]) and held_out.tasks[0].classes == full.tasks[0].classes
    (res,) = probe_all(feats[rows], held_out, folds=5)
    layer = res["layers"][res["best_layer"]]
    assert res["std"] == layer["std"] and 0 <= res["std"] < 0.1, res
    table = format_table({"m": [res]})
    assert f"| {res['score']:.3f} ± {res['std']:.3f} (L1) |" in table, table


def test_csv_errors_name_file_and_line(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("file,key\na.wav,C\nb.wav,\n")
    with pytest.raises(ProbeError, match=r"labels.csv:3: empty 'key'"):
        read_probe_csv(csv)
    with pytest.raises(ProbeError, match=r"labels.csv:1: no column 'mode'"):
        read_probe_csv(csv, ["mode"])
    csv.write_text("file,key,split\na.wav,C,train\nb.wav,D,dev\n")
    with pytest.raises(ProbeError, match=r"labels.csv:3: split 'dev'"):
        read_probe_csv(csv, ["key"], split_column="split")
    with pytest.raises(ProbeError, match="unknown kind 'ordinal'"):
        read_probe_csv(csv, ["key:ordinal"])


# ---------------------------------------------------------------------------------------------- sources
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from export_helpers import build_model, save_checkpoint
    from mert_fairseq.export.convert import convert_checkpoint

    root = tmp_path_factory.mktemp("probe")
    ckpt = save_checkpoint(build_model("330m", seed=4), root / "ckpt.pt")
    convert_checkpoint(ckpt, root / "hf", verify=False)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):  # two classes: low vs high tone
        f0 = 220.0 if i % 2 else 880.0
        t = np.arange(int(0.6 * SR)) / SR
        sf.write(root / f"c{i}.wav", (0.3 * np.sin(2 * np.pi * f0 * t) + 0.01 * rng.standard_normal(len(t))
                                      ).astype(np.float32), SR, subtype="FLOAT")
        rows.append(f"c{i}.wav,{'low' if i % 2 else 'high'},{100 + i}\n")
    (root / "labels.csv").write_text("file,pitch,tempo\n" + "".join(rows))
    return root


@pytest.fixture(scope="module")
def ckpt_source(models):
    return feature_source(str(models / "ckpt.pt"))


def test_checkpoint_and_hf_folder_give_the_same_features_and_cache_is_used(models, ckpt_source, tmp_path):
    files = sorted(models.glob("c*.wav"))
    a = extract_pooled(ckpt_source, files, tmp_path / "cache", progress=False)
    b = extract_pooled(feature_source(str(models / "hf")), files, None, progress=False)
    assert a.shape == (12, 3, 32) and np.abs(a - b).max() < 1e-4
    cached = list((tmp_path / "cache").glob("ckpt-*.npy"))
    assert len(cached) == 1
    np.save(cached[0], np.zeros_like(a))  # a cache hit returns the stored array
    assert not extract_pooled(ckpt_source, files, tmp_path / "cache", progress=False).any()


def test_mean_std_pooling_appends_the_std_to_the_mean(models, ckpt_source):
    files = sorted(models.glob("c*.wav"))[:3]
    mean = extract_pooled(ckpt_source, files, progress=False)
    both = extract_pooled(feature_source(str(models / "ckpt.pt"), pool="mean+std"), files, progress=False)
    assert both.shape == (3, 3, 64) and np.abs(both[..., :32] - mean).max() < 1e-5
    assert (both[..., 32:] > 0).all()  # per-dimension standard deviations over time
    with pytest.raises(ProbeError, match="pool='max'"):
        feature_source(str(models / "ckpt.pt"), pool="max")


def test_random_init_is_seeded_and_differs_from_trained(models, ckpt_source):
    files = sorted(models.glob("c*.wav"))[:3]
    r1 = extract_pooled(feature_source(f"random-init:{models / 'ckpt.pt'}"), files, progress=False)
    r2 = extract_pooled(feature_source(f"rand=random-init:{models / 'ckpt.pt'}"), files, progress=False)
    trained = extract_pooled(ckpt_source, files, progress=False)
    assert np.array_equal(r1, r2) and np.abs(r1 - trained).max() > 1e-2
    mfcc = extract_pooled(feature_source("mfcc"), files, progress=False)
    assert mfcc.shape == (3, 1, 78)


def test_cli_writes_table_json_and_png(models, tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()
    try:
        rc = main([str(models / "ckpt.pt"), "mfcc", "--labels", str(models / "labels.csv"), "--tasks",
                   "pitch,tempo:regression", "--folds", "3", "--out-dir", str(tmp_path / "out"), "--no-progress",
                   "--threads", "1"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    out = capsys.readouterr().out
    assert "| pitch | accuracy |" in out and "| tempo | r2 |" in out and " ± " in out
    data = json.loads((tmp_path / "out" / "probe.json").read_text())
    assert set(data["results"]) == {"ckpt", "mfcc"} and data["results"]["mfcc"][0]["score"] > 0.9
    png = (tmp_path / "out" / "probe_layers.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert main(["mfcc", "--labels", str(models / "labels.csv"), "--rows", "6:", "--folds", "3", "--tasks", "pitch",
                 "--out-dir", str(tmp_path / "rows"), "--no-progress"]) == 0
    held_out = json.loads((tmp_path / "rows" / "probe.json").read_text())
    assert held_out["clips"] == 6 and "rows 6:" in held_out["evaluation"]
    assert main(["mfcc", "--labels", str(models / "labels.csv"), "--rows", "6:20", "--out-dir", str(tmp_path / "x")]) == 2
    assert main(["nosuch.pt", "--labels", str(models / "labels.csv"), "--out-dir", str(tmp_path / "x")]) == 2
    assert main(["mfcc", "--labels", str(models / "labels.csv"), "--threads", "-1"]) == 2
