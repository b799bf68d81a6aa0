"""EnCodec labels with a seeded random model: frame rule, chunking, files, dictionaries, resume."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from data_prep_helpers import TINY_LENGTHS, make_prepared_dataset, random_encodec, read_label_lines, run_script
from mert_fairseq.prep.demo_corpus import clip_spec, render_clip
from mert_fairseq.prep.encodec_labels import (
    EncodecSettings, chunk_pieces, encode_batch, encode_manifest, encode_waveform, load_encodec,
)
from mert_fairseq.data.manifest import read_manifest

SR = 24000


@pytest.fixture(scope="module")
def model():
    m = random_encodec(0)
    assert (m.sample_rate, m.channels, m.bandwidth) == (24000, 1, 6.0)
    return m


@pytest.fixture(scope="module")
def music():
    return render_clip(clip_spec(0, 6.0, SR, seed=0))


def test_frame_rule_is_ceil_samples_over_320(model):
    lengths = [1, 319, 320, 321, 641, SR + 17]
    codes = encode_batch(model, [np.full(n, 0.1, np.float32) for n in lengths])
    assert [c.shape for c in codes] == [(8, math.ceil(n / 320)) for n in lengths]
    assert all(c.dtype == np.int16 and c.min() >= 0 and c.max() < 1024 for c in codes)


def test_random_model_is_seeded_and_spreads_codes(model, music):
    codes = encode_batch(model, [music])[0]
    assert min(len(np.unique(c)) for c in codes) >= 10  # not the all-zero codebooks of encodec's init
    again = load_encodec(random_init=True, seed=0)
    assert np.array_equal(encode_batch(again, [music])[0], codes)
    assert not np.array_equal(encode_batch(load_encodec(random_init=True, seed=1), [music])[0], codes)


def test_chunk_pieces_cover_every_frame_once():
    pieces = chunk_pieces(0, 5 * SR + 100, chunk=2 * SR, context=37 * 320)
    frames = [p.first_frame + i for p in pieces for i in range(math.ceil((p.end - p.start) / 320) - p.skip)]
    assert frames == list(range(math.ceil((5 * SR + 100) / 320)))
    assert [(p.start, p.skip) for p in pieces] == [(0, 0), (2 * SR - 37 * 320, 37), (4 * SR - 37 * 320, 37)]


def _whole_file_codes(model, wav):
    padded = np.pad(wav, (0, -len(wav) % 320))
    with torch.inference_mode():
        return model.encode(torch.from_numpy(padded)[None, None])[0][0][0].numpy()


def test_chunked_codes_match_whole_file_with_context(model, music):
    whole = _whole_file_codes(model, music)
    seams = [s // 320 for s in range(SR, len(music), SR)]  # 1 s chunks -> 5 seams
    near_seams = np.zeros(whole.shape[1], bool)
    for s in seams:
        near_seams[s : s + 5] = True

    def mismatch(context):
        settings = EncodecSettings(chunk_samples=SR, context_samples=context)
        chunked = encode_waveform(model, music, settings, batch_size=4)
        assert chunked.shape == whole.shape
        return (chunked != whole).any(axis=0)

    no_context, with_context = mismatch(0), mismatch(SR)
    assert no_context[near_seams].sum() >= 10  # seams do matter without context ...
    assert with_context[near_seams].sum() == 0  # ... and not with 1 s of it
    assert with_context.mean() <= 0.01  # elsewhere only float-noise near-ties may flip


def test_cli_writes_labels_and_dictionaries(tmp_path):
    manifest_dir = make_prepared_dataset(tmp_path)
    out = tmp_path / "labels"
    result = run_script("prepare_codecs_from_manifest", "--manifest_path", manifest_dir, "--manifest_file_name",
                        "train.tsv,valid.tsv", "--out_root", out, "--random-init", "--chunk-seconds", 1)
    assert result.returncode == 0, result.stderr
    assert "audio-hours/hour" in result.stderr
    for split in ("train", "valid"):
        rows = read_manifest(manifest_dir / f"{split}.tsv").rows
        for i in range(8):
            lines = read_label_lines(out / f"{split}.encodec_{i}")
            assert [len(line) for line in lines] == [math.ceil(r.num_samples / 320) for r in rows]
            assert all(0 <= c < 1024 for line in lines for c in line)
    for i in range(8):
        entries = [line.split() for line in (out / f"dict.encodec_{i}.txt").read_text().splitlines()]
        assert [int(code) for code, _ in entries] == list(range(1024))
        assert sum(int(n) for _, n in entries) == sum(math.ceil(n / 320) for n in TINY_LENGTHS[:2])  # valid ran last
    assert not list(out.glob(".*partial"))


class Killed(Exception):
    pass


def test_resume_after_kill_gives_the_uninterrupted_result(tmp_path, model):
    manifest = read_manifest(make_prepared_dataset(tmp_path) / "train.tsv")
    settings = EncodecSettings(chunk_samples=SR, context_samples=37 * 320, shard_samples=2 * SR, model_id="test")
    encode_manifest(model, manifest, tmp_path / "clean", settings, batch_size=2)

    def kill_after_first(shard):
        raise Killed(f"simulated kill after shard {shard}")

    with pytest.raises(Killed):
        encode_manifest(model, manifest, tmp_path / "resumed", settings, batch_size=2, on_shard_done=kill_after_first)
    partial = tmp_path / "resumed" / ".train.encodec.partial"
    assert sorted(p.name for p in partial.glob("block_*.npz")) == ["block_000000.npz"]
    assert not list((tmp_path / "resumed").glob("train.encodec_*"))

    encoded = []
    encode_manifest(model, manifest, tmp_path / "resumed", settings, batch_size=2, on_shard_done=encoded.append)
    assert encoded and 0 not in encoded  # the finished shard was not redone
    for name in [f"train.encodec_{i}" for i in range(8)] + [f"dict.encodec_{i}.txt" for i in range(8)]:
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name
    assert not partial.exists()
    stamp = (tmp_path / "resumed" / "train.encodec_0").stat().st_mtime_ns
    assert encode_manifest(model, manifest, tmp_path / "resumed", settings, on_shard_done=encoded.append) is None
    assert (tmp_path / "resumed" / "train.encodec_0").stat().st_mtime_ns == stamp  # complete: nothing redone


def test_partial_work_from_other_settings_is_discarded(tmp_path, model):
    manifest = read_manifest(make_prepared_dataset(tmp_path) / "valid.tsv")  # 2 rows -> 2 shards
    settings = EncodecSettings(chunk_samples=SR, context_samples=0, shard_samples=SR + 17, model_id="test")

    def kill(shard):
        raise Killed

    with pytest.raises(Killed):
        encode_manifest(model, manifest, tmp_path / "out", settings, on_shard_done=kill)
    encoded = []
    other = EncodecSettings(chunk_samples=SR, context_samples=SR, shard_samples=SR + 17, model_id="test")
    encode_manifest(model, manifest, tmp_path / "out", other, on_shard_done=encoded.append)
    assert encoded == [0, 1]


def test_bad_arguments_fail_clearly(tmp_path, capsys):
    from mert_fairseq.prep.encodec_labels import main

    manifest_dir = make_prepared_dataset(tmp_path)
    common = ["--manifest_path", str(manifest_dir), "--out_root", str(tmp_path / "o")]
    assert main(common + ["--random-init", "--n_codebook", "5"]) == 1
    assert main(common + ["--checkpoint", str(tmp_path / "missing.th")]) == 1
    assert main(common + ["--random-init", "--chunk-seconds", "0"]) == 1
    assert main(common + ["--random-init", "--manifest_file_name", "nope.tsv"]) == 1
    err = capsys.readouterr().err
    for message in ("--n_codebook 5 is not supported", "missing.th: --checkpoint file not found",
                    "--chunk-seconds 0", "nope.tsv: cannot read manifest"):
        assert message in err, message
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- offline nodes

OFFLINE = """
import errno, runpy, socket, sys
def unreachable(*args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
def no_route(self, *args, **kwargs):
    raise OSError(errno.ENETUNREACH, "Network is unreachable")
socket.getaddrinfo, socket.socket.connect = unreachable, no_route  # no network in this process
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _offline_run(script: str, *args, torch_home):
    import os
    import subprocess
    import sys

    from data_prep_helpers import REPO

    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TORCH_HOME": str(torch_home)}
    return subprocess.run([sys.executable, "-c", OFFLINE, str(REPO / "scripts" / f"{script}.py"), *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=600)


def test_offline_without_weights_is_one_message_naming_file_cache_and_flag(tmp_path):
    manifest = make_prepared_dataset(tmp_path / "data", lengths=[4000, 5000], valid_rows=1)
    args = ["--manifest_path", manifest, "--manifest_file_name", "train.tsv", "--out_root", tmp_path / "labels",
            "--device", "cpu"]
    result = _offline_run("prepare_codecs_from_manifest", *args, torch_home=tmp_path / "torch")
    assert result.returncode == 1, result.stderr[-3000:]
    cache = tmp_path / "torch" / "hub" / "checkpoints" / "encodec_24khz-d7cc33bc.th"
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr[-3000:]
    assert f"encodec_24khz-d7cc33bc.th is not in the cache (looked for {cache})" in errors[0]
    assert "--checkpoint /path/to/encodec_24khz-d7cc33bc.th" in errors[0] and "$TORCH_HOME" in errors[0]
    assert "Traceback" not in result.stderr and "Name or service not known" in errors[0]
    assert not (tmp_path / "labels" / "train.encodec_0").exists()
    assert not list(cache.parent.iterdir())  # no partial download left in the cache

    # the file where the message says: the same offline command works
    torch.save(random_encodec(0).state_dict(), cache)
    result = _offline_run("prepare_codecs_from_manifest", *args, torch_home=tmp_path / "torch")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_manifest(manifest / "train.tsv").rows
    assert [len(line) for line in read_label_lines(tmp_path / "labels" / "train.encodec_0")] == \
        [math.ceil(r.num_samples / 320) for r in rows]
