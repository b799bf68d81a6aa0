"""Data-loading benchmark: what one data-loader worker delivers, and what a big split costs to open.

Throughput (default): full-length synthetic tracks (4 minutes, 24 kHz mono) written as WAV 16-bit, FLAC
and MP3 (when this libsndfile writes it), with 8 EnCodec-like label streams (75 Hz, codes < 1024) as
text and as .npy. For each format x read mode (whole file / windowed) x label format x streams (8 or 1),
the real `MERTDataset` (settings from a pretraining YAML: 5 s crops, normalize, ...) + its collater
build batches in one thread; the figure is delivered audio-seconds (batch rows x crop) per CPU-second
of this process (`time.process_time`), i.e. per core of one worker. A "window read only" row per
format times the audio window reads alone (decode + seek), without labels and collater, and a
"soundfile window (reference)" row the same windows through plain soundfile (float32), the method
of the issue's measurements: comparing it across runs shows how loaded the machine was.
Format "flac-pcm" is the FLAC corpus packed with `pack_audio.py --pcm` (decoded once into 16-bit WAV
members of a ZIP shard): what a FLAC collection delivers after packing; `disk_mb` in the results
compares the bytes on disk.

Open cost (`--rows N`): a synthetic manifest of N rows and one label stream (text and .npy) in a
temporary folder; each variant is opened in a fresh subprocess that reports the resident-memory
growth (RSS after - before, /proc/self/statm), the peak growth (ru_maxrss) and the open time, first
with no label index cached (the index is built) and then with it cached.

    python scripts/benchmark_data.py --out docs/benchmarks/data_loading.json
    python scripts/benchmark_data.py --rows 1000000 --out docs/benchmarks/open_1m.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence

from mert_fairseq.common.recipes import child_pythonpath

import numpy as np

SR, LABEL_RATE, N_CODES = 24000, 75, 1024
FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III")}
PACKED_PCM = {"flac-pcm": "flac", "mp3-pcm": "mp3"}  # corpus packed with pack_audio --pcm -> its source format
TARGETS = {"wav": 10_000, "flac": 3_000, "flac-pcm": 3_000}  # audio-seconds/s per core, windowed reads


# ---------------------------------------------------------------------------------------------- corpus
def available_formats() -> List[str]:
    import soundfile as sf

    have = sf.available_formats()
    plain = [ext for ext, (fmt, _) in FORMATS.items() if fmt in have]
    return plain + [ext for ext, src in PACKED_PCM.items() if src in plain]


def pack_pcm_corpus(root: Path, ext: str) -> float:
    """Pack `{source}.tsv` with --pcm into `{ext}_00000.zip` + `{ext}.tsv` under root (kept when done)
    -> MB on disk of the shards."""
    from mert_fairseq.prep.pack import pack_manifest

    pack_manifest(root / f"{PACKED_PCM[ext]}.tsv", root, prefix=ext, pcm=True)
    return sum(p.stat().st_size for p in root.glob(f"{ext}_*.zip")) / 1e6


def write_corpus(root: Path, n_tracks: int, seconds: float, formats: Sequence[str], n_streams: int,
                 seed: int = 0) -> None:
    """{fmt}/track_i.{fmt} + {fmt}.tsv per format; labels train.enc_k (text), .npy, dict files, shared
    by the formats (same row order). Existing files are kept (the corpus is deterministic)."""
    import soundfile as sf

    from mert_fairseq.perf.synthetic_corpus import music_like
    from mert_fairseq.prep.labels_npy import labels_to_npy

    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    tracks = None
    for ext in formats:
        folder = root / ext
        folder.mkdir(parents=True, exist_ok=True)
        fmt, subtype = FORMATS[ext]
        for i in range(n_tracks):
            path = folder / f"track_{i:03d}.{ext}"
            if not path.exists():
                tracks = tracks or [music_like(n, SR, np.random.default_rng([seed, i])) for i in range(n_tracks)]
                sf.write(path, tracks[i], SR, format=fmt, subtype=subtype)
        rows = [f"track_{i:03d}.{ext}\t{sf.info(str(folder / f'track_{i:03d}.{ext}')).frames}" for i in range(n_tracks)]
        (root / f"{ext}.tsv").write_text(f"{folder.resolve()}\n" + "\n".join(rows) + "\n")
    frames = int(np.ceil(n * LABEL_RATE / SR)) + 1  # MP3 decoders may add a few samples
    for k in range(n_streams):
        text = root / f"labels.enc_{k}"
        if not text.exists():
            codes = rng.integers(0, N_CODES, (n_tracks, frames))
            text.write_text("".join(" ".join(map(str, row)) + "\n" for row in codes))
        if not Path(f"{text}.npy").exists():
            labels_to_npy(text)
        (root / f"dict.enc_{k}.txt").write_text("".join(f"{c} 1\n" for c in range(N_CODES)))


# ---------------------------------------------------------------------------------------------- throughput
def dataset_for(root: Path, ext: str, streams: int, task_cfg, windowed: bool, npy: bool):
    from fairseq.data.dictionary import Dictionary

    from mert_fairseq.data import allocator
    from mert_fairseq.data.mert_dataset import MERTDataset

    allocator.keep_freed_memory()  # as the task does with task.keep_freed_memory (its default)
    names = [f"enc_{k}" for k in range(streams)]
    for name in names:  # the label files are shared by every format's manifest
        for suffix in ("", ".npy"):
            link = root / f"{ext}.{name}{suffix}"
            if not link.exists():
                link.symlink_to(f"labels.{name}{suffix}")
    dicts = [Dictionary.load(str(root / f"dict.{n}.txt")) for n in names]
    return MERTDataset(
        str(root / f"{ext}.tsv"), SR, [str(root / f"{ext}.{n}") for n in names], LABEL_RATE, dicts,
        max_sample_size=int(task_cfg.max_sample_size), pad_audio=bool(task_cfg.get("pad_audio", False)),
        normalize=bool(task_cfg.get("normalize", False)), numpy_memmap_label=npy,
        random_crop=bool(task_cfg.get("random_crop", True)), windowed_reads=windowed)


def measure_rate(ds, batch_size: int, min_batches: int, min_cpu_s: float) -> dict:
    """Build batches (cycling items and epochs) until both minima are reached -> audio-s per CPU-s."""
    audio_s = cpu = 0.0
    batches = 0
    ds.collater([ds[i] for i in range(min(batch_size, len(ds)))])  # warm the page cache and the code
    while batches < min_batches or cpu < min_cpu_s:
        ds.set_epoch(batches + 2)
        ids = [(batches * batch_size + i) % len(ds) for i in range(batch_size)]
        t = time.process_time()
        batch = ds.collater([ds[i] for i in ids])
        cpu += time.process_time() - t
        audio_s += batch["net_input"]["source"].numel() / SR
        batches += 1
    return {"audio_s_per_cpu_s": audio_s / cpu, "ms_per_clip": 1e3 * cpu / (batches * batch_size),
            "batches": batches, "cpu_s": cpu}


def measure_reads(ds, n: int, min_cpu_s: float) -> dict:
    """The audio window reads alone (`load_audio` of each item's window), as audio-s per CPU-s."""
    audio_s = cpu = 0.0
    reads = 0
    while reads < n or cpu < min_cpu_s:
        ds.set_epoch(reads // len(ds) + 2)
        index = reads % len(ds)
        t = time.process_time()
        wav = ds.load_audio(index, *ds.window(index))
        cpu += time.process_time() - t
        audio_s += len(wav) / SR
        reads += 1
    return {"audio_s_per_cpu_s": audio_s / cpu, "ms_per_clip": 1e3 * cpu / reads, "batches": 0, "cpu_s": cpu}


def measure_soundfile_reads(ds, n: int, min_cpu_s: float) -> dict:
    """Reference: the same windows read with plain soundfile (open, seek, read float32), the method of
    the measurement in the issue that asked for windowed reads, to compare machine load between runs."""
    import soundfile as sf

    audio_s = cpu = 0.0
    reads = 0
    while reads < n or cpu < min_cpu_s:
        ds.set_epoch(reads // len(ds) + 2)
        index = reads % len(ds)
        start, frames = ds.window(index)
        t = time.process_time()
        with sf.SoundFile(os.path.join(ds.root, ds.name(index))) as f:
            f.seek(start)
            wav = f.read(frames, dtype="float32")
        cpu += time.process_time() - t
        audio_s += len(wav) / SR
        reads += 1
    return {"audio_s_per_cpu_s": audio_s / cpu, "ms_per_clip": 1e3 * cpu / reads, "batches": 0, "cpu_s": cpu}


def run_throughput(args: argparse.Namespace) -> dict:
    import torch

    from mert_fairseq.perf.training_setup import compose_config

    torch.set_num_threads(1)
    task_cfg = compose_config(args.config).task
    root = Path(args.work_dir or tempfile.mkdtemp(prefix="mert_loading_"))
    asked = [f.strip().lower() for f in args.formats.split(",") if f.strip()]
    formats = [f for f in asked if f in available_formats()]
    if not formats:
        raise SystemExit(f"--formats {args.formats}: none of these can be written here "
                         f"(available: {','.join(available_formats())})")
    root.mkdir(parents=True, exist_ok=True)
    sources = list(dict.fromkeys(PACKED_PCM.get(f, f) for f in formats))
    write_corpus(root, args.tracks, args.seconds, sources, max(args.streams))
    disk_mb = {ext: sum((root / ext / f"track_{i:03d}.{ext}").stat().st_size for i in range(args.tracks)) / 1e6
               for ext in sources}
    rows = []
    for ext in formats:
        if ext in PACKED_PCM:
            disk_mb[ext] = pack_pcm_corpus(root, ext)
        ds = dataset_for(root, ext, 1, task_cfg, True, True)
        if ext not in PACKED_PCM:  # plain soundfile cannot open packed rows
            rows.append({"format": ext, "read": "soundfile window (reference)", "labels": "-", "streams": 0,
                         **measure_soundfile_reads(ds, args.min_batches, args.min_cpu_s / 2)})
            print(_row_text(rows[-1]), file=sys.stderr, flush=True)
        rows.append({"format": ext, "read": "window read only", "labels": "-", "streams": 0,
                     **measure_reads(ds, args.min_batches, args.min_cpu_s / 2)})
        print(_row_text(rows[-1]), file=sys.stderr, flush=True)
        for windowed in (False, True):
            for npy in (False, True):
                for streams in args.streams:
                    ds = dataset_for(root, ext, streams, task_cfg, windowed, npy)
                    res = measure_rate(ds, args.batch_size, 1 if not windowed else args.min_batches,
                                       0.0 if not windowed else args.min_cpu_s)
                    rows.append({"format": ext, "read": "windowed" if windowed else "whole",
                                 "labels": "npy" if npy else "text", "streams": streams, **res})
                    print(_row_text(rows[-1]), file=sys.stderr, flush=True)
    return {"kind": "throughput", "config": args.config, "crop_s": int(task_cfg.max_sample_size) / SR,
            "normalize": bool(task_cfg.get("normalize", False)), "track_s": args.seconds, "tracks": args.tracks,
            "batch_size": args.batch_size, "formats_available": available_formats(), "rows": rows, "disk_mb": disk_mb,
            "targets": TARGETS, "load_average": os.getloadavg(), "workdir": str(root)}


def _row_text(r: dict) -> str:
    target = TARGETS.get(r["format"]) if r["read"] == "windowed" else None
    mark = "" if target is None else f"{target:,}: " + ("met" if r["audio_s_per_cpu_s"] >= target else "missed")
    return (f"| {r['format']} | {r['read']} | {r['labels']} | {r['streams']} | {r['audio_s_per_cpu_s']:,.0f} | "
            f"{r['ms_per_clip']:.2f} | {mark} |")


def throughput_table(res: dict) -> str:
    head = ("| format | read | labels | streams | audio-s/s per core | CPU ms per clip | target |\n"
            "|---|---|---|---|---|---|---|")
    return "\n".join([head] + [_row_text(r) for r in res["rows"]])


# ---------------------------------------------------------------------------------------------- open cost
def write_big_split(root: Path, rows: int, label_frames: int, seed: int = 0) -> None:
    """train.tsv with `rows` rows, one label stream as text train.enc_0 and as train.enc_0.npy (the same
    codes, as labels_to_npy would write them), dict.enc_0.txt."""
    root.mkdir(parents=True, exist_ok=True)
    size = int(np.ceil(label_frames * SR / LABEL_RATE))
    rng = np.random.default_rng(seed)
    step = 20_000
    with open(root / "train.tsv", "w") as f:
        f.write(f"{root.resolve()}\n")
        for a in range(0, rows, step):
            f.write("".join(f"artist_{r // 1000:04d}/album_{r % 1000 // 10:03d}/track_{r:07d}.wav\t{size}\n"
                            for r in range(a, min(rows, a + step))))
    codes = rng.integers(0, N_CODES, (257, label_frames))  # rows are drawn from 257 random code rows
    lines = [(" ".join(map(str, row)) + "\n").encode() for row in codes]
    npy = np.lib.format.open_memmap(root / "train.enc_0.npy", mode="w+", dtype=np.int16, shape=(rows, label_frames))
    with open(root / "train.enc_0", "wb") as f:
        for a in range(0, rows, step):
            picks = rng.integers(0, len(lines), min(step, rows - a))
            f.write(b"".join(lines[p] for p in picks))
            npy[a: a + len(picks)] = codes[picks]
    npy.flush()
    del npy
    (root / "dict.enc_0.txt").write_text("".join(f"{c} 1\n" for c in range(N_CODES)))


_OPEN_PROBE = r"""
import json, os, sys, time
def status():
    with open("/proc/self/status") as f:
        return {k: int(v.split()[0]) / 1024 for k, v in (l.split(":", 1) for l in f) if k in
                ("VmRSS", "VmHWM", "RssAnon", "RssFile")}
def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
from fairseq.data.dictionary import Dictionary
from mert_fairseq.data.mert_dataset import MERTDataset
root, npy = sys.argv[1], sys.argv[2] == "1"
d = Dictionary.load(os.path.join(root, "dict.enc_0.txt"))
peak_reset = reset_peak()
before = status()
t, c = time.perf_counter(), time.process_time()
ds = MERTDataset(os.path.join(root, "train.tsv"), 24000, [os.path.join(root, "train.enc_0")], 75, [d],
                 max_sample_size=120000, numpy_memmap_label=npy)
order = ds.ordered_indices()
wall, cpu = time.perf_counter() - t, time.process_time() - c
after = status()
print(json.dumps({"rows": len(ds), "open_s": wall, "open_cpu_s": cpu,
                  "rss_delta_mb": after["VmRSS"] - before["VmRSS"], "anon_delta_mb": after["RssAnon"] - before["RssAnon"],
                  "file_delta_mb": after["RssFile"] - before["RssFile"],
                  "peak_delta_mb": after["VmHWM"] - before["VmRSS"] if peak_reset else None}))
"""


def probe_open(root: Path, npy: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": child_pythonpath()}
    out = subprocess.run([sys.executable, "-c", _OPEN_PROBE, str(root), "1" if npy else "0"], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_open(args: argparse.Namespace) -> dict:
    root = Path(args.work_dir or tempfile.mkdtemp(prefix="mert_open_"))
    if not (root / "train.enc_0.npy").exists():
        t = time.perf_counter()
        write_big_split(root, args.rows, args.label_frames)
        print(f"wrote the synthetic split in {time.perf_counter() - t:.0f} s: {root}", file=sys.stderr, flush=True)
    rows = []
    for npy in (False, True):
        cache = root / ("train.enc_0.npy.index.npz" if npy else "train.enc_0.index.npz")
        cache.unlink(missing_ok=True)
        for state in ("index built", "index cached"):
            rows.append({"labels": "npy" if npy else "text", "state": state, **probe_open(root, npy)})
            print(_open_text(rows[-1]), file=sys.stderr, flush=True)
    sizes = {p.name: p.stat().st_size / 2**20 for p in root.iterdir() if p.is_file()}
    return {"kind": "open", "rows": args.rows, "label_frames": args.label_frames, "file_mb": sizes,
            "results": rows, "load_average": os.getloadavg(), "workdir": str(root)}


def _open_text(r: dict) -> str:
    peak = "n/a" if r["peak_delta_mb"] is None else f"{r['peak_delta_mb']:.0f}"
    return (f"| {r['labels']} | {r['state']} | {r['rows']:,} | {r['open_s']:.2f} | {r['open_cpu_s']:.2f} | "
            f"{r['rss_delta_mb']:.0f} | {r['anon_delta_mb']:.0f} | {r['file_delta_mb']:.0f} | {peak} |")


def open_table(res: dict) -> str:
    head = ("| labels | label index | rows | open s (wall) | open s (CPU) | RSS growth MB | of which anonymous | "
            "of which file pages | peak growth MB |\n|---|---|---|---|---|---|---|---|---|")
    return "\n".join([head] + [_open_text(r) for r in res["results"]])


# ---------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="MERT_RVQ-VAE_CQT_95M", help="pretraining YAML for the task settings")
    p.add_argument("--formats", default="wav,flac,flac-pcm,mp3",
                   help="audio formats (those libsndfile can write; flac-pcm: FLAC packed with pack_audio --pcm)")
    p.add_argument("--tracks", type=int, default=8, help="synthetic tracks per format")
    p.add_argument("--seconds", type=float, default=240.0, help="track length")
    p.add_argument("--streams", default="8,1", help="label stream counts to measure")
    p.add_argument("--batch-size", type=int, default=4, help="clips per collated batch")
    p.add_argument("--min-batches", type=int, default=50, help="windowed runs: at least this many batches")
    p.add_argument("--min-cpu-s", type=float, default=2.0, help="windowed runs: at least this much CPU time")
    p.add_argument("--rows", type=int, help="measure opening a split of this many rows instead")
    p.add_argument("--label-frames", type=int, default=375, help="--rows: label codes per row (375 = 5 s)")
    p.add_argument("--work-dir", "--workdir", help="keep the synthetic data here (reused when present)")
    p.add_argument("--out", help="write the results as JSON")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.streams = [int(s) for s in str(args.streams).split(",")]
    if args.rows:
        res = run_open(args)
        table = open_table(res)
    else:
        res = run_throughput(args)
        table = throughput_table(res)
        table += "\n\ndisk MB of the tracks: " + ", ".join(f"{k} {v:.1f}" for k, v in res["disk_mb"].items())
    print(table)
    print(f"load average {res['load_average']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0
