"""Packed audio shards (scripts/pack_audio.py): same batches as the unpacked files, resumable packing,
clear errors for damaged shards, the validator and feature extraction on packed manifests."""
import os
import zipfile

import numpy as np
import pytest
import soundfile as sf
import torch

from mert_fairseq.data.audio import AudioError
from mert_fairseq.data.audio_reader import read_window
from mert_fairseq.prep.pack import member_ranges, pack_manifest
from windowed_corpus import LENGTHS, dataset, write_corpus


@pytest.fixture()
def packed(tmp_path):
    data = write_corpus(tmp_path / "plain", LENGTHS)
    sf.write(data["root"] / "audio" / "c3.wav", sf.read(data["root"] / "audio" / "c3.wav")[0], 24000, format="FLAC")
    os.replace(data["root"] / "audio" / "c3.wav", data["root"] / "audio" / "c3.flac")
    tsv = data["root"] / "train.tsv"
    tsv.write_text(tsv.read_text().replace("c3.wav", "c3.flac") + "c0.wav\t60000\n")  # a file listed twice
    for s in data["streams"]:
        label = data["root"] / f"train.{s}"
        label.write_text(label.read_text() + label.read_text().splitlines()[0] + "\n")
    out = tmp_path / "packed"
    manifest = pack_manifest(tsv, out, max_shard_bytes=250_000)
    return {"data": data, "out": out, "manifest": manifest}


def test_packed_manifest_gives_identical_batches(packed):
    rows = packed["manifest"].read_text().splitlines()
    assert rows[0] == str(packed["out"].resolve()) and len(rows) == len(LENGTHS) + 2
    assert all(r.split("\t")[0].split(":")[0].startswith("train_") for r in rows[1:])
    assert rows[1].split("\t")[0] == rows[-1].split("\t")[0]  # the repeated file is stored once
    shards = sorted(packed["out"].glob("train_*.zip"))
    assert len(shards) >= 2 and all(s.stat().st_size <= 250_000 for s in shards)
    with zipfile.ZipFile(shards[0]) as zf:  # a standard ZIP: any unzip tool lists and extracts it
        assert zf.testzip() is None and zf.namelist()[0] == "c0.wav"
    plain, pk = dataset(packed["data"]), dataset(packed["data"], manifest=packed["manifest"])
    for epoch in (1, 2):
        plain.set_epoch(epoch), pk.set_epoch(epoch)
        for ids in ([0, 2, 4], [1, 3, 5, 6], [3]):
            a, b = plain.collater([plain[i] for i in ids]), pk.collater([pk[i] for i in ids])
            assert torch.equal(a["net_input"]["source"], b["net_input"]["source"])
            assert all(torch.equal(x, y) for x, y in zip(a["target_list"], b["target_list"]))


def test_packing_resumes_and_keeps_finished_shards(packed):
    out, tsv = packed["out"], packed["data"]["root"] / "train.tsv"
    shards = sorted(out.glob("train_*.zip"))
    stamps = {s: s.stat().st_mtime_ns for s in shards}
    content = {s: s.read_bytes() for s in shards}
    shards[1].unlink()  # as if killed while writing shard 1 (tmp file left behind)
    (out / ".train_00001.zip.abc.tmp").write_bytes(b"partial")
    manifest_text = packed["manifest"].read_text()
    assert pack_manifest(tsv, out, max_shard_bytes=250_000).read_text() == manifest_text
    assert shards[1].read_bytes() == content[shards[1]]  # rewritten identically
    assert all(s.stat().st_mtime_ns == stamps[s] for s in shards if s != shards[1])  # kept
    assert not list(out.glob(".*.tmp"))


def test_truncated_or_corrupt_shard_names_shard_and_row(packed):
    out = packed["out"]
    ds = dataset(packed["data"], manifest=packed["manifest"])
    last = sorted(out.glob("train_*.zip"))[-1]
    rows = packed["manifest"].read_text().splitlines()
    line = next(n for n, r in enumerate(rows, 1) if r.startswith(last.name))  # first row in the last shard
    with open(last, "r+b") as f:
        f.truncate(last.stat().st_size // 3)
    with pytest.raises(AudioError, match=rf"train\.tsv:{line}: .*truncated shard .*{last.name}"):
        ds[line - 2]
    first = sorted(out.glob("train_*.zip"))[0]
    offset = int(rows[1].split("\t")[0].split(":")[1])
    with open(first, "r+b") as f:  # overwrite the first member's WAV header
        f.seek(offset)
        f.write(b"\0" * 44)
    with pytest.raises(AudioError, match=rf"train\.tsv:2: .*corrupt member in shard .*{first.name}"):
        ds[0]


def test_window_reads_from_a_shard_match_the_file(packed):
    src = packed["data"]["root"] / "audio" / "c3.flac"
    rng = member_ranges(sorted(packed["out"].glob("train_*.zip"))[0])
    shard = next(s for s in sorted(packed["out"].glob("train_*.zip")) if "c3.flac" in member_ranges(s))
    offset, length = member_ranges(shard)["c3.flac"]
    assert rng and src.stat().st_size == length
    a, _ = read_window(src, 5000, 12345)
    b, sr = read_window(f"{shard}:{offset}:{length}", 5000, 12345)
    assert sr == 24000 and np.array_equal(a, b) and len(a) == 12345
    whole, _ = sf.read(src, dtype="float32")
    assert np.array_equal(a, whole[5000: 5000 + 12345])  # a FLAC window is bit-identical to the whole decode


def test_validator_accepts_packed_rows_and_reports_a_truncated_shard(packed):
    from mert_fairseq.prep.validate import validate

    out, root = packed["out"], packed["data"]["root"]
    for s in packed["data"]["streams"]:
        for name in (f"train.{s}", f"dict.{s}.txt"):
            (out / name).write_bytes((root / name).read_bytes())
    report = validate(out, out, ["train"], sample_rate=24000, label_rate=75)
    assert report.problems == [] and report.rows["train"] == len(LENGTHS) + 1
    last = sorted(out.glob("train_*.zip"))[-1]
    with open(last, "r+b") as f:
        f.truncate(100)
    problems = validate(out, None, ["train"], sample_rate=24000).problems
    assert problems and all(last.name in p and "truncated shard" in p for p in problems)
    assert problems[0].startswith(f"{out / 'train.tsv'}:")


def test_features_from_packed_and_plain_manifests_are_the_same(packed, tmp_path):
    from export_helpers import build_model, save_checkpoint
    from mert_fairseq.evaluation.features import extract_to_folder, load_feature_extractor

    fx = load_feature_extractor(checkpoint=str(save_checkpoint(build_model("95m", seed=4), tmp_path / "m.pt")))
    plain = extract_to_folder(fx, [str(packed["data"]["root"] / "train.tsv")], tmp_path / "a", layers=[0, 1],
                              reduce="mean", progress=False)
    pk = extract_to_folder(fx, [str(packed["manifest"])], tmp_path / "b", layers=[0, 1], reduce="mean",
                           progress=False)
    assert plain["written"] == pk["written"] == len(LENGTHS)  # the repeated row is skipped as done
    names = sorted(str(p.relative_to(tmp_path / "a")) for p in (tmp_path / "a").rglob("*.npy"))
    assert names == sorted(str(p.relative_to(tmp_path / "b")) for p in (tmp_path / "b").rglob("*.npy"))
    for name in names:
        assert np.array_equal(np.load(tmp_path / "a" / name), np.load(tmp_path / "b" / name)), name
