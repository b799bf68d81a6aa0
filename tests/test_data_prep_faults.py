"""Data preparation under faults: SIGKILL then the same command gives byte-identical outputs
(K-means fit and apply, manifests), and a full disk gives a clear error and no partial final file."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from data_prep_helpers import (
    REPO, full_disk, make_prepared_dataset, random_encodec, tone, tree_bytes, write_wav,
)
from mert_fairseq.prep.common import OutputError
from mert_fairseq.prep.encodec_labels import EncodecSettings, encode_manifest
from mert_fairseq.prep.kmeans_features import FeatureSpec, MfccFeatures
from mert_fairseq.prep.kmeans_model import fit_kmeans
from mert_fairseq.prep.kmeans_labels import apply_kmeans, sample_fit_frames
from mert_fairseq.data.manifest import read_manifest
from mert_fairseq.prep.manifest import JOURNAL_NAME, prepare_manifest

SR = 24000

# Runs a prepare_kmeans_labels command and SIGKILLs itself once the first shard is saved.
KILL_AFTER_FIRST_SHARD = """
import os, signal, sys
from mert_fairseq.prep import kmeans_labels as K
args = K.build_parser().parse_args(sys.argv[1:])
run = K.run_fit if args.command == "fit" else K.run_apply
run(args, on_shard_done=lambda shard: os.kill(os.getpid(), signal.SIGKILL))
"""


def run_killed(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-c", KILL_AFTER_FIRST_SHARD, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def manifest_dir(tmp_path_factory):
    return make_prepared_dataset(tmp_path_factory.mktemp("faults"))


def test_kmeans_fit_and_apply_resume_after_sigkill_byte_identical(tmp_path, manifest_dir):
    from mert_fairseq.prep.kmeans_labels import main

    common = ["--manifest-dir", manifest_dir, "--n-clusters", 8, "--max-fit-frames", 1500, "--shard-seconds", 1]
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    assert main(list(map(str, ["all", *common, "--kmeans-model", clean / "km.joblib", "--label-dir", clean,
                               "--name", "km"]))) == 0

    # fit killed after its first shard of sampled frames; the re-run extracts only the rest
    fit = ["fit", *common, "--kmeans-model", resumed / "km.joblib"]
    killed = run_killed(*fit)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [p.name for p in (resumed / ".km.joblib.fit.partial").glob("block_*")] == ["block_000000.npz"]
    assert not (resumed / "km.joblib").exists()
    assert main(list(map(str, fit))) == 0
    assert not (resumed / ".km.joblib.fit.partial").exists()
    assert (resumed / "km.joblib").read_bytes() == (clean / "km.joblib").read_bytes()

    # apply killed after its first shard of labels
    apply = ["apply", "--manifest-dir", manifest_dir, "--kmeans-model", resumed / "km.joblib", "--label-dir", resumed,
             "--name", "km", "--shard-seconds", 1]
    killed = run_killed(*apply)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [p.name for p in (resumed / ".train.km.partial").glob("block_*")] == ["block_000000.npz"]
    assert not (resumed / "train.km").exists() and not (resumed / "dict.km.txt").exists()
    assert main(list(map(str, apply))) == 0
    files = tree_bytes(resumed)
    assert sorted(files) == sorted(tree_bytes(clean))
    assert files == tree_bytes(clean)  # model, labels, dictionary, done markers: every byte


# ----------------------------------------------------------------------------- manifests


@pytest.fixture(scope="module")
def many_files(tmp_path_factory):
    """300 tiny files: 0.1 s wavs at 24 kHz and 16 kHz flacs, plus too short and corrupt ones."""
    root = tmp_path_factory.mktemp("many") / "raw"
    for i in range(300):
        folder = root / f"d{i % 7}"
        if i % 50 == 7:
            (folder / f"bad{i:03d}.wav").parent.mkdir(parents=True, exist_ok=True)
            (folder / f"bad{i:03d}.wav").write_bytes(b"RIFF....WAVEjunk")
        elif i % 50 == 9:
            write_wav(folder / f"short{i:03d}.wav", tone(500, seed=i))
        elif i % 5 == 0:
            write_wav(folder / f"f{i:03d}.flac", tone(1600, sr=16000, seed=i), sr=16000)
        else:
            write_wav(folder / f"w{i:03d}.wav", tone(2400, seed=i))
    return root


def _prepare(raw, base, **kwargs):
    return prepare_manifest(raw, base / "conv", base / "out", valid_percent=0.1, seed=3, min_seconds=0.05,
                            chunk_size=16, **kwargs)


def _outputs(base):
    """Manifests, skipped list and converted audio; not the journal (its line order depends on
    timing) nor the temporary file of a write cut by SIGKILL (never renamed into place)."""
    files = {**{f"out/{k}": v for k, v in tree_bytes(base / "out").items()},
             **{f"conv/{k}": v for k, v in tree_bytes(base / "conv").items()}}
    files.pop(f"out/{JOURNAL_NAME}")
    return {name: data for name, data in files.items() if not name.endswith(".tmp")}


def test_parallel_manifest_equals_serial_byte_for_byte(tmp_path, many_files):
    serial = _prepare(many_files, tmp_path, workers=1)
    assert (len(serial.train), len(serial.valid), len(serial.skipped)) == (259, 29, 12)
    expected = _outputs(tmp_path)
    for folder in ("conv", "out"):
        os.system(f"rm -rf '{tmp_path / folder}'")
    parallel = _prepare(many_files, tmp_path, workers=2)
    assert (parallel.converted, parallel.reused) == (288, 0)
    assert _outputs(tmp_path) == expected


def test_manifest_resumes_after_sigkill_with_identical_output(tmp_path, many_files):
    _prepare(many_files, tmp_path / "clean", workers=1)
    base = tmp_path / "killed"
    argv = [sys.executable, str(REPO / "scripts" / "prepare_manifest.py"), "--root-dir", many_files,
            "--converted-root-dir", base / "conv", "--out-dir", base / "out", "--valid-percent", 0.1, "--seed", 3,
            "--min-seconds", 0.05, "--chunk-size", 16, "--workers", 2]
    proc = subprocess.Popen(list(map(str, argv)), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
    journal, deadline = base / "out" / JOURNAL_NAME, time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.is_file() and journal.read_text().count("\n") >= 2:  # settings + at least one chunk
            os.killpg(proc.pid, signal.SIGKILL)  # the whole job: main process and its workers
            break
        time.sleep(0.005)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (base / "out" / "train.tsv").exists()  # killed mid-way
    done_before = journal.read_text().count("\n") - 1
    assert 16 <= done_before < 300

    resumed = _prepare(many_files, base, workers=1)
    assert resumed.reused >= done_before - 12  # journaled files were not converted again
    clean, killed = _outputs(tmp_path / "clean"), _outputs(base)
    for name in ("out/train.tsv", "out/valid.tsv"):  # line 1 is the (different) converted root
        assert killed.pop(name).split(b"\n", 1)[1] == clean.pop(name).split(b"\n", 1)[1]
    assert killed.pop("out/skipped.tsv") == clean.pop("out/skipped.tsv")
    assert killed == clean  # every converted file


def test_torn_journal_line_is_dropped_and_nothing_is_redone(tmp_path, many_files):
    first = _prepare(many_files, tmp_path, workers=1)
    expected = _outputs(tmp_path)
    journal = tmp_path / "out" / JOURNAL_NAME
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'["/torn/by/a/kill.wav", 12')
    again = _prepare(many_files, tmp_path, workers=1)
    assert (again.converted, again.reused) == (0, first.converted)
    assert journal.read_bytes() == whole and _outputs(tmp_path) == expected


# ----------------------------------------------------------------------------- full disk


def _no_temporaries(folder):
    return [p.name for p in folder.rglob("*.tmp")]


def test_full_disk_manifest_clear_error_no_partial_file(tmp_path, many_files, monkeypatch):
    full_disk(monkeypatch, "train.tsv", free_bytes=200)
    with pytest.raises(OutputError, match=r"out/train.tsv: cannot write \(No space left on device\)"):
        _prepare(many_files, tmp_path)
    assert not (tmp_path / "out" / "train.tsv").exists() and not _no_temporaries(tmp_path)
    monkeypatch.undo()  # space freed: the same command finishes without converting again
    summary = _prepare(many_files, tmp_path)
    assert summary.converted == 0 and len(read_manifest(tmp_path / "out" / "train.tsv").rows) == 259


def test_full_disk_manifest_cli_names_the_file(tmp_path, many_files, monkeypatch, capsys):
    from mert_fairseq.prep.manifest import main

    full_disk(monkeypatch, "valid.tsv")
    argv = ["--root-dir", str(many_files), "--converted-root-dir", str(tmp_path / "c"), "--out-dir", str(tmp_path / "o"),
            "--min-seconds", "0.05", "--valid-percent", "0.1"]
    assert main(argv) == 1
    assert f"{tmp_path / 'o' / 'valid.tsv'}: cannot write (No space left on device)" in capsys.readouterr().err
    assert not (tmp_path / "o" / "valid.tsv").exists() and not _no_temporaries(tmp_path)


def test_full_disk_encodec_labels_clear_error_then_resume(tmp_path, manifest_dir, monkeypatch):
    model = random_encodec(0)
    manifest = read_manifest(manifest_dir / "valid.tsv")
    settings = EncodecSettings(chunk_samples=SR, context_samples=0, shard_samples=SR + 17, model_id="test")
    encode_manifest(model, manifest, tmp_path / "clean", settings)
    full_disk(monkeypatch, "valid.encodec_3", free_bytes=100)
    with pytest.raises(OutputError, match=r"valid.encodec_3: cannot write \(No space left on device\)"):
        encode_manifest(model, manifest, tmp_path / "full", settings)
    assert not list((tmp_path / "full").glob("valid.encodec_*")) and not _no_temporaries(tmp_path)
    assert len(list((tmp_path / "full" / ".valid.encodec.partial").glob("block_*"))) == 2  # work kept
    monkeypatch.undo()
    encoded = []
    encode_manifest(model, manifest, tmp_path / "full", settings, on_shard_done=encoded.append)
    assert encoded == [] and tree_bytes(tmp_path / "full") == tree_bytes(tmp_path / "clean")


def test_full_disk_kmeans_labels_and_model(tmp_path, manifest_dir, monkeypatch, capsys):
    from mert_fairseq.prep.kmeans_labels import main

    manifest, extract = read_manifest(manifest_dir / "train.tsv"), MfccFeatures(FeatureSpec())
    km = fit_kmeans(sample_fit_frames(manifest, extract, 1000, 0), 8)
    full_disk(monkeypatch, "train.km", free_bytes=50)
    with pytest.raises(OutputError, match=r"train.km: cannot write \(No space left on device\)"):
        apply_kmeans(manifest, extract, km, tmp_path, "km", "train")
    assert not (tmp_path / "train.km").exists() and not (tmp_path / "dict.km.txt").exists()
    assert not _no_temporaries(tmp_path)

    full_disk(monkeypatch, "model.joblib")
    argv = ["fit", "--manifest-dir", str(manifest_dir), "--kmeans-model", str(tmp_path / "model.joblib"),
            "--n-clusters", "4", "--max-fit-frames", "500"]
    assert main(argv) == 1
    assert f"{tmp_path / 'model.joblib'}: cannot write (No space left on device)" in capsys.readouterr().err
    assert not (tmp_path / "model.joblib").exists() and not _no_temporaries(tmp_path)


@pytest.fixture()
def tiny_tmpfs(tmp_path):
    """A 40 kB tmpfs (needs root and mount; skipped elsewhere)."""
    mount = tmp_path / "tiny_disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40k", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip()})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_really_full_disk_manifest(tmp_path, many_files, tiny_tmpfs):
    out = tiny_tmpfs / "out"
    with pytest.raises(OutputError, match=rf"{out}/\S+: cannot write \(No space left on device\)"):
        prepare_manifest(many_files, tmp_path / "conv", out, valid_percent=0.1, min_seconds=0.05, chunk_size=16)
    assert not (out / "train.tsv").exists() and not (out / "valid.tsv").exists() and not _no_temporaries(out)
