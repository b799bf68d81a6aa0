"""MERTDataset and the task: batching, label alignment, clear errors, shard rotation."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mert_fairseq.data.audio import AudioError
from mert_fairseq.data.mert_dataset import DataError
from mert_fairseq.data.manifest import ManifestError
from synthetic import make_tone_dataset, task_for


@pytest.fixture()
def tones(tmp_path):
    return make_tone_dataset(tmp_path, n_clips=6, seconds=1.5)


@pytest.mark.parametrize("store_labels", [True, False])
def test_batches_crop_audio_and_labels_consistently(tones, store_labels):
    task = task_for(tones, store_labels=store_labels)
    task.load_dataset("train")
    ds = task.datasets["train"]
    batch = ds.collater([ds[i] for i in range(4)])
    source, targets = batch["net_input"]["source"], batch["target_list"][0]
    assert source.shape == (4, 24000) and batch["net_input"]["padding_mask"] is None
    assert targets.shape == (4, 75)  # 1 s crop at 75 Hz
    # the crop start in samples maps to the label start: labels are the tone pitch under each frame
    label_lines = (Path(tones["label_dir"]) / "train.tone").read_text().splitlines()
    for b, idx in enumerate(batch["id"].tolist()):
        full = torch.tensor([int(c) + 4 for c in label_lines[idx].split()])
        starts = [s for s in range(len(full) - 74) if torch.equal(full[s:s + 75], targets[b])]
        assert starts, f"batch row {b} is not a contiguous slice of its label line"


def test_padding_mode_pads_and_masks(tmp_path):
    data = make_tone_dataset(tmp_path, n_clips=3, seconds=1.0)
    lines = (tmp_path / "train.tsv").read_text().splitlines()
    wav, _ = sf.read(tmp_path / "audio" / "train_000.wav", dtype="float32")
    sf.write(tmp_path / "audio" / "train_000.wav", wav[:12000], 24000, subtype="FLOAT")  # a 0.5 s clip
    lines[1] = "train_000.wav\t12000"
    (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n")
    labels = (tmp_path / "train.tone").read_text().splitlines()
    labels[0] = " ".join(labels[0].split()[:38])  # the labels of the 0.5 s clip
    (tmp_path / "train.tone").write_text("\n".join(labels) + "\n")
    task = task_for(data, pad_audio=True, max_sample_size=None)
    task.load_dataset("train")
    ds = task.datasets["train"]
    batch = ds.collater([ds[i] for i in range(3)])
    mask = batch["net_input"]["padding_mask"]
    assert batch["net_input"]["source"].shape == (3, 24000)
    assert mask[0, 12000:].all() and not mask[0, :12000].any() and not mask[1:].any()
    assert batch["target_lengths_list"][0].tolist()[1:] == [75, 75]


def test_short_label_line_and_count_mismatch_name_the_file(tones):
    path = Path(tones["label_dir"]) / "train.tone"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match=r"train\.tone: 5 label lines but the manifest has 6 rows"):
        task_for(tones).load_dataset("train")
    lines[2] = " ".join(lines[2].split()[:40])
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train\.tone:3: 40 labels for train_002\.wav"):
        task_for(tones).load_dataset("train")


def test_unknown_code_names_file_and_line(tones):
    path = Path(tones["label_dir"]) / "train.tone"
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace("0", "99", 1) if "0" in lines[1] else "99 " + lines[1]
    path.write_text("\n".join(lines) + "\n")
    task = task_for(tones, max_sample_size=None)  # whole clips: the whole line is read
    task.load_dataset("train")
    with pytest.raises(DataError, match=r"train\.tone:2: code '99' is not in the dictionary"):
        task.datasets["train"][1]
    # windowed reads check the codes they read (scripts/validate_data.py checks every line)
    with pytest.raises(DataError, match=r"train\.tone:2: code '99' is not in the dictionary"):
        task.datasets["train"].labels[0].read(1, 0, 200)


def test_bad_audio_is_an_error_or_a_counted_skip(tones):
    audio = Path(tones["data"]) / "audio"
    (audio / "train_001.wav").write_bytes(b"not audio at all")
    sf.write(audio / "train_002.wav", np.zeros(24000, dtype=np.float32), 16000)
    task = task_for(tones)
    task.load_dataset("train")
    ds = task.datasets["train"]
    with pytest.raises(AudioError, match=r"train_001\.wav: cannot read audio"):
        ds[1]
    with pytest.raises(AudioError, match=r"train_002\.wav: sample rate 16000 Hz, the task expects 24000 Hz"):
        ds[2]
    task = task_for(tones, skip_bad_audio=True, max_bad_audio_fraction=0.5)
    task.load_dataset("train")
    ds = task.datasets["train"]
    batch = ds.collater([ds[i] for i in range(4)])
    assert batch["id"].tolist() == [0, 3] and ds.num_skipped == 2


def test_empty_or_missing_manifest_and_dictionary(tones, tmp_path):
    Path(tones["data"], "train.tsv").write_text(tones["data"] + "\n")
    with pytest.raises(ManifestError, match=r"train\.tsv: manifest has no audio rows"):
        task_for(tones).load_dataset("train")
    with pytest.raises(ManifestError, match=r"nope\.tsv"):
        task_for(tones).load_dataset("nope")
    with pytest.raises(DataError, match=r"dict\.missing\.txt: dictionary for label stream 'missing' not found"):
        task_for({**tones, "labels": ["missing"]}).dictionaries


def test_filtered_clips_keep_their_own_labels_text_and_npy(tones):
    lines = (Path(tones["label_dir"]) / "train.tone").read_text().splitlines()
    codes = [[int(c) for c in line.split()] for line in lines]
    width = max(map(len, codes))
    padded = np.full((len(codes), width), -1, dtype=np.int32)
    for i, row in enumerate(codes):
        padded[i, : len(row)] = row
    np.save(Path(tones["label_dir"]) / "train.tone.npy", padded)
    # drop clip 0 by making it too short in the manifest: every later clip must keep its own labels
    tsv = Path(tones["data"]) / "train.tsv"
    rows = tsv.read_text().splitlines()
    rows[1] = rows[1].split("\t")[0] + "\t100"
    tsv.write_text("\n".join(rows) + "\n")
    for npy in (False, True):
        task = task_for(tones, min_sample_size=1000, numpy_memmap_label=npy, store_labels=True)
        task.load_dataset("train")
        ds = task.datasets["train"]
        assert len(ds) == 5
        for i in range(5):
            full = [c + 4 for c in codes[i + 1]]
            assert ds.labels[0].read(i).tolist() == full, (npy, i)
            item = ds[i]  # 1.5 s clips, 1 s crops: only the window's labels are read
            window = item["label_list"][0].tolist()
            assert window == full[item["label_offset"]: item["label_offset"] + len(window)], (npy, i)
            assert len(window) >= 75


def test_shards_rotate_every_epoch_under_stock_fairseq(tmp_path):
    data = make_tone_dataset(tmp_path, n_clips=4, seconds=1.0, splits=("train",))
    root = Path(data["data"])
    for shard in range(3):  # shard files train_{i}_3.*: copies of the set with i+2 clips each
        tsv = root.joinpath("train.tsv").read_text().splitlines()
        labels = root.joinpath("train.tone").read_text().splitlines()
        root.joinpath(f"train_{shard}_3.tsv").write_text("\n".join(tsv[: shard + 3]) + "\n")
        root.joinpath(f"train_{shard}_3.tone").write_text("\n".join(labels[: shard + 2]) + "\n")
    task = task_for(data, sharding_data=3, load_random_data_shard=False)
    assert task.has_sharded_data("train") and not task.has_sharded_data("valid")
    sizes = []
    for epoch in (1, 2, 3, 4):
        task.load_dataset("train", epoch=epoch)
        sizes.append(len(task.datasets["train"]))
    assert sizes == [2, 3, 4, 2]
    random_task = task_for(data, sharding_data=3, load_random_data_shard=True)
    picks = [random_task.shard_for_epoch(e) for e in range(1, 30)]
    assert picks == [random_task.shard_for_epoch(e) for e in range(1, 30)]  # seeded: same after a restart
    assert set(picks) == {0, 1, 2}


def test_dynamic_crops_follow_epochs(tones):
    task = task_for(tones, dynamic_crops="[0.5, 1.0]", dynamic_crops_epoches="[1, 3]")
    assert [task.max_sample_size_for_epoch(e) for e in (1, 2, 3, 9)] == [12000, 12000, 24000, 24000]
    assert task.has_sharded_data("train")
    with pytest.raises(ValueError, match="start at epoch 1"):
        task_for(tones, dynamic_crops="[0.5]", dynamic_crops_epoches="[2]")


def test_batch_by_size_keeps_every_clip(tones):
    task = task_for(tones)
    task.load_dataset("train")
    ds = task.datasets["train"]
    batches = ds.batch_by_size(ds.ordered_indices(), max_tokens=24000 * 4, required_batch_size_multiple=8)
    assert sorted(np.concatenate(batches).tolist()) == list(range(6))
    assert [len(b) for b in batches] == [4, 2]
