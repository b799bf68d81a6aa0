"""Bad training input gets an error naming the file (and line), never a silent substitute.

Complements tests/test_dataset.py (unreadable audio, wrong sample rate, label-count mismatch, short
label line, unknown text code, empty/missing manifest, missing dictionary are tested there)."""
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mert_fairseq.data.audio import AudioError
from mert_fairseq.data.mert_dataset import DataError
from synthetic import make_tone_dataset
from synthetic import task_for


@pytest.fixture()
def tones(tmp_path):
    return make_tone_dataset(tmp_path, n_clips=6, seconds=1.5)


def _dataset(data, **overrides):
    task = task_for(data, **overrides)
    task.load_dataset("train")
    return task.datasets["train"]


def _label_lines(data) -> list:
    return (Path(data["label_dir"]) / "train.tone").read_text().splitlines()


def _write_labels(data, lines) -> None:
    (Path(data["label_dir"]) / "train.tone").write_text("\n".join(lines) + "\n")


def _npy_labels(data, dtype=np.int64) -> np.ndarray:
    codes = [[int(c) for c in line.split()] for line in _label_lines(data)]
    array = np.full((len(codes), max(map(len, codes))), -1, dtype=dtype)
    for i, row in enumerate(codes):
        array[i, : len(row)] = row
    return array


# ---------------------------------------------------------------- audio
def test_empty_audio_file_names_the_file(tones):
    sf.write(Path(tones["data"]) / "audio" / "train_001.wav", np.zeros(0, np.float32), 24000)
    with pytest.raises(AudioError, match=r"train_001\.wav: audio file is empty \(0 samples\)"):
        _dataset(tones)[1]


def test_audio_shorter_than_its_manifest_row_is_an_error(tones):
    path = Path(tones["data"]) / "audio" / "train_002.wav"
    wav, _ = sf.read(path, dtype="float32")
    sf.write(path, wav[:20000], 24000, subtype="FLOAT")  # truncated after the manifest was written
    with pytest.raises(AudioError, match=r"train\.tsv:4: \S+train_002\.wav: 20000 samples but the manifest says 36000"):
        _dataset(tones)[2]


def test_clips_declared_too_short_are_dropped_with_a_count(tones, caplog):
    tsv = Path(tones["data"]) / "train.tsv"
    rows = tsv.read_text().splitlines()
    rows[3] = rows[3].split("\t")[0] + "\t100"
    tsv.write_text("\n".join(rows) + "\n")
    with caplog.at_level(logging.INFO):
        ds = _dataset(tones, min_sample_size=24000)
    assert len(ds) == 5 and "train_002.wav" not in [ds.name(i) for i in range(len(ds))]
    assert "train.tsv: kept 5 of 6 clips (1 too short, 0 too long)" in caplog.text


def test_stereo_is_downmixed_by_averaging_the_channels(tones):
    """A deliberate, documented choice (README data section): multi-channel audio is averaged to mono."""
    path = Path(tones["data"]) / "audio" / "train_000.wav"
    left, _ = sf.read(path, dtype="float32")
    right = np.roll(left, 100)
    sf.write(path, np.stack([left, right], axis=1), 24000, subtype="FLOAT")
    ds = _dataset(tones)
    start, frames = ds.window(0)  # the crop window read for item 0
    source = ds[0]["source"].numpy()
    np.testing.assert_allclose(source, ((left + right) / 2)[start: start + frames], atol=1e-7)


def test_manifest_root_that_moved_names_the_manifest_line(tones):
    root = Path(tones["data"])
    shutil.move(root / "audio", root / "audio_moved")
    with pytest.raises(DataError, match=r"train\.tsv:1: audio root \S+/audio is not a directory \(moved\?"):
        _dataset(tones)


# ---------------------------------------------------------------- labels and dictionaries
def test_label_line_longer_than_its_clip_names_file_and_line(tones):
    lines = _label_lines(tones)
    lines[4] = lines[4] + " 1" * 50  # 163 labels for a 1.5 s clip (113 expected)
    _write_labels(tones, lines)
    with pytest.raises(DataError, match=r"train\.tone:5: 163 labels for train_004\.wav .* too long"):
        _dataset(tones)


def test_nan_in_a_text_label_stream_is_refused(tones):
    lines = _label_lines(tones)
    lines[1] = " ".join("nan" for _ in lines[1].split())  # every frame: whatever window is read sees one
    _write_labels(tones, lines)
    with pytest.raises(DataError, match=r"train\.tone:2: code 'nan' is not in the dictionary"):
        _dataset(tones)[1]


def test_float_or_nan_npy_label_stream_is_refused(tones):
    array = _npy_labels(tones, np.float32)
    array[1, 5] = np.nan
    np.save(Path(tones["label_dir"]) / "train.tone.npy", array)
    with pytest.raises(DataError, match=r"train\.tone\.npy: label codes must be integers .* float32"):
        _dataset(tones, numpy_memmap_label=True)


def test_npy_code_missing_from_the_dictionary_is_not_mapped_to_unk(tones):
    array = _npy_labels(tones)
    missing = int(array[2, 0])
    array[2, array[2] >= 0] = missing  # every frame of row 2: whatever window is read sees it
    (Path(tones["label_dir"]) / "dict.tone.txt").write_text("".join(f"{c} 1\n" for c in range(8) if c != missing))
    np.save(Path(tones["label_dir"]) / "train.tone.npy", array)
    ds = _dataset(tones, numpy_memmap_label=True)
    with pytest.raises(DataError, match=rf"train\.tone\.npy:3: code '{missing}' is not in the dictionary"):
        ds[2]


def test_label_stream_with_a_dictionary_but_no_label_file(tones):
    """task.labels names a stream whose dict exists but whose label file does not."""
    (Path(tones["label_dir"]) / "dict.other.txt").write_text("0 1\n1 1\n")
    with pytest.raises(DataError, match=r"train\.other: label file not found"):
        _dataset({**tones, "labels": ["tone", "other"]})


# ---------------------------------------------------------------- skip_bad_audio
def test_skip_bad_audio_counts_logs_and_fails_past_the_fraction(tones, caplog):
    audio = Path(tones["data"]) / "audio"
    (audio / "train_001.wav").write_bytes(b"not audio")
    (audio / "train_004.wav").write_bytes(b"")
    ds = _dataset(tones, skip_bad_audio=True, max_bad_audio_fraction=0.2)  # 1 of 6 allowed, 2 are not
    with caplog.at_level(logging.WARNING):
        assert ds[1] is None
    assert ds.num_skipped == 1 and "skipping unreadable audio" in caplog.text and "train_001.wav" in caplog.text
    assert ds[1] is None and ds.num_skipped == 2  # the same clip again: still one bad clip this epoch
    batch = ds.collater([ds[i] for i in (0, 1, 2)])
    assert batch["id"].tolist() == [0, 2]  # dropped, not replaced by another clip
    with pytest.raises(DataError, match=r"train\.tsv: 2 of 6 clips unreadable in epoch 1 .*fraction=0\.2"):
        ds[4]
    ds.set_epoch(2)  # counts are per epoch
    assert ds[4] is None and len(ds.skipped_this_epoch) == 1
    assert torch.is_tensor(ds[0]["source"])
