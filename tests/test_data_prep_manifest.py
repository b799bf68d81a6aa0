"""prepare_manifest: conversion to 24 kHz mono, skipped-file report, deterministic split, resume."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from data_prep_helpers import run_script, tone, write_wav
from mert_fairseq.data.manifest import ManifestRow, read_manifest
from mert_fairseq.prep.manifest import split_rows


@pytest.fixture()
def messy_dir(tmp_path):
    """Four good files (44.1 kHz stereo wav, 16 kHz mono flac, 48 kHz ogg, 22.05 kHz mp3) and three bad ones."""
    root = tmp_path / "raw"
    write_wav(root / "a" / "stereo441.wav", tone(int(1.5 * 44100), sr=44100, channels=2), sr=44100)
    write_wav(root / "b" / "mono16k.flac", tone(32000, sr=16000), sr=16000)
    write_wav(root / "c" / "vorbis48k.OGG", tone(60000, sr=48000), sr=48000)
    write_wav(root / "c" / "lossy.mp3", tone(33075, sr=22050), sr=22050)
    write_wav(root / "b" / "short.wav", tone(4000), sr=24000)  # 1/6 s < --min-seconds
    (root / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk" + bytes(range(200)))
    (root / "empty.flac").write_bytes(b"")
    (root / "notes.txt").write_text("not audio")
    return root


def test_converts_good_files_and_reports_bad_ones(messy_dir, tmp_path):
    conv, out = tmp_path / "conv", tmp_path / "manifest"
    result = run_script("prepare_manifest", "--root-dir", messy_dir, "--converted-root-dir", conv,
                        "--out-dir", out, "--valid-percent", 0)
    assert result.returncode == 0, result.stderr
    train = read_manifest(out / "train.tsv")
    assert train.root == conv.resolve()
    relpaths = ["a/stereo441.wav", "b/mono16k.wav", "c/lossy.wav", "c/vorbis48k.wav"]
    assert [r.relpath for r in train.rows] == relpaths
    # mp3 decoders add up to ~50 ms of codec delay/padding; the other formats keep exact lengths
    for row, seconds, tolerance in zip(train.rows, (1.5, 2.0, 1.5, 1.25), (1, 1, 1200, 1)):
        wav, sr = sf.read(str(conv / row.relpath), always_2d=True)
        assert sr == 24000 and wav.shape[1] == 1
        assert len(wav) == row.num_samples and abs(row.num_samples - round(seconds * 24000)) <= tolerance
    assert (out / "valid.tsv").read_text().splitlines() == [str(conv.resolve())]
    skipped = dict(line.split("\t") for line in (out / "skipped.tsv").read_text().splitlines())
    assert set(skipped) == {str(messy_dir / n) for n in ("corrupt.wav", "empty.flac", "b/short.wav")}
    assert "too short" in skipped[str(messy_dir / "b/short.wav")]
    for name in ("corrupt.wav", "empty.flac", "short.wav"):
        assert name in result.stderr


def test_converted_audio_keeps_the_signal(messy_dir, tmp_path):
    from mert_fairseq.prep.manifest import prepare_manifest

    prepare_manifest(messy_dir, tmp_path / "conv", tmp_path / "m", valid_percent=0)
    got, _ = sf.read(str(tmp_path / "conv" / "b" / "mono16k.wav"), dtype="float32")
    t = np.arange(len(got)) / 24000  # the 220 Hz fundamental survives resampling
    assert abs(np.corrcoef(got[2400:-2400], 0.3 * np.sin(2 * np.pi * 220 * t)[2400:-2400])[0, 1]) > 0.9


def test_rerun_reuses_converted_files(messy_dir, tmp_path):
    from mert_fairseq.prep.manifest import prepare_manifest

    first = prepare_manifest(messy_dir, tmp_path / "conv", tmp_path / "m", valid_percent=0)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "conv").rglob("*.wav")}
    second = prepare_manifest(messy_dir, tmp_path / "conv", tmp_path / "m", valid_percent=0)
    assert (first.converted, first.reused, second.converted, second.reused) == (4, 0, 0, 4)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "conv").rglob("*.wav")} == stamps
    assert first.train == second.train


def test_converted_root_inside_root_is_not_rescanned(messy_dir, tmp_path):
    from mert_fairseq.prep.manifest import prepare_manifest

    for _ in range(2):
        summary = prepare_manifest(messy_dir, messy_dir / "converted", tmp_path / "m", valid_percent=0)
    assert [r.relpath for r in summary.train] == ["a/stereo441.wav", "b/mono16k.wav", "c/lossy.wav", "c/vorbis48k.wav"]


def test_split_is_deterministic_and_seeded():
    rows = [ManifestRow(f"f{i:03d}.wav", 1000 + i) for i in range(200)]
    train, valid = split_rows(list(reversed(rows)), 0.05, seed=1)
    assert (train, valid) == split_rows(rows, 0.05, seed=1)  # input order does not matter
    assert len(valid) == 10 and len(train) == 190 and not set(train) & set(valid)
    assert train == sorted(train, key=lambda r: r.relpath)
    assert split_rows(rows, 0.05, seed=2)[1] != valid
    assert len(split_rows(rows[:3], 0.01, seed=0)[1]) == 1  # at least one valid row when asked


def test_nothing_usable_fails_with_a_message(tmp_path):
    root = tmp_path / "raw"
    root.mkdir()
    (root / "broken.wav").write_bytes(b"not a wav at all")
    result = run_script("prepare_manifest", "--root-dir", root, "--converted-root-dir", tmp_path / "c",
                        "--out-dir", tmp_path / "m")
    assert result.returncode != 0
    assert "no usable audio" in result.stderr and "broken.wav" in result.stderr
    assert not (tmp_path / "m" / "train.tsv").exists()
    assert "broken.wav" in (tmp_path / "m" / "skipped.tsv").read_text()
