"""Demo corpus: seeded, byte-identical, idempotent."""
from __future__ import annotations

import csv

import numpy as np
import soundfile as sf

from data_prep_helpers import run_script
from mert_fairseq.prep.demo_corpus import TIMBRES, make_demo_corpus


def _bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files(tmp_path):
    a = make_demo_corpus(tmp_path / "a", num_clips=8, seconds=2.0, seed=3)
    b = make_demo_corpus(tmp_path / "b", num_clips=8, seconds=2.0, seed=3)
    assert a == b
    assert _bytes(tmp_path / "a") == _bytes(tmp_path / "b")
    make_demo_corpus(tmp_path / "c", num_clips=8, seconds=2.0, seed=4)
    assert _bytes(tmp_path / "a")["wav/clip_00000.wav"] != _bytes(tmp_path / "c")["wav/clip_00000.wav"]


def test_clips_are_audible_varied_and_described(tmp_path):
    specs = make_demo_corpus(tmp_path, num_clips=12, seconds=2.0, seed=0)
    with open(tmp_path / "metadata.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == [s.file for s in specs]
    assert {"file", "key", "mode", "timbre", "tempo_bpm", "seed"} <= set(rows[0])
    assert len({r["timbre"] for r in rows}) >= 3 and {r["timbre"] for r in rows} <= set(TIMBRES)
    assert len({r["key"] for r in rows}) >= 3
    for spec in specs:
        wav, sr = sf.read(str(tmp_path / spec.file))
        assert sr == 24000 and wav.ndim == 1 and len(wav) == 48000
        assert 0.3 < np.abs(wav).max() <= 1.0 and wav.std() > 0.02


def test_rerun_of_complete_corpus_writes_nothing(tmp_path):
    make_demo_corpus(tmp_path, num_clips=4, seconds=1.0, seed=0)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.wav")}
    make_demo_corpus(tmp_path, num_clips=4, seconds=1.0, seed=0)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.wav")} == stamps
    (tmp_path / "wav" / "clip_00002.wav").unlink()  # incomplete -> regenerated
    make_demo_corpus(tmp_path, num_clips=4, seconds=1.0, seed=0)
    assert (tmp_path / "wav" / "clip_00002.wav").is_file()


def test_cli(tmp_path):
    args = ["--out-dir", tmp_path / "demo", "--num-clips", 3, "--seconds", 1, "--seed", 0]
    result = run_script("make_demo_corpus", *args, cwd=tmp_path)  # works from outside the repository
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "demo" / "wav").glob("*.wav"))) == 3
    assert len((tmp_path / "demo" / "metadata.csv").read_text().splitlines()) == 4
