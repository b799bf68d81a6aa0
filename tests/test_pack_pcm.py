"""`pack_audio.py --pcm`: compressed audio stored decoded as WAV members, read with the WAV fast path.
Same batches as reading the compressed files, resumable and deterministic, exact for 24-bit/float
sources (float32 members), clear errors."""
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mert_fairseq.data.audio import AudioError
from mert_fairseq.data.audio_reader import read_window, wav_layout
from mert_fairseq.prep.pack import PackError, main, member_ranges, pack_manifest
from windowed_corpus import LENGTHS, dataset, write_corpus

CAP = 200_000  # bytes per shard: several shards for the 6 clips (the largest is 154 kB)


def to_format(data: dict, fmt: str, subtype: str, ext: str, channels: int = 1) -> Path:
    """Rewrite every clip of a test corpus as `ext` (same samples; extra channels are scaled copies) and
    return the manifest listing them."""
    audio = data["root"] / "audio"
    rows = data["root"].joinpath("train.tsv").read_text().splitlines()
    for i in range(len(LENGTHS)):
        wav, sr = sf.read(audio / f"c{i}.wav", dtype="float32")
        if channels > 1:
            wav = np.stack([wav * (1 - 0.3 * c) for c in range(channels)], axis=1)
        sf.write(audio / f"c{i}.{ext}", wav, sr, format=fmt, subtype=subtype)
        os.remove(audio / f"c{i}.wav")
    tsv = data["root"] / f"train_{ext}.tsv"
    tsv.write_text("\n".join([rows[0]] + [r.replace(".wav", f".{ext}") for r in rows[1:]]) + "\n")
    for s in data["streams"]:  # the dataset finds labels by the manifest's split name
        for suffix in ("", ".npy"):
            os.symlink(data["root"] / f"train.{s}{suffix}", data["root"] / f"train_{ext}.{s}{suffix}")
    return tsv


def members(out: Path) -> dict:
    """{member name: (header layout, shard path, offset, length)} over all shards in `out`."""
    found = {}
    for shard in sorted(out.glob("*.zip")):
        for name, (offset, length) in member_ranges(shard).items():
            with open(shard, "rb") as f:
                f.seek(offset)
                found[name] = (wav_layout(f.read(4096)), shard, offset, length)
    return found


@pytest.fixture()
def flac(tmp_path):
    data = write_corpus(tmp_path / "plain", LENGTHS)
    return {"data": data, "manifest": to_format(data, "FLAC", "PCM_16", "flac")}


def test_pcm_packed_flac_gives_the_batches_of_the_flac_files(flac, tmp_path):
    packed = pack_manifest(flac["manifest"], tmp_path / "packed", max_shard_bytes=CAP, prefix="train", pcm=True)
    found = members(tmp_path / "packed")
    assert sorted(found) == [f"c{i}.flac" for i in range(len(LENGTHS))]  # original names kept
    for i, n in enumerate(LENGTHS):  # lossless 16-bit WAV, canonical 44-byte header
        layout, shard, offset, length = found[f"c{i}.flac"]
        assert layout == (44, 2 * n, 1, 24000, "<i2") and length == 44 + 2 * n
    assert len(list((tmp_path / "packed").glob("*.zip"))) >= 2
    assert all(s.stat().st_size <= CAP for s in (tmp_path / "packed").glob("*.zip"))
    assert [r.split("\t")[1] for r in packed.read_text().splitlines()[1:]] == [str(n) for n in LENGTHS]
    direct, pk = dataset(flac["data"], manifest=flac["manifest"]), dataset(flac["data"], manifest=packed)
    for epoch in (1, 2):
        direct.set_epoch(epoch), pk.set_epoch(epoch)
        for ids in ([0, 2, 4], [1, 3, 5], [4]):
            a, b = direct.collater([direct[i] for i in ids]), pk.collater([pk[i] for i in ids])
            assert a["net_input"]["source"].shape[1] > 0
            assert torch.equal(a["net_input"]["source"], b["net_input"]["source"])
            assert all(torch.equal(x, y) for x, y in zip(a["target_list"], b["target_list"]))


def test_pcm_packing_resumes_and_is_deterministic(flac, tmp_path):
    out = tmp_path / "packed"
    manifest = pack_manifest(flac["manifest"], out, max_shard_bytes=CAP, pcm=True)
    shards = sorted(out.glob("*.zip"))
    content = {s.name: s.read_bytes() for s in shards}
    stamps = {s: s.stat().st_mtime_ns for s in shards}
    text = manifest.read_text()
    shards[1].unlink()  # killed while writing shard 1
    (out / f".{shards[1].name}.abc.tmp").write_bytes(b"partial")
    assert pack_manifest(flac["manifest"], out, max_shard_bytes=CAP, pcm=True).read_text() == text
    assert shards[1].read_bytes() == content[shards[1].name]
    assert all(s.stat().st_mtime_ns == stamps[s] for s in shards if s != shards[1])  # kept, not rewritten
    assert not list(out.glob(".*.tmp"))
    fresh = tmp_path / "fresh"  # a fresh pack with 2 writer processes: the same bytes
    pack_manifest(flac["manifest"], fresh, max_shard_bytes=CAP, pcm=True, workers=2)
    assert {s.name: s.read_bytes() for s in sorted(fresh.glob("*.zip"))} == content
    # packing the same manifest without --pcm rewrites every shard (FLAC members have other sizes)
    plain = pack_manifest(flac["manifest"], out, max_shard_bytes=CAP)
    assert all(m[0] is None for m in members(out).values()) and plain.read_text() != text


def test_24_bit_stereo_sources_become_exact_float_members_or_rounded_16_bit(tmp_path):
    data = write_corpus(tmp_path / "plain", LENGTHS)
    manifest = to_format(data, "FLAC", "PCM_24", "flac", channels=2)
    root = data["root"] / "audio"
    pack_manifest(manifest, tmp_path / "float", pcm=True)
    assert main([str(manifest), "--out-dir", str(tmp_path / "int16"), "--pcm-subtype", "PCM_16"]) == 0  # implies --pcm
    for i, n in enumerate(LENGTHS):
        direct, _ = read_window(root / f"c{i}.flac", 1000, 20000)
        assert np.unique(np.round(direct * 2**23) % 256).size > 1  # really 24-bit content
        layout, shard, offset, length = members(tmp_path / "float")[f"c{i}.flac"]
        assert layout[1:] == (8 * n, 2, 24000, "<f4")
        packed, _ = read_window(f"{shard}:{offset}:{length}", 1000, 20000, expected_frames=n)
        assert np.array_equal(packed, direct)  # float32 members: bit for bit what the FLAC decodes to
        layout, shard, offset, length = members(tmp_path / "int16")[f"c{i}.flac"]
        assert layout[1:] == (4 * n, 2, 24000, "<i2")
        rounded, _ = read_window(f"{shard}:{offset}:{length}", 1000, 20000)
        stereo, _ = sf.read(root / f"c{i}.flac", dtype="float32", start=1000, frames=20000)
        expect = (np.round(stereo.astype(np.float64) * 32768) / 32768).astype(np.float32).mean(axis=1)
        assert np.array_equal(rounded, expect)
        assert 0 < np.abs(rounded - direct).max() <= 2**-16


def test_pcm_packing_checks_lengths_and_reports_bad_files(flac, tmp_path):
    tsv = flac["manifest"]
    rows = tsv.read_text().splitlines()
    rows[3] = rows[3].replace(f"\t{LENGTHS[2]}", f"\t{LENGTHS[2] + 5}")
    tsv.write_text("\n".join(rows) + "\n")
    with pytest.raises(PackError, match=rf"train_flac\.tsv:4: .*c2\.flac has {LENGTHS[2]} samples but the "
                                        rf"manifest says {LENGTHS[2] + 5}"):
        pack_manifest(tsv, tmp_path / "a", pcm=True)
    rows[3] = rows[3].replace(f"\t{LENGTHS[2] + 5}", f"\t{LENGTHS[2]}")
    tsv.write_text("\n".join(rows) + "\n")
    (flac["data"]["root"] / "audio" / "c4.flac").write_bytes(b"fLaC not really")
    with pytest.raises(PackError, match=r"train_flac\.tsv:6: .*c4\.flac: cannot read audio"):
        pack_manifest(tsv, tmp_path / "a", pcm=True)
    with pytest.raises(PackError, match="pcm_subtype 'PCM_24'"):
        pack_manifest(tsv, tmp_path / "a", pcm_subtype="PCM_24")
    assert not list((tmp_path / "a").glob("*.zip"))


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="this libsndfile has no MP3")
def test_mp3_members_hold_the_whole_file_decode(tmp_path):
    data = write_corpus(tmp_path / "plain", LENGTHS[:2])
    wav, sr = sf.read(data["root"] / "audio" / "c0.wav", dtype="float32")
    sf.write(data["root"] / "audio" / "c0.mp3", wav, sr, format="MP3", subtype="MPEG_LAYER_III")
    whole, _ = sf.read(data["root"] / "audio" / "c0.mp3", dtype="float32")
    (data["root"] / "mp3.tsv").write_text(f"{data['root'] / 'audio'}\nc0.mp3\t{len(whole)}\nc1.wav\t{LENGTHS[1]}\n")
    packed = pack_manifest(data["root"] / "mp3.tsv", tmp_path / "packed", pcm=True)
    found = members(tmp_path / "packed")
    assert found["c0.mp3"][0][4] == "<f4" and found["c1.wav"][0][4] == "<i2"  # the 16-bit WAV is copied as is
    assert found["c1.wav"][3] == (data["root"] / "audio" / "c1.wav").stat().st_size
    row = packed.read_text().splitlines()[1].split("\t")[0]
    got, _ = read_window(tmp_path / "packed" / row, 3000, 9000, expected_frames=len(whole))
    # mpg123's float output differs by an ulp with the read block size: within 1e-7 of a whole-file decode
    assert np.abs(got - whole[3000:12000]).max() <= 1e-7


def test_float_wav_fast_path_equals_soundfile(tmp_path):
    """Plain 32-bit float WAV files (mono and stereo) take the two-pread path: same float32 samples as
    soundfile, NaN still refused."""
    rng = np.random.default_rng(0)
    for channels in (1, 2):
        wav = (0.5 * rng.standard_normal((30000, channels))).astype(np.float32)
        path = tmp_path / f"f{channels}.wav"
        sf.write(path, wav, 24000, subtype="FLOAT")
        with open(path, "rb") as f:
            assert wav_layout(f.read(4096))[2:] == (channels, 24000, "<f4")
        got, sr = read_window(path, 1234, 5000, expected_frames=30000)
        ref, _ = sf.read(path, dtype="float32", start=1234, frames=5000, always_2d=True)
        assert sr == 24000 and np.array_equal(got, ref[:, 0] if channels == 1 else ref.mean(axis=1))
    wav[100, 0] = np.nan
    sf.write(tmp_path / "nan.wav", wav, 24000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav: audio contains NaN"):
        read_window(tmp_path / "nan.wav")
