"""Windowed reads in MERTDataset: the same batches as whole-file reads, short clips, normalisation, labels;
and opening a split builds no per-row Python objects."""
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from fairseq.data.dictionary import Dictionary

from mert_fairseq.data.labels import LabelStream, scan_text_labels
from mert_fairseq.data.manifest_index import read_manifest_index
from mert_fairseq.data.mert_dataset import MERTDataset
from mert_fairseq.models.teachers.random_projection import code_dictionary
from windowed_corpus import CROP, LENGTHS, RATE, SR, dataset, write_corpus

def reference_batch(data, ids, seed, epoch, max_size, normalize=False):
    """The original MERT/HuBERT batch, written out independently: read every clip whole with soundfile,
    crop all to the shortest (at most max_size) at a start drawn from default_rng([seed, epoch, id]),
    labels (dictionary index = code + 4) from frame round(start * 75 / 24000)."""
    root = data["root"]
    wavs = [sf.read(root / "audio" / f"c{i}.wav", dtype="float32")[0] for i in ids]
    labels = [[torch.tensor([int(c) + 4 for c in data["labels"][s][i].split()]) for i in ids] for s in data["streams"]]
    size = min(min(len(w) for w in wavs), max_size)
    starts = [int(np.random.default_rng([seed, epoch, i]).integers(0, len(w) - size + 1)) if len(w) > size else 0
              for i, w in zip(ids, wavs)]
    crops = [torch.from_numpy(w[s: s + size]) for w, s in zip(wavs, starts)]
    if normalize:
        crops = [F.layer_norm(c, c.shape) for c in crops]
    frames = [round(s * RATE / SR) for s in starts]
    targets = []
    for stream in labels:
        n = min([round(size * RATE / SR)] + [len(t) - f for t, f in zip(stream, frames)])
        targets.append(torch.stack([t[f: f + n] for t, f in zip(stream, frames)]))
    return torch.stack(crops), targets


@pytest.fixture()
def corpus(tmp_path):
    return write_corpus(tmp_path, LENGTHS)


@pytest.mark.parametrize("npy", [False, True])
def test_windowed_batches_equal_whole_file_batches(corpus, npy):
    ds = dataset(corpus, numpy_memmap_label=npy)
    for epoch in (1, 2):
        ds.set_epoch(epoch)
        for ids in ([0, 2, 4], [1, 3, 5], [5, 4, 0, 2]):
            batch = ds.collater([ds[i] for i in ids])
            audio, targets = reference_batch(corpus, ids, 3, epoch, CROP)
            assert torch.equal(batch["net_input"]["source"], audio), (epoch, ids)
            for got, want in zip(batch["target_list"], targets):
                assert torch.equal(got, want), (epoch, ids)
    ds.set_epoch(1)
    item = ds[4]
    assert item["windowed"] and len(item["source"]) == CROP  # only the window was read
    assert len(item["label_list"][0]) <= CROP * RATE // SR + 3  # and only its labels


def test_whole_read_mode_gives_the_same_batches(corpus):
    windowed, whole = dataset(corpus), dataset(corpus, windowed_reads=False)
    assert len(whole[4]["source"]) == LENGTHS[4]
    for ids in ([0, 2, 4], [3, 5]):
        a, b = windowed.collater([windowed[i] for i in ids]), whole.collater([whole[i] for i in ids])
        assert torch.equal(a["net_input"]["source"], b["net_input"]["source"])
        assert all(torch.equal(x, y) for x, y in zip(a["target_list"], b["target_list"]))


def test_a_short_clip_crops_the_windows_further_or_pads(tmp_path):
    data = write_corpus(tmp_path, [60000, 14400, 50000])  # clip 1: 0.6 s, shorter than the 1 s crop
    ds = dataset(data)
    batch = ds.collater([ds[i] for i in range(3)])
    source, target = batch["net_input"]["source"], batch["target_list"][0]
    assert source.shape == (3, 14400) and target.shape == (3, 45)
    for row, i in enumerate(range(3)):
        full = sf.read(tmp_path / "audio" / f"c{i}.wav", dtype="float32")[0]
        window_start = ds[i]["offset"]
        starts = [s for s in range(window_start, window_start + CROP - 14400 + 1)
                  if np.array_equal(full[s: s + 14400], source[row].numpy())]
        assert len(starts) == 1, row  # a slice of the clip, inside the window that was read
        codes = torch.tensor([int(c) + 4 for c in data["labels"]["a"][i].split()])
        f = round(starts[0] * RATE / SR)
        assert torch.equal(target[row], codes[f: f + 45])  # labels of the same frames
    padded = dataset(data, pad_audio=True)
    batch = padded.collater([padded[i] for i in range(3)])
    mask = batch["net_input"]["padding_mask"]
    assert batch["net_input"]["source"].shape == (3, CROP)
    assert mask[1, 14400:].all() and not mask[1, :14400].any() and not mask[[0, 2]].any()
    assert batch["target_lengths_list"][0].tolist() == [75, 45, 75]


def test_normalize_applies_to_the_crop_the_model_sees(corpus):
    from transformers import Wav2Vec2FeatureExtractor

    ds = dataset(corpus, normalize=True)
    ids = [0, 2, 4]
    batch = ds.collater([ds[i] for i in ids])
    audio, _ = reference_batch(corpus, ids, 3, 1, CROP, normalize=True)
    assert torch.allclose(batch["net_input"]["source"], audio, atol=1e-5)
    source = batch["net_input"]["source"]
    assert source.mean(1).abs().max() < 1e-5 and (source.std(1, unbiased=False) - 1).abs().max() < 1e-3
    # the exported HF preprocessor (do_normalize = task.normalize) normalises a crop the same way
    raw, _ = reference_batch(corpus, ids, 3, 1, CROP)
    hf = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, padding_value=0.0, do_normalize=True)
    hf_values = hf([w.numpy() for w in raw], sampling_rate=SR, return_tensors="pt")["input_values"]
    assert torch.allclose(hf_values, source, atol=1e-3)


def test_labels_read_only_the_window_text_and_npy(corpus):
    root = corpus["root"]
    d = Dictionary.load(str(root / "dict.a.txt"))
    rows = np.array([1, 2, 4])
    codes = [[int(c) + 4 for c in corpus["labels"]["a"][r].split()] for r in rows]
    for npy in (False, True):
        stream = LabelStream(str(root / "train.a"), d, rows, len(LENGTHS), numpy_memmap=npy)
        assert stream.lengths.tolist() == [len(c) for c in codes]
        for i, full in enumerate(codes):
            assert stream.read(i).tolist() == full
            assert stream.read(i, 7, 20).tolist() == full[7:27]
            assert stream.read(i, len(full) - 3, 20).tolist() == full[-3:]  # clipped at the end


def test_text_label_index_handles_odd_lines_and_is_cached(tmp_path):
    path = tmp_path / "x.lab"
    path.write_text("1 2 3\n\n  40   5 \n7")  # an empty line, extra spaces, no final newline
    index = scan_text_labels(str(path))
    assert index["counts"].tolist() == [3, 0, 2, 1]
    data = path.read_bytes()
    lines = [data[a: b - 1] for a, b in zip(index["offsets"][:-1], index["offsets"][1:])]
    assert lines == [b"1 2 3", b"", b"  40   5 ", b"7"]
    d = code_dictionary(50)
    stream = LabelStream(str(path), d, np.arange(4), 4, numpy_memmap=False)
    assert (tmp_path / "x.lab.index.npz").is_file()
    assert stream.read(2).tolist() == [d.index("40"), d.index("5")]
    path.write_text("1 2 3\n\n9\n7 8\n")  # changed file: the cached index is rebuilt
    assert LabelStream(str(path), d, np.arange(4), 4, numpy_memmap=False).lengths.tolist() == [3, 0, 1, 2]


def test_opening_a_split_builds_no_per_row_python_objects(tmp_path):
    rows = 200_000
    lines = "".join(f"dir{r % 97}/track_{r:07d}.wav\t640\n" for r in range(rows))
    (tmp_path / "train.tsv").write_text(f"{tmp_path}\n{lines}")
    (tmp_path / "train.a").write_text("3 1\n" * rows)
    (tmp_path / "dict.a.txt").write_text("".join(f"{c} 1\n" for c in range(8)))
    d = Dictionary.load(str(tmp_path / "dict.a.txt"))
    read_manifest_index(tmp_path / "train.tsv")  # warm imports
    tracemalloc.start()
    ds = MERTDataset(str(tmp_path / "train.tsv"), SR, [str(tmp_path / "train.a")], RATE, [d], max_sample_size=CROP)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # the manifest bytes (~6 MB) + a few int64 arrays of 200k rows; per-row str/int/list objects would be
    # far above (the old reader: ~100 MB)
    assert current < 30 * 2**20, current / 2**20
    assert peak < 60 * 2**20, peak / 2**20
    for obj in (ds, ds.manifest, ds.labels[0]):
        for name, value in vars(obj).items():
            assert not (isinstance(value, (list, tuple, dict)) and len(value) >= rows), name
    assert all(isinstance(a, np.ndarray) for a in (ds.sizes, ds.kept_rows, ds.labels[0].offsets, ds.labels[0].lengths))
    assert len(ds) == rows and ds.name(123456) == "dir72/track_0123456.wav"
    assert ds.labels[0].read(123456).tolist() == [d.index("3"), d.index("1")]


def test_manifest_index_matches_the_line_reader_and_its_errors(tmp_path):
    from mert_fairseq.data.manifest import ManifestError, read_manifest

    tsv = tmp_path / "m.tsv"
    tsv.write_text("/root\na/b c.wav\t10\nd.flac\t20\n")
    index, rows = read_manifest_index(tsv), read_manifest(tsv).rows
    assert [index.name(i) for i in range(len(index))] == [r.relpath for r in rows]
    assert index.sizes.tolist() == [10, 20] and index.root == "/root"
    tsv.write_text("/root\r\na.wav\t10\r\n")  # CRLF: the line reader's rules apply
    assert read_manifest_index(tsv).name(0) == "a.wav"
    for text, message in [("/root\na.wav\t10\nb.wav\tx\n", r"m\.tsv:3: sample count 'x' is not an integer"),
                          ("/root\na.wav\t10\n\nb.wav\t3\n", r"m\.tsv:3: empty line"),
                          ("/root\na.wav\t0\n", r"m\.tsv:2: sample count 0 is not positive"),
                          ("/root\na.wav 10\n", r"m\.tsv:2: expected 'relpath<TAB>num_samples'")]:
        tsv.write_text(text)
        with pytest.raises(ManifestError, match=message):
            read_manifest_index(tsv)


def test_loading_benchmark_runs_on_a_tiny_corpus(tmp_path):
    import json

    from mert_fairseq.perf.data_loading import main

    out = tmp_path / "bench.json"
    assert main(["--tracks", "2", "--seconds", "6", "--formats", "wav,flac-pcm", "--streams", "1",
                 "--min-batches", "2", "--min-cpu-s", "0", "--workdir", str(tmp_path / "corpus"),
                 "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    reads = {r["read"] for r in res["rows"] if r["format"] == "wav"}
    assert reads == {"soundfile window (reference)", "window read only", "whole", "windowed"}
    pcm = [r["read"] for r in res["rows"] if r["format"] == "flac-pcm"]  # FLAC packed with --pcm
    assert sorted(pcm) == ["whole", "whole", "window read only", "windowed", "windowed"]
    assert len(res["rows"]) == 11 and all(r["audio_s_per_cpu_s"] > 0 for r in res["rows"])
    assert res["disk_mb"]["flac-pcm"] > res["disk_mb"]["flac"] > 0  # 16-bit PCM members vs FLAC files
    assert res["crop_s"] == 5.0  # the 95M YAML's max_sample_size
