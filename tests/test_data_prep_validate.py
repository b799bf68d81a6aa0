"""validate_data: clean data passes; each kind of problem is reported as file:line."""
from __future__ import annotations

import math

import pytest

from data_prep_helpers import make_prepared_dataset, run_script, tone, write_wav
from mert_fairseq.prep.common import write_dictionary
from mert_fairseq.data.manifest import read_manifest
from mert_fairseq.prep.validate import validate


@pytest.fixture()
def data(tmp_path):
    """Prepared audio plus two label streams (10 codes each) of the right lengths."""
    manifest_dir = make_prepared_dataset(tmp_path)
    labels = tmp_path / "labels"
    for name in ("enc_0", "enc_1"):
        write_dictionary(labels / f"dict.{name}.txt", [1] * 10)
        for split in ("train", "valid"):
            rows = read_manifest(manifest_dir / f"{split}.tsv").rows
            lines = [" ".join(str(j % 10) for j in range(math.ceil(r.num_samples / 320))) for r in rows]
            (labels / f"{split}.{name}").write_text("\n".join(lines) + "\n")
    return manifest_dir, labels


def test_clean_data_passes(data):
    manifest_dir, labels = data
    args = ["--manifest-dir", manifest_dir, "--label-dir", labels, "--splits", "train,valid"]
    result = run_script("validate_data", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK: train (4 files") and "enc_0, enc_1" in result.stdout
    assert len(result.stdout.splitlines()) == 1


def test_label_file_one_line_short(data):
    manifest_dir, labels = data
    path = labels / "train.enc_1"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    problems = validate(manifest_dir, labels, ["train", "valid"]).problems
    assert problems == [f"{path}:4: missing line(s): 3 lines, {manifest_dir / 'train.tsv'} has 4 rows"]


def test_code_outside_dictionary_and_wrong_length(data):
    manifest_dir, labels = data
    path = labels / "valid.enc_0"
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace("7", "12", 1)
    lines[0] = lines[0] + " 1 2"
    path.write_text("\n".join(lines) + "\n")
    problems = validate(manifest_dir, labels, ["valid"], ["enc_0"]).problems
    assert len(problems) == 2
    assert problems[0].startswith(f"{path}:1: 78 labels, expected 75.05 +- 1 for 24017 samples")
    assert problems[1] == f"{path}:2: 1 code(s) not in {labels / 'dict.enc_0.txt'}: 12"


def test_wrong_rate_stereo_length_and_missing_audio(data, tmp_path):
    manifest_dir, labels = data
    manifest = read_manifest(manifest_dir / "train.tsv")
    rows = manifest.rows
    write_wav(manifest.audio_path(rows[0]), tone(rows[0].num_samples, sr=16000), sr=16000)
    write_wav(manifest.audio_path(rows[1]), tone(rows[1].num_samples, channels=2))
    write_wav(manifest.audio_path(rows[2]), tone(rows[2].num_samples + 5))
    manifest.audio_path(rows[3]).unlink()
    result = run_script("validate_data", "--manifest-dir", manifest_dir, "--label-dir", labels, "--splits", "train")
    assert result.returncode == 1
    tsv = manifest_dir / "train.tsv"
    assert result.stdout.splitlines() == [
        f"{tsv}:2: {manifest.audio_path(rows[0])}: sample rate 16000, expected 24000",
        f"{tsv}:3: {manifest.audio_path(rows[1])}: 2 channels, expected mono",
        f"{tsv}:4: {manifest.audio_path(rows[2])}: has {rows[2].num_samples + 5} samples, "
        f"manifest says {rows[2].num_samples}",
        f"{tsv}:5: {manifest.audio_path(rows[3])}: file not found",
    ]
    assert "FAILED: 4 problem(s)" in result.stderr


def test_malformed_manifest_and_dictionary(data):
    manifest_dir, labels = data
    tsv = manifest_dir / "valid.tsv"
    tsv.write_text(tsv.read_text() + "broken line without tab\n")
    (labels / "dict.enc_1.txt").write_text("0 1\n1\n0 3\n")
    problems = validate(manifest_dir, labels, ["valid"]).problems
    assert f"{labels / 'dict.enc_1.txt'}:2: expected '<symbol> <count>', got '1'" in problems
    assert f"{labels / 'dict.enc_1.txt'}:3: duplicate symbol '0'" in problems
    assert f"{tsv}:4: expected 'relpath<TAB>num_samples', got 1 field(s)" in problems
    assert f"{labels / 'valid.enc_0'}:3: missing line(s): 2 lines, {tsv} has 3 rows" in problems
