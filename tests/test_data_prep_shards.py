"""Labelling across jobs: --shard-id/--num-shards (or Slurm/torchrun variables), part files, merge."""
from __future__ import annotations

import json

import pytest

from data_prep_helpers import make_prepared_dataset, random_encodec, tree_bytes
from mert_fairseq.prep.common import Part, resolve_part
from mert_fairseq.prep.encodec_labels import EncodecSettings, encode_manifest
from mert_fairseq.prep.kmeans_features import FeatureSpec, MfccFeatures
from mert_fairseq.prep.kmeans_model import fit_kmeans
from mert_fairseq.prep.kmeans_labels import apply_kmeans, sample_fit_frames
from mert_fairseq.data.manifest import ManifestRow, read_manifest
from mert_fairseq.prep.manifest import write_manifest
from mert_fairseq.prep.merge_parts import MergeError, main as merge_main, merge_parts

SR = 24000


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    manifest_dir = make_prepared_dataset(root)
    # a longer train split: the 6 tiny clips twice -> 12 rows
    rows = read_manifest(manifest_dir / "train.tsv").rows + read_manifest(manifest_dir / "valid.tsv").rows
    write_manifest(manifest_dir / "long.tsv", root / "audio", [ManifestRow(r.relpath, r.num_samples) for r in rows * 2])
    # three short rows (0.53 s, 1 s, 0.53 s) for EnCodec
    short = [ManifestRow(r.relpath, r.num_samples) for r in sorted(rows, key=lambda r: r.num_samples)[:2]]
    write_manifest(manifest_dir / "short.tsv", root / "audio", [short[0], short[1], short[0]])
    return manifest_dir


def test_part_comes_from_flags_slurm_array_or_torchrun():
    assert resolve_part(env={}) == Part(0, 1)
    assert resolve_part(2, 3, env={"RANK": "1", "WORLD_SIZE": "4"}) == Part(2, 3)  # flags win
    slurm = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_COUNT": "3"}
    assert resolve_part(env={**slurm, "RANK": "0", "WORLD_SIZE": "2"}) == Part(1, 3)  # --array=4-6
    assert resolve_part(env={"RANK": "3", "WORLD_SIZE": "4"}) == Part(3, 4)
    with pytest.raises(ValueError, match="both --shard-id and --num-shards"):
        resolve_part(1, None, env={})
    with pytest.raises(ValueError, match="shard 3 of 3"):
        resolve_part(3, 3, env={})
    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_ID=9"):
        resolve_part(env={"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "3"})
    assert [list(Part(i, 3).slice(10)) for i in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]


def test_encodec_three_parts_merged_equal_one_job_byte_for_byte(tmp_path, data):
    model = random_encodec(0)
    manifest = read_manifest(data / "short.tsv")
    # chunks of 0.53 s with 0.13 s context, batched by two; resume shards of <= 1 s: 3 shards
    settings = EncodecSettings(chunk_samples=40 * 320, context_samples=10 * 320, shard_samples=SR, model_id="test")
    encode_manifest(model, manifest, tmp_path / "one", settings, batch_size=2)
    for i in (2, 0, 1):  # any order, as array tasks finish
        encode_manifest(model, manifest, tmp_path / "three", settings, batch_size=2, part=Part(i, 3))
    parts = tree_bytes(tmp_path / "three")
    assert sorted(parts) == sorted([f".short.encodec.part{i}of3.done.json" for i in range(3)]
                                   + [f"short.encodec_{k}.part{i}of3" for i in range(3) for k in range(8)])
    rows = [json.loads(parts[f".short.encodec.part{i}of3.done.json"])["rows"] for i in range(3)]
    assert rows == [[0, 1], [1, 2], [2, 3]]

    assert merge_main(["--label-dir", str(tmp_path / "three"), "--splits", "short", "--name", "encodec"]) == 0
    one = tree_bytes(tmp_path / "one")
    assert len(one) == 8 + 8 + 1  # labels, dictionaries, done marker
    assert tree_bytes(tmp_path / "three") == one  # parts removed, every byte equal
    # the merged labels count as finished: a single-job rerun does nothing
    assert encode_manifest(model, manifest, tmp_path / "three", settings, batch_size=2) is None


@pytest.fixture(scope="module")
def extract():
    return MfccFeatures(FeatureSpec())


@pytest.fixture(scope="module")
def kmeans(data, extract):
    return fit_kmeans(sample_fit_frames(read_manifest(data / "train.tsv"), extract, 1500, 0), 8, seed=0)


def test_kmeans_three_parts_merged_equal_one_job_byte_for_byte(tmp_path, data, extract, kmeans):
    manifest = read_manifest(data / "long.tsv")
    apply_kmeans(manifest, extract, kmeans, tmp_path / "one", "km", "long", shard_samples=2 * SR)
    for i in range(3):
        apply_kmeans(manifest, extract, kmeans, tmp_path / "three", "km", "long", Part(i, 3), shard_samples=2 * SR)
    assert [len((tmp_path / "three" / f"long.km.part{i}of3").read_text().splitlines()) for i in range(3)] == [4, 4, 4]
    merge_parts(tmp_path / "three", "long", "km")
    assert tree_bytes(tmp_path / "three") == tree_bytes(tmp_path / "one")


def test_missing_part_is_a_clear_error(tmp_path, data, extract, kmeans, capsys):
    manifest = read_manifest(data / "long.tsv")
    for i in (0, 2):
        apply_kmeans(manifest, extract, kmeans, tmp_path, "km", "long", Part(i, 3))
    with pytest.raises(MergeError, match=r"missing part 1 of 3 \(.*/\.long\.km\.part1of3\.done\.json\)"):
        merge_parts(tmp_path, "long", "km")
    assert merge_main(["--label-dir", str(tmp_path), "--splits", "long", "--name", "km"]) == 1
    assert "missing part 1 of 3" in capsys.readouterr().err
    assert not (tmp_path / "long.km").exists() and not (tmp_path / "dict.km.txt").exists()
    with pytest.raises(MergeError, match="no parts of long.other"):
        merge_parts(tmp_path, "long", "other")


def test_merge_refuses_parts_of_another_run_or_a_changed_manifest(tmp_path, data, extract, kmeans):
    manifest = read_manifest(data / "long.tsv")
    for i in range(2):
        apply_kmeans(manifest, extract, kmeans, tmp_path, "km", "long", Part(i, 2))
    apply_kmeans(manifest, extract, kmeans, tmp_path, "km", "long", Part(0, 3))
    with pytest.raises(MergeError, match=r"different --num-shards \[2, 3\]"):
        merge_parts(tmp_path, "long", "km")
    (tmp_path / ".long.km.part0of3.done.json").unlink()

    marker = tmp_path / ".long.km.part1of2.done.json"
    saved = json.loads(marker.read_text())
    marker.write_text(json.dumps({**saved, "rows": [7, 12]}))
    with pytest.raises(MergeError, match=r"part1of2.done.json: rows start at 7, previous part ended at 6 \(gap\)"):
        merge_parts(tmp_path, "long", "km")
    marker.write_text(json.dumps({**saved, "identity": {**saved["identity"], "shard_samples": 1}}))
    with pytest.raises(MergeError, match="identity differs"):
        merge_parts(tmp_path, "long", "km")
    marker.write_text(json.dumps(saved))

    lines = (data / "long.tsv").read_text()
    try:
        (data / "long.tsv").write_text(lines + "clip0.wav\t24017\n")
        with pytest.raises(MergeError, match="long.tsv: manifest changed since the parts were made"):
            merge_parts(tmp_path, "long", "km")
    finally:
        (data / "long.tsv").write_text(lines)
    merge_parts(tmp_path, "long", "km")
    assert len((tmp_path / "long.km").read_text().splitlines()) == 12
